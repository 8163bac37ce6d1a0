//! The `tgi` adapter (ORCH-4022): Text Generation Inference.
//!
//! - health: `GET /health` (200 when the model is ready; 503 otherwise);
//! - properties: `GET /info` (`version`, `model_id`, `model_sha`,
//!   `max_total_tokens`, `max_concurrent_requests`);
//! - admission: `POST /tokenize` where the server has it, else the
//!   conservative estimate (ORCH-4024);
//! - generation: `POST /generate_stream`. TGI answers it with HTTP 200 even
//!   when it fails and sends the failure as an event
//!   `{"error": …, "error_type": "validation" | "overloaded" | "generation" |
//!   "incomplete_generation"}`: validation → `InvalidRequest`, overloaded →
//!   `Refused`, the others → `Lost`. Special tokens (`"special": true`, e.g.
//!   `</s>`) carry no text of the answer and are not forwarded.
//!
//! Verified against TGI's wire format only (a recorded transcript whose
//! every event TGI's own Python client parses), not against a running TGI.

use std::time::Duration;

use async_trait::async_trait;
use contracts::config::TgiEngineConfig;
use contracts::{ChatMessage, FinishReason};
use serde_json::{Value, json};

use super::http;
use super::{Engine, EngineError, EngineProperties, GenerateRequest, Health, TokenStream};

pub struct TgiEngine {
    config: TgiEngineConfig,
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    discovery: http::Discovery,
}

impl TgiEngine {
    pub fn new(config: TgiEngineConfig) -> Self {
        let base = http::base(&config.base_url);
        let fallback = EngineProperties {
            engine: "tgi".into(),
            engine_version: config
                .engine_version
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            model_ref: String::new(),
            model_digest: config.model_digest.clone().unwrap_or_default(),
            ctx_limit: config.ctx_limit.unwrap_or(u32::MAX),
            slots: config.slots.unwrap_or(1),
        };
        Self {
            client: http::client(config.connect_timeout_ms),
            timeout: Duration::from_millis(config.request_timeout_ms),
            base,
            config,
            discovery: http::Discovery::new(fallback),
        }
    }

    async fn discover(&self) -> Result<EngineProperties, String> {
        let response = self
            .client
            .get(format!("{}/info", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| http::lost("tgi GET /info", &e).to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "tgi GET /info: HTTP {}",
                response.status().as_u16()
            ));
        }
        let info: Value = response
            .json()
            .await
            .map_err(|e| format!("tgi GET /info: not JSON: {e}"))?;
        let number = |key: &str| info[key].as_u64().and_then(|n| u32::try_from(n).ok());
        let version = info["version"].as_str().unwrap_or("unknown").to_owned();
        if let Some(pin) = &self.config.engine_version
            && pin != &version
        {
            return Err(format!(
                "engine_version mismatch: the config pins {pin:?}, TGI reports {version:?} (ORCH-4003)"
            ));
        }
        Ok(EngineProperties {
            engine: "tgi".into(),
            engine_version: version,
            model_ref: info["model_id"].as_str().unwrap_or_default().to_owned(),
            model_digest: self.config.model_digest.clone().unwrap_or_else(|| {
                format!("hf-sha:{}", info["model_sha"].as_str().unwrap_or("unknown"))
            }),
            ctx_limit: self
                .config
                .ctx_limit
                .or_else(|| number("max_total_tokens"))
                .unwrap_or(u32::MAX),
            slots: self
                .config
                .slots
                .or_else(|| number("max_concurrent_requests"))
                .unwrap_or(1)
                .max(1),
        })
    }
}

/// The request body: TGI validates its parameters strictly (temperature
/// and top_k positive, top_p inside (0, 1)), so a parameter at its neutral
/// value is left out rather than sent.
pub fn request_body(request: &GenerateRequest) -> Value {
    let mut parameters = json!({
        "max_new_tokens": request.max_tokens,
        "seed": request.seed,
        "do_sample": request.temperature > 0.0,
        "details": true,
    });
    if request.temperature > 0.0 {
        parameters["temperature"] = json!(request.temperature);
    }
    if request.top_p > 0.0 && request.top_p < 1.0 {
        parameters["top_p"] = json!(request.top_p);
    }
    if request.top_k > 0 {
        parameters["top_k"] = json!(request.top_k);
    }
    if !request.stop.is_empty() {
        parameters["stop"] = json!(request.stop);
    }
    json!({"inputs": request.prompt, "parameters": parameters})
}

