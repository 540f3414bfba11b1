//! The public HTTP listener: routes and the limits every listener needs. No business logic
//! here; handlers call into `gateway`.
//!
//! Limits (DESIGN "Limits and hygiene"): a header-read timeout (hyper enforces it only when
//! given a `Timer`: here `coarse_timer`'s), a header size limit (431), a request body limit
//! (413, checked against Content-Length before the body is read and against streamed bodies as
//! they arrive), a cap on concurrent connections, and a graceful drain on shutdown with a
//! deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod browser;
pub mod demo;
pub mod demo_mcp;
pub mod pages;
pub mod webhooks;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::Limits;
use crate::gateway::Gateway;
use crate::store::ConnectionStatus;

#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub open_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub oauth: Arc<crate::oauth::client::OAuthClient>,
    pub public_url: url::Url,
    pub demo: Option<Arc<demo::DemoProvider>>,
    pub proxy: Arc<crate::proxy::Proxy>,
}

pub fn router(state: AppState, limits: &Limits) -> Router {
    let flow = Router::new()
        .route("/login", get(browser::login_page).post(browser::login))
        .route("/logout", post(browser::logout))
        .route("/connect", get(browser::connect_page))
        .route("/connect/{service}", post(browser::begin))
        .route("/connect/{service}/disconnect", post(browser::disconnect))
        .route("/oauth/callback", get(browser::callback))
        .layer(axum::middleware::map_response(harden_flow));
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(flow)
        .with_state(state.clone());
    app = app.merge(webhooks::routes(state.gateway.clone()));
    // `/mcp/{service}` is not here: `Listener` hands it to the proxy before any routing.
    if let Some(d) = &state.demo {
        app = app
            .merge(demo::routes(d.clone()))
            .merge(demo_mcp::routes(d.clone()));
    }
    app.layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
}

/// What every accepted connection is served by: MCP calls go straight to the proxy (the hot
/// path: no router, no middleware, no extractors; it enforces the body limit itself), every
/// other request to the router.
#[derive(Clone)]
pub struct Listener {
    pub app: Router,
    pub proxy: Arc<crate::proxy::Proxy>,
    pub metrics: Arc<Metrics>,
}

/// The `{service}` of `/mcp/{service}`: one non-empty path segment, matched as the router
/// would have matched it.
fn mcp_service(path: &str) -> Option<&str> {
    let s = path.strip_prefix("/mcp/")?;
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Listener {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
        if mcp_service(req.uri().path()).is_some() {
            let proxy = self.proxy.clone();
            return Box::pin(async move {
                // Uri clones share their bytes: the service name is not copied.
                let uri = req.uri().clone();
                let service = mcp_service(uri.path()).unwrap_or_default();
                Ok(crate::proxy::handle(proxy, service, req).await)
            });
        }
        Box::pin(tower::ServiceExt::oneshot(self.app.clone(), req))
    }
}

