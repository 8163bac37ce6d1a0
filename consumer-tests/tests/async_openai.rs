//! Pact consumer tests of the OpenAI surface (`contracts/openapi/openai.yaml`),
//! each driven through a real third-party client, the `async-openai` crate, against
//! the Pact mock server: they write `contracts/pacts/async-openai-orchestratord.json`,
//! which provider verification replays against the real server (ORCH-8010).

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageArgs,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::{CreateCompletionRequest, CreateCompletionRequestArgs};
use common::*;
use contracts::openai::{
    AssistantMessage, AssistantRole, ChatChoice, ChatChunkChoice, ChatCompletion,
    ChatCompletionChunk, ChatCompletionChunkObject, ChatCompletionObject, ChatDelta, ListObject,
    Model, ModelList, ModelObject, OpenAiError, OpenAiErrorBody, OpenAiErrorType,
    OpenAiFinishReason, TextChoice, TextCompletion, TextCompletionObject, Usage,
};
use futures::StreamExt;
use pact_consumer::builders::{InteractionBuilder, PactBuilder};
use pact_consumer::patterns::{StringPattern, Term};
use pact_consumer::prelude::*;
use serde_json::{Value, json};

const CONSUMER: &str = "async-openai";
/// `created` in the examples; any number matches.
const CREATED: u64 = 1_796_000_000;

fn interaction(
    description: &str,
    build: impl FnOnce(InteractionBuilder) -> InteractionBuilder,
) -> PactBuilder {
    let mut pact = pact_of(CONSUMER);
    pact.interaction(description, "", build);
    pact
}

fn client(url: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", url.trim_end_matches('/')))
            .with_api_key("unused"),
    )
}

fn user(content: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(content)
        .build()
        .expect("a user message")
        .into()
}

fn chat_request(model: &str, stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([user("Name a river.")])
        .max_completion_tokens(3u32)
        .seed(7)
        .stream(stream)
        .build()
        .expect("a chat request")
}

/// The request as async-openai puts it on the wire.
fn expect_post(i: &mut InteractionBuilder, path: &str, body: &impl serde::Serialize) {
    i.request
        .post()
        .path(path)
        .header("content-type", "application/json")
        .json_body(json(body));
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 6,
        completion_tokens: 3,
        total_tokens: 9,
    }
}

fn task_id_header(i: &mut InteractionBuilder) {
    i.response
        .header("x-orch-task-id", term!("^[A-Za-z0-9._:-]+$", "t-0123"));
}

// covers: ORCH-8010, ORCH-8002
#[test]
fn openai_list_models() {
    let example = ModelList {
        object: ListObject::List,
        data: vec![Model {
            id: "default".into(),
            object: ModelObject::Model,
            created: CREATED,
            owned_by: "orchqueue".into(),
        }],
    };
    let pact = interaction(
        "openai: the models are the pools [ORCH-8002, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            i.request.get().path("/v1/models");
            i.response
                .status(200)
                .header("content-type", "application/json")
                .json_body(shape(
                    &json(&example),
                    &["object", "data.object", "data.owned_by"],
                    &[],
                ));
            i
        },
    );
    run(&pact, async |url| {
        let models = client(&url).models().list().await.unwrap();
        assert_eq!(models.data[0].owned_by, "orchqueue");
    });
}

