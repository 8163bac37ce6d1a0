//! The `llamacpp` adapter (ORCH-4020): llama.cpp's `llama-server` through
//! its native HTTP API.
//!
//! - health: `GET /health` (503 while the model loads → Starting);
//! - properties: `/props` (slots, per-slot `n_ctx`, model, `build_info`),
//!   `/slots` (the slot count the server really runs) and `/v1/models`
//!   (model metadata for the digest fingerprint), read when the replica
//!   first passes a health check and re-checked whenever it comes back;
//! - admission: `POST /tokenize` counts prompt tokens with the model's own
//!   tokenizer (the conservative estimate of [`http::estimate_tokens`] when
//!   the engine cannot be asked);
//! - generation: `POST /completion` with `stream: true`; seed, `n_predict`
//!   and the sampler parameters passed through unchanged, each `content`
//!   chunk one token event, the final chunk's `stop_type` the finish reason;
//! - cancel: dropping the stream closes the connection, and llama-server
//!   stops the slot within milliseconds;
//! - errors (ORCH-4025): a 400 (`exceed_context_size_error` and other invalid
//!   requests) → `InvalidRequest` → `INVALID_PARAMS` on the stream; 503 and
//!   other statuses → `Refused`; connection refused, reset or a body that
//!   ends without the final chunk → `Lost` → `WORKER_RESET` (or one retry
//!   elsewhere when no token was delivered, ORCH-4014).
//!
//! Connections are not pooled (see [`http::client`]).

use std::time::Duration;

use async_trait::async_trait;
use contracts::config::LlamaCppEngineConfig;
use contracts::{ChatMessage, FinishReason};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http;
use super::{Engine, EngineError, EngineProperties, GenerateRequest, Health, TokenStream};

/// The longest admission waits for the engine's tokenizer.
const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct LlamaCppEngine {
    config: LlamaCppEngineConfig,
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    /// What the engine reported; the configured overrides and an unknown
    /// version until its first successful probe.
    discovery: http::Discovery,
}

