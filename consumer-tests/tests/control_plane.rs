//! Pact consumer tests of the control plane (`contracts/openapi/control.yaml`),
//! each driven through the real `orchctl::Client`, plus the per-plane `401`
//! and `403`.

mod common;

use common::*;
use contracts::control::{
    PoolCapability, PoolSummary, PoolUsage, ReplicaSet, ReplicaSetLoad, ReplicaState,
    ReplicaStatus, SloSnapshot, TenantUsage,
};
use contracts::{
    Capabilities, ErrorCode, PoolActionResponse, PoolHealth, PoolList, ReloadRequest,
    ReplicaSetList, UsageReport,
};
use orchctl::Client;
use pact_consumer::builders::InteractionBuilder;
use pact_consumer::patterns::JsonPattern;
use pact_consumer::prelude::*;
use serde_json::json;

fn default_pool(i: &mut InteractionBuilder) {
    i.given_with_params(
        "pool {pool} has {replicas} Ready builtin replicas",
        &json!({"pool": "default", "replicas": 2}),
    );
}

fn ok_json(i: &mut InteractionBuilder, status: u16, body: JsonPattern) {
    i.response
        .status(status)
        .header("content-type", "application/json")
        .json_body(body);
}

// covers: ORCH-6020
#[test]
fn list_pools() {
    let example = PoolList {
        pools: vec![PoolSummary {
            pool_id: "default".into(),
            engine: "builtin".into(),
            model_ref: "builtin:tiny-words".into(),
            replicas: 2,
            ready_replicas: 2,
            queue_depth: 0,
            queue_capacity: 256,
            draining: false,
        }],
    };
    let pact = interaction("control: list pools [ORCH-6020]", |mut i| {
        default_pool(&mut i);
        i.request.get().path("/v1/pools");
        ok_json(
            &mut i,
            200,
            shape(&json(&example), &["pools[].draining"], &[]),
        );
        i
    });
    run(&pact, async |url| {
        let pools = admin(&url).pools().await.unwrap();
        assert_eq!(pools.pools[0].pool_id, "default");
    });
}

fn health_example() -> PoolHealth {
    PoolHealth {
        pool_id: "default".into(),
        live: true,
        ready: true,
        draining: false,
        queue_depth: 0,
        replicas: vec![ReplicaStatus {
            replica_id: "r0".into(),
            state: ReplicaState::Ready.into(),
            engine: "builtin".into(),
            engine_version: "builtin-1.0.0".into(),
            model_ref: "builtin:tiny-words".into(),
            active: 0,
            slots: 4,
            last_error: None,
        }],
    }
}

// covers: ORCH-6021
#[test]
fn pool_health() {
    let pact = interaction("control: pool health [ORCH-6021]", |mut i| {
        default_pool(&mut i);
        i.request.get().path("/v1/pools/default/health");
        ok_json(
            &mut i,
            200,
            shape(
                &json(&health_example()),
                &["pool_id", "live", "ready", "draining", "replicas[].state"],
                &[],
            ),
        );
        i
    });
    run(&pact, async |url| {
        let health = admin(&url).pool_health("default").await.unwrap();
        assert!(health.ready);
    });
}

fn not_found_pool(description: &str, method: &str, path: &str, body: Option<serde_json::Value>) {
    let pact = interaction(description, |mut i| {
        i.given_with_params("pool {pool} does not exist", &json!({"pool": "nowhere"}));
        i.request.method(method).path(path);
        if let Some(body) = &body {
            i.request
                .header("content-type", "application/json")
                .json_body(body.clone());
        }
        error_response(
            &mut i,
            404,
            &envelope(ErrorCode::NotFound, None, "pool nowhere"),
            "^[\\s\\S]*nowhere[\\s\\S]*$",
        );
        i
    });
    let path = path.to_owned();
    run(&pact, async |url| {
        let client = admin(&url);
        let result = if path.ends_with("/health") {
            client.pool_health("nowhere").await.map(|_| ())
        } else if path.ends_with("/drain") {
            client.drain_pool("nowhere", 1_000).await.map(|_| ())
        } else {
            client
                .reload_pool("nowhere", &reload("builtin:tiny-words"))
                .await
                .map(|_| ())
        };
        assert_api_error(result, 404, ErrorCode::NotFound);
    });
}

