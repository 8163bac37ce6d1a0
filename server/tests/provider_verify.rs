//! Provider verification: `pact_verifier` replays `contracts/pacts/*.json`
//! against the real `orchestratord`, started in-process on an ephemeral port
//! with a temp store — a fresh server per interaction, so states that change
//! pool-wide state never leak. Provider states are set up in-process by
//! [`States`] (real client calls and the `TestHandle`, never fake handlers);
//! every interaction is also checked against the OpenAPI documents.

mod provider;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use conformance::Documents;
use conformance::deploy as can_i_deploy;
use contracts::config::Config;
use pact_models::provider_states::ProviderState;
use pact_verifier::callback_executors::{NullRequestFilterExecutor, ProviderStateExecutor};
use pact_verifier::verification_result::VerificationMismatchResult;
use pact_verifier::{
    FilterInfo, PactSource, ProviderInfo, VerificationOptions, verify_provider_async,
};
use provider::states::{self, Running};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pact_files() -> Vec<PathBuf> {
    let dir = root().join("contracts/pacts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run cargo xtask regen-pacts", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no pact in {}", dir.display());
    files
}

/// Sets up the states of one interaction on its own server.
struct States {
    server: Running,
    /// The parameters each state read while the config was shaped.
    read_by_configure: HashMap<String, std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "States({})", self.server.url)
    }
}

#[async_trait]
impl ProviderStateExecutor for States {
    async fn call(
        self: Arc<Self>,
        _interaction_id: Option<String>,
        provider_state: &ProviderState,
        setup: bool,
        _client: Option<&pact_reqwest::Client>,
    ) -> anyhow::Result<HashMap<String, Value>> {
        if !setup {
            return Ok(HashMap::new());
        }
        let params = states::Params::new(
            provider_state
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let name = &provider_state.name;
        let injected = states::set_up(&self.server, name, &params)
            .await
            .map_err(|e| anyhow!("provider state {name:?}: {e:#}"))?;
        let ignored = params.ignored(
            self.read_by_configure
                .get(name)
                .unwrap_or(&Default::default()),
        );
        if !ignored.is_empty() {
            let message = format!("provider state {name:?} ignores its parameter(s) {ignored:?}");
            // The verifier reports only that a state failed: say which and why.
            eprintln!("{message}");
            anyhow::bail!(message);
        }
        Ok(injected)
    }

    fn teardown(&self) -> bool {
        false
    }
}

fn interaction_states(interaction: &Value) -> Vec<(String, states::Params)> {
    interaction["providerStates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let params = s["params"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                states::Params::new(params),
            )
        })
        .collect()
}

fn describe(mismatch: &VerificationMismatchResult) -> Vec<String> {
    match mismatch {
        VerificationMismatchResult::Mismatches { mismatches, .. } => mismatches
            .iter()
            .map(|m| format!("    - {}", m.description()))
            .collect(),
        VerificationMismatchResult::Error { error, .. } => vec![format!("    - error: {error}")],
    }
}

// covers: ORCH-9006
#[test]
fn a_provider_state_that_ignores_a_parameter_is_named() {
    let params = states::Params::new(HashMap::from([
        ("pool".to_owned(), Value::from("default")),
        ("sampler_profile_version".to_owned(), Value::from("sp-2")),
        ("colour".to_owned(), Value::from("blue")),
    ]));
    let mut config = Config::default();
    states::configure(
        &mut config,
        "pool {pool} runs sampler profile {sampler_profile_version}",
        &params,
    )
    .unwrap();
    assert_eq!(config.pools[0].sampler_profile_version, "sp-2");
    assert_eq!(
        params.ignored(&Default::default()),
        vec!["colour".to_owned()]
    );
}

// covers: ORCH-9006
#[test]
fn a_pact_interaction_that_breaks_the_documents_is_named() {
    let documents = Documents::load(&root()).expect("the OpenAPI documents load");
    let orchctl = pact_files()
        .into_iter()
        .find(|p| p.ends_with("orchctl-orchestratord.json"))
        .expect("orchctl's pact");
    let pact: Value = serde_json::from_str(&std::fs::read_to_string(&orchctl).unwrap()).unwrap();
    let interactions = pact["interactions"].as_array().expect("interactions");
    let status_read = interactions
        .iter()
        .find(|i| {
            i["request"]["method"] == "GET"
                && i["response"]["status"] == 200
                && i["response"]["body"]["content"]["task_id"].is_string()
        })
        .expect("a pact reads a task's status");
    assert_eq!(
        provider::openapi::check(&documents, status_read),
        Vec::<String>::new()
    );

    let mut renamed = status_read.clone();
    let body = renamed["response"]["body"]["content"]
        .as_object_mut()
        .unwrap();
    let id = body.remove("task_id").unwrap();
    body.insert("id".into(), id);
    let problems = provider::openapi::check(&documents, &renamed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"task_id\" is a required property")),
        "{problems:?}"
    );

    let mut undeclared = status_read.clone();
    undeclared["response"]["status"] = 418.into();
    let problems = provider::openapi::check(&documents, &undeclared);
    assert!(
        problems.iter().any(|p| p.contains("status 418")),
        "{problems:?}"
    );
}

