//! `orchctl` end to end: the real binary against the real daemon started
//! in-process, each test in a scope of its own. Snapshots (insta, under
//! `cli/tests/snapshots/`) keep the human and `--json` output reviewed;
//! ids, scopes, ports and timings are filtered, token text is not (every
//! run passes an explicit `--seed`).

mod common;

use std::time::Duration;

use common::{TestServer, quiet_config};
use orchctl::contracts::config::BuiltinFaults;
use orchctl::contracts::{StreamEvent, TaskStatus};

const PROMPT: &str = "the quick brown fox";

// covers: ORCH-1001, ORCH-1101, ORCH-1103
#[tokio::test]
async fn submit_follow_streams_the_tokens_then_a_summary() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    let run = orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "12",
            "--seed",
            "7",
            "--task-id",
            "follow-1",
            "--follow",
        ])
        .await;
    run.assert_exit(0);
    assert!(
        run.stdout.ends_with('\n') && run.stdout.len() > 12,
        "{}",
        run.transcript()
    );
    assert!(
        run.stderr.contains("-- 12 tokens, ttft ")
            && run.stderr.contains("finish: length (replica r0)"),
        "{}",
        run.transcript()
    );
    snapshot!("submit_follow", run.transcript());

    // The stream read again later is the same text.
    let replay = orchctl.run(&["stream", "follow-1"]).await;
    replay.assert_exit(0);
    assert_eq!(replay.stdout, run.stdout);
    snapshot!("stream_replay", replay.transcript());
}

// covers: ORCH-1001, ORCH-1101, ORCH-1102
#[tokio::test]
async fn json_submit_follow_prints_the_admission_then_one_line_per_event() {
    let server = TestServer::quiet().await;
    let run = server
        .orchctl()
        .run(&[
            "--json",
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "5",
            "--seed",
            "7",
            "--task-id",
            "json-1",
            "--follow",
        ])
        .await;
    run.assert_exit(0);
    assert_eq!(run.stderr, "", "--json prints nothing but data on stdout");
    let lines = run.json_lines();
    assert_eq!(lines[0]["task_id"], "json-1");
    assert_eq!(lines[0]["queue_position"], 0);
    let events: Vec<StreamEvent> = lines[1..]
        .iter()
        .map(|line| serde_json::from_value(line.clone()).expect("a StreamEvent"))
        .collect();
    assert!(matches!(events.first(), Some(StreamEvent::Started(_))));
    assert!(matches!(events.last(), Some(StreamEvent::End(end)) if end.tokens_out == 5));
    let indexes: Vec<u32> = events.iter().filter_map(StreamEvent::sse_id).collect();
    assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
    snapshot!("submit_follow_json", run.transcript());
}

// covers: ORCH-1103, ORCH-1104
#[tokio::test]
async fn submit_reads_the_prompt_from_stdin_and_stream_resumes_after_an_event_id() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    let run = orchctl
        .run_with_stdin(
            &[
                "submit",
                "--max-tokens",
                "8",
                "--seed",
                "3",
                "--task-id",
                "stdin-1",
            ],
            Some(&format!("{PROMPT}\n")),
        )
        .await;
    run.assert_exit(0);
    assert_eq!(run.stdout, "stdin-1\n", "submit prints the task id alone");

    let whole = orchctl.run(&["--json", "stream", "stdin-1"]).await;
    whole.assert_exit(0);
    let resumed = orchctl
        .run(&["--json", "stream", "stdin-1", "--last-event-id", "4"])
        .await;
    resumed.assert_exit(0);
    let tokens = |run: &common::Run| -> Vec<serde_json::Value> {
        run.json_lines()
            .into_iter()
            .filter(|line| line["event"] == "token")
            .map(|line| line["data"].clone())
            .collect()
    };
    let all = tokens(&whole);
    assert_eq!(all.len(), 8);
    assert_eq!(tokens(&resumed), all[5..].to_vec());
    snapshot!("stream_resumed_json", resumed.transcript());

    // The same prompt given with --prompt is the same task: an idempotent resubmit.
    let again = orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "8",
            "--seed",
            "3",
            "--task-id",
            "stdin-1",
        ])
        .await;
    again.assert_exit(0);
    assert_eq!(again.stdout, "stdin-1\n");
}