fn reload(model_ref: &str) -> ReloadRequest {
    ReloadRequest {
        model_ref: model_ref.into(),
        ready_timeout_ms: Some(2_000),
    }
}

// covers: ORCH-6021, ORCH-2021
#[test]
fn pool_health_unknown() {
    not_found_pool(
        "control: pool health of an unknown pool is 404 NOT_FOUND [ORCH-6021, ORCH-2021]",
        "GET",
        "/v1/pools/nowhere/health",
        None,
    );
}

// covers: ORCH-6022, ORCH-2021
#[test]
fn drain_unknown() {
    not_found_pool(
        "control: drain of an unknown pool is 404 NOT_FOUND [ORCH-6022, ORCH-2021]",
        "POST",
        "/v1/pools/nowhere/drain",
        Some(json(&contracts::DrainRequest { deadline_ms: 1_000 })),
    );
}

// covers: ORCH-6023, ORCH-2021
#[test]
fn reload_unknown() {
    not_found_pool(
        "control: reload of an unknown pool is 404 NOT_FOUND [ORCH-6023, ORCH-2021]",
        "POST",
        "/v1/pools/nowhere/reload",
        Some(json(&reload("builtin:tiny-words"))),
    );
}

// covers: ORCH-2024
#[test]
fn reload_body_over_the_servers_limit() {
    let request = reload(&format!("builtin:{}", "m".repeat(1_100)));
    let pact = interaction(
        "control: a reload whose body is over the server's max_body_bytes is 413 INVALID_PARAMS naming body [ORCH-2024]",
        |mut i| {
            body_over_the_limit(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/reload")
                .header("content-type", "application/json")
                .json_body(json(&request));
            body_over_the_limit_response(&mut i);
            i
        },
    );
    run(&pact, async |url| {
        let result = admin(&url).reload_pool("default", &request).await;
        let error = assert_api_error(result, 413, ErrorCode::InvalidParams);
        assert!(
            error.envelope().unwrap().message.starts_with("body:"),
            "{error}"
        );
    });
}

// covers: ORCH-6022, ORCH-2012
#[test]
fn drain_with_a_deadline_over_a_day() {
    let pact = interaction(
        "control: drain with deadline_ms over 24 h is 400 INVALID_PARAMS [ORCH-6022, ORCH-2012]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/drain")
                .header("content-type", "application/json")
                .json_body(json(&contracts::DrainRequest {
                    deadline_ms: u64::MAX,
                }));
            error_response(
                &mut i,
                400,
                &envelope(
                    ErrorCode::InvalidParams,
                    None,
                    "deadline_ms: must be at most 86400000 (24 h)",
                ),
                "^deadline_ms: [\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        let result = admin(&url).drain_pool("default", u64::MAX).await;
        assert_api_error(result, 400, ErrorCode::InvalidParams);
    });
}

// covers: ORCH-6022
#[test]
fn drain_pool() {
    let example = PoolActionResponse {
        pool_id: "default".into(),
        draining: true,
        model_ref: "builtin:tiny-words".into(),
        replicas: vec!["r0".into()],
    };
    let pact = interaction(
        "control: drain a pool is 202 draining [ORCH-6022]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/drain")
                .header("content-type", "application/json")
                .json_body(json(&contracts::DrainRequest {
                    deadline_ms: 30_000,
                }));
            ok_json(
                &mut i,
                202,
                shape(&json(&example), &["pool_id", "draining"], &[]),
            );
            i
        },
    );
    run(&pact, async |url| {
        let drained = admin(&url).drain_pool("default", 30_000).await.unwrap();
        assert!(drained.draining);
    });
}