async fn harden_flow(r: Response) -> Response {
    pages::harden(r)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> Response {
    let g = s.gateway.clone();
    let snapshot = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        let r = g.store.read()?;
        let conns = r.connection_counts()?;
        let users = r.user_count()?;
        let head = r.audit_len()?;
        Ok((conns, users, head))
    })
    .await;
    let (conns, users, audit_entries) = match snapshot {
        Ok(Ok(v)) => v,
        _ => return (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response(),
    };
    let mut out = String::new();
    out.push_str("# HELP scopegate_up Whether the gateway is serving.\n# TYPE scopegate_up gauge\nscopegate_up 1\n");
    out.push_str(&format!(
        "# HELP scopegate_build_info Build information.\n# TYPE scopegate_build_info gauge\nscopegate_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(
        "# HELP scopegate_connections Connections by status.\n# TYPE scopegate_connections gauge\n",
    );
    for status in [
        ConnectionStatus::Active,
        ConnectionStatus::Refreshing,
        ConnectionStatus::NeedsReauth,
        ConnectionStatus::Revoked,
    ] {
        let n = conns
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        out.push_str(&format!(
            "scopegate_connections{{status=\"{}\"}} {n}\n",
            status.as_str()
        ));
    }
    out.push_str(&format!(
        "# HELP scopegate_users Users.\n# TYPE scopegate_users gauge\nscopegate_users {users}\n"
    ));
    out.push_str(&format!(
        "# HELP scopegate_audit_entries Entries in the audit log.\n# TYPE scopegate_audit_entries gauge\nscopegate_audit_entries {audit_entries}\n"
    ));
    out.push_str(&format!(
        "# HELP scopegate_api_keys_rotation_due API keys older than their service's rotate_after_days.\n# TYPE scopegate_api_keys_rotation_due gauge\nscopegate_api_keys_rotation_due {}\n",
        s.gateway.overdue_api_keys.load(Ordering::Relaxed)
    ));
    {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &s.proxy.refresher;
        out.push_str("# HELP scopegate_token_refreshes_total Token requests for refresh, by outcome.\n# TYPE scopegate_token_refreshes_total counter\n");
        for (outcome, n) in [
            ("ok", r.stats.ok.load(Relaxed)),
            ("rejected", r.stats.rejected.load(Relaxed)),
            ("transient", r.stats.transient.load(Relaxed)),
        ] {
            out.push_str(&format!(
                "scopegate_token_refreshes_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP scopegate_refresh_commits_total Store commits of refresh markers and results (group-committed).\n# TYPE scopegate_refresh_commits_total counter\nscopegate_refresh_commits_total {}\n",
            r.committer.commits.load(Relaxed)
        ));
    }
    let m = &s.metrics;
    out.push_str(&format!(
        "# HELP scopegate_http_requests_total HTTP requests received.\n# TYPE scopegate_http_requests_total counter\nscopegate_http_requests_total {}\n",
        m.http_requests.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# HELP scopegate_http_open_connections Open client connections.\n# TYPE scopegate_http_open_connections gauge\nscopegate_http_open_connections {}\n",
        m.open_connections.load(Ordering::Relaxed)
    ));
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Serves `listener` on `limits.listener_threads` threads (0: one per core), each running its
/// own single-threaded event loop that accepts from the same socket. A connection, its
/// requests and its upstream connections stay on one thread: no work-stealing wake-ups or
/// cross-core hand-offs per request, which profiling showed as a large share of the proxy's
/// CPU on the multi-threaded runtime. Returns once every thread has drained.
pub async fn serve_threads(
    listener: TcpListener,
    app: Listener,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let n = match limits.listener_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listener = listener.into_std()?;
    // One cap on open connections across all threads.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Everything that can fail is made before any thread starts: no half-started listener.
    let mut loops = Vec::with_capacity(n);
    for _ in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        loops.push((listener.try_clone()?, rt));
    }
    let mut threads = Vec::with_capacity(n);
    for (i, (l, rt)) in loops.into_iter().enumerate() {
        let (app, limits, stop, slots) =
            (app.clone(), limits.clone(), shutdown.clone(), slots.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("scopegate-http-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        // This thread's header-read and response-start timeouts.
                        crate::coarse_timer::install();
                        // A timer always due within a second: on an idle loop, an
                        // earlier-than-any deadline makes tokio's timer wake its own event
                        // loop (an eventfd write and an extra epoll round per call, seen with
                        // perf). With this tick pending, the few tokio timers a call may arm
                        // (a stream's idle timeout) are never the earliest.
                        tokio::spawn(async {
                            let mut tick = tokio::time::interval(Duration::from_secs(1));
                            loop {
                                tick.tick().await;
                                crate::coarse_timer::expire(std::time::Instant::now());
                                // This thread's long-idle upstream connections are closed.
                                crate::proxy::upstream::sweep();
                            }
                        });
                        match TcpListener::from_std(l) {
                            Ok(l) => serve(l, app, limits, slots, stop).await,
                            Err(e) => tracing::error!(error = %e, "cannot listen on this thread"),
                        }
                    });
                    // Whatever is left (a stream past the drain deadline) is dropped here.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?,
        );
    }
    drop(listener);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await
    .map_err(std::io::Error::other)
}

/// Accepts connections until `shutdown` flips, then drains them for up to the grace period.
async fn serve(
    listener: TcpListener,
    app: Listener,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Second-grained, on this thread's deadline list: no tokio timer per request.
        .timer(crate::coarse_timer::CoarseTimer)
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    loop {
        // At the cap, wait for a slot before accepting: excess clients queue in the kernel's
        // backlog instead of consuming memory here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    app.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), app.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        let m = app.metrics.clone();
        m.open_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = conn.await;
            m.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(Duration::from_secs(limits.shutdown_grace_secs)) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
}
