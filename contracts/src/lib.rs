//! OrchQueue wire types: everything that crosses the HTTP boundary or is read
//! from the config file. No server logic lives here, so the daemon, the CLI and
//! the generators (`cargo xtask regen-openapi` / `regen-schema`) share one
//! definition of each shape.

pub mod config;
pub mod control;
pub mod error;
pub mod json_int;
pub mod limits;
pub mod open_enum;
pub mod openai;
pub mod sse;
pub mod task;
pub mod versions;

pub use control::{
    Capabilities, DrainRequest, PoolActionResponse, PoolHealth, PoolList, ReloadRequest,
    ReplicaSetList, ScopePurge, SessionInfo, UsageReport,
};
pub use error::{ErrorCode, ErrorEnvelope, RejectPolicy};
pub use open_enum::OpenEnum;
pub use sse::{EndEvent, FinishReason, MetricsEvent, StartedEvent, StreamEvent, TokenEvent};
pub use task::{
    AdmissionResponse, ChatMessage, ChatRole, Determinism, Priority, TaskList, TaskRequest,
    TaskState, TaskStatus,
};

/// Header names of the backpressure and queue hints (ORCH-1001, ORCH-2003).
pub mod headers {
    pub const RETRY_AFTER: &str = "retry-after";
    pub const BACKOFF_MS: &str = "x-backoff-ms";
    pub const QUEUE_POSITION: &str = "x-queue-position";
    pub const QUEUE_ETA_MS: &str = "x-queue-eta-ms";
    pub const CORRELATION_ID: &str = "x-correlation-id";
    pub const LAST_EVENT_ID: &str = "last-event-id";
}
