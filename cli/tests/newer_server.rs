//! `orchctl` against a newer server (ORCH-9015): a state, a priority, an error
//! code, a finish reason and an SSE event kind this build does not know are
//! shown as they came, never a failure to parse. The real server cannot send
//! them (its enums are this build's), so a stand-in for a future one does,
//! answering exactly as the documents describe apart from the new values.

mod common;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use common::Orchctl;

const PAUSED: &str = r#"{"task_id":"t1","pool_id":"default","priority":"urgent","state":"paused","tokens_out":0,"submitted_at_ms":1}"#;
const GONE: &str = r#"{"code":"GONE_FOREVER","message":"t2: retention ended","retriable":false,"correlation_id":"c1"}"#;
const STREAM: &str = "event: started\n\
    data: {\"queue_position\":0,\"predicted_start_ms\":0,\"queue_time_ms\":0,\"replica_id\":\"r0\",\"engine\":\"builtin\",\"engine_version\":\"1\",\"seed\":1,\"sampler_profile_version\":\"v1\",\"kv_warmth\":false}\n\n\
    event: progress\ndata: {\"percent\":50}\n\n\
    id: 0\nevent: token\ndata: {\"t\":\"hello\",\"i\":0}\n\n\
    event: end\ndata: {\"tokens_out\":1,\"decode_ms\":5,\"finish_reason\":\"content_filter\"}\n\n";

fn json(status: StatusCode, body: &'static str) -> axum::response::Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn newer_server() -> String {
    let app = Router::new()
        .route(
            "/v1/tasks/t1",
            get(|| async { json(StatusCode::OK, PAUSED) }),
        )
        .route(
            "/v1/tasks/t2",
            get(|| async { json(StatusCode::NOT_FOUND, GONE) }),
        )
        .route(
            "/v1/tasks/t3/stream",
            get(|| async { ([(header::CONTENT_TYPE, "text/event-stream")], STREAM) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

// covers: ORCH-9015
#[tokio::test]
async fn unknown_enum_values_are_shown_as_they_came() {
    let orchctl = Orchctl::at(newer_server().await);

    let human = orchctl.run(&["status", "t1"]).await;
    human.assert_exit(0);
    assert!(
        human.stdout.contains("state:    paused"),
        "{}",
        human.transcript()
    );
    assert!(
        human.stdout.contains("priority: urgent"),
        "{}",
        human.transcript()
    );

    let json = orchctl.run(&["--json", "status", "t1"]).await;
    json.assert_exit(0);
    let line = &json.json_lines()[0];
    assert_eq!(
        (&line["state"], &line["priority"]),
        (&"paused".into(), &"urgent".into())
    );

    // An unknown code exits by its HTTP status (404 → 4) and is named.
    let gone = orchctl.run(&["status", "t2"]).await;
    gone.assert_exit(4);
    assert!(
        gone.stderr.contains("GONE_FOREVER"),
        "{}",
        gone.transcript()
    );
}

// covers: ORCH-9015
#[tokio::test]
async fn an_unknown_event_kind_is_skipped_and_an_unknown_finish_reason_shown() {
    let orchctl = Orchctl::at(newer_server().await);
    let run = orchctl.run(&["stream", "t3"]).await;
    run.assert_exit(0);
    assert_eq!(run.stdout, "hello\n", "{}", run.transcript());
    assert!(
        run.stderr.contains("finish: content_filter"),
        "{}",
        run.transcript()
    );

    let json = orchctl.run(&["--json", "stream", "t3"]).await;
    json.assert_exit(0);
    let events: Vec<String> = json
        .json_lines()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, ["started", "token", "end"], "{}", json.transcript());
    assert_eq!(
        json.json_lines()[2]["data"]["finish_reason"],
        "content_filter"
    );
}