// covers: ORCH-1010, ORCH-1011
#[tokio::test]
async fn status_and_ls_show_the_tasks_of_the_scope() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    for (id, priority) in [("a-1", "interactive"), ("b-2", "batch")] {
        orchctl
            .run(&[
                "submit",
                "--prompt",
                PROMPT,
                "--max-tokens",
                "4",
                "--seed",
                "1",
                "--task-id",
                id,
                "--priority",
                priority,
                "--follow",
            ])
            .await
            .assert_exit(0);
    }
    let status = orchctl.run(&["status", "a-1"]).await;
    status.assert_exit(0);
    snapshot!("status", status.transcript());

    let status_json = orchctl.run(&["--json", "status", "a-1"]).await;
    status_json.assert_exit(0);
    let body: TaskStatus = serde_json::from_str(status_json.stdout.trim()).unwrap();
    assert_eq!(body.tokens_out, 4);
    snapshot!("status_json", status_json.transcript());

    let ls = orchctl.run(&["ls"]).await;
    ls.assert_exit(0);
    snapshot!("ls", ls.transcript());
    let ls_json = orchctl.run(&["--json", "ls", "--state", "completed"]).await;
    ls_json.assert_exit(0);
    assert_eq!(
        ls_json.json_lines()[0]["items"].as_array().unwrap().len(),
        2
    );
    snapshot!("ls_json", ls_json.transcript());

    // Another scope sees none of them.
    let elsewhere = orchctl.in_scope(Some("cli-elsewhere")).run(&["ls"]).await;
    elsewhere.assert_exit(0);
    assert_eq!(elsewhere.stdout, "");
    assert_eq!(elsewhere.stderr, "no tasks in this scope\n");
}

// covers: ORCH-1011, ORCH-1024, ORCH-3007
#[tokio::test]
async fn ls_all_follows_every_cursor_and_queued_tasks_show_their_position() {
    let server = TestServer::quiet().await;
    server.handle().hold_dispatch("default", true);
    let orchctl = server.orchctl();
    let mut submits = String::new();
    for i in 0..5 {
        let id = format!("q-{i}");
        let run = orchctl
            .run(&[
                "submit",
                "--prompt",
                PROMPT,
                "--max-tokens",
                "2",
                "--seed",
                "1",
                "--task-id",
                &id,
            ])
            .await;
        run.assert_exit(0);
        if i > 0 {
            assert!(
                run.stderr
                    .starts_with(&format!("queued at position {i} (eta ")),
                "{}",
                run.transcript()
            );
        }
        submits.push_str(&run.transcript());
    }
    snapshot!("submit_queued", submits);

    let page = orchctl.run(&["ls", "--limit", "2"]).await;
    page.assert_exit(0);
    assert_eq!(page.stdout.lines().count(), 3, "{}", page.transcript());
    assert!(
        page.stderr
            .contains("-- more tasks: add --all, or --cursor ")
    );

    let all = orchctl.run(&["ls", "--limit", "2", "--all"]).await;
    all.assert_exit(0);
    assert_eq!(all.stderr, "");
    snapshot!("ls_all_queued", all.transcript());

    let all_json = orchctl
        .run(&["--json", "ls", "--limit", "2", "--all", "--state", "queued"])
        .await;
    all_json.assert_exit(0);
    let body = &all_json.json_lines()[0];
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q-0", "q-1", "q-2", "q-3", "q-4"]);
    assert!(body.get("next_cursor").is_none());
}

