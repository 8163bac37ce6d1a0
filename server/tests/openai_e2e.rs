//! The OpenAI-compatible surface end to end (ORCH-8001..ORCH-8009): raw HTTP in
//! OpenAI's shapes against the real server behind the conformance proxy, each
//! answer read back as the task it is through the real `orchctl` client.

mod common;

use std::time::Duration;

use common::{TestServer, config_with, eventually, text, unique_scope};
use contracts::config::{BuiltinEngineConfig, BuiltinFaults, Config, Role, TenantConfig};
use contracts::openai::{IGNORED, UNSUPPORTED};
use contracts::{
    ChatMessage, ChatRole, FinishReason, Priority, StreamEvent, TaskRequest, TaskState,
};
use orchctl::Client;
use serde_json::{Value, json};

/// One answer: status, headers, body (JSON, or the raw SSE text as a string).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn task_id(&self) -> String {
        self.header("x-orch-task-id")
            .expect("X-Orch-Task-Id on the answer")
            .to_owned()
    }

    /// The `data:` payloads of a streamed answer, `[DONE]` as a string.
    fn frames(&self) -> Vec<Value> {
        let text = self.body.as_str().expect("a streamed answer");
        text.split("\n\n")
            .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|data| serde_json::from_str(data).unwrap_or_else(|_| Value::from(data)))
            .collect()
    }

    /// The error of an error answer, checked against OpenAI's shape (ORCH-8008).
    fn error(&self, status: u16, kind: &str) -> &Value {
        assert_eq!(self.status, status, "{}", self.body);
        let error = &self.body["error"];
        assert_eq!(error["type"], kind, "{}", self.body);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        let retriable = self.header("x-should-retry").expect("x-should-retry");
        let code = error["code"].as_str().unwrap();
        let expected = serde_json::from_value::<contracts::ErrorCode>(json!(code))
            .is_ok_and(|c| c.retriable());
        assert_eq!(retriable, expected.to_string(), "x-should-retry for {code}");
        error
    }
}

async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let is_stream = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let bytes = response.bytes().await.expect("a body");
    let body = if is_stream {
        Value::from(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn post(server: &TestServer, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let url = format!("{}{path}", server.url());
    call(reqwest::Method::POST, &url, Some(body), headers).await
}

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({
        "model": "default",
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": content},
        ],
        "max_tokens": max_tokens,
        "seed": 7,
    })
}

fn messages(content: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: ChatRole::System,
            content: "You answer briefly.".into(),
        },
        ChatMessage {
            role: ChatRole::User,
            content: content.into(),
        },
    ]
}

fn streamed_text(frames: &[Value], shape: &str) -> String {
    frames
        .iter()
        .filter_map(|f| match shape {
            "chat" => f["choices"][0]["delta"]["content"].as_str(),
            _ => f["choices"][0]["text"].as_str(),
        })
        .collect()
}