// covers: ORCH-6023
#[test]
fn reload_pool() {
    let example = PoolActionResponse {
        pool_id: "default".into(),
        draining: false,
        model_ref: "builtin:other-model".into(),
        replicas: vec!["r0".into()],
    };
    let pact = interaction(
        "control: reload a pool onto another model is 200 [ORCH-6023]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/reload")
                .header("content-type", "application/json")
                .json_body(json(&reload("builtin:other-model")));
            ok_json(
                &mut i,
                200,
                shape(&json(&example), &["pool_id", "draining", "model_ref"], &[]),
            );
            i
        },
    );
    run(&pact, async |url| {
        let reloaded = admin(&url)
            .reload_pool("default", &reload("builtin:other-model"))
            .await
            .unwrap();
        assert_eq!(reloaded.model_ref, "builtin:other-model");
    });
}

// covers: ORCH-6023, ORCH-2013, ORCH-2003
#[test]
fn reload_failed() {
    let pact = interaction(
        "control: a reload whose replicas are still loading at its ready timeout is 503 POOL_UNREADY, old replicas serve [ORCH-6023, ORCH-2013, ORCH-2003]",
        |mut i| {
            i.given_with_params(
                "replicas of pool {pool} take {load_ms} ms to load a model",
                &json!({"pool": "default", "load_ms": 60_000}),
            );
            i.request
                .post()
                .path("/v1/pools/default/reload")
                .header("content-type", "application/json")
                .json_body(json(&reload("builtin:other-model")));
            error_response(
                &mut i,
                503,
                &envelope(
                    ErrorCode::PoolUnready,
                    None,
                    "reload of pool default to \"builtin:other-model\" failed, the old replicas keep serving: r0: loading model, 58000 ms left",
                ),
                "^[\\s\\S]*loading model[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        let error = assert_api_error(
            admin(&url)
                .reload_pool("default", &reload("builtin:other-model"))
                .await,
            503,
            ErrorCode::PoolUnready,
        );
        assert!(error.backoff().is_some());
    });
}

// covers: ORCH-6023, ORCH-2012
#[test]
fn reload_refused() {
    let pact = interaction(
        "control: a reload to a model no replica can serve is 400 INVALID_PARAMS naming model_ref, at once [ORCH-6023, ORCH-2012]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/reload")
                .header("content-type", "application/json")
                .json_body(json(&reload("gguf:missing.gguf")));
            error_response(
                &mut i,
                400,
                &envelope(
                    ErrorCode::InvalidParams,
                    None,
                    "model_ref: pool default cannot serve \"gguf:missing.gguf\", the old replicas keep serving: r0: cannot load model",
                ),
                "^model_ref: [\\s\\S]*cannot load model[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        let error = assert_api_error(
            admin(&url)
                .reload_pool("default", &reload("gguf:missing.gguf"))
                .await,
            400,
            ErrorCode::InvalidParams,
        );
        assert!(error.backoff().is_none());
    });
}

// covers: ORCH-6023, ORCH-2012
#[test]
fn reload_invalid() {
    let pact = interaction(
        "control: reload with an empty model_ref is 400 INVALID_PARAMS [ORCH-6023, ORCH-2012]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .post()
                .path("/v1/pools/default/reload")
                .header("content-type", "application/json")
                .json_body(json(&reload("")));
            error_response(
                &mut i,
                400,
                &envelope(
                    ErrorCode::InvalidParams,
                    None,
                    "model_ref: must not be empty",
                ),
                "^[\\s\\S]*model_ref[\\s\\S]*$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            admin(&url).reload_pool("default", &reload("")).await,
            400,
            ErrorCode::InvalidParams,
        );
    });
}

