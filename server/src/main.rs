//! `orchestratord` binary: flags, logging, signals.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use contracts::config::Config;
use orchestratord::store::StoreLocation;

/// OrchQueue daemon: admits LLM generation tasks into bounded priority
/// queues, places them on engine replicas and streams tokens as SSE.
///
/// With no --config it runs the built-in default: one pool `default` of two
/// deterministic `builtin` replicas, listening on 127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// YAML config file (pools, replicas, queues, timeouts).
    #[arg(long, env = "ORCH_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config's `bind`.
    #[arg(long, env = "ORCH_BIND")]
    bind: Option<String>,
    /// Where tasks are stored, overriding the config's `store`: a SQLite file, or a
    /// PostgreSQL URL (`postgres://user@host:5432/db`) that several daemons share.
    #[arg(long, env = "ORCH_STORE", value_name = "FILE|URL")]
    store: Option<String>,
    /// This daemon's name in metrics and logs, overriding the config's `instance`
    /// (default: the address it listens on). Daemons of one cluster may differ here.
    #[arg(long, env = "ORCH_INSTANCE")]
    instance: Option<String>,
    /// Validate the config file against the config schema and the semantic
    /// checks, print every error with its path, and exit (0 = valid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ORCH_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    if let Some(path) = &args.check_config {
        // Every problem, each with its path, then a non-zero exit (ORCH-7203).
        match orchestratord::config::load(path) {
            Ok(_) => {
                println!("{}: valid", path.display());
                return Ok(());
            }
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        }
    }
    let mut config = match &args.config {
        Some(path) => orchestratord::config::load(path)?,
        None => Config::default(),
    };
    if let Some(instance) = args.instance.clone() {
        config.instance = Some(instance);
    }
    let bind = args.bind.clone().unwrap_or_else(|| config.bind.clone());
    let store = StoreLocation::parse(args.store.as_deref().unwrap_or(&config.store));
    let mut server = orchestratord::start(config, &bind, store)
        .await
        .context("orchestratord failed to start")?;
    println!("orchestratord listening on {}", server.url());

    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("signal received: stopping admission and settling in-flight work");
            server.shutdown().await;
        }
        () = server.wait() => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
