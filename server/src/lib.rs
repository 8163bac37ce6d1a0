//! `orchestratord`: the OrchQueue daemon as a library, so tests run the real
//! server in-process on an ephemeral port (see ARCHITECTURE.md for the map).

pub mod admission;
pub mod api;
pub mod clock;
pub mod cluster;
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
use crate::cluster::{ClusterMetrics, Member};
use crate::runtime::{Daemon, Orchestrator};
use crate::store::{ClusterTable, StoreLocation};

/// How a daemon serves: alone on its store, or as a member of a cluster on a
/// PostgreSQL store (ORCH-7012).
enum Node {
    Alone(Arc<Orchestrator>),
    Member(Arc<Member>),
}

/// A started daemon: its address, its test handle, and its stop switch.
pub struct RunningServer {
    pub addr: SocketAddr,
    node: Node,
    clock: Clock,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The hooks of this daemon's orchestrator; a cluster member has one only while
    /// it dispatches.
    pub fn test_handle(&self) -> TestHandle {
        let orchestrator = match &self.node {
            Node::Alone(orchestrator) => Arc::clone(orchestrator),
            Node::Member(member) => {
                member
                    .local()
                    .expect("test handle: this cluster member does not dispatch")
                    .orchestrator
            }
        };
        TestHandle::new(orchestrator)
    }

    /// Its membership, when the store is PostgreSQL.
    pub fn member(&self) -> Option<&Arc<Member>> {
        match &self.node {
            Node::Alone(_) => None,
            Node::Member(member) => Some(member),
        }
    }

    /// Moves this daemon's clock (watchdogs, deadlines, retention, the lease).
    pub fn advance_clock(&self, ms: u64) {
        self.clock.advance(ms);
    }

    /// Graceful stop (ORCH-7007): admission closes, running work gets the
    /// grace period, then the listener closes; a dispatcher gives its lease up.
    pub async fn shutdown(mut self) {
        match &self.node {
            Node::Alone(orchestrator) => orchestrator.shutdown(self.grace).await,
            Node::Member(member) => member.leave(self.grace).await,
        }
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
    }

    /// Stops the way `kill -9` does, for in-process tests: nothing more is written,
    /// the lease is not given up, connections are dropped.
    pub fn crash(self) {
        match &self.node {
            Node::Alone(orchestrator) => orchestrator.halt(),
            Node::Member(member) => member.crash(),
        }
        self.serve.abort();
    }

    /// Resolves when the listener stops (used by the binary).
    pub async fn wait(&mut self) {
        let _ = (&mut self.serve).await;
    }
}

/// Open the store (a SQLite file, or `postgres://…`), recover unfinished tasks,
/// start the workers and serve. On PostgreSQL the daemon joins the store's cluster
/// and does all that only while it holds the dispatcher lease (ORCH-7012).
pub async fn start(
    config: Config,
    bind: &str,
    store: impl Into<StoreLocation>,
) -> anyhow::Result<RunningServer> {
    let location = store.into();
    config::validate(&config)?;
    let addr: SocketAddr = tokio::net::lookup_host(bind)
        .await
        .with_context(|| format!("cannot resolve bind address {bind:?}"))?
        .next()
        .with_context(|| format!("bind address {bind:?} resolves to nothing"))?;
    config::check_bind(&addr, &config)?;
    let store = location
        .open()
        .await
        .with_context(|| format!("cannot open the store {location}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let daemon = Daemon {
        instance: config.instance.clone().unwrap_or_else(|| addr.to_string()),
        cluster: ClusterMetrics::default(),
    };
    let clock = Clock::default();
    let (node, app) = match &location {
        StoreLocation::Sqlite(_) => {
            daemon.cluster.dispatching.set(1);
            let orchestrator = dispatch(&config, store, &clock, &daemon).await?;
            let app = api::router(api::AppState::new(
                Arc::clone(&orchestrator),
                config.keepalive_ms,
                config.max_body_bytes,
            ));
            (Node::Alone(orchestrator), app)
        }
        StoreLocation::Postgres(url) => {
            let table = ClusterTable::connect(url)
                .await
                .with_context(|| format!("cannot open the store {location}"))?;
            let dispatcher: cluster::Dispatcher = {
                let (config, clock, daemon) = (config.clone(), clock.clone(), daemon.clone());
                Arc::new(move |epoch| {
                    let (config, store, clock, daemon) = (
                        config.clone(),
                        Arc::clone(&store),
                        clock.clone(),
                        daemon.clone(),
                    );
                    Box::pin(async move {
                        store.fence(epoch).await?;
                        let orchestrator = dispatch(&config, store, &clock, &daemon).await?;
                        let router = api::router(api::AppState::new(
                            Arc::clone(&orchestrator),
                            config.keepalive_ms,
                            config.max_body_bytes,
                        ));
                        Ok(cluster::Local {
                            orchestrator,
                            router,
                        })
                    })
                })
            };
            let member = Member::join(
                table,
                &config,
                daemon.instance.clone(),
                format!("http://{addr}"),
                clock.clone(),
                dispatcher,
                daemon.cluster.clone(),
            )
            .await?;
            tracing::info!(role = ?member.role(), "joined the cluster of the store");
            let app = api::front::router(Arc::clone(&member), config.max_body_bytes);
            (Node::Member(member), app)
        }
    };
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
    tracing::info!(%addr, instance = %daemon.instance, "orchestratord listening");
    Ok(RunningServer {
        addr,
        node,
        clock,
        stop: Some(stop),
        serve,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

/// The orchestrator of a dispatching daemon: pools built, unfinished tasks recovered
/// from the store, workers running.
async fn dispatch(
    config: &Config,
    store: Arc<dyn store::TaskStore>,
    clock: &Clock,
    daemon: &Daemon,
) -> anyhow::Result<Arc<Orchestrator>> {
    let orchestrator = Orchestrator::new(config, store, clock.clone(), daemon).await;
    let (requeued, reset) = orchestrator.recover().await?;
    if requeued + reset > 0 {
        tracing::info!(requeued, reset, "recovered unfinished tasks from the store");
    }
    orchestrator.spawn_workers();
    Ok(orchestrator)
}
