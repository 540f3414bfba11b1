//! `serve` and `serve --dev`: unlock, reconcile, run the listeners, drain on a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::admin::proto::Status;
use crate::config::{ClientSecretSource, Config};
use crate::datadir::{DataDir, DataDirLock};
use crate::gateway::{Gateway, SYSTEM};
use crate::passphrase::{self, Purpose};
use crate::secret::{ClientSecret, Passphrase, hex, random_array};
use crate::store::Store;
use crate::store::audit::Event;
use crate::vault::{KdfParams, Vault};
use crate::web;
use crate::web::demo::DemoProvider;

pub fn serve(
    dir: DataDir,
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    dev: bool,
) -> anyhow::Result<()> {
    if dev {
        return serve_dev(config, listen);
    }
    dir.check_private()?;
    // First, before anything else is touched: a second `serve` on this folder stops here and
    // leaves the first one's socket and files alone.
    let lock = dir.lock()?;
    let config_path = config.unwrap_or_else(|| dir.config_path());
    DataDir::check_config(&config_path)?;
    let mut config = Config::load(&config_path)?;
    if let Some(l) = listen {
        config.listen = l;
    }
    let pass = passphrase::read(Purpose::Unlock)?;
    let vault = Vault::unlock(&dir.vault_path(), &pass)?;
    drop(pass);
    let store = Store::open(
        &dir.store_path(),
        vault.pairing_id(),
        vault.audit_head_key(),
    )?;
    run(dir, lock, Gateway::new(config, vault, store), None, None)
}