// covers: ORCH-1010, ORCH-3007
#[tokio::test]
async fn follow_shows_the_queue_position_while_the_task_waits() {
    let server = TestServer::quiet().await;
    server.handle().hold_dispatch("default", true);
    let orchctl = server.orchctl();
    for id in ["w-0", "w-1"] {
        orchctl
            .run(&[
                "submit",
                "--prompt",
                PROMPT,
                "--max-tokens",
                "2",
                "--seed",
                "1",
                "--task-id",
                id,
            ])
            .await
            .assert_exit(0);
    }
    let follower = {
        let orchctl = orchctl.clone();
        tokio::spawn(async move {
            orchctl
                .run(&[
                    "submit",
                    "--prompt",
                    PROMPT,
                    "--max-tokens",
                    "2",
                    "--seed",
                    "1",
                    "--task-id",
                    "w-2",
                    "--follow",
                ])
                .await
        })
    };
    let client = orchctl::Client::new(server.url()).with_scope(orchctl.scope.clone().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.status("w-2").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "w-2 was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    orchctl.run(&["cancel", "w-0"]).await.assert_exit(0);
    // The follower polls the position once a second until the stream starts.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    server.handle().hold_dispatch("default", false);
    let run = follower.await.unwrap();
    run.assert_exit(0);
    assert!(
        run.stderr.contains("queued at position 2 (eta ")
            && run.stderr.contains("queued at position 1\n"),
        "{}",
        run.transcript()
    );
    assert!(
        run.stderr.contains("finish: length"),
        "{}",
        run.transcript()
    );
}

// covers: ORCH-1020, ORCH-1022
#[tokio::test]
async fn cancel_stops_a_queued_task_and_its_stream_ends_canceled() {
    let server = TestServer::quiet().await;
    server.handle().hold_dispatch("default", true);
    let orchctl = server.orchctl();
    orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "4",
            "--seed",
            "1",
            "--task-id",
            "c-1",
        ])
        .await
        .assert_exit(0);
    let cancel = orchctl.run(&["cancel", "c-1"]).await;
    cancel.assert_exit(0);
    assert_eq!(cancel.stdout, "canceled c-1\n");
    let again = orchctl.run(&["--json", "cancel", "c-1"]).await;
    again.assert_exit(0);
    assert_eq!(again.json_lines()[0]["canceled"], true);
    server.handle().hold_dispatch("default", false);

    let stream = orchctl.run(&["stream", "c-1"]).await;
    stream.assert_exit(0);
    assert_eq!(stream.stdout, "");
    assert_eq!(stream.stderr, "-- 0 tokens, ttft -, finish: canceled\n");
    let status = orchctl.run(&["status", "c-1"]).await;
    status.assert_exit(0);
    snapshot!(
        "cancel",
        format!(
            "{}{}{}",
            cancel.transcript(),
            stream.transcript(),
            status.transcript()
        )
    );
}

// covers: ORCH-1012, ORCH-2021
#[tokio::test]
async fn an_unknown_task_exits_4_with_a_hint_about_the_scope() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "2",
            "--seed",
            "1",
            "--task-id",
            "mine",
            "--follow",
        ])
        .await
        .assert_exit(0);
    for args in [
        &["status", "nope"][..],
        &["stream", "nope"],
        &["cancel", "nope"],
    ] {
        let run = orchctl.run(args).await;
        run.assert_exit(4);
        assert!(
            run.stderr.starts_with("error: NOT_FOUND: "),
            "{}",
            run.transcript()
        );
        assert!(run.stderr.contains("hint: check the task id and --scope"));
    }
    let status = orchctl.run(&["status", "nope"]).await;
    snapshot!("not_found", status.transcript());
    let json = orchctl.run(&["--json", "status", "nope"]).await;
    json.assert_exit(4);
    assert_eq!(json.stdout, "");
    let body: serde_json::Value = serde_json::from_str(json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    // A task of another scope, or of no scope, is not found either.
    let unscoped = orchctl.in_scope(None).run(&["status", "mine"]).await;
    unscoped.assert_exit(4);
    snapshot!("not_found_unscoped", unscoped.transcript());
}