// covers: ORCH-9006
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacts_conform_to_the_openapi_documents() {
    let documents = Documents::load(&root()).expect("the OpenAPI documents load");
    let mut failures = Vec::new();
    for file in pact_files() {
        let pact: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for interaction in pact["interactions"].as_array().expect("interactions") {
            let problems = provider::openapi::check(&documents, interaction);
            if !problems.is_empty() {
                failures.push(format!(
                    "{} — {:?}:\n    - {}",
                    file.display(),
                    interaction["description"],
                    problems.join("\n    - ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "pacts that break the contract:\n{}",
        failures.join("\n")
    );
}

/// The outcome of replaying one pact file.
struct Verification {
    verified: usize,
    failures: Vec<String>,
    waived: Vec<String>,
}

/// Replay every interaction of `file` on a fresh server of its own, skipping the
/// interactions `waived` names.
async fn verify(file: &Path, waived: &[String]) -> Verification {
    // SAFETY: set before the verifier starts any thread that reads it.
    unsafe { std::env::set_var("PACT_DO_NOT_TRACK", "true") };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = VerificationOptions::<NullRequestFilterExecutor> {
        request_timeout: 20_000,
        coloured_output: false,
        ..VerificationOptions::default()
    };
    let mut outcome = Verification {
        verified: 0,
        failures: Vec::new(),
        waived: Vec::new(),
    };
    let pact: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    for interaction in pact["interactions"].as_array().expect("interactions") {
        let description = interaction["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if waived.contains(&description) {
            outcome.waived.push(description);
            continue;
        }
        let mut config = Config::default();
        let mut bad_state = None;
        let mut read_by_configure = HashMap::new();
        for (name, params) in interaction_states(interaction) {
            if let Err(e) = states::configure(&mut config, &name, &params) {
                bad_state = Some(format!("{e:#}"));
            }
            read_by_configure.insert(name, params.read());
        }
        if let Some(error) = bad_state {
            outcome
                .failures
                .push(format!("{description}:\n    - {error}"));
            continue;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let server = orchestratord::start(config, "127.0.0.1:0", &dir.path().join("store.db"))
            .await
            .expect("the server starts");
        let url = server.url();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .expect("a port in the server URL");
        let executor = Arc::new(States {
            server: Running {
                url: url.clone(),
                handle: server.test_handle(),
            },
            read_by_configure,
        });
        #[allow(deprecated)]
        let provider = ProviderInfo {
            name: "orchestratord".into(),
            host: "127.0.0.1".into(),
            port: Some(port),
            ..ProviderInfo::default()
        };
        let filter = FilterInfo::Description(format!("^{}$", regex::escape(&description)));
        let result = verify_provider_async(
            provider,
            vec![PactSource::File(file.display().to_string())],
            filter,
            vec![],
            &options,
            None,
            &executor,
            None,
        )
        .await;
        match result {
            Ok(result) if result.result && result.interaction_results.len() == 1 => {
                outcome.verified += 1
            }
            Ok(result) => {
                let mut lines = vec![format!("{description}:")];
                for (_, mismatch) in &result.errors {
                    lines.extend(describe(mismatch));
                }
                if result.interaction_results.len() != 1 {
                    lines.push(format!(
                        "    - {} interactions ran instead of one",
                        result.interaction_results.len()
                    ));
                }
                outcome.failures.push(lines.join("\n"));
            }
            Err(e) => outcome
                .failures
                .push(format!("{description}:\n    - verifier error: {e:#}")),
        }
        server.shutdown().await;
    }
    outcome
}

/// Record the outcome where `cargo xtask can-i-deploy` reads it, keyed by the
/// pact's content hash and the documents' hash (ORCH-9022).
fn record(file: &Path, outcome: &Verification) {
    let record = can_i_deploy::Record {
        pact: file
            .strip_prefix(root())
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/"),
        pact_sha256: can_i_deploy::sha256_file(file),
        documents_sha256: can_i_deploy::documents_sha256(&root()),
        verified: outcome.verified,
        failures: outcome.failures.len(),
        waived: outcome.waived.clone(),
    };
    can_i_deploy::write_record(&root(), &record).expect("the verification record is written");
}

fn assert_verified(what: &str, outcome: &Verification) {
    eprintln!(
        "provider verification of {what}: {} interactions verified, {} waived",
        outcome.verified,
        outcome.waived.len()
    );
    assert!(
        outcome.failures.is_empty(),
        "{what}: {} interactions failed provider verification:\n{}",
        outcome.failures.len(),
        outcome.failures.join("\n")
    );
}

// covers: ORCH-9006, ORCH-9005, ORCH-8010
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pacts_verify_against_the_real_server() {
    for file in pact_files() {
        let outcome = verify(&file, &[]).await;
        record(&file, &outcome);
        assert_verified(&file.display().to_string(), &outcome);
    }
}

// covers: ORCH-9022
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_released_pacts_verify_against_the_real_server() {
    let dir = root().join(can_i_deploy::RELEASED_DIR);
    let waivers = can_i_deploy::load_waivers(&root()).expect("released/waivers.yaml loads");
    let files = can_i_deploy::released_pacts(&root()).expect("the released pacts");
    assert!(!files.is_empty(), "no released pact in {}", dir.display());
    let mut unused: Vec<&can_i_deploy::Waiver> = waivers.iter().collect();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let waived: Vec<String> = waivers
            .iter()
            .filter(|w| w.pact == name)
            .map(|w| w.interaction.clone())
            .collect();
        let outcome = verify(&file, &waived).await;
        for description in &outcome.waived {
            let waiver = waivers
                .iter()
                .find(|w| w.pact == name && &w.interaction == description)
                .expect("a waiver for each waived interaction");
            eprintln!("waived: {name} — {description}: {}", waiver.reason);
        }
        unused.retain(|w| !(w.pact == name && outcome.waived.contains(&w.interaction)));
        record(&file, &outcome);
        assert_verified(&name, &outcome);
    }
    assert!(
        unused.is_empty(),
        "waivers that match no interaction of a released pact (remove them): {unused:?}"
    );
}
