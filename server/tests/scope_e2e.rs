//! Scope isolation and purge: many test runs share one server.

mod common;

use common::{shared_client, shared_url, task, text};
use contracts::{ErrorCode, FinishReason, StreamEvent, TaskRequest};
use orchctl::{Client, ListOptions};

// covers: ORCH-6010, ORCH-6011, ORCH-6012
#[tokio::test]
async fn two_scopes_under_concurrent_traffic_see_nothing_of_each_other() {
    // blue, green, and a third scope that only looks; all purged at the end.
    let [blue, green, third] = [shared_client(), shared_client(), shared_client()];
    let scopes = [&blue, &green].map(|guard| Client::clone(guard));
    let runs = scopes.clone().map(|client| {
        tokio::spawn(async move {
            let mut texts = Vec::new();
            for n in 0..12 {
                // Same client ids in both scopes: two different tasks each.
                let request = TaskRequest {
                    task_id: Some(format!("job-{n}")),
                    seed: Some(n),
                    ..task(&format!("{} prompt {n}", client.scope().unwrap()), 4)
                };
                client.submit(request).await.unwrap();
                if n % 4 == 3 {
                    client.cancel(&format!("job-{n}")).await.unwrap();
                }
            }
            for n in 0..12 {
                texts.push(text(&client.collect(&format!("job-{n}")).await.unwrap()));
            }
            texts
        })
    });
    let [blue_texts, green_texts] = runs;
    let (blue_texts, green_texts) = (blue_texts.await.unwrap(), green_texts.await.unwrap());
    assert_ne!(
        blue_texts, green_texts,
        "same ids, different prompts, different tasks"
    );
    for client in &scopes {
        let list = client.list(&ListOptions::default()).await.unwrap();
        assert_eq!(list.items.len(), 12);
        assert!(
            list.items
                .iter()
                .all(|s| s.scope.as_deref() == client.scope())
        );
    }
    // Nothing leaks into a third scope, nor into the default one.
    assert!(
        third
            .list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(third.status("job-0").await.unwrap_err().status(), Some(404));
    let unscoped = Client::new(shared_url());
    assert!(
        unscoped
            .list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        unscoped.status("job-0").await.unwrap_err().status(),
        Some(404)
    );
}

// covers: ORCH-6013
#[tokio::test]
async fn purging_a_scope_cancels_and_removes_everything_in_it_and_nothing_else() {
    let doomed = shared_client();
    let kept = shared_client();
    let running = doomed.submit(task("long", 2_000)).await.unwrap().task_id;
    let session_task = TaskRequest {
        session_id: Some("s".into()),
        ..task("with a session", 2)
    };
    let done = doomed.submit(session_task).await.unwrap().task_id;
    doomed.collect(&done).await.unwrap();
    let survivor = kept.submit(task("keep me", 2)).await.unwrap().task_id;
    let mut stream = Box::pin(doomed.stream(&running).await.unwrap());

    let purge = doomed.purge_scope(None).await.unwrap();
    assert_eq!(
        (
            purge.tasks_canceled,
            purge.tasks_purged,
            purge.sessions_purged
        ),
        (1, 2, 1)
    );
    let mut last = None;
    while let Some(event) = futures::StreamExt::next(&mut stream).await {
        last = Some(event.unwrap());
    }
    assert!(
        matches!(last, Some(StreamEvent::End(end)) if end.finish_reason == FinishReason::Canceled)
    );
    for id in [&running, &done] {
        assert_eq!(
            doomed
                .status(id)
                .await
                .unwrap_err()
                .envelope()
                .unwrap()
                .code,
            ErrorCode::NotFound
        );
    }
    assert!(
        doomed
            .list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(doomed.session("s").await.unwrap_err().status(), Some(404));
    kept.collect(&survivor).await.unwrap();
    assert_eq!(
        kept.list(&ListOptions::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}