// covers: ORCH-2003, ORCH-2010, ORCH-3004
#[tokio::test]
async fn a_full_queue_exits_3_with_the_wait_the_server_asks_for() {
    let server = TestServer::start(quiet_config(|pool| pool.queue.capacity = 1)).await;
    server.handle().hold_dispatch("default", true);
    let orchctl = server.orchctl();
    orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--max-tokens",
            "2",
            "--seed",
            "1",
            "--task-id",
            "first",
        ])
        .await
        .assert_exit(0);
    let args = [
        "submit",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "2",
        "--seed",
        "1",
        "--task-id",
        "second",
    ];
    let rejected = orchctl.run(&args).await;
    rejected.assert_exit(3);
    assert!(
        rejected.stderr.starts_with("error: ADMISSION_REJECT: "),
        "{}",
        rejected.transcript()
    );
    assert!(
        rejected
            .stderr
            .contains("hint: retriable: the server asks to wait ")
    );
    snapshot!("queue_full", rejected.transcript());

    let json = orchctl.run(&[&["--json"][..], &args].concat()).await;
    json.assert_exit(3);
    let body: serde_json::Value = serde_json::from_str(json.stderr.trim()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["error"]["policy"], "reject");
    assert_eq!(body["error"]["retriable"], true);
    snapshot!("queue_full_json", json.transcript());

    // With --retries the same submission waits and gets in once the queue moves.
    let retrying = {
        let orchctl = orchctl.clone();
        let args: Vec<String> = [&["--retries", "50"][..], &args]
            .concat()
            .iter()
            .map(|a| a.to_string())
            .collect();
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            orchctl.run(&args).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.handle().hold_dispatch("default", false);
    let admitted = retrying.await.unwrap();
    admitted.assert_exit(0);
    assert_eq!(admitted.stdout, "second\n");
}

// covers: ORCH-1005, ORCH-1006, ORCH-1015, ORCH-1024, ORCH-2012, ORCH-2022
#[tokio::test]
async fn invalid_params_and_conflicts_exit_6() {
    let server = TestServer::quiet().await;
    let orchctl = server.orchctl();
    let invalid = orchctl
        .run(&[
            "submit",
            "--prompt",
            PROMPT,
            "--seed",
            "1",
            "--temperature",
            "5",
        ])
        .await;
    invalid.assert_exit(6);
    assert!(
        invalid.stderr.starts_with("error: INVALID_PARAMS: "),
        "{}",
        invalid.transcript()
    );
    assert!(
        invalid.stderr.contains("temperature"),
        "{}",
        invalid.transcript()
    );
    snapshot!("invalid_params", invalid.transcript());

    orchctl
        .run(&["submit", "--prompt", PROMPT, "--pool", "nope"])
        .await
        .assert_exit(6);
    orchctl.run(&["ls", "--limit", "0"]).await.assert_exit(6);

    let original = [
        "submit",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "3",
        "--seed",
        "1",
        "--task-id",
        "dup",
    ];
    orchctl.run(&original).await.assert_exit(0);
    let same = orchctl.run(&original).await;
    same.assert_exit(0);
    assert_eq!(same.stdout, "dup\n");
    let conflict = orchctl
        .run(&[
            "submit",
            "--prompt",
            "another prompt",
            "--max-tokens",
            "3",
            "--seed",
            "1",
            "--task-id",
            "dup",
        ])
        .await;
    conflict.assert_exit(6);
    assert!(
        conflict.stderr.starts_with("error: CONFLICT: "),
        "{}",
        conflict.transcript()
    );
    snapshot!("conflict", conflict.transcript());
}