impl LlamaCppEngine {
    pub fn new(config: LlamaCppEngineConfig) -> Self {
        let base = http::base(&config.base_url);
        let fallback = EngineProperties {
            engine: "llamacpp".into(),
            engine_version: config
                .engine_version
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            model_ref: format!("{base} (not yet discovered)"),
            model_digest: config.model_digest.clone().unwrap_or_default(),
            // Unknown until discovered: admission then leaves the check to
            // the engine, whose context error still maps to INVALID_PARAMS.
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

    async fn get_json(&self, path: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| http::lost(&format!("GET {path}"), &e).to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "GET {path}: HTTP {}: {}",
                status.as_u16(),
                http::error_message(&body)
            ));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    /// Read the engine's properties from `/props`, `/slots`, `/v1/models`.
    async fn discover(&self) -> Result<EngineProperties, String> {
        let props = self.get_json("/props").await?;
        let build_info = props["build_info"].as_str().unwrap_or("unknown").to_owned();
        let n_ctx = props["default_generation_settings"]["n_ctx"]
            .as_u64()
            .ok_or("GET /props: no default_generation_settings.n_ctx")?;
        let mut slots = props["total_slots"]
            .as_u64()
            .ok_or("GET /props: no total_slots")?;
        // `/slots` is on by default; a server started with --no-slots
        // answers 501 and /props alone is used.
        if let Ok(Value::Array(list)) = self.get_json("/slots").await {
            slots = list.len() as u64;
        }
        let model_path = props["model_path"].as_str().unwrap_or_default();
        let alias = props["model_alias"].as_str().unwrap_or(model_path);
        let meta = self
            .get_json("/v1/models")
            .await
            .ok()
            .map(|models| models["data"][0]["meta"].clone())
            .unwrap_or(Value::Null);
        let model_digest = match &self.config.model_digest {
            Some(digest) => digest.clone(),
            None => {
                let fingerprint = json!({
                    "model_path": model_path,
                    "n_params": meta["n_params"],
                    "size": meta["size"],
                    "n_vocab": meta["n_vocab"],
                    "ftype": props["model_ftype"],
                });
                format!(
                    "meta-sha256:{}",
                    hex::encode(Sha256::digest(fingerprint.to_string()))
                )
            }
        };
        Ok(EngineProperties {
            engine: "llamacpp".into(),
            engine_version: build_info,
            model_ref: alias.to_owned(),
            model_digest,
            ctx_limit: self
                .config
                .ctx_limit
                .unwrap_or_else(|| u32::try_from(n_ctx).unwrap_or(u32::MAX)),
            slots: self
                .config
                .slots
                .unwrap_or_else(|| u32::try_from(slots).unwrap_or(1).max(1)),
        })
    }

    /// Discover (first time) or re-check (after the replica came back) the
    /// engine's properties; a replica whose engine changed stays out.
    async fn verify(&self) -> Result<(), String> {
        let found = self.discover().await?;
        if let Some(pin) = &self.config.engine_version
            && &found.engine_version != pin
        {
            return Err(format!(
                "engine_version mismatch: the config pins {pin:?}, llama-server reports build_info {:?} (ORCH-4003)",
                found.engine_version
            ));
        }
        self.discovery.confirm("llama-server", found)
    }
}

/// The request body of `POST /completion`: OrchQueue's parameters mapped
/// one to one, nothing added that changes sampling. llama-server reuses a
/// cached prompt prefix by default, which its documentation says can change
/// the output; only `best_effort` tasks allow it (ORCH-4032).
pub fn completion_body(request: &GenerateRequest) -> Value {
    json!({
        "prompt": request.prompt,
        "n_predict": request.max_tokens,
        "seed": request.seed,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "cache_prompt": request.reuse_prompt_cache,
        "stop": request.stop,
        "stream": true,
    })
}

fn finish_reason(stop_type: Option<&str>) -> FinishReason {
    match stop_type {
        Some("eos") | Some("word") => FinishReason::Stop,
        // "limit": n_predict reached; "none": stopped without an end of
        // sequence (context exhausted).
        _ => FinishReason::Length,
    }
}

/// One `data:` payload of the native stream → events.
fn chunk_events(data: &str) -> Result<(Option<String>, Option<FinishReason>), EngineError> {
    let chunk: Value = serde_json::from_str(data)
        .map_err(|e| EngineError::Lost(format!("llamacpp: unreadable stream chunk: {e}")))?;
    if let Some(error) = chunk.get("error") {
        let message = error["message"].as_str().unwrap_or("engine error");
        let kind = error["type"].as_str().unwrap_or_default();
        let text = format!("llamacpp: {message} ({kind})");
        return Err(match kind {
            "exceed_context_size_error" | "invalid_request_error" => {
                EngineError::InvalidRequest(text)
            }
            _ => EngineError::Lost(text),
        });
    }
    let content = chunk["content"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    let finished = chunk["stop"]
        .as_bool()
        .unwrap_or(false)
        .then(|| finish_reason(chunk["stop_type"].as_str()));
    if finished.is_some() {
        tracing::debug!(timings = %chunk["timings"], tokens_cached = %chunk["tokens_cached"], "llamacpp generation finished");
    }
    Ok((content, finished))
}

#[async_trait]
impl Engine for LlamaCppEngine {
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
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                self.discovery.invalidate();
                return Health::Down(http::lost("llamacpp GET /health", &error).to_string());
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            let body = response.text().await.unwrap_or_default();
            self.discovery.invalidate();
            return Health::Starting(format!("llama-server: {}", http::error_message(&body)));
        }
        if !status.is_success() {
            self.discovery.invalidate();
            return Health::Down(format!("llama-server /health: HTTP {}", status.as_u16()));
        }
        if !self.discovery.is_verified()
            && let Err(problem) = self.verify().await
        {
            return Health::Down(problem);
        }
        Health::Ready
    }