// covers: ORCH-8010, ORCH-8001, ORCH-8006
#[test]
fn openai_chat_completion() {
    let request = chat_request("default", false);
    let example = ChatCompletion {
        id: "chatcmpl-t-0123".into(),
        object: ChatCompletionObject::ChatCompletion,
        created: CREATED,
        model: "default".into(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: AssistantRole::Assistant,
                content: " river stone light".into(),
            },
            finish_reason: OpenAiFinishReason::Length,
        }],
        usage: usage(),
    };
    let pact = interaction(
        "openai: a chat completion is a task [ORCH-8001, ORCH-8006, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            i.response
                .status(200)
                .header("content-type", "application/json");
            task_id_header(&mut i);
            i.response.json_body(shape(
                &json(&example),
                &[
                    "object",
                    "model",
                    "choices.message.role",
                    "choices.finish_reason",
                    "usage.completion_tokens",
                ],
                &[("id", "^chatcmpl-[A-Za-z0-9._:-]+$")],
            ));
            i
        },
    );
    run(&pact, async |url| {
        let answer = client(&url).chat().create(request.clone()).await.unwrap();
        assert!(answer.id.starts_with("chatcmpl-"));
        assert_eq!(answer.usage.unwrap().completion_tokens, 3);
        assert!(answer.choices[0].message.content.is_some());
    });
}

/// The frames of a streamed answer, each chunk's JSON as the server writes it
/// (keys sorted), with `created` and the token texts free.
fn sse_chunks(chunks: &[Value]) -> Term<StringPattern> {
    let mut example = String::new();
    let mut regex = String::from("^");
    let keepalive = "(?::[^\\n]*\\n\\n)*";
    for chunk in chunks {
        let text = format!("data: {chunk}\n\n");
        let escaped = regex_escape(&text)
            .replace(&CREATED.to_string(), "[0-9]+")
            .replace("@TOKEN@", JSON_TEXT);
        regex.push_str(keepalive);
        regex.push_str(&escaped);
        example.push_str(&text.replace("@TOKEN@", " river"));
    }
    regex.push_str(keepalive);
    regex.push_str("data: \\[DONE\\]\\n\\n");
    regex.push_str(keepalive);
    regex.push('$');
    example.push_str("data: [DONE]\n\n");
    let compiled = pact_consumer::patterns::build_regex(&regex);
    assert!(compiled.is_match(&example), "{regex}\n{example}");
    Term::new(compiled, example)
}

// covers: ORCH-8010, ORCH-8006
#[test]
fn openai_chat_completion_stream() {
    let request = chat_request("default", true);
    let chunk = |role: bool, content: Option<&str>, finish: Option<OpenAiFinishReason>| {
        json(&ChatCompletionChunk {
            id: "chatcmpl-stream-1".into(),
            object: ChatCompletionChunkObject::ChatCompletionChunk,
            created: CREATED,
            model: "default".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: role.then_some(AssistantRole::Assistant),
                    content: content.map(str::to_owned),
                },
                finish_reason: finish,
            }],
            usage: None,
        })
    };
    let chunks = [
        chunk(true, Some(""), None),
        chunk(false, Some("@TOKEN@"), None),
        chunk(false, Some("@TOKEN@"), None),
        chunk(false, Some("@TOKEN@"), None),
        chunk(false, None, Some(OpenAiFinishReason::Length)),
    ];
    let pact = interaction(
        "openai: a streamed chat sends a chunk per token, the finish, then [DONE] [ORCH-8006, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            i.request.header("x-orch-task-id", "stream-1");
            i.response.status(200).header(
                "content-type",
                term!("^text/event-stream.*$", "text/event-stream"),
            );
            task_id_header(&mut i);
            i.response
                .body_matching2(sse_chunks(&chunks), "text/event-stream");
            i
        },
    );
    run(&pact, async |url| {
        let config = OpenAIConfig::new()
            .with_api_base(format!("{}/v1", url.trim_end_matches('/')))
            .with_api_key("unused")
            .with_header("x-orch-task-id", "stream-1")
            .unwrap();
        let mut stream = Client::with_config(config)
            .chat()
            .create_stream(request.clone())
            .await
            .unwrap();
        let mut tokens = 0;
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for choice in chunk.choices {
                tokens += usize::from(choice.delta.content.is_some_and(|c| !c.is_empty()));
                finish = choice.finish_reason.or(finish);
            }
        }
        assert_eq!(tokens, 3);
        assert!(finish.is_some());
    });
}

