//! The `openai` adapter (ORCH-4021): any OpenAI-compatible server — vLLM,
//! llama.cpp's `/v1`, SGLang, Ollama.
//!
//! - health and properties: `GET /v1/models` (the configured model must be
//!   listed; context from `max_model_len` (vLLM) or `meta.n_ctx`
//!   (llama.cpp)); the version from `GET /version` where the server has one
//!   (vLLM), else the config's pin;
//! - generation: `POST /v1/completions` (or `/v1/chat/completions` with
//!   the prompt as one user message), `stream: true` with
//!   `stream_options.include_usage`, read until `data: [DONE]`;
//! - admission: the API has no tokenizer, so prompts are counted with the
//!   conservative estimate of [`http::estimate_tokens`] (ORCH-4024);
//! - an optional API key per replica is sent as a bearer token;
//! - errors map as in [`http::status_error`]; an `error` object inside the
//!   stream is a context error (`InvalidRequest`) or a lost replica.

use std::time::Duration;

use async_trait::async_trait;
use contracts::FinishReason;
use contracts::config::{OpenAiApi, OpenAiEngineConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http;
use super::{Engine, EngineError, EngineProperties, GenerateRequest, Health, TokenStream};

pub struct OpenAiEngine {
    config: OpenAiEngineConfig,
    /// The server is llama.cpp's (its `/v1/models` entry has `meta`): it takes the
    /// `cache_prompt` extension, so `strict` tasks can turn its prompt cache off.
    llamacpp_server: std::sync::atomic::AtomicBool,
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    discovery: http::Discovery,
}

impl OpenAiEngine {
    pub fn new(config: OpenAiEngineConfig) -> Self {
        let base = http::base(&config.base_url);
        let fallback = EngineProperties {
            engine: "openai".into(),
            engine_version: config
                .engine_version
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            model_ref: config.model.clone().unwrap_or_default(),
            model_digest: config.model_digest.clone().unwrap_or_default(),
            ctx_limit: config.ctx_limit.unwrap_or(u32::MAX),
            slots: config.slots,
        };
        Self {
            llamacpp_server: std::sync::atomic::AtomicBool::new(false),
            client: http::client(config.connect_timeout_ms),
            timeout: Duration::from_millis(config.request_timeout_ms),
            base,
            config,
            discovery: http::Discovery::new(fallback),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(self.timeout);
        match &self.config.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// `GET /v1/models` → the model entry this replica serves.
    async fn model_entry(&self) -> Result<Value, Health> {
        let response = self
            .get("/v1/models")
            .send()
            .await
            .map_err(|e| Health::Down(http::lost("openai GET /v1/models", &e).to_string()))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(Health::Starting(format!(
                "openai: {}",
                http::error_message(&body)
            )));
        }
        if !status.is_success() {
            return Err(Health::Down(format!(
                "openai GET /v1/models: HTTP {}: {}",
                status.as_u16(),
                http::error_message(&body)
            )));
        }
        let models: Value = serde_json::from_str(&body)
            .map_err(|e| Health::Down(format!("openai GET /v1/models: not JSON: {e}")))?;
        let list = models["data"].as_array().cloned().unwrap_or_default();
        let entry = match &self.config.model {
            Some(model) => list.into_iter().find(|m| m["id"].as_str() == Some(model)),
            None => list.into_iter().next(),
        };
        entry.ok_or_else(|| {
            Health::Down(format!(
                "openai: model {:?} is not served (GET /v1/models)",
                self.config.model.as_deref().unwrap_or("<any>")
            ))
        })
    }

    async fn discover(&self, entry: &Value) -> EngineProperties {
        let version = match &self.config.engine_version {
            Some(pin) => pin.clone(),
            None => match self.get("/version").send().await {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["version"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into()),
                _ => format!("{}:unknown", entry["owned_by"].as_str().unwrap_or("openai")),
            },
        };
        let ctx = entry["max_model_len"]
            .as_u64()
            .or_else(|| entry["meta"]["n_ctx"].as_u64())
            .and_then(|n| u32::try_from(n).ok());
        let model_digest = self.config.model_digest.clone().unwrap_or_else(|| {
            let fingerprint = json!({
                "id": entry["id"],
                "owned_by": entry["owned_by"],
                "max_model_len": entry["max_model_len"],
                "meta": entry["meta"],
            });
            format!(
                "meta-sha256:{}",
                hex::encode(Sha256::digest(fingerprint.to_string()))
            )
        });
        EngineProperties {
            engine: "openai".into(),
            engine_version: version,
            model_ref: entry["id"].as_str().unwrap_or_default().to_owned(),
            model_digest,
            ctx_limit: self.config.ctx_limit.or(ctx).unwrap_or(u32::MAX),
            slots: self.config.slots,
        }
    }

    fn model(&self) -> String {
        self.config
            .model
            .clone()
            .unwrap_or_else(|| self.properties().model_ref.clone())
    }
}

/// The request body: OrchQueue's parameters mapped one to one. A llama.cpp server
/// is also told whether it may reuse its prompt cache, which can change the output
/// (ORCH-4032); other servers have no such knob in the OpenAI API.
pub fn request_body(
    api: OpenAiApi,
    model: &str,
    request: &GenerateRequest,
    llamacpp_server: bool,
) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if llamacpp_server {
        body["cache_prompt"] = json!(request.reuse_prompt_cache);
    }
    match (api, &request.messages) {
        // The server applies the model's template to a conversation (ORCH-8005).
        (_, Some(messages)) => body["messages"] = json!(messages),
        (OpenAiApi::Completions, None) => body["prompt"] = json!(request.prompt),
        (OpenAiApi::Chat, None) => {
            body["messages"] = json!([{"role": "user", "content": request.prompt}]);
        }
    }
    body
}

/// What one `data:` payload says.
#[derive(Debug, PartialEq)]
enum Chunk {
    Done,
    Delta {
        text: Option<String>,
        finish: Option<FinishReason>,
    },
}

fn parse_chunk(api: OpenAiApi, data: &str) -> Result<Chunk, EngineError> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let chunk: Value = serde_json::from_str(data)
        .map_err(|e| EngineError::Lost(format!("openai: unreadable stream chunk: {e}")))?;
    if let Some(error) = chunk.get("error") {
        let message = error["message"].as_str().unwrap_or("engine error");
        let kind = error["type"].as_str().unwrap_or_default();
        let text = format!("openai: {message} ({kind})");
        let context = kind.contains("context") || message.contains("context length");
        return Err(if context || kind == "invalid_request_error" {
            EngineError::InvalidRequest(text)
        } else {
            EngineError::Lost(text)
        });
    }
    // The usage chunk (`include_usage`) has an empty `choices`.
    let Some(choice) = chunk["choices"].get(0) else {
        return Ok(Chunk::Delta {
            text: None,
            finish: None,
        });
    };
    let text = match api {
        OpenAiApi::Completions => choice["text"].as_str(),
        OpenAiApi::Chat => choice["delta"]["content"].as_str(),
    }
    .filter(|t| !t.is_empty())
    .map(str::to_owned);
    let finish = choice["finish_reason"].as_str().map(|r| match r {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    });
    Ok(Chunk::Delta { text, finish })
}