// covers: ORCH-6024
#[test]
fn replica_sets() {
    let example = ReplicaSetList {
        replica_sets: vec![ReplicaSet {
            pool_id: "default".into(),
            engine: "builtin".into(),
            engine_version: "builtin-1.0.0".into(),
            model_ref: "builtin:tiny-words".into(),
            model_digest: "sha256:0000".into(),
            sampler_profile_version: "sp-1".into(),
            replicas: vec!["r0".into()],
            load: ReplicaSetLoad {
                active: 0,
                slots: 8,
                queue_depth: 0,
            },
            slo: SloSnapshot {
                completed: 0,
                ttft_p50_ms: 0,
                ttft_p99_ms: 0,
                tokens_per_s: 0.0,
            },
        }],
    };
    let pact = interaction(
        "control: replica sets with load and SLO snapshot [ORCH-6024]",
        |mut i| {
            default_pool(&mut i);
            i.request.get().path("/v1/replicasets");
            ok_json(&mut i, 200, shape(&json(&example), &[], &[]));
            i
        },
    );
    run(&pact, async |url| {
        let sets = admin(&url).replica_sets().await.unwrap();
        assert_eq!(sets.replica_sets[0].pool_id, "default");
    });
}

// covers: ORCH-6025
#[test]
fn capabilities() {
    let example = Capabilities {
        api_version: "v1".into(),
        engines: vec!["builtin".into()],
        pools: vec![PoolCapability {
            pool_id: "default".into(),
            engine: "builtin".into(),
            ctx_limit: 4_096,
            max_tokens_limit: 4_096,
            slots: 8,
        }],
        features: vec!["sessions".into()],
    };
    let pact = interaction("control: capabilities [ORCH-6025]", |mut i| {
        default_pool(&mut i);
        i.request.get().path("/v1/capabilities");
        ok_json(&mut i, 200, shape(&json(&example), &[], &[]));
        i
    });
    run(&pact, async |url| {
        let caps = admin(&url).capabilities().await.unwrap();
        assert!(!caps.pools.is_empty());
    });
}

fn usage_example(tenant: &str) -> UsageReport {
    UsageReport {
        tenants: vec![TenantUsage {
            tenant: tenant.into(),
            weight: 1,
            running: 0,
            max_concurrent: None,
            tokens_available: None,
            token_burst: None,
            pools: vec![PoolUsage {
                pool_id: "default".into(),
                queued: 0,
                running: 0,
                served_tokens: 0,
                served_share: 0.5,
                entitled_share: Some(1.0),
            }],
        }],
    }
}

fn client_tenant(i: &mut InteractionBuilder) {
    i.given_with_params(
        "tenant {tenant} holds key {api_key} with role {role}",
        &json!({"tenant": "pact", "api_key": CLIENT_KEY, "role": "client"}),
    );
}

// covers: ORCH-6027
#[test]
fn usage_of_every_tenant() {
    let pact = interaction(
        "control: usage and share of every tenant [ORCH-6027]",
        |mut i| {
            default_pool(&mut i);
            i.request.get().path("/v1/usage");
            ok_json(
                &mut i,
                200,
                shape(
                    &json(&usage_example("default")),
                    &["tenants[].pools[].pool_id"],
                    &[],
                ),
            );
            i
        },
    );
    run(&pact, async |url| {
        let usage = admin(&url).usage(None).await.unwrap();
        assert_eq!(usage.tenants[0].pools[0].pool_id, "default");
    });
}

// covers: ORCH-6027, ORCH-6026
#[test]
fn a_clients_usage_is_its_own() {
    let pact = interaction(
        "control: a client-role key reads its own tenant's usage [ORCH-6027, ORCH-6026]",
        |mut i| {
            client_tenant(&mut i);
            i.request
                .get()
                .path("/v1/usage")
                .header("authorization", format!("Bearer {CLIENT_KEY}"));
            ok_json(
                &mut i,
                200,
                shape(&json(&usage_example("pact")), &["tenants[].tenant"], &[]),
            );
            i
        },
    );
    run(&pact, async |url| {
        let usage = Client::new(url)
            .with_api_key(CLIENT_KEY)
            .usage(None)
            .await
            .unwrap();
        assert_eq!(usage.tenants[0].tenant, "pact");
    });
}