    async fn count_tokens(&self, prompt: &str) -> Result<u32, EngineError> {
        // Admission must not wait on a replica that is down or hung: an
        // unverified replica is not asked, and a slow answer falls back.
        if !self.discovery.is_verified() {
            return Ok(http::estimate_tokens(prompt));
        }
        let response = self
            .client
            .post(format!("{}/tokenize", self.base))
            .timeout(self.timeout.min(TOKENIZE_TIMEOUT))
            .json(&json!({"content": prompt, "add_special": true}))
            .send()
            .await;
        let counted = match response {
            Ok(response) if response.status().is_success() => response
                .json::<Value>()
                .await
                .ok()
                .and_then(|body| body["tokens"].as_array().map(Vec::len)),
            _ => None,
        };
        Ok(match counted {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None => {
                tracing::debug!(base = %self.base, "tokenizer unreachable; using the conservative estimate");
                http::estimate_tokens(prompt)
            }
        })
    }

    /// llama-server formats the conversation with the model's own template
    /// (`POST /apply-template`, the one its `/v1/chat/completions` uses), so a chat
    /// task gets the answer llama-server's own chat API gives (ORCH-8005).
    async fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let response = self
            .client
            .post(format!("{}/apply-template", self.base))
            .timeout(self.timeout.min(TOKENIZE_TIMEOUT))
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .map_err(|e| {
                EngineError::Refused(http::lost("llamacpp POST /apply-template", &e).to_string())
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        match body["prompt"].as_str() {
            Some(prompt) if status.is_success() => Ok(prompt.to_owned()),
            // The template refused these messages (e.g. roles out of order).
            _ => Err(EngineError::InvalidRequest(format!(
                "llama-server's chat template refused the messages ({status}): {}",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("no reason given")
            ))),
        }
    }

    async fn generate(&self, mut request: GenerateRequest) -> Result<TokenStream, EngineError> {
        if let Some(messages) = request.messages.take() {
            request.prompt = self.chat_prompt(&messages).await?;
        }
        let client = self.client.clone();
        let url = format!("{}/completion", self.base);
        let body = completion_body(&request);
        let request = client.post(&url).json(&body);
        Ok(http::generation(
            request,
            "llamacpp POST /completion".into(),
            |data| {
                chunk_events(data).map(|(token, finish)| http::Parsed {
                    token,
                    end: finish.is_some(),
                    finish,
                })
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers: ORCH-4032
    #[test]
    fn only_best_effort_lets_llama_server_reuse_its_prompt_cache() {
        let request = |reuse_prompt_cache| GenerateRequest {
            prompt: "p".into(),
            messages: None,
            stop: Vec::new(),
            max_tokens: 3,
            seed: 7,
            temperature: 0.5,
            top_p: 0.9,
            top_k: 10,
            reuse_prompt_cache,
        };
        let strict = completion_body(&request(false));
        assert_eq!(
            strict["cache_prompt"], false,
            "llama-server's default is true"
        );
        assert_eq!(completion_body(&request(true))["cache_prompt"], true);
        assert_eq!(
            (&strict["seed"], &strict["n_predict"], &strict["top_k"]),
            (&json!(7), &json!(3), &json!(10))
        );
    }

    // covers: ORCH-4020
    #[test]
    fn native_chunks_map_to_tokens_and_finish_reasons() {
        let (t, f) = chunk_events(r#"{"index":0,"content":" hi","stop":false}"#).unwrap();
        assert_eq!((t.as_deref(), f), (Some(" hi"), None));
        let (t, f) = chunk_events(
            r#"{"content":"","stop":true,"stop_type":"limit","timings":{"cache_n":0}}"#,
        )
        .unwrap();
        assert_eq!((t, f), (None, Some(FinishReason::Length)));
        let (_, f) = chunk_events(r#"{"content":"","stop":true,"stop_type":"eos"}"#).unwrap();
        assert_eq!(f, Some(FinishReason::Stop));
    }

    // covers: ORCH-4025
    #[test]
    fn a_context_error_event_is_an_invalid_request() {
        let error = chunk_events(
            r#"{"error":{"code":400,"message":"too long","type":"exceed_context_size_error"}}"#,
        )
        .unwrap_err();
        assert!(matches!(error, EngineError::InvalidRequest(_)), "{error:?}");
    }
}