// covers: ORCH-8001, ORCH-8005, ORCH-8006, ORCH-1015
#[tokio::test]
async fn a_chat_completion_is_a_task_with_the_same_text_as_the_same_messages_on_v1_tasks() {
    let server = TestServer::default().await;
    let scope = unique_scope();
    let answer = post(
        &server,
        "/v1/chat/completions",
        &chat("Name a river.", 6),
        &[("X-Orch-Scope", &scope)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let task_id = answer.task_id();
    let body = &answer.body;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], format!("chatcmpl-{task_id}"));
    assert_eq!(body["model"], "default");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    // The builtin template, one word per line marker (ORCH-8005): its words are the
    // prompt tokens of the builtin engine (ORCH-1003).
    let template = "<|system|>\nYou answer briefly.\n<|user|>\nName a river.\n<|assistant|>\n";
    let prompt_tokens = template.split_whitespace().count() as u64;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6})
    );

    // The same request is a task of the data plane, in its scope.
    let client = Client::new(server.url()).with_scope(scope);
    let status = client.status(&task_id).await.unwrap();
    assert_eq!(status.state, TaskState::Completed);
    assert_eq!(status.tokens_out, 6);
    let events = client.collect(&task_id).await.unwrap();
    assert_eq!(choice["message"]["content"], text(&events));

    // The same messages on `POST /v1/tasks` give the same text: the messages, not
    // the surface, define the output.
    let native = client
        .submit(TaskRequest {
            messages: Some(messages("Name a river.")),
            max_tokens: 6,
            seed: Some(7),
            ..TaskRequest::default()
        })
        .await
        .unwrap();
    let native_events = client.collect(&native.task_id).await.unwrap();
    assert_eq!(text(&native_events), text(&events));
    // Several turns, every role: the template has a line per message (ORCH-8005),
    // and the same conversation on both surfaces is the same task input.
    let turns = json!([
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": [{"type": "text", "text": "The Nile."}]},
        {"role": "user", "content": "And a longer one?"},
    ]);
    let mut multi = chat("", 4);
    multi["messages"] = turns;
    let answer = post(&server, "/v1/chat/completions", &multi, &[]).await;
    let template = "<|system|>\nYou answer briefly.\n<|user|>\nName a river.\n<|assistant|>\nThe Nile.\n<|user|>\nAnd a longer one?\n<|assistant|>\n";
    assert_eq!(
        answer.body["usage"]["prompt_tokens"],
        template.split_whitespace().count() as u64
    );
    let mut conversation = messages("Name a river.");
    conversation.push(ChatMessage {
        role: ChatRole::Assistant,
        content: "The Nile.".into(),
    });
    conversation.push(ChatMessage {
        role: ChatRole::User,
        content: "And a longer one?".into(),
    });
    let native = client
        .submit(TaskRequest {
            messages: Some(conversation),
            max_tokens: 4,
            seed: Some(7),
            ..TaskRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        text(&client.collect(&native.task_id).await.unwrap()),
        answer.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );

    // Another conversation gives another text.
    let other = post(
        &server,
        "/v1/chat/completions",
        &chat("Name a mountain.", 6),
        &[],
    )
    .await;
    assert_ne!(
        other.body["choices"][0]["message"]["content"],
        choice["message"]["content"]
    );
}