// covers: ORCH-6027, ORCH-2020
#[test]
fn a_client_naming_another_tenants_usage_is_forbidden() {
    let pact = interaction(
        "control: a client-role key naming another tenant's usage is 403 FORBIDDEN [ORCH-6027, ORCH-2020]",
        |mut i| {
            client_tenant(&mut i);
            i.request
                .get()
                .path("/v1/usage")
                .query_param("tenant", "someone-else")
                .header("authorization", format!("Bearer {CLIENT_KEY}"));
            error_response(
                &mut i,
                403,
                &envelope(ErrorCode::Forbidden, None, "own usage"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            Client::new(url)
                .with_api_key(CLIENT_KEY)
                .usage(Some("someone-else"))
                .await,
            403,
            ErrorCode::Forbidden,
        );
    });
}

// covers: ORCH-6027, ORCH-2021
#[test]
fn usage_of_an_unknown_tenant_is_not_found() {
    let pact = interaction(
        "control: usage of a tenant that does not exist is 404 NOT_FOUND [ORCH-6027, ORCH-2021]",
        |mut i| {
            default_pool(&mut i);
            i.request
                .get()
                .path("/v1/usage")
                .query_param("tenant", "nobody");
            error_response(
                &mut i,
                404,
                &envelope(ErrorCode::NotFound, None, "tenant \"nobody\" not found"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            admin(&url).usage(Some("nobody")).await,
            404,
            ErrorCode::NotFound,
        );
    });
}

// covers: ORCH-2012
#[test]
fn usage_of_an_empty_tenant_is_invalid() {
    let pact = interaction(
        "control: usage with an empty tenant is 400 INVALID_PARAMS naming it [ORCH-2012]",
        |mut i| {
            default_pool(&mut i);
            i.request.get().path("/v1/usage").query_param("tenant", "");
            error_response(
                &mut i,
                400,
                &envelope(ErrorCode::InvalidParams, None, "tenant: must name a tenant"),
                "^tenant: [\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            admin(&url).usage(Some("")).await,
            400,
            ErrorCode::InvalidParams,
        );
    });
}

// covers: ORCH-6002, ORCH-2019
#[test]
fn control_plane_unauthorized() {
    let pact = interaction(
        "control: list pools without an API key is 401 UNAUTHORIZED [ORCH-6002, ORCH-2019]",
        |mut i| {
            i.given_with_params(
                "tenant {tenant} holds key {api_key} with role {role}",
                &json!({"tenant": "pact", "api_key": CLIENT_KEY, "role": "client"}),
            );
            i.request.get().path("/v1/pools");
            error_response(
                &mut i,
                401,
                &envelope(ErrorCode::Unauthorized, None, "key"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(Client::new(url).pools().await, 401, ErrorCode::Unauthorized);
    });
}

// covers: ORCH-6003, ORCH-2020, ORCH-6026
#[test]
fn control_plane_forbidden() {
    let pact = interaction(
        "control: list pools with a client-role key is 403 FORBIDDEN [ORCH-6003, ORCH-2020, ORCH-6026]",
        |mut i| {
            i.given_with_params(
                "tenant {tenant} holds key {api_key} with role {role}",
                &json!({"tenant": "pact", "api_key": CLIENT_KEY, "role": "client"}),
            );
            i.request
                .get()
                .path("/v1/pools")
                .header("authorization", format!("Bearer {CLIENT_KEY}"));
            error_response(
                &mut i,
                403,
                &envelope(ErrorCode::Forbidden, None, "admin"),
                "^[\\s\\S]+$",
            );
            i
        },
    );
    run(&pact, async |url| {
        assert_api_error(
            Client::new(url).with_api_key(CLIENT_KEY).pools().await,
            403,
            ErrorCode::Forbidden,
        );
    });
}