// covers: ORCH-2005, ORCH-2017
#[tokio::test]
async fn a_task_that_fails_mid_stream_exits_5() {
    let server = TestServer::quiet().await;
    server.handle().set_faults(
        "default",
        "r0",
        BuiltinFaults {
            crash_after_tokens: Some(3),
            ..BuiltinFaults::default()
        },
    );
    let orchctl = server.orchctl();
    let args = [
        "submit",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "8",
        "--seed",
        "7",
        "--task-id",
        "crash-1",
        "--follow",
    ];
    let run = orchctl.run(&args).await;
    run.assert_exit(5);
    assert!(
        run.stderr.contains("failed: WORKER_RESET (replica r0)"),
        "{}",
        run.transcript()
    );
    assert!(
        run.stderr.contains("error: WORKER_RESET: "),
        "{}",
        run.transcript()
    );
    snapshot!("task_failed", run.transcript());

    let status = orchctl.run(&["status", "crash-1"]).await;
    status.assert_exit(5);
    assert!(
        status.stdout.contains("state:    failed"),
        "{}",
        status.transcript()
    );

    let json = orchctl.run(&["--json", "stream", "crash-1"]).await;
    json.assert_exit(5);
    assert_eq!(json.stderr, "");
    let last = json.json_lines().pop().unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["data"]["code"], "WORKER_RESET");
}

// covers: ORCH-2018
#[tokio::test]
async fn an_internal_error_or_an_unreachable_server_exits_7() {
    let server = TestServer::quiet().await;
    server.handle().refuse_store_writes(true);
    let orchctl = server.orchctl();
    let internal = orchctl
        .run(&["submit", "--prompt", PROMPT, "--seed", "1"])
        .await;
    internal.assert_exit(7);
    assert!(
        internal.stderr.starts_with("error: INTERNAL: "),
        "{}",
        internal.transcript()
    );
    snapshot!("internal", internal.transcript());

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = common::Orchctl::at(format!("http://127.0.0.1:{port}"))
        .run(&["status", "any"])
        .await;
    unreachable.assert_exit(7);
    assert!(
        unreachable
            .stderr
            .starts_with("error: cannot reach the server at http://127.0.0.1:")
    );
    assert!(
        unreachable
            .stderr
            .contains("hint: is orchestratord running there?")
    );
}

#[tokio::test]
async fn help_documents_the_exit_codes_and_usage_errors_exit_2() {
    let orchctl = common::Orchctl::at("http://127.0.0.1:9");
    let help = orchctl.run(&["--help"]).await;
    help.assert_exit(0);
    assert!(help.stdout.contains("Exit codes (stable):"));
    // No filters: the help has no ids or timings, and its default URL stays.
    insta::assert_snapshot!("help", help.stdout);

    orchctl.run(&["status"]).await.assert_exit(2);
    // An id that would change the URL (a query, a fragment) is refused here.
    orchctl.run(&["status", "a?b"]).await.assert_exit(2);
    orchctl.run(&["cancel", "a#b"]).await.assert_exit(2);
    orchctl
        .run(&["submit", "--prompt", "x", "--priority", "urgent"])
        .await
        .assert_exit(2);
    let no_prompt = orchctl.run(&["submit"]).await;
    no_prompt.assert_exit(2);
    assert!(
        no_prompt.stderr.starts_with("error: no prompt"),
        "{}",
        no_prompt.transcript()
    );

    // The control-plane commands check their arguments before any call.
    for args in [
        &["pool", "drain", "default"][..],
        &["pool", "reload", "default"],
        &["pool", "health"],
        &["session", "get"],
        &["session", "rm", "a/b"],
        &["scope", "purge", ".."],
    ] {
        orchctl.run(args).await.assert_exit(2);
    }

    let completions = orchctl.run(&["completions", "bash"]).await;
    completions.assert_exit(0);
    assert!(completions.stdout.contains("orchctl"));
    assert!(completions.stdout.contains("--last-event-id"));
    for word in [
        "replicasets",
        "capabilities",
        "--model-ref",
        "--deadline-ms",
        "--session",
    ] {
        assert!(completions.stdout.contains(word), "{word}");
    }
}
