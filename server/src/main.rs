//! `ringcached`: starts one ringcache node.

use std::process::ExitCode;

use clap::Parser;
use ringcache_server::cluster::Keyring;
use ringcache_server::config::{Cli, Config, LogFormat};
use ringcache_server::{Listeners, Node, dev_cluster};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringcached: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Some(name) = &cli.gen_user {
        let role = cli.role.unwrap_or(ringcache_server::auth::Role::Read);
        let (stanza, secret) = ringcache_server::auth::new_user_stanza(name, role)?;
        println!("# Add to the users file (--users-file); the node keeps only the hash:");
        print!("{stanza}");
        println!("# The secret for {name} (shown once; clients send it with the user name):");
        println!("# {secret}");
        return Ok(ExitCode::SUCCESS);
    }
    if cli.gen_gossip_key {
        let key = Keyring::generate_key()
            .map_err(|_| anyhow::anyhow!("the system's secure random generator failed"))?;
        println!("{key}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(nodes) = cli.dev_cluster {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(dev_cluster::run(nodes, &args, shutdown_signal()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(cli)?;
    if let Err(reason) = config.check_secure_bind() {
        eprintln!("ringcached: {reason}");
        return Ok(ExitCode::from(2));
    }
    init_logging(config.log_format);
    // Always set, so tokio never reads TOKIO_WORKER_THREADS (it panics on a bad value).
    let (workers, from) = config.worker_threads();
    tracing::info!(workers, from, "starting the runtime");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().worker_threads(workers);
    runtime.build()?.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let node = Node::new(config);
        tokio::spawn(reload_on_sighup(node.clone()));
        node.serve(listeners, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reloads the node's secrets (gossip key ring, users, TLS files) on every SIGHUP.
async fn reload_on_sighup(node: std::sync::Arc<Node>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; secrets reload on change only");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading secrets");
            node.reload_secrets();
        }
    }
    #[cfg(not(unix))]
    drop(node);
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
