//! The README's OpenAI snippets, run verbatim against the default server
//! (ORCH-8011): what a new user pastes works. The haiku snippet, which needs a real
//! model, runs in `llamacpp_e2e.rs`.

mod common;

use common::{TestServer, readme_snippet, run_snippet};

// covers: ORCH-8011
#[tokio::test]
async fn the_readmes_sdk_and_curl_snippets_stream_an_answer_from_the_default_server() {
    let server = TestServer::default().await;
    // The `export` the README shows is what `run_snippet` sets, at this server.
    let env = readme_snippet("env");
    assert!(
        env.contains("OPENAI_BASE_URL=http://127.0.0.1:8080/v1") && env.contains("OPENAI_API_KEY="),
        "{env}"
    );
    let printed = run_snippet("sdk-stream", &server.url()).await;
    let words = printed.split_whitespace().count();
    assert_eq!(
        words, 24,
        "the streamed answer, 24 builtin tokens: {printed:?}"
    );

    let streamed = run_snippet("curl", &server.url()).await;
    let frames: Vec<&str> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(frames.last(), Some(&"[DONE]"), "{streamed}");
    let tokens = frames
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .filter(|f| {
            f["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert_eq!(tokens, 8, "{streamed}");
}
