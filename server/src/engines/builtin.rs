//! The built-in deterministic engine (ORCH-4011, ORCH-4012): synthetic text
//! whose every byte is a pure function of (prompt, seed, sampler parameters,
//! engine version), paced like a real engine, with injectable faults.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use contracts::FinishReason;
use contracts::config::{BuiltinEngineConfig, BuiltinFaults};
use sha2::{Digest, Sha256};

use super::{
    Engine, EngineError, EngineEvent, EngineProperties, GenerateRequest, Health, TokenStream,
};

/// How long a crashed builtin replica stays down before its health probe
/// passes again.
const CRASH_RESTART: Duration = Duration::from_millis(300);

/// The only models the builtin engine can "load".
const MODEL_PREFIX: &str = "builtin:";

const VOCABULARY: &[&str] = &[
    "the", "queue", "admits", "a", "task", "and", "streams", "tokens", "while", "replicas", "warm",
    "their", "caches", "under", "quiet", "load", "river", "stone", "light", "over", "north",
    "field", "ember", "glass", "orbit", "signal", "harbor", "lantern", "meadow", "copper",
    "silent", "thread", "window", "morning", "paper", "garden", "winter", "echo", "pixel",
    "kernel", "vector", "prism", "cedar", "violet", "amber", "falcon", "tidal", "granite",
    "willow", "comet", "delta", "saffron", "quartz", "nimbus", "atlas", "coral", "ridge", "spark",
    "linen", "marble", "harvest", "summit", ".", ",",
];

/// Fault switches shared by the engine and the test handle.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    faults: Mutex<BuiltinFaults>,
    crashed_at: Mutex<Option<Instant>>,
}

impl FaultSwitch {
    pub fn set(&self, faults: BuiltinFaults) {
        *self.faults.lock().unwrap() = faults;
    }

    pub fn get(&self) -> BuiltinFaults {
        self.faults.lock().unwrap().clone()
    }

    fn crash(&self) {
        *self.crashed_at.lock().unwrap() = Some(Instant::now());
    }

    fn down_since_crash(&self) -> bool {
        let crashed = self.crashed_at.lock().unwrap();
        crashed.is_some_and(|at| at.elapsed() < CRASH_RESTART)
    }
}

pub struct BuiltinEngine {
    properties: EngineProperties,
    config: BuiltinEngineConfig,
    started: Instant,
    faults: Arc<FaultSwitch>,
}

impl BuiltinEngine {
    pub fn new(config: BuiltinEngineConfig) -> Self {
        let digest = hex::encode(Sha256::digest(
            format!("{}\0{}", config.model_ref, config.engine_version).as_bytes(),
        ));
        let properties = EngineProperties {
            engine: "builtin".into(),
            engine_version: config.engine_version.clone(),
            model_ref: config.model_ref.clone(),
            model_digest: format!("sha256:{digest}"),
            ctx_limit: config.ctx_limit,
            slots: config.slots,
        };
        let faults = Arc::new(FaultSwitch::default());
        faults.set(config.faults.clone());
        Self {
            properties,
            config,
            started: Instant::now(),
            faults,
        }
    }
}

/// Whitespace-separated words: the builtin engine's tokenizer.
pub fn count_words(prompt: &str) -> u32 {
    prompt
        .split_whitespace()
        .count()
        .try_into()
        .unwrap_or(u32::MAX)
}

/// The deterministic token sequence: a SplitMix64 generator seeded from a
/// SHA-256 of every input that defines the output. Temperature 0 is greedy,
/// so the seed does not enter it.
pub fn token_text(
    request: &GenerateRequest,
    engine_version: &str,
) -> impl Iterator<Item = String> + use<> {
    let mut hasher = Sha256::new();
    hasher.update(engine_version.as_bytes());
    hasher.update([0]);
    hasher.update(request.prompt.as_bytes());
    hasher.update([0]);
    let seed = if request.temperature == 0.0 {
        0
    } else {
        request.seed
    };
    hasher.update(seed.to_be_bytes());
    hasher.update(request.temperature.to_bits().to_be_bytes());
    hasher.update(request.top_p.to_bits().to_be_bytes());
    hasher.update(request.top_k.to_be_bytes());
    let digest = hasher.finalize();
    let mut state = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    // top_k narrows the choice like a sampler would: fewer distinct words.
    let choices = match request.top_k {
        0 => VOCABULARY.len(),
        k => (k as usize).clamp(1, VOCABULARY.len()),
    };
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        format!(" {}", VOCABULARY[(z % choices as u64) as usize])
    })
}

/// Stop sequences over the text generated so far (ORCH-1025): the token in
/// which one completes is cut where it begins, and the generation ends. Text of a
/// stop sequence that began in an earlier token has been streamed already; it
/// stays.
struct StopMatcher {
    stops: Vec<String>,
    text: String,
}

enum Fed {
    Token,
    /// A stop sequence completed: what of the token comes before it.
    Stopped(String),
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
        }
    }

    fn feed(&mut self, token: &str) -> Fed {
        let before = self.text.len();
        self.text.push_str(token);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = before.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let first = (self.stops.iter())
            .filter_map(|stop| self.text[from..].find(stop.as_str()))
            .map(|at| from + at)
            .min();
        match first {
            None => Fed::Token,
            Some(at) => Fed::Stopped(self.text[before.min(at)..at].to_owned()),
        }
    }
}