// covers: ORCH-8006, ORCH-8001
#[tokio::test]
async fn a_streamed_chat_sends_the_role_one_chunk_per_token_the_finish_usage_and_done() {
    let server = TestServer::default().await;
    let mut request = chat("Name a river.", 5);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let answer = post(&server, "/v1/chat/completions", &request, &[]).await;
    assert_eq!(answer.status, 200);
    let frames = answer.frames();
    let id = format!("chatcmpl-{}", answer.task_id());
    assert!(frames[..frames.len() - 1].iter().all(|f| f["id"] == id
        && f["object"] == "chat.completion.chunk"
        && f["model"] == "default"));
    assert_eq!(
        frames[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let tokens: Vec<&Value> = frames[1..6].iter().collect();
    assert!(tokens.iter().all(|f| {
        f["choices"][0]["finish_reason"].is_null()
            && f["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
    }));
    assert_eq!(frames[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(frames[7]["choices"], json!([]));
    assert_eq!(frames[7]["usage"]["completion_tokens"], 5);
    assert_eq!(frames[8], "[DONE]");
    assert_eq!(frames.len(), 9);

    // The whole answer to the same request has the same text.
    request["stream"] = json!(false);
    let whole = post(&server, "/v1/chat/completions", &request, &[]).await;
    assert_eq!(
        whole.body["choices"][0]["message"]["content"],
        streamed_text(&frames, "chat")
    );
}

// covers: ORCH-8001, ORCH-8006, ORCH-1025
#[tokio::test]
async fn completions_stream_and_answer_whole_and_stop_sequences_end_them_with_stop() {
    let server = TestServer::default().await;
    let request = json!({"model": "default", "prompt": "Once upon", "max_tokens": 12, "seed": 3});
    let whole = post(&server, "/v1/completions", &request, &[]).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(whole.body["object"], "text_completion");
    assert_eq!(whole.body["id"], format!("cmpl-{}", whole.task_id()));
    assert_eq!(whole.body["usage"]["prompt_tokens"], 2);
    let full = whole.body["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let answer = post(&server, "/v1/completions", &streamed, &[]).await;
    let frames = answer.frames();
    assert_eq!(streamed_text(&frames, "text"), full);
    assert_eq!(
        frames[frames.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(frames.last().unwrap(), "[DONE]");

    // A stop sequence taken from the middle of that text ends it right before.
    let words: Vec<&str> = full.split_inclusive(' ').collect();
    let cut = words.len() / 2;
    let stop = words[cut].trim().to_owned();
    let before = full[..full.find(&format!(" {stop}")).unwrap()].to_owned();
    let mut stopped = request.clone();
    stopped["stop"] = json!(format!(" {stop}"));
    let answer = post(&server, "/v1/completions", &stopped, &[]).await;
    assert_eq!(answer.body["choices"][0]["text"], before, "{}", answer.body);
    assert_eq!(answer.body["choices"][0]["finish_reason"], "stop");
    // A list of one prompt is one prompt; more are refused, naming `prompt`.
    let mut listed = request.clone();
    listed["prompt"] = json!(["Once upon"]);
    let answer = post(&server, "/v1/completions", &listed, &[]).await;
    assert_eq!(answer.body["choices"][0]["text"], full);
    listed["prompt"] = json!(["a", "b"]);
    let answer = post(&server, "/v1/completions", &listed, &[]).await;
    assert_eq!(
        answer.error(400, "invalid_request_error")["param"],
        "prompt"
    );
}

// covers: ORCH-8002
#[tokio::test]
async fn models_are_the_pools_and_their_aliases_and_an_unknown_model_is_model_not_found() {
    let mut config = config_with(1, BuiltinEngineConfig::default(), |pool| {
        pool.aliases = vec!["tiny".into(), "org/tiny-words".into()];
    });
    let mut second = config.pools[0].clone();
    second.id = "batch".into();
    second.aliases = vec![];
    second.replicas[0].id = "b0".into();
    config.pools.push(second);
    let server = TestServer::start(config).await;
    let url = format!("{}/v1/models", server.url());
    let models = call(reqwest::Method::GET, &url, None, &[]).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.body["object"], "list");
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "orchqueue");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["batch", "default", "tiny", "org/tiny-words"]);

    // An alias is its pool.
    let scope = unique_scope();
    let mut request = chat("hi", 2);
    request["model"] = json!("org/tiny-words");
    let answer = post(
        &server,
        "/v1/chat/completions",
        &request,
        &[("X-Orch-Scope", &scope)],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["model"], "org/tiny-words");
    let client = Client::new(server.url()).with_scope(scope);
    assert_eq!(
        client.status(&answer.task_id()).await.unwrap().pool_id,
        "default"
    );

    request["model"] = json!("gpt-4o");
    let answer = post(&server, "/v1/chat/completions", &request, &[]).await;
    let error = answer.error(404, "invalid_request_error");
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/models")
    );
}

// covers: ORCH-8004, ORCH-8008
#[tokio::test]
async fn unsupported_fields_are_refused_by_name_their_defaults_and_the_ignored_fields_accepted() {
    let server = TestServer::default().await;
    let non_default = |name: &str| match name {
        "n" | "best_of" => json!(2),
        "logprobs" | "echo" => json!(true),
        "top_logprobs" => json!(3),
        "tools" | "functions" => json!([{"type": "function", "function": {"name": "f"}}]),
        "tool_choice" | "function_call" => json!("auto"),
        "response_format" => json!({"type": "json_object"}),
        "logit_bias" => json!({"50256": -100}),
        "presence_penalty" | "frequency_penalty" => json!(0.5),
        "modalities" => json!(["text", "audio"]),
        "suffix" => json!("end"),
        "reasoning_effort" => json!("high"),
        _ => json!({"any": "thing"}),
    };
    let default = |name: &str| match name {
        "n" | "best_of" => json!(1),
        "logprobs" | "echo" => json!(false),
        "tools" | "functions" => json!([]),
        "tool_choice" | "function_call" => json!("none"),
        "response_format" => json!({"type": "text"}),
        "logit_bias" => json!({}),
        "presence_penalty" | "frequency_penalty" => json!(0),
        "modalities" => json!(["text"]),
        "suffix" => json!(""),
        _ => Value::Null,
    };
    for (path, base) in [
        ("/v1/chat/completions", chat("hi", 1)),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": "hi", "max_tokens": 1}),
        ),
    ] {
        for (name, _) in UNSUPPORTED {
            let mut refused = base.clone();
            refused[*name] = non_default(name);
            let answer = post(&server, path, &refused, &[]).await;
            let error = answer.error(400, "invalid_request_error");
            assert_eq!(error["param"], *name, "{path}: {}", answer.body);
            assert_eq!(error["code"], "INVALID_PARAMS");
            let mut accepted = base.clone();
            accepted[*name] = default(name);
            let answer = post(&server, path, &accepted, &[]).await;
            assert_eq!(answer.status, 200, "{path} {name}: {}", answer.body);
        }
        let mut ignored = base.clone();
        for name in IGNORED {
            ignored[*name] = json!("anything");
        }
        ignored["metadata"] = json!({"k": "v"});
        let answer = post(&server, path, &ignored, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        let mut unknown = base.clone();
        unknown["tempreature"] = json!(0.5);
        let answer = post(&server, path, &unknown, &[]).await;
        assert_eq!(
            answer.error(400, "invalid_request_error")["param"],
            "tempreature"
        );
    }
    // Mapped fields keep the data plane's bounds, named by the body's own name.
    let cases: [(&str, Value, &str); 4] = [
        ("/temperature", json!(3.0), "temperature"),
        ("/max_completion_tokens", json!(0), "max_completion_tokens"),
        ("/messages/1/role", json!("tool"), "messages[1].role"),
        ("/stop", json!(["a", "b", "c", "d", "e"]), "stop"),
    ];
    for (pointer, value, param) in cases {
        let mut body = chat("hi", 1);
        match body.pointer_mut(pointer) {
            Some(field) => *field = value,
            None => body[pointer.trim_start_matches('/')] = value,
        }
        let answer = post(&server, "/v1/chat/completions", &body, &[]).await;
        assert_eq!(answer.error(400, "invalid_request_error")["param"], param);
    }
}

// covers: ORCH-8003, ORCH-8001
#[tokio::test]
async fn orchestrator_knobs_travel_as_headers_and_a_bad_one_is_named() {
    let server = TestServer::default().await;
    let scope = unique_scope();
    let knobs = [
        ("X-Orch-Scope", scope.as_str()),
        ("X-Orch-Priority", "batch"),
        ("X-Orch-Session-Id", "conv-1"),
        ("X-Orch-Deadline-Ms", "60000"),
        ("X-Orch-Determinism", "best_effort"),
        ("X-Orch-Task-Id", "chat-1"),
    ];
    let answer = post(&server, "/v1/chat/completions", &chat("hi", 2), &knobs).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.task_id(), "chat-1");
    let client = Client::new(server.url()).with_scope(scope.clone());
    let status = client.status("chat-1").await.unwrap();
    assert_eq!(status.priority, Priority::Batch);
    assert_eq!(client.session("conv-1").await.unwrap().turns, 1);
    // The task id is the idempotency key: the same request answers the same task,
    // another body under it is a conflict.
    let again = post(&server, "/v1/chat/completions", &chat("hi", 2), &knobs).await;
    assert_eq!(again.body["choices"], answer.body["choices"]);
    let conflict = post(
        &server,
        "/v1/chat/completions",
        &chat("something else", 2),
        &[("X-Orch-Scope", &scope), ("X-Orch-Task-Id", "chat-1")],
    )
    .await;
    assert_eq!(
        conflict.error(409, "invalid_request_error")["code"],
        "CONFLICT"
    );
    for (name, value) in [
        ("X-Orch-Priority", "urgent"),
        ("X-Orch-Scope", "no spaces"),
        ("X-Orch-Session-Id", "../x"),
        ("X-Orch-Deadline-Ms", "0"),
        ("X-Orch-Determinism", "exact"),
        ("X-Orch-Task-Id", ""),
    ] {
        let answer = post(
            &server,
            "/v1/chat/completions",
            &chat("hi", 1),
            &[(name, value)],
        )
        .await;
        assert_eq!(answer.error(400, "invalid_request_error")["param"], name);
    }
}

// covers: ORCH-8008, ORCH-6002
#[tokio::test]
async fn errors_take_openais_shape_with_retry_headers_on_429_and_503() {
    let mut config = config_with(
        1,
        BuiltinEngineConfig {
            slots: 1,
            ..BuiltinEngineConfig::default()
        },
        |pool| pool.queue.capacity = 1,
    );
    config.max_body_bytes = 4096;
    config.pools[0].max_prompt_bytes = 1024;
    let server = TestServer::start(config).await;
    let handle = server.handle();
    handle.hold_dispatch("default", true);
    let client = server.client();
    client
        .submit(common::task("fills the queue", 1))
        .await
        .unwrap();
    let full = post(&server, "/v1/chat/completions", &chat("hi", 1), &[]).await;
    let error = full.error(429, "rate_limit_error");
    assert_eq!(error["code"], "ADMISSION_REJECT");
    let backoff: u64 = full.header("x-backoff-ms").unwrap().parse().unwrap();
    assert_eq!(
        full.header("retry-after-ms"),
        Some(backoff.to_string().as_str())
    );
    assert_eq!(
        full.header("retry-after"),
        Some(backoff.div_ceil(1000).to_string().as_str())
    );
    handle.hold_dispatch("default", false);

    handle.set_faults(
        "default",
        "r0",
        BuiltinFaults {
            fail_health: true,
            ..BuiltinFaults::default()
        },
    );
    eventually(Duration::from_secs(5), "the pool is down", async || {
        post(
            &server,
            "/v1/completions",
            &json!({"model": "default", "prompt": "x"}),
            &[],
        )
        .await
        .status
            == 503
    })
    .await;
    let down = post(
        &server,
        "/v1/completions",
        &json!({"model": "default", "prompt": "x"}),
        &[],
    )
    .await;
    assert!(down.error(503, "server_error")["code"].is_string());
    assert!(down.header("retry-after-ms").is_some() && down.header("retry-after").is_some());

    let huge = json!({"model": "default", "prompt": "x".repeat(8192)});
    let too_large = post(&server, "/v1/completions", &huge, &[]).await;
    assert_eq!(
        too_large.error(413, "invalid_request_error")["param"],
        "body"
    );
    let not_json = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert_eq!(body["error"]["param"], "body");

    // Keys: none, or a wrong one, is an authentication error.
    let keyed = TestServer::start(Config {
        tenants: vec![TenantConfig {
            weight: 1,
            token_rate_limit: None,
            id: "app".into(),
            role: Role::Client,
            api_key_sha256: vec![orchestratord::runtime::key_hash("sk-app")],
            max_concurrent: None,
            rate_limit: None,
        }],
        ..config_with(1, BuiltinEngineConfig::default(), |_| {})
    })
    .await;
    for auth in [None, Some("Bearer sk-wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let answer = post(&keyed, "/v1/chat/completions", &chat("hi", 1), &headers).await;
        assert_eq!(
            answer.error(401, "authentication_error")["code"],
            "UNAUTHORIZED"
        );
        let url = format!("{}/v1/models", keyed.url());
        let models = call(reqwest::Method::GET, &url, None, &headers).await;
        models.error(401, "authentication_error");
    }
    let answer = post(
        &keyed,
        "/v1/chat/completions",
        &chat("hi", 1),
        &[("Authorization", "Bearer sk-app")],
    )
    .await;
    assert_eq!(answer.status, 200);
    // The task is the tenant's: another tenant (the admin without keys does not
    // exist here) cannot read it, the tenant can.
    let app = Client::new(keyed.url()).with_api_key("sk-app");
    assert_eq!(
        app.status(&answer.task_id()).await.unwrap().state,
        TaskState::Completed
    );
}

fn slow() -> BuiltinEngineConfig {
    BuiltinEngineConfig {
        slots: 1,
        tokens_per_s: 20.0,
        ..BuiltinEngineConfig::default()
    }
}

// covers: ORCH-8007
#[tokio::test]
async fn a_task_canceled_by_another_caller_ends_with_abort_and_a_failed_one_with_its_error() {
    let server = TestServer::start(config_with(1, slow(), |_| {})).await;
    let scope = unique_scope();
    let waiting = {
        let url = format!("{}/v1/chat/completions", server.url());
        let scope = scope.clone();
        tokio::spawn(async move {
            call(
                reqwest::Method::POST,
                &url,
                Some(&chat("a long answer", 200)),
                &[("X-Orch-Scope", &scope), ("X-Orch-Task-Id", "long")],
            )
            .await
        })
    };
    let client = Client::new(server.url()).with_scope(scope.clone());
    eventually(Duration::from_secs(5), "the task streams", async || {
        client.status("long").await.is_ok_and(|s| s.tokens_out >= 2)
    })
    .await;
    client.cancel("long").await.unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["choices"][0]["finish_reason"], "abort");
    assert!(answer.body["usage"]["completion_tokens"].as_u64().unwrap() >= 2);

    // A replica lost after the first token: the stream ends with one error chunk
    // and `[DONE]`; the whole answer is that error, with its status.
    server.handle().set_faults(
        "default",
        "r0",
        BuiltinFaults {
            crash_after_tokens: Some(2),
            ..BuiltinFaults::default()
        },
    );
    let mut request = chat("crash", 8);
    request["stream"] = json!(true);
    let streamed = post(&server, "/v1/chat/completions", &request, &[]).await;
    let frames = streamed.frames();
    let n = frames.len();
    assert_eq!(frames[n - 2]["error"]["code"], "WORKER_RESET", "{frames:?}");
    assert_eq!(frames[n - 2]["error"]["type"], "server_error");
    assert_eq!(frames[n - 1], "[DONE]");
    assert_eq!(streamed_text(&frames, "chat").split_whitespace().count(), 2);
    eventually(Duration::from_secs(5), "the replica is back", async || {
        server.handle().replica_health("default", "r0")
            == orchestratord::runtime::ReplicaHealth::Ready
    })
    .await;
    request["stream"] = json!(false);
    let whole = post(&server, "/v1/chat/completions", &request, &[]).await;
    assert_eq!(whole.error(502, "server_error")["code"], "WORKER_RESET");
    assert!(whole.header("x-orch-task-id").is_some());
}

// covers: ORCH-8009, ORCH-1023
#[tokio::test]
async fn a_client_that_goes_away_cancels_its_task_streaming_or_not() {
    let server = TestServer::start(config_with(1, slow(), |_| {})).await;
    let handle = server.handle();
    let scope = unique_scope();
    let client = Client::new(server.url()).with_scope(scope.clone());

    // Streaming: read the first token, then hang up.
    let mut request = chat("a long answer", 200);
    request["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("X-Orch-Scope", &scope)
        .header("X-Orch-Task-Id", "streamed")
        .json(&request)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    use futures::StreamExt;
    let mut seen = String::new();
    while !seen.contains("\"content\":\" ") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    drop(body);
    eventually(
        Duration::from_secs(5),
        "the streamed task is canceled",
        async || {
            client
                .status("streamed")
                .await
                .is_ok_and(|s| s.state == TaskState::Canceled)
        },
    )
    .await;
    let events = client.collect("streamed").await.unwrap();
    assert!(matches!(
        events.last(),
        Some(StreamEvent::End(end)) if end.finish_reason == FinishReason::Canceled
    ));
    eventually(Duration::from_secs(5), "the slot is free", async || {
        handle.replica_active("default", "r0") == 0
    })
    .await;

    // Not streaming: the request times out on the client's side.
    request["stream"] = json!(false);
    let gone = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("X-Orch-Scope", &scope)
        .header("X-Orch-Task-Id", "whole")
        .timeout(Duration::from_millis(500))
        .json(&request)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    eventually(
        Duration::from_secs(5),
        "the whole task is canceled",
        async || {
            client
                .status("whole")
                .await
                .is_ok_and(|s| s.state == TaskState::Canceled)
        },
    )
    .await;
    let tokens_at_cancel = client.status("whole").await.unwrap().tokens_out;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.status("whole").await.unwrap().tokens_out,
        tokens_at_cancel
    );
    eventually(Duration::from_secs(5), "the slot is free", async || {
        handle.replica_active("default", "r0") == 0
    })
    .await;
}

// covers: ORCH-8009, ORCH-7001
#[tokio::test]
async fn a_non_streaming_request_admitted_before_a_restart_completes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let config = Config {
        shutdown_grace_ms: 0,
        ..config_with(1, BuiltinEngineConfig::default(), |_| {})
    };
    let first = orchestratord::start(config.clone(), "127.0.0.1:0", &store)
        .await
        .unwrap();
    first.test_handle().hold_dispatch("default", true);
    let first_proxy = conformance::Proxy::start(&first.url(), conformance::committed_documents())
        .await
        .unwrap()
        .asserting_on_drop();
    let url = format!("{}/v1/chat/completions", first_proxy.url());
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("X-Orch-Task-Id", "survivor")
            .json(&chat("hi", 4))
            .send()
            .await
    });
    let handle = first.test_handle();
    eventually(
        Duration::from_secs(5),
        "the request is queued",
        async || handle.queue_len("default") == 1,
    )
    .await;
    first.shutdown().await;
    // The answer says so, and where to read the task; the shutdown cancels nothing.
    let answer = waiting
        .await
        .unwrap()
        .expect("an answer before the server stops");
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["x-should-retry"], "true");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "POOL_UNAVAILABLE");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/tasks/survivor")
    );
    let second = orchestratord::start(config, "127.0.0.1:0", &store)
        .await
        .unwrap();
    let proxy = conformance::Proxy::start(&second.url(), conformance::committed_documents())
        .await
        .unwrap()
        .asserting_on_drop();
    let client = Client::new(proxy.url());
    eventually(
        Duration::from_secs(5),
        "the task ran after recovery",
        async || {
            client
                .status("survivor")
                .await
                .is_ok_and(|s| s.state == TaskState::Completed)
        },
    )
    .await;
    assert_eq!(client.status("survivor").await.unwrap().tokens_out, 4);
    second.shutdown().await;
}
