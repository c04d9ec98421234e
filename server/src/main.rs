//! `ringcached`: starts one ringcache node.

use std::process::ExitCode;

use clap::Parser;
use ringcache_server::cluster::Keyring;
use ringcache_server::config::{Cli, Config};
use ringcache_server::{Listeners, Node, dev_cluster, logging};

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
        runtime.block_on(async {
            let shutdown = shutdown_signal();
            dev_cluster::run(nodes, &args, shutdown).await
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(cli)?;
    if let Err(reason) = config.check_secure_bind() {
        eprintln!("ringcached: {reason}");
        return Ok(ExitCode::from(2));
    }
    logging::init(config.log_format);
    // Always set, so tokio never reads TOKIO_WORKER_THREADS (it panics on a bad value).
    let (workers, from) = config.worker_threads();
    let node = Node::new(config);
    // One node per process: every thread runs in its span, so every line names the node,
    // library lines from tasks it did not spawn included.
    let span = node.span().clone();
    let _entered = node.span().clone().entered();
    tracing::info!(workers, from, "starting the runtime");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .enable_all()
        .worker_threads(workers)
        .on_thread_start(move || logging::enter_for_thread(&span))
        .on_thread_stop(logging::exit_for_thread);
    runtime.build()?.block_on(async move {
        // The handlers are installed before any port opens: a signal that arrives once the node
        // answers must reach them, never the default action (which ends the process at once).
        let shutdown = shutdown_signal();
        let reload = reload_on_sighup(node.clone());
        let listeners = Listeners::bind(node.config()).await?;
        tokio::spawn(reload);
        node.serve(listeners, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reloads the node's secrets (gossip key ring, users, TLS files) on every SIGHUP. The handler is
/// installed when this is called (inside the runtime), not when the returned future first runs.
fn reload_on_sighup(node: std::sync::Arc<Node>) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hangups = match hangups {
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
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called (inside the
/// runtime), not when the returned future first runs.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |stream: std::io::Result<tokio::signal::unix::Signal>,
                        name: &'static str| async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received"),
                () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
            tracing::info!("SIGINT received");
        }
    }
}