/// One `data:` payload of `/generate_stream` → an optional token text and
/// an optional finish.
pub fn parse_event(data: &str) -> Result<(Option<String>, Option<FinishReason>), EngineError> {
    let event: Value = serde_json::from_str(data)
        .map_err(|e| EngineError::Lost(format!("tgi: unreadable stream event: {e}")))?;
    if let Some(error) = event.get("error") {
        let message = error.as_str().unwrap_or("engine error");
        let kind = event["error_type"].as_str().unwrap_or_default();
        let text = format!("tgi: {message} ({kind})");
        return Err(match kind {
            "validation" => EngineError::InvalidRequest(text),
            "overloaded" => EngineError::Refused(text),
            _ => EngineError::Lost(text),
        });
    }
    let token = &event["token"];
    let text = if token["special"].as_bool().unwrap_or(false) {
        None
    } else {
        token["text"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let finish = event["details"]["finish_reason"]
        .as_str()
        .map(|reason| match reason {
            "length" => FinishReason::Length,
            _ => FinishReason::Stop,
        });
    Ok((text, finish))
}

#[async_trait]
impl Engine for TgiEngine {
    fn properties(&self) -> &EngineProperties {
        self.discovery.properties()
    }

    async fn health(&self) -> Health {
        let response = self
            .client
            .get(format!("{}/health", self.base))
            .timeout(self.timeout)
            .send()
            .await;
        let status = match response {
            Ok(response) => response.status(),
            Err(error) => {
                self.discovery.invalidate();
                return Health::Down(http::lost("tgi GET /health", &error).to_string());
            }
        };
        if !status.is_success() {
            self.discovery.invalidate();
            return if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                Health::Starting("tgi: model not ready".into())
            } else {
                Health::Down(format!("tgi GET /health: HTTP {}", status.as_u16()))
            };
        }
        if !self.discovery.is_verified() {
            let confirmed = match self.discover().await {
                Ok(found) => self.discovery.confirm("TGI", found),
                Err(problem) => Err(problem),
            };
            if let Err(problem) = confirmed {
                return Health::Down(problem);
            }
        }
        Health::Ready
    }

    async fn count_tokens(&self, prompt: &str) -> Result<u32, EngineError> {
        if !self.discovery.is_verified() {
            return Ok(http::estimate_tokens(prompt));
        }
        let response = self
            .client
            .post(format!("{}/tokenize", self.base))
            .timeout(self.timeout.min(Duration::from_secs(1)))
            .json(&json!({"inputs": prompt}))
            .send()
            .await;
        let counted = match response {
            Ok(response) if response.status().is_success() => response
                .json::<Value>()
                .await
                .ok()
                .and_then(|tokens| tokens.as_array().map(Vec::len)),
            _ => None,
        };
        Ok(counted
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or_else(|| http::estimate_tokens(prompt)))
    }

    /// TGI's native API has no chat template endpoint; its Messages API is
    /// OpenAI-compatible, so a TGI pool that serves conversations uses the
    /// `openai` adapter (ORCH-8005).
    async fn chat_prompt(&self, _: &[ChatMessage]) -> Result<String, EngineError> {
        Err(EngineError::InvalidRequest(
            "the tgi adapter takes prompts only; serve conversations from TGI through an `openai` replica (TGI's Messages API)".into(),
        ))
    }

    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError> {
        if let Some(messages) = &request.messages {
            self.chat_prompt(messages).await?;
        }
        let post = self
            .client
            .post(format!("{}/generate_stream", self.base))
            .json(&request_body(&request));
        Ok(http::generation(
            post,
            "tgi POST /generate_stream".into(),
            |data| {
                parse_event(data).map(|(token, finish)| http::Parsed {
                    token,
                    end: finish.is_some(),
                    finish,
                })
            },
        ))
    }
}
