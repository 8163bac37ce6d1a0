//! The engine adapter trait (ORCH-4010) and its adapters.
//!
//! An adapter turns task parameters into a stream of tokens. Cancellation is
//! dropping the stream: every adapter must stop generating when its stream is
//! dropped (for HTTP engines that means closing the connection).

pub mod builtin;
pub mod http;
pub mod llamacpp;
pub mod openai;
pub mod tgi;

use std::sync::Arc;

use async_trait::async_trait;
use contracts::config::EngineConfig;
use contracts::{ChatMessage, FinishReason, TaskRequest};
use futures::stream::BoxStream;

/// What the orchestrator knows about a replica's engine, fixed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineProperties {
    pub engine: String,
    pub engine_version: String,
    pub model_ref: String,
    pub model_digest: String,
    pub ctx_limit: u32,
    pub slots: u32,
}

/// Sampling inputs of one generation; with the engine version and model they
/// determine the output (ORCH-4030).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt; empty when `messages` is the input.
    pub prompt: String,
    /// A conversation, formatted by the engine with the model's chat template
    /// (ORCH-8005).
    pub messages: Option<Vec<ChatMessage>>,
    /// Generation ends before the first of these (ORCH-1025).
    pub stop: Vec<String>,
    pub max_tokens: u32,
    pub seed: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    /// Whether the engine may reuse a cached prompt prefix, which some engines
    /// say can change the output: only under `determinism: best_effort`
    /// (ORCH-4032).
    pub reuse_prompt_cache: bool,
}

impl GenerateRequest {
    /// The sampling inputs of a stored task, with its defaults filled in.
    pub fn of_task(request: &TaskRequest, seed: u32) -> Self {
        Self {
            prompt: request.prompt.clone(),
            messages: request.messages.clone(),
            stop: request.stop.clone().unwrap_or_default(),
            max_tokens: request.max_tokens,
            seed,
            temperature: request.temperature.unwrap_or(0.8),
            top_p: request.top_p.unwrap_or(1.0),
            top_k: request.top_k.unwrap_or(40),
            reuse_prompt_cache: request.determinism == Some(contracts::Determinism::BestEffort),
        }
    }
}

/// The documented chat template of engines without one of their own (builtin):
/// a line `<|role|>` before each message's content, and `<|assistant|>` at the end,
/// where the answer begins (ORCH-8005).
pub fn simple_chat_template(messages: &[ChatMessage]) -> String {
    let mut prompt = String::new();
    for message in messages {
        prompt.push_str("<|");
        prompt.push_str(message.role.as_str());
        prompt.push_str("|>\n");
        prompt.push_str(&message.content);
        prompt.push('\n');
    }
    prompt.push_str("<|assistant|>\n");
    prompt
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Token(String),
    Finished(FinishReason),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The engine declined to start the generation; nothing was produced.
    #[error("engine refused the generation: {0}")]
    Refused(String),
    /// The replica went away (crash, connection reset) mid-generation.
    #[error("replica lost: {0}")]
    Lost(String),
    /// The engine judged the request invalid (e.g. context overflow).
    #[error("engine rejected the request: {0}")]
    InvalidRequest(String),
}

pub type TokenStream = BoxStream<'static, Result<EngineEvent, EngineError>>;

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ready,
    /// Loading; expected to become Ready without intervention.
    Starting(String),
    Down(String),
    /// The engine will never serve its configured model (it does not serve that
    /// model, or cannot find its file): no retry can help, so a reload to it is
    /// refused at once (ORCH-6023).
    Refused(String),
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn properties(&self) -> &EngineProperties;

    async fn health(&self) -> Health;

    /// Prompt length in the engine's own tokens.
    async fn count_tokens(&self, prompt: &str) -> Result<u32, EngineError>;

    /// The prompt a conversation becomes with the model's chat template
    /// (ORCH-8005); engines whose model brings no template use the simple one.
    async fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        Ok(simple_chat_template(messages))
    }

    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError>;

    /// The in-process fault switches, for engines that have them (builtin).
    fn faults(&self) -> Option<&builtin::FaultSwitch> {
        None
    }

    /// How fast the engine generates, when it says so before any task has run
    /// (builtin: its configuration); the first service-time estimate of a
    /// pool comes from it (ORCH-3007).
    fn expected_speed(&self) -> Option<Speed> {
        None
    }
}

/// An engine's generation speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    pub ttft_ms: f64,
    pub tokens_per_s: f64,
}

impl Speed {
    /// What a remote engine is assumed to do before its first task completes:
    /// a small model on one GPU slot, rather slow than fast, so that early
    /// hints err towards waiting.
    pub const UNKNOWN: Speed = Speed {
        ttft_ms: 200.0,
        tokens_per_s: 20.0,
    };

    /// Time of a task generating `tokens`.
    pub fn service_ms(self, tokens: u32) -> f64 {
        self.ttft_ms + f64::from(tokens) * 1_000.0 / self.tokens_per_s.max(0.001)
    }
}

/// The adapter a replica's config asks for.
pub fn build(config: &EngineConfig) -> Arc<dyn Engine> {
    match config {
        EngineConfig::Builtin(builtin) => Arc::new(builtin::BuiltinEngine::new(builtin.clone())),
        EngineConfig::Llamacpp(config) => Arc::new(llamacpp::LlamaCppEngine::new(config.clone())),
        EngineConfig::Openai(config) => Arc::new(openai::OpenAiEngine::new(config.clone())),
        EngineConfig::Tgi(config) => Arc::new(tgi::TgiEngine::new(config.clone())),
    }
}
