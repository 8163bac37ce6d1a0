//! The semver of each contract document (ORCH-9014). `cargo xtask bless` refuses to
//! record a changed document unless its version here is bumped as the change requires:
//! major for a breaking change, minor for a compatible addition, patch otherwise.

/// `contracts/openapi/data.yaml` (`info.version`).
pub const DATA_API: &str = "1.6.0";
/// `contracts/openapi/control.yaml` (`info.version`).
pub const CONTROL_API: &str = "1.2.0";
/// `contracts/openapi/openai.yaml` (`info.version`).
pub const OPENAI_API: &str = "1.0.0";
/// `contracts/schemas/config.schema.json` (`x-version`).
pub const CONFIG_SCHEMA: &str = "1.7.0";
/// `contracts/schemas/error.schema.json` (`x-version`).
pub const ERROR_SCHEMA: &str = "1.0.1";
/// `contracts/schemas/sse-event.schema.json` (`x-version`).
pub const SSE_EVENT_SCHEMA: &str = "1.0.1";
