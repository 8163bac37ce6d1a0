//! `orchestratord`: the OrchQueue daemon as a library, so tests run the real
//! server in-process on an ephemeral port (see ARCHITECTURE.md for the map).

pub mod admission;
pub mod api;
pub mod clock;
pub mod config;
pub mod cursor;
pub mod engines;
pub mod error;
pub mod metrics;
pub mod placement;
pub mod queue;
pub mod runtime;
pub mod store;
mod test_handle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use contracts::config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use test_handle::TestHandle;

use crate::clock::Clock;
use crate::runtime::Orchestrator;
use crate::store::StoreLocation;

/// A started daemon: its address, its test handle, and its stop switch.
pub struct RunningServer {
    pub addr: SocketAddr,
    orchestrator: Arc<Orchestrator>,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn test_handle(&self) -> TestHandle {
        TestHandle::new(Arc::clone(&self.orchestrator))
    }

    /// Graceful stop (ORCH-7007): admission closes, running work gets the
    /// grace period, then the listener closes.
    pub async fn shutdown(mut self) {
        self.orchestrator.shutdown(self.grace).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.serve)
            .await
            .is_err()
        {
            // A connection that outlives the grace is closed, not left served by
            // an orchestrator that has stopped.
            self.serve.abort();
        }
        // The next daemon may open the store now, before this process exits.
        self.orchestrator.store.release().await;
    }

    /// Resolves when the listener stops (used by the binary).
    pub async fn wait(&mut self) {
        let _ = (&mut self.serve).await;
    }
}

/// Open the store (a SQLite file, or `postgres://…`), recover unfinished tasks,
/// start the workers and serve.
pub async fn start(
    config: Config,
    bind: &str,
    store: impl Into<StoreLocation>,
) -> anyhow::Result<RunningServer> {
    let store = store.into();
    config::validate(&config)?;
    let addr: SocketAddr = tokio::net::lookup_host(bind)
        .await
        .with_context(|| format!("cannot resolve bind address {bind:?}"))?
        .next()
        .with_context(|| format!("bind address {bind:?} resolves to nothing"))?;
    config::check_bind(&addr, &config)?;
    let store = store
        .open_for_daemon()
        .await
        .with_context(|| format!("cannot open the store {store}"))?;
    let orchestrator = Orchestrator::new(&config, store, Clock::default()).await;
    let (requeued, reset) = orchestrator.recover().await?;
    if requeued + reset > 0 {
        tracing::info!(requeued, reset, "recovered unfinished tasks from the store");
    }
    orchestrator.spawn_workers();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let app = api::router(api::AppState::new(
        Arc::clone(&orchestrator),
        config.keepalive_ms,
        config.max_body_bytes,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = tokio::spawn(async move {
        // Without TCP_NODELAY each SSE event waits for the client's delayed
        // ACK: ~40 ms added to time to first token.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, "orchestratord listening");
    Ok(RunningServer {
        addr,
        orchestrator,
        stop: Some(stop),
        serve,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}