// covers: ORCH-8010, ORCH-8001, ORCH-8006
#[test]
fn openai_text_completion() {
    let request: CreateCompletionRequest = CreateCompletionRequestArgs::default()
        .model("default")
        .prompt("Once upon")
        .max_tokens(3u32)
        .seed(3)
        .build()
        .unwrap();
    let example = TextCompletion {
        id: "cmpl-t-0123".into(),
        object: TextCompletionObject::TextCompletion,
        created: CREATED,
        model: "default".into(),
        choices: vec![TextChoice {
            index: 0,
            text: " a time".into(),
            finish_reason: Some(OpenAiFinishReason::Length),
        }],
        usage: Some(usage()),
    };
    let pact = interaction(
        "openai: a text completion is a task [ORCH-8001, ORCH-8006, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            expect_post(&mut i, "/v1/completions", &request);
            i.response
                .status(200)
                .header("content-type", "application/json");
            task_id_header(&mut i);
            i.response.json_body(shape(
                &json(&example),
                &[
                    "object",
                    "model",
                    "choices.finish_reason",
                    "usage.completion_tokens",
                ],
                &[("id", "^cmpl-[A-Za-z0-9._:-]+$")],
            ));
            i
        },
    );
    run(&pact, async |url| {
        let answer = client(&url)
            .completions()
            .create(request.clone())
            .await
            .unwrap();
        assert_eq!(answer.usage.unwrap().completion_tokens, 3);
    });
}

fn error_example(kind: OpenAiErrorType, param: Option<&str>, code: &str) -> Value {
    json(&OpenAiErrorBody {
        error: OpenAiError {
            message: "what went wrong and how to fix it".into(),
            kind,
            param: param.map(str::to_owned),
            code: code.into(),
        },
    })
}

/// An error answer in OpenAI's shape: type, param and code exact, the message any
/// text; `x-should-retry` as the code says; backoff headers on 429 and 503.
fn error_answer(i: &mut InteractionBuilder, status: u16, body: &Value, retriable: bool) {
    i.response
        .status(status)
        .header("content-type", "application/json")
        .header("x-should-retry", if retriable { "true" } else { "false" });
    if matches!(status, 429 | 503) {
        // Zero in the example, so that async-openai's own retries of the mock's
        // answer do not wait: the server sends the real hint.
        i.response
            .header("retry-after", term!("^[0-9]+$", "0"))
            .header("retry-after-ms", term!("^[0-9]+$", "0"))
            .header("x-backoff-ms", term!("^[0-9]+$", "0"));
    }
    i.response.json_body(shape(
        body,
        &["error.type", "error.param", "error.code"],
        &[("error.message", "^[\\s\\S]+$")],
    ));
}

fn api_error(
    result: Result<impl std::fmt::Debug, OpenAIError>,
) -> (u16, async_openai::error::ApiError) {
    match result {
        Err(OpenAIError::ApiError(e)) => (e.status_code.as_u16(), e.api_error),
        other => panic!("expected an API error, got {other:?}"),
    }
}

// covers: ORCH-8010, ORCH-8004, ORCH-8008
#[test]
fn openai_unsupported_field_is_named() {
    let mut request = chat_request("default", false);
    request.n = Some(2);
    let pact = interaction(
        "openai: a field the surface does not support is a 400 naming it [ORCH-8004, ORCH-8008, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} has free Ready slots",
                &json!({"pool": "default"}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            error_answer(
                &mut i,
                400,
                &error_example(
                    OpenAiErrorType::InvalidRequestError,
                    Some("n"),
                    "INVALID_PARAMS",
                ),
                false,
            );
            i
        },
    );
    run(&pact, async |url| {
        let (status, error) = api_error(client(&url).chat().create(request.clone()).await);
        assert_eq!((status, error.param.as_deref()), (400, Some("n")));
        assert_eq!(error.code.as_deref(), Some("INVALID_PARAMS"));
    });
}

