//! Helpers of `provider_verify.rs`.

pub mod openapi;
pub mod states;