#[async_trait]
impl Engine for BuiltinEngine {
    fn properties(&self) -> &EngineProperties {
        &self.properties
    }

    fn expected_speed(&self) -> Option<super::Speed> {
        Some(super::Speed {
            ttft_ms: self.config.ttft_ms as f64,
            tokens_per_s: self.config.tokens_per_s,
        })
    }

    async fn health(&self) -> Health {
        let faults = self.faults.get();
        if faults.fail_health {
            return Health::Down("injected fault: health checks fail".into());
        }
        if self.faults.down_since_crash() {
            return Health::Down("restarting after a crash".into());
        }
        if !self.properties.model_ref.starts_with(MODEL_PREFIX) {
            return Health::Refused(format!(
                "cannot load model {:?}: the builtin engine serves only {MODEL_PREFIX}* models",
                self.properties.model_ref
            ));
        }
        let preload = Duration::from_millis(self.config.start_unready_ms);
        if self.started.elapsed() < preload {
            let left = preload - self.started.elapsed();
            return Health::Starting(format!("loading model, {} ms left", left.as_millis()));
        }
        Health::Ready
    }

    async fn count_tokens(&self, prompt: &str) -> Result<u32, EngineError> {
        Ok(count_words(prompt))
    }

    async fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError> {
        let faults = self.faults.get();
        if faults.refuse {
            return Err(EngineError::Refused(
                "injected fault: generation refused".into(),
            ));
        }
        if faults.reject_as_invalid {
            return Err(EngineError::InvalidRequest(
                "injected fault: the prompt does not fit the model's context".into(),
            ));
        }
        if self.faults.down_since_crash() {
            return Err(EngineError::Lost("replica is restarting".into()));
        }
        let slow = faults.slow_factor.unwrap_or(1.0).max(1.0);
        let per_token = Duration::from_secs_f64(slow / self.config.tokens_per_s.max(0.001));
        let ttft = Duration::from_millis(self.config.ttft_ms).mul_f64(slow);
        let mut request = request;
        if let Some(messages) = request.messages.take() {
            request.prompt = super::simple_chat_template(&messages);
        }
        if let Some(journal) = &self.config.journal {
            journal_generation(journal, &request.prompt)?;
        }
        let mut texts = token_text(&request, &self.properties.engine_version);
        let mut stops = StopMatcher::new(std::mem::take(&mut request.stop));
        let max_tokens = request.max_tokens;
        let crash_after = faults.crash_after_tokens;
        let switch = Arc::clone(&self.faults);
        let stream = async_stream::stream! {
            tokio::time::sleep(ttft).await;
            if faults.hang {
                futures::future::pending::<()>().await;
            }
            let start = tokio::time::Instant::now();
            for i in 0..max_tokens {
                if crash_after == Some(i) {
                    switch.crash();
                    yield Err(EngineError::Lost(format!("builtin replica crashed after {i} tokens")));
                    return;
                }
                tokio::time::sleep_until(start + per_token * i).await;
                let text = texts.next().expect("endless");
                match stops.feed(&text) {
                    Fed::Token => yield Ok(EngineEvent::Token(text)),
                    Fed::Stopped(before) => {
                        if !before.is_empty() {
                            yield Ok(EngineEvent::Token(before));
                        }
                        yield Ok(EngineEvent::Finished(FinishReason::Stop));
                        return;
                    }
                }
            }
            yield Ok(EngineEvent::Finished(FinishReason::Length));
        };
        Ok(Box::pin(stream))
    }

    fn faults(&self) -> Option<&FaultSwitch> {
        Some(&self.faults)
    }
}

/// One line per generation, appended whole (`O_APPEND`), so the daemons of a test
/// cluster can share the file: the test counts a task's generations by its prompt.
fn journal_generation(path: &str, prompt: &str) -> Result<(), EngineError> {
    use std::io::Write;
    let line = serde_json::json!({ "pid": std::process::id(), "prompt": prompt }).to_string();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()))
        .map_err(|e| EngineError::Refused(format!("cannot append to the journal {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::{Fed, StopMatcher};

    fn run(stops: &[&str], tokens: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for token in tokens {
            match matcher.feed(token) {
                Fed::Token => out.push_str(token),
                Fed::Stopped(before) => {
                    out.push_str(&before);
                    return (out, true);
                }
            }
        }
        (out, false)
    }

    #[test]
    fn a_stop_sequence_cuts_its_token_and_ends_the_generation() {
        assert_eq!(run(&["."], &[" a", " b.", " c"]), (" a b".into(), true));
        assert_eq!(run(&[" b"], &[" a", " b", " c"]), (" a".into(), true));
        // Spanning two tokens: the first half was streamed already.
        assert_eq!(run(&["a b"], &[" a", " b", " c"]), (" a".into(), true));
        // The earliest of several wins.
        assert_eq!(run(&["c", "b"], &[" a", " bc"]), (" a ".into(), true));
        assert_eq!(run(&["x"], &[" a", " b"]), (" a b".into(), false));
        assert_eq!(run(&[], &[" a"]), (" a".into(), false));
    }
}