// covers: ORCH-8010, ORCH-8002, ORCH-8008
#[test]
fn openai_unknown_model_is_model_not_found() {
    let request = chat_request("gpt-4o", false);
    let pact = interaction(
        "openai: an unknown model is 404 model_not_found [ORCH-8002, ORCH-8008, ORCH-8010]",
        |mut i| {
            i.given_with_params("pool {pool} does not exist", &json!({"pool": "gpt-4o"}));
            expect_post(&mut i, "/v1/chat/completions", &request);
            error_answer(
                &mut i,
                404,
                &error_example(
                    OpenAiErrorType::InvalidRequestError,
                    Some("model"),
                    "model_not_found",
                ),
                false,
            );
            i
        },
    );
    run(&pact, async |url| {
        let (status, error) = api_error(client(&url).chat().create(request.clone()).await);
        assert_eq!(
            (status, error.code.as_deref()),
            (404, Some("model_not_found"))
        );
    });
}

// covers: ORCH-8010, ORCH-8008, ORCH-6002
#[test]
fn openai_wrong_key_is_an_authentication_error() {
    let request = chat_request("default", false);
    let pact = interaction(
        "openai: a wrong key is 401 authentication_error [ORCH-6002, ORCH-8008, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "tenant {tenant} holds key {api_key} with role {role}",
                &json!({"tenant": "app", "api_key": CLIENT_KEY, "role": "client"}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            i.request.header("authorization", "Bearer unused");
            error_answer(
                &mut i,
                401,
                &error_example(OpenAiErrorType::AuthenticationError, None, "UNAUTHORIZED"),
                false,
            );
            i
        },
    );
    run(&pact, async |url| {
        let (status, error) = api_error(client(&url).chat().create(request.clone()).await);
        assert_eq!(
            (status, error.r#type.as_deref()),
            (401, Some("authentication_error"))
        );
    });
}

// covers: ORCH-8010, ORCH-8008, ORCH-2003
#[test]
fn openai_full_queue_is_a_rate_limit_error_with_its_hint() {
    let request = chat_request("default", false);
    let pact = interaction(
        "openai: a full queue is 429 rate_limit_error with retry-after-ms [ORCH-2003, ORCH-8008, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "pool {pool} is full with policy {policy}",
                &json!({"pool": "default", "policy": "reject", "capacity": 1}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            error_answer(
                &mut i,
                429,
                &error_example(OpenAiErrorType::RateLimitError, None, "ADMISSION_REJECT"),
                true,
            );
            i
        },
    );
    run(&pact, async |url| {
        let (status, error) = api_error(client(&url).chat().create(request.clone()).await);
        assert_eq!(
            (status, error.code.as_deref()),
            (429, Some("ADMISSION_REJECT"))
        );
    });
}

// covers: ORCH-8010, ORCH-8008
#[test]
fn openai_starting_pool_is_a_server_error_with_its_hint() {
    let request = chat_request("default", false);
    let pact = interaction(
        "openai: a pool whose replicas are starting is 503 server_error with retry-after-ms [ORCH-8008, ORCH-8010]",
        |mut i| {
            i.given_with_params(
                "every replica of pool {pool} is starting",
                &json!({"pool": "default"}),
            );
            expect_post(&mut i, "/v1/chat/completions", &request);
            error_answer(
                &mut i,
                503,
                &error_example(OpenAiErrorType::ServerError, None, "POOL_UNREADY"),
                true,
            );
            i
        },
    );
    run(&pact, async |url| {
        // async-openai retries a 5xx itself (after `Retry-After`), then answers
        // the last one's status, its body as the message.
        let (status, error) = api_error(client(&url).chat().create(request.clone()).await);
        assert_eq!(status, 503);
        assert!(error.message.contains("POOL_UNREADY"), "{error:?}");
    });
}
