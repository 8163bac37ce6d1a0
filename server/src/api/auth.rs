//! Who is calling (ORCH-6001..ORCH-6003): `Authorization: Bearer <key>` →
//! tenant. With no keys configured every caller is the admin tenant
//! `default`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use contracts::ErrorCode;
use contracts::config::Role;

use super::AppState;
use crate::error::OrchError;
use crate::runtime::{Auth, Tenant};

/// Any authenticated tenant: the data plane.
pub struct Caller(pub Arc<Tenant>);

/// Proof that the caller has the admin role: the control plane.
pub struct Admin;

impl FromRequestParts<AppState> for Caller {
    type Rejection = OrchError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OrchError> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match state.tenants.authenticate(bearer) {
            Auth::Tenant(tenant) => Ok(Caller(tenant)),
            Auth::Missing => Err(OrchError::new(
                ErrorCode::Unauthorized,
                "this server requires an API key: send `Authorization: Bearer <key>`",
            )),
            Auth::Invalid => Err(OrchError::new(
                ErrorCode::Unauthorized,
                "the API key is not valid for this server",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = OrchError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, OrchError> {
        let Caller(tenant) = Caller::from_request_parts(parts, state).await?;
        if tenant.role != Role::Admin {
            return Err(OrchError::new(
                ErrorCode::Forbidden,
                format!(
                    "tenant {} may not use the control plane: it needs the admin role",
                    tenant.id
                ),
            ));
        }
        Ok(Admin)
    }
}
