//! Parsers never panic (ORCH-2025): arbitrary bytes and arbitrary
//! JSON values sent to every input of the real server over HTTP — request
//! bodies, path segments, query strings, `Last-Event-ID`, cursors — and to the
//! config loader. Every answer is a typed error or a success, never a 5xx, and
//! the conformance proxy in front of the server checks each one against the
//! documents. Bounded: 128 cases per input (the config loader 256), fixed
//! seeds from proptest's default persistence.

mod common;

use common::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;

const CASES: u32 = 128;

/// A server of its own on a runtime that keeps serving between cases.
struct World {
    runtime: tokio::runtime::Runtime,
    server: Option<TestServer>,
    http: reqwest::Client,
    url: String,
    /// A completed task, so its stream parses `Last-Event-ID`.
    task_id: String,
}

impl World {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (server, task_id) = runtime.block_on(async {
            let server = TestServer::default().await;
            let client = orchctl::Client::new(server.url());
            let id = client
                .submit(common::task("one two", 2))
                .await
                .unwrap()
                .task_id;
            client.collect(&id).await.unwrap();
            (server, id)
        });
        let url = server.url();
        Self {
            runtime,
            server: Some(server),
            http: reqwest::Client::new(),
            url,
            task_id,
        }
    }

    /// Send and judge one request: no 5xx, and an error is the JSON envelope.
    fn judge(&self, request: reqwest::RequestBuilder, what: &str) -> Result<(), TestCaseError> {
        let (status, body) = self.runtime.block_on(async {
            let answer = request.send().await.expect("the server answers");
            let status = answer.status().as_u16();
            (status, answer.bytes().await.unwrap_or_default())
        });
        prop_assert!(
            status < 500,
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            let envelope: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!("{what}: HTTP {status} without the envelope: {e}"))
            })?;
            prop_assert!(
                envelope["code"].is_string() && envelope["message"].is_string(),
                "{what}: {envelope}"
            );
        }
        Ok(())
    }

    fn run<T: std::fmt::Debug>(
        &self,
        strategy: impl Strategy<Value = T>,
        cases: u32,
        case: impl Fn(&Self, T) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(RunnerConfig {
            cases,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        runner
            .run(&strategy, |value| case(self, value))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The proxy judges the whole run when the server is dropped.
        let server = self.server.take();
        self.runtime.block_on(async move { drop(server) });
    }
}

/// Arbitrary JSON, biased toward the field names the server reads.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("prompt".to_owned()),
        Just("max_tokens".to_owned()),
        Just("task_id".to_owned()),
        Just("scope".to_owned()),
        Just("priority".to_owned()),
        Just("temperature".to_owned()),
        Just("seed".to_owned()),
        Just("deadline_ms".to_owned()),
        Just("model_ref".to_owned()),
        Just("session_id".to_owned()),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const BODY_OPERATIONS: [&str; 3] = [
    "/v1/tasks",
    "/v1/pools/default/drain",
    "/v1/pools/default/reload",
];

// covers: ORCH-2025
#[test]
fn arbitrary_request_bodies_get_typed_errors() {
    let world = World::new();
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    world.run((0..3usize, bytes), CASES, |w, (op, body)| {
        let path = BODY_OPERATIONS[op];
        let request = w
            .http
            .post(format!("{}{path}", w.url))
            .header("content-type", "application/json")
            .body(body);
        w.judge(request, path)
    });
    world.run((0..3usize, json_value()), CASES, |w, (op, value)| {
        let path = BODY_OPERATIONS[op];
        let request = w.http.post(format!("{}{path}", w.url)).json(&value);
        w.judge(request, &format!("{path} {value}"))
    });
}

/// Percent-encode every byte outside the unreserved set, so the segment
/// reaches the router as one segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// covers: ORCH-2025
#[test]
fn arbitrary_path_segments_get_typed_errors() {
    let world = World::new();
    let operations = [
        (reqwest::Method::GET, "/v1/tasks/{}"),
        (reqwest::Method::GET, "/v1/tasks/{}/stream"),
        (reqwest::Method::POST, "/v1/tasks/{}/cancel"),
        (reqwest::Method::GET, "/v1/sessions/{}"),
        (reqwest::Method::DELETE, "/v1/scopes/{}"),
        (reqwest::Method::GET, "/v1/pools/{}/health"),
    ];
    world.run(
        (0..operations.len(), "\\PC{0,40}"),
        CASES,
        |w, (o, segment)| {
            let (method, template) = &operations[o];
            let path = template.replace("{}", &encode(&segment));
            let request = w.http.request(method.clone(), format!("{}{path}", w.url));
            w.judge(request, &path)
        },
    );
}

// covers: ORCH-2025
#[test]
fn arbitrary_query_strings_and_cursors_get_typed_errors() {
    let world = World::new();
    let key = prop_oneof![
        Just("scope".to_owned()),
        Just("state".to_owned()),
        Just("limit".to_owned()),
        Just("cursor".to_owned()),
        Just("pool_id".to_owned()),
        "\\PC{0,6}",
    ];
    let pairs = proptest::collection::vec((key, "\\PC{0,24}"), 0..4);
    world.run(pairs, CASES, |w, pairs| {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let path = format!("/v1/tasks?{}", query.join("&"));
        w.judge(w.http.get(format!("{}{path}", w.url)), &path)
    });
    // Cursors: arbitrary text, and real-looking ones with a forged tag.
    let cursor = prop_oneof!["\\PC{0,40}", "c1\\.[a-z0-9-]{1,12}\\.[0-9a-f]{0,64}"];
    world.run(cursor, CASES, |w, cursor| {
        let path = format!("/v1/tasks?cursor={}", encode(&cursor));
        w.judge(w.http.get(format!("{}{path}", w.url)), &path)
    });
}

// covers: ORCH-2025
#[test]
fn arbitrary_last_event_ids_get_typed_errors() {
    let world = World::new();
    world.run("[ -~]{0,24}", CASES, |w, header| {
        let request = w
            .http
            .get(format!("{}/v1/tasks/{}/stream", w.url, w.task_id))
            .header("last-event-id", header.as_str());
        w.judge(request, &format!("Last-Event-ID {header:?}"))
    });
}

// covers: ORCH-2025
#[test]
fn the_config_loader_answers_every_document_with_a_config_or_its_issues() {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 2 * CASES,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let text = proptest::collection::vec(any::<u8>(), 0..400)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    runner
        .run(&text, |text| {
            if let Err(issues) = orchestratord::config::check_text(&text) {
                prop_assert!(!issues.is_empty());
            }
            Ok(())
        })
        .unwrap();
    // Structured documents: arbitrary values under the real top-level keys.
    let keys = prop_oneof![
        Just("pools"),
        Just("tenants"),
        Just("sessions"),
        Just("max_body_bytes"),
        Just("listen")
    ];
    let document = proptest::collection::btree_map(keys, json_value(), 0..4);
    runner
        .run(&document, |document| {
            let yaml = serde_yaml::to_string(&document).expect("YAML of a JSON value");
            if let Err(issues) = orchestratord::config::check_text(&yaml) {
                prop_assert!(!issues.is_empty());
            }
            Ok(())
        })
        .unwrap();
}