/// A throwaway instance: a new private temporary folder, a random passphrase (so the KDF's
/// cost buys nothing and the floor parameters are used), the demo provider, removed on exit.
fn serve_dev(config: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("scopegate-dev-{}", hex(&random_array::<6>())));
    let dir = DataDir::new(&root);
    dir.create()?;
    let result = (|| {
        let lock = dir.lock()?;
        // Bind first: the public URL, redirect URI and demo issuer need the real port.
        let want = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let listener = std::net::TcpListener::bind(want)
            .with_context(|| format!("cannot listen on {want}"))?;
        let addr = listener.local_addr()?;
        let public = format!("http://{addr}");
        let pass = Passphrase::new(hex(&random_array::<32>()).into_bytes());
        let vault = Vault::create(&dir.vault_path(), &pass, KdfParams::FLOOR)?;
        let store = Store::create(
            &dir.store_path(),
            vault.pairing_id(),
            vault.audit_head_key(),
        )?;
        let (mut config, demo) = match config {
            Some(p) => (Config::load(&p)?, None),
            None => {
                let secret = ClientSecret::new(hex(&random_array::<32>()).into_bytes());
                let mut c = Config::parse(&dev_config(&public), "(built-in dev config)")?;
                if let Some(p) = c.providers.get_mut("demo") {
                    p.client_secret = ClientSecretSource::Generated(secret.clone());
                }
                (c, Some(Arc::new(DemoProvider::new(&public, secret, 3600))))
            }
        };
        config.listen = addr;
        let gateway = Gateway::new(config, vault, store);
        gateway.audit_event(Event::new(
            SYSTEM,
            "dev.start",
            &root.display().to_string(),
            "ok",
        ))?;
        gateway.user_add("demo")?;
        let link = gateway.login_link("demo")?;
        let (_, agent_token) = gateway.agent_add("demo-agent", "demo", None)?;
        println!(
            "scopegate: development mode; data in {} (deleted on exit)",
            root.display()
        );
        println!(
            "scopegate: admin commands: export SCOPEGATE_DATA_DIR={}",
            root.display()
        );
        println!(
            "scopegate: open this login link in a browser (single use, 15 minutes): {public}/login?token={}",
            String::from_utf8_lossy(link.expose_secret())
        );
        println!(
            "scopegate: agent token for MCP clients (user demo, no profile): {}",
            String::from_utf8_lossy(agent_token.expose_secret())
        );
        println!(
            "scopegate: after connecting `demo` in the browser, point an MCP client at {public}/mcp/demo with that token"
        );
        run(dir.clone(), lock, gateway, Some(listener), demo)
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn dev_config(public: &str) -> String {
    format!(
        r#"
public_url = "{public}"

[providers.demo]
issuer = "{public}/demo/oauth"
client_id = "scopegate-dev"

[services.demo]
provider = "demo"
mcp_url = "{public}/demo/mcp"
scopes = ["demo.read", "demo.write"]

[services.demo.tools]
whoami = ["demo.read"]
echo = ["demo.read"]
count = ["demo.read"]

[services.demo-search]
kind = "api_key"
mcp_url = "{public}/demo/mcp"
header = "X-API-Key"
rotate_after_days = 90
"#
    )
}

fn run(
    dir: DataDir,
    _lock: DataDirLock,
    gateway: Gateway,
    listener: Option<std::net::TcpListener>,
    demo: Option<Arc<DemoProvider>>,
) -> anyhow::Result<()> {
    let mut gateway = gateway;
    let (report, preloaded) = start_up_reads(&dir, &mut gateway)?;
    let gateway = Arc::new(gateway);
    if report.orphan_secrets_deleted + report.connections_needing_reauth > 0 {
        tracing::warn!(
            orphan_secrets_deleted = report.orphan_secrets_deleted,
            connections_needing_reauth = report.connections_needing_reauth,
            "reconciled the vault and the store after an interrupted change"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The token lifecycle (the refresh scheduler, its token requests and group commits) runs
    // on its own runtime whose threads have a lower CPU priority: when 100 000 tokens fall due
    // at once, agents' calls keep the CPU they need and the storm takes the rest.
    let lifecycle = tokio::runtime::Builder::new_multi_thread()
        // One worker: the lifecycle waits on commits and the network far more than it computes.
        .worker_threads(1)
        .thread_name("scopegate-lifecycle")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_async(
        dir,
        gateway,
        listener,
        demo,
        lifecycle.handle().clone(),
        preloaded,
    ));
    lifecycle.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Start-up's reads of every stored connection (reconciliation, the refresh scheduler's
/// placements), on small page caches; then both databases reopened with their serving caches,
/// empty.
fn start_up_reads(
    dir: &DataDir,
    gateway: &mut Gateway,
) -> anyhow::Result<(
    crate::gateway::ReconcileReport,
    Option<crate::lifecycle::Preloaded>,
)> {
    use crate::durable::{CACHE_BYTES, START_UP_CACHE_BYTES};
    // These reads touch every page once: a small cache serves them as well, and leaves
    // nothing large behind (see START_UP_CACHE_BYTES).
    reset_page_caches(dir, gateway, START_UP_CACHE_BYTES)?;
    let report = gateway
        .reconcile()
        .context("start-up reconciliation failed")?;
    // The refresh scheduler's start-up read of every connection happens here too, before the
    // caches start over (the scheduler keeps only the placements).
    let preloaded = if gateway.config.limits.proactive_refresh {
        Some(
            crate::lifecycle::Scheduler::preload(gateway, time::OffsetDateTime::now_utc())
                .context("cannot read the connections to schedule their refreshes")?,
        )
    } else {
        None
    };
    // Serving gets the full caches, empty: memory at rest does not depend on how many
    // connections are stored.
    reset_page_caches(dir, gateway, CACHE_BYTES)?;
    Ok((report, preloaded))
}

fn reset_page_caches(dir: &DataDir, gateway: &mut Gateway, bytes: usize) -> anyhow::Result<()> {
    gateway
        .vault
        .reset_page_cache(bytes)
        .context("cannot reopen the vault")?;
    gateway
        .store
        .reset_page_cache(&dir.store_path(), bytes)
        .context("cannot reopen the store")?;
    Ok(())
}

/// Nice 19 for the calling thread (on Linux, nice is per thread): when the CPU is contended
/// the kernel gives it about 1.5% of a normal thread's share, and all it wants otherwise.
fn lower_thread_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), LIFECYCLE_NICE) {
        tracing::debug!(error = %e, "cannot lower the lifecycle thread's priority");
    }
}

const LIFECYCLE_NICE: i32 = 19;

async fn run_async(
    dir: DataDir,
    gateway: Arc<Gateway>,
    prebound: Option<std::net::TcpListener>,
    demo: Option<Arc<DemoProvider>>,
    lifecycle: tokio::runtime::Handle,
    preloaded: Option<crate::lifecycle::Preloaded>,
) -> anyhow::Result<()> {
    let limits = gateway.config.limits.clone();
    let listener = match prebound {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(gateway.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", gateway.config.listen))?,
    };
    let addr = listener.local_addr()?;
    let socket = dir.socket_path();
    let (admin_listener, owner_uid) = crate::admin::server::bind(&socket)
        .with_context(|| format!("cannot bind the admin socket {}", socket.display()))?;
    {
        let g = gateway.clone();
        let a = addr.to_string();
        tokio::task::spawn_blocking(move || {
            g.audit_event(Event::new(SYSTEM, "serve.start", &a, "ok"))
        })
        .await??;
    }
    let metrics = Arc::new(web::Metrics::default());
    let oauth = Arc::new(crate::oauth::client::OAuthClient::new());
    let (tx, rx) = watch::channel(false);
    // Its group committer lives on the lifecycle runtime; agents' refresh flights run on this
    // (the main) runtime, at normal priority and outliving the listener thread that asked.
    let main = tokio::runtime::Handle::current();
    let refresher = {
        let _on = lifecycle.enter();
        Arc::new(
            crate::lifecycle::Refresher::new(
                gateway.clone(),
                oauth.clone(),
                Arc::new(crate::lifecycle::schedule::SystemClock),
            )
            .with_flights_on(main),
        )
    };
    if gateway.config.limits.proactive_refresh {
        let start = crate::lifecycle::Scheduler::start_with(
            refresher.clone(),
            gateway.config.limits.refresh_concurrency_per_provider,
            time::Duration::seconds(gateway.config.limits.refresh_startup_spread_secs as i64),
            rx.clone(),
            preloaded,
        );
        let scheduler = lifecycle.spawn(start).await??;
        tracing::info!(scheduled = scheduler.len(), "refresh scheduler started");
    }
    if gateway.config.services.values().any(|s| {
        matches!(
            s.kind,
            crate::config::ServiceKind::ApiKey {
                rotate_after_days: Some(_),
                ..
            }
        )
    }) {
        // The API-key rotation policy: at start, then hourly (only when a service sets one).
        let g = gateway.clone();
        let mut stop = rx.clone();
        tokio::spawn(async move {
            loop {
                let g2 = g.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || g2.rotation_sweep()).await {
                    tracing::warn!(error = %e, "API-key rotation sweep failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let state = web::AppState {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        oauth: oauth.clone(),
        public_url: gateway.config.public_url.clone(),
        demo,
        proxy: Arc::new(crate::proxy::Proxy::new(
            gateway.clone(),
            crate::proxy::audit_queue::AuditQueue::start(gateway.clone()),
            refresher,
        )),
    };
    let state_proxy = state.proxy.clone();
    let app = web::Listener {
        app: web::router(state, &limits),
        proxy: state_proxy.clone(),
        metrics,
    };
    let status = {
        let g = gateway.clone();
        let d = dir.root().display().to_string();
        Arc::new(move || {
            let r = g.store.read().ok();
            Status {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                data_dir: d.clone(),
                listen: addr.to_string(),
                users: r
                    .as_ref()
                    .and_then(|r| r.user_count().ok())
                    .map_or(0, |n| n as usize),
                connections: r
                    .as_ref()
                    .and_then(|r| r.connection_counts().ok())
                    .map_or(0, |c| c.iter().map(|(_, n)| *n as usize).sum()),
                audit_entries: r.as_ref().and_then(|r| r.audit_len().ok()).unwrap_or(0),
            }
        })
    };
    let web_task = tokio::spawn(web::serve_threads(listener, app, limits, rx.clone()));
    let refresh: crate::admin::server::RefreshNow = {
        let proxy = state_proxy.clone();
        Arc::new(move |id: String| {
            let proxy = proxy.clone();
            Box::pin(async move { proxy.refresh_now(&id).await })
        })
    };
    let admin_task = tokio::spawn(crate::admin::server::run_with(
        admin_listener,
        owner_uid,
        gateway.clone(),
        status,
        Some(refresh),
        rx,
    ));
    // Watch the signals before saying "ready": a SIGTERM right after it must drain, not kill.
    let stop = shutdown_signal();
    println!("scopegate: listening on http://{addr}");
    println!("scopegate: admin socket {}", socket.display());
    println!("scopegate: ready");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "serving");

    stop.await;
    tracing::info!("shutting down: draining connections");
    let _ = tx.send(true);
    let _ = admin_task.await;
    let _ = web_task.await;
    if !state_proxy
        .audit
        .flush(std::time::Duration::from_secs(5))
        .await
    {
        tracing::error!("per-call audit entries were still uncommitted at shutdown");
    }
    let _ = std::fs::remove_file(&socket);
    let g = gateway.clone();
    let _ = tokio::task::spawn_blocking(move || {
        g.audit_event(Event::new(SYSTEM, "serve.stop", &addr.to_string(), "ok"))
    })
    .await;
    println!("scopegate: stopped");
    Ok(())
}

/// Registers for SIGTERM and SIGINT at once (not at the first poll) and returns what waits.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot watch SIGTERM/SIGINT; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
