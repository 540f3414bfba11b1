//! The proxy's upstream side: a bare hyper client with a keep-alive pool (HTTP and HTTPS,
//! HTTP/1.1 and HTTP/2), and the response body relay that streams upstream's answer to the
//! agent frame by frame.
//!
//! Not reqwest: on this path reqwest re-parsed the target URL of every response and added
//! layers the proxy does not use (redirects are never followed here), which profiling showed
//! as a measurable share of the per-call CPU. The limits reqwest gave are kept here: a connect
//! timeout, a response-start timeout (504, in `Proxy::forward`), and an idle-stream timeout
//! that cuts a stream silent for too long but never a live one.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};

pub type Upstream = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The TLS configuration every listener thread's pool shares: verification uses the
/// platform's roots, as reqwest did for us, and one verifier loads them once for the process
/// (not once per thread).
pub fn tls_config() -> Result<&'static rustls::ClientConfig, rustls::Error> {
    static TLS: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    if let Some(c) = TLS.get() {
        return Ok(c);
    }
    use rustls_platform_verifier::BuilderVerifierExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = rustls::ClientConfig::builder()
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(TLS.get_or_init(|| tls))
}

/// A pooled client on the shared TLS configuration.
pub fn client() -> Result<Upstream, rustls::Error> {
    let tls = tls_config()?.clone();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

thread_local! {
    /// One pool per listener thread: a request and the upstream connection it uses stay on the
    /// same event loop (a shared pool hands connections between threads, with a cross-thread
    /// wake-up per request).
    static CLIENT: std::cell::OnceCell<Upstream> = const { std::cell::OnceCell::new() };
}

/// Sends `req` on this thread's pool. The TLS configuration was made once at start
/// (`Proxy::new`), so building a thread's pool cannot fail later.
pub fn request(req: hyper::Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
    #[allow(clippy::expect_used)] // invariant: checked at start, see above.
    CLIENT.with(|c| {
        c.get_or_init(|| client().expect("TLS roots for the upstream client"))
            .request(req)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("upstream sent nothing for {0:?}; the stream was closed")]
    Idle(Duration),
    #[error("upstream stream failed: {0}")]
    Upstream(#[from] hyper::Error),
}

/// Upstream's response body on its way to the agent: frames pass through unchanged and
/// unbuffered (SSE events arrive as upstream sends them); a stream that is silent for `idle`
/// (not even a heartbeat) ends with an error; `H` (the agent's stream slot) is held until the
/// body is finished or dropped.
pub struct Relay<H> {
    inner: Incoming,
    idle: Duration,
    last_frame: Instant,
    /// Armed only when upstream makes us wait: a one-frame JSON answer never touches a timer.
    timer: Option<Pin<Box<Sleep>>>,
    _held: H,
}

impl<H> Relay<H> {
    pub fn new(inner: Incoming, idle: Duration, held: H) -> Self {
        Self {
            inner,
            idle,
            last_frame: Instant::now(),
            timer: None,
            _held: held,
        }
    }
}

impl<H: Unpin> Body for Relay<H> {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if this.timer.is_some() {
                this.last_frame = Instant::now();
            }
            return Poll::Ready(frame.map(|f| f.map_err(RelayError::from)));
        }
        if this.timer.is_none() {
            // The first wait: we are polled right after the last frame (or the response head),
            // so the silence starts now.
            this.last_frame = Instant::now();
        }
        loop {
            let deadline = this.last_frame + this.idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            ready!(timer.as_mut().poll(cx));
            // The timer fired; a frame may have arrived since it was set.
            let now = Instant::now();
            let deadline = this.last_frame + this.idle;
            if deadline <= now {
                return Poll::Ready(Some(Err(RelayError::Idle(this.idle))));
            }
            timer.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