#[async_trait]
impl Engine for OpenAiEngine {
    fn properties(&self) -> &EngineProperties {
        self.discovery.properties()
    }

    async fn health(&self) -> Health {
        let entry = match self.model_entry().await {
            Ok(entry) => entry,
            Err(health) => {
                self.discovery.invalidate();
                return health;
            }
        };
        self.llamacpp_server.store(
            entry.get("meta").is_some_and(Value::is_object),
            std::sync::atomic::Ordering::Relaxed,
        );
        if !self.discovery.is_verified() {
            let found = self.discover(&entry).await;
            if let Err(problem) = self.discovery.confirm("the engine", found) {
                return Health::Down(problem);
            }
        }
        Health::Ready
    }

    async fn count_tokens(&self, prompt: &str) -> Result<u32, EngineError> {
        Ok(http::estimate_tokens(prompt))
    }

    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError> {
        let api = match request.messages {
            Some(_) => OpenAiApi::Chat,
            None => self.config.api,
        };
        let path = match api {
            OpenAiApi::Completions => "/v1/completions",
            OpenAiApi::Chat => "/v1/chat/completions",
        };
        let llamacpp = self
            .llamacpp_server
            .load(std::sync::atomic::Ordering::Relaxed);
        let body = request_body(api, &self.model(), &request, llamacpp);
        let mut post = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(key) = &self.config.api_key {
            post = post.bearer_auth(key);
        }
        let context = format!("openai POST {path}");
        Ok(http::generation(post, context, move |data| {
            parse_chunk(api, data).map(|chunk| match chunk {
                Chunk::Done => http::Parsed {
                    token: None,
                    finish: None,
                    end: true,
                },
                Chunk::Delta { text, finish } => http::Parsed {
                    token: text,
                    finish,
                    end: false,
                },
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-4021
    #[test]
    fn completion_and_chat_chunks_and_the_done_terminator_parse() {
        let api = OpenAiApi::Completions;
        assert_eq!(
            parse_chunk(
                api,
                r#"{"choices":[{"text":" a","index":0,"finish_reason":null}]}"#
            )
            .unwrap(),
            Chunk::Delta {
                text: Some(" a".into()),
                finish: None
            }
        );
        assert_eq!(
            parse_chunk(
                api,
                r#"{"choices":[{"text":"","index":0,"finish_reason":"length"}]}"#
            )
            .unwrap(),
            Chunk::Delta {
                text: None,
                finish: Some(FinishReason::Length)
            }
        );
        assert_eq!(
            parse_chunk(api, r#"{"choices":[],"usage":{"completion_tokens":3}}"#).unwrap(),
            Chunk::Delta {
                text: None,
                finish: None
            }
        );
        assert_eq!(parse_chunk(api, "[DONE]").unwrap(), Chunk::Done);
        assert_eq!(
            parse_chunk(
                OpenAiApi::Chat,
                r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}"#
            )
            .unwrap(),
            Chunk::Delta {
                text: Some("x".into()),
                finish: Some(FinishReason::Stop)
            }
        );
        let request = GenerateRequest {
            prompt: "p".into(),
            messages: None,
            stop: Vec::new(),
            max_tokens: 3,
            seed: 7,
            temperature: 0.8,
            top_p: 1.0,
            top_k: 40,
            reuse_prompt_cache: false,
        };
        let body = request_body(OpenAiApi::Chat, "m", &request, false);
        assert_eq!(body["messages"][0]["content"], "p");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("cache_prompt").is_none(), "not an OpenAI field");
        // llama.cpp's server takes the cache knob: a strict task turns it off.
        let llama = request_body(OpenAiApi::Chat, "m", &request, true);
        assert_eq!(llama["cache_prompt"], false);
        let messages = vec![contracts::ChatMessage {
            role: contracts::ChatRole::Assistant,
            content: "a".into(),
        }];
        let chat = GenerateRequest {
            messages: Some(messages),
            stop: vec!["\n".into()],
            reuse_prompt_cache: true,
            ..request
        };
        let body = request_body(OpenAiApi::Completions, "m", &chat, true);
        assert_eq!(
            body["messages"][0]["role"], "assistant",
            "a conversation goes as messages"
        );
        assert_eq!(body["stop"][0], "\n");
        assert_eq!(body["cache_prompt"], true);
    }
}
