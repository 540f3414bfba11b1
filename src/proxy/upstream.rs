//! The proxy's upstream side: a client with a keep-alive pool per listener thread (HTTP and
//! HTTPS, HTTP/1.1 and HTTP/2 by ALPN), and the response body relay that streams upstream's
//! answer to the agent frame by frame.
//!
//! Not reqwest, and not hyper-util's pooled client: on this path reqwest re-parsed the target
//! URL of every response, and hyper-util's pool spends about 7k instructions a call (a select
//! against a lazy connect, SipHash of a pool key, a formatted Host header) that callgrind
//! showed as a measurable share of the per-call CPU. Here a service's origin is resolved once
//! at start ([`Origin`]), and each thread keeps its own idle connections, found by the origin's
//! number. The limits are kept: a connect timeout, a response-start timeout (504, in
//! `Proxy::forward`), and an idle-stream timeout that cuts a stream silent for too long but
//! never a live one.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tower::Service;

/// A connection idle for longer than this (an HTTP/1.1 one since its last exchange ended, an
/// HTTP/2 one since its last request went out) is not reused, and is dropped by the next
/// `sweep`: upstreams close theirs after a while too, often without a word.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 PINGs on a connection silent this long, and how long an answer may take, so a dead
/// peer (no FIN, no RST: a host gone or a middlebox that dropped the flow) is noticed and the
/// connection closed instead of taking requests that hang to the 504 (RFC 9113 §6.7).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream that announces how long it keeps an idle connection (`Keep-Alive: timeout=N`,
/// as Node's HTTP server does with 5 s) closes it then, and a request sent at that moment
/// meets the close: written, so never resent, and the agent gets a 502. A connection is
/// reused only until this much before the announced time.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);
/// Connections kept per origin and thread, idle or finishing an answer; more are closed once
/// their exchange ends.
const MAX_POOLED: usize = 512;

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

type Connector = HttpsConnector<HttpConnector>;

/// The connector on the shared TLS configuration: HTTPS or plain HTTP by the URL's scheme,
/// HTTP/2 when the server offers it by ALPN.
fn connector() -> Result<Connector, rustls::Error> {
    let tls = tls_config()?.clone();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// A service's MCP endpoint as the client needs it, made once at start.
#[derive(Debug)]
pub struct Origin {
    /// Unique in the process (not per `Proxy`), so two proxies in one process can never share
    /// a pooled connection, and so a credential, across services.
    id: u64,
    /// What the connector dials, and the HTTP/2 request target.
    uri: Uri,
    /// The HTTP/1.1 request target (origin-form, RFC 9112 §3.2.1).
    path: Uri,
    /// The HTTP/1.1 Host header (RFC 9112 §3.2): the port only when it is not the scheme's.
    host: HeaderValue,
}

impl Origin {
    pub fn new(uri: Uri) -> Result<Self, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must be http:// or https://".into()),
        };
        let host = uri.host().ok_or("the URL has no host")?;
        let host = match uri.port_u16() {
            Some(p) if p != if https { 443 } else { 80 } => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            path: path.parse().map_err(|e| format!("{e}"))?,
            host: HeaderValue::from_str(&host).map_err(|e| format!("{e}"))?,
            uri,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// One origin's connections on one thread.
#[derive(Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, each with the time it may be reused until, the most recent
    /// last.
    h1: Vec<(http1::SendRequest<Full<Bytes>>, Instant)>,
    /// One HTTP/2 connection carries every request to the origin at once; with the time of
    /// its last checkout.
    h2: Option<(http2::SendRequest<Full<Bytes>>, Instant)>,
}

struct Pool {
    connector: Connector,
    /// By origin id: a thread talks to few services, so a scan beats hashing.
    slots: Vec<(u64, Slot)>,
}

impl Pool {
    fn slot(&mut self, id: u64) -> &mut Slot {
        let i = match self.slots.iter().position(|(k, _)| *k == id) {
            Some(i) => i,
            None => {
                self.slots.push((id, Slot::default()));
                self.slots.len() - 1
            }
        };
        &mut self.slots[i].1
    }
}

thread_local! {
    /// One pool per listener thread: a request and the upstream connection it uses stay on the
    /// same event loop (a shared pool hands connections between threads, with a cross-thread
    /// wake-up per request).
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        #[allow(clippy::expect_used)]
        // invariant: the TLS roots were loaded at start (`Proxy::new`).
        let pool = p.get_or_insert_with(|| Pool {
            connector: connector().expect("TLS roots for the upstream client"),
            slots: Vec::new(),
        });
        f(pool)
    })
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A pooled connection ready for a request, if this thread has one; closed and long-idle ones
/// go at the next `sweep`.
fn checkout(origin: &Origin) -> Option<Conn> {
    with_pool(|pool| {
        let slot = pool.slot(origin.id);
        if let Some((h2, used)) = &mut slot.h2 {
            if !h2.is_closed() {
                *used = Instant::now();
                return Some(Conn::H2(h2.clone()));
            }
            slot.h2 = None;
        }
        // The most recent first: the least likely to have been closed by upstream meanwhile,
        // and the older ones, left unused when traffic falls, age out in the sweep.
        let now = Instant::now();
        let i = slot
            .h1
            .iter()
            .rposition(|(c, until)| c.is_ready() && now < *until)?;
        Some(Conn::H1(slot.h1.swap_remove(i).0))
    })
}

/// An HTTP/1.1 connection lent to one exchange. It goes back to this thread's pool when the
/// exchange is over: the answer relayed to its end, or abandoned (the agent went away), in
/// which case hyper reads the rest of it out, or closes the connection, before it is ready
/// again (`checkout` takes only a ready one). So the pool never holds, and `checkout` never
/// scans, connections busy with a long stream.
pub struct Lease(Option<(u64, http1::SendRequest<Full<Bytes>>, Duration)>);

impl Drop for Lease {
    fn drop(&mut self) {
        let Some((id, c, keep)) = self.0.take() else {
            return;
        };
        if c.is_closed() || keep.is_zero() {
            return;
        }
        // Never during a thread's teardown, nor inside another use of the pool.
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && let Some(pool) = p.as_mut()
            {
                let slot = pool.slot(id);
                if slot.h1.len() < MAX_POOLED {
                    slot.h1.push((c, Instant::now() + keep));
                }
            }
        });
    }
}

/// Drops this thread's pooled connections that are closed or idle for longer than allowed
/// (`IDLE_TIMEOUT`, or upstream's announced keep-alive); the listener calls it from its
/// once-a-second tick, so a quiet origin does not keep sockets open forever. An HTTP/1.1
/// connection dropped here closes at once (an idle one has no exchange); an HTTP/2 one once its
/// streams in flight, if any, have ended. Pools of other threads (a test's, a one-off
/// command's) are not swept: they end with their thread.
pub fn sweep() {
    sweep_at(Instant::now());
}

fn sweep_at(now: Instant) {
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && let Some(pool) = p.as_mut()
        {
            for (_, slot) in &mut pool.slots {
                slot.h1.retain(|(c, until)| !c.is_closed() && now < *until);
                if slot.h2.as_ref().is_some_and(|(c, used)| {
                    c.is_closed() || now.duration_since(*used) > IDLE_TIMEOUT
                }) {
                    slot.h2 = None;
                }
            }
        }
    });
}

/// A new connection to `origin`: TCP (and TLS with ALPN), then HTTP/2 if the server chose it,
/// else HTTP/1.1. Its driver runs as a task on this thread's event loop.
async fn connect(origin: &Origin) -> Result<Conn, SendError> {
    let mut connector = with_pool(|p| p.connector.clone());
    let io = connector
        .call(origin.uri.clone())
        .await
        .map_err(SendError::Connect)?;
    if io.connected().is_negotiated_h2() {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            // Idle too: a pooled connection whose peer is gone is then dropped before a call
            // is sent on it to hang until the 504.
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        tokio::spawn(conn);
        with_pool(|p| p.slot(origin.id).h2 = Some((send.clone(), Instant::now())));
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

/// Sends `req` (its method, headers and body; the target comes from `origin`) on a pooled
/// connection or a new one. A request a reused connection handed back unwritten (found
/// closed first) goes once more on a new connection, as hyper-util's client did: upstream
/// never saw it. One that was written is never resent, whatever happened next: a tool call
/// is not idempotent (RFC 9112 §9.3.1.1).
pub async fn send(
    origin: &Origin,
    mut req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Lease), SendError> {
    let mut pooled = checkout(origin);
    loop {
        let reused = pooled.is_some();
        let conn = match pooled.take() {
            Some(c) => c,
            // Boxed: a connection's setup (TLS and handshake state, some KiB) would otherwise
            // sit inline in every call's future and be copied with it, on every call.
            None => Box::pin(connect(origin)).await?,
        };
        let sent = match conn {
            Conn::H2(mut send) => {
                *req.uri_mut() = origin.uri.clone();
                *req.version_mut() = Version::HTTP_2;
                // Connection-specific; the target's authority says it (RFC 9113 §8.3.1).
                req.headers_mut().remove(header::HOST);
                send.try_send_request(req).await.map(|r| (r, Lease(None)))
            }
            Conn::H1(mut send) => {
                *req.uri_mut() = origin.path.clone();
                *req.version_mut() = Version::HTTP_11;
                req.headers_mut().insert(header::HOST, origin.host.clone());
                let r = send.try_send_request(req).await;
                r.map(|r| {
                    let keep = idle_allowed(&r);
                    (r, Lease(Some((origin.id, send, keep))))
                })
            }
        };
        match sent {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => req = unsent,
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// How long an HTTP/1.1 connection may sit idle in the pool after this answer: `IDLE_TIMEOUT`,
/// or less when upstream announced a shorter keep-alive (the `Keep-Alive` header, RFC 2068
/// §19.7.1.1); zero when it is about to close anyway.
fn idle_allowed(r: &Response<Incoming>) -> Duration {
    let Some(v) = r.headers().get("keep-alive") else {
        return IDLE_TIMEOUT;
    };
    let announced = v.to_str().ok().and_then(|v| {
        v.split(',').find_map(|p| {
            let (k, n) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("timeout")
                .then(|| n.trim().parse::<u64>().ok())?
        })
    });
    match announced {
        Some(secs) => Duration::from_secs(secs)
            .saturating_sub(KEEP_ALIVE_MARGIN)
            .min(IDLE_TIMEOUT),
        None => IDLE_TIMEOUT,
    }
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
/// (not even a heartbeat) ends with an error; `H` (the agent's stream slot, the upstream
/// connection's lease) is held as long as the relay: until hyper drops the body, at its end or
/// when the agent goes away.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use http_body_util::BodyExt;

    use super::*;

    /// Reads one HTTP/1.1 request (head and Content-Length body); `None` at end of stream.
    fn read_request(r: &mut BufReader<TcpStream>) -> Option<String> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        Some(head + &String::from_utf8(body).unwrap())
    }

    fn answer(s: &mut TcpStream, n: usize) {
        let body = format!("{{\"n\":{n}}}");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all((head + &body).as_bytes()).unwrap();
    }

    fn post(body: &'static str) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
        *req.method_mut() = hyper::Method::POST;
        req
    }

    fn pooled(origin: &Origin) -> usize {
        with_pool(|p| p.slot(origin.id).h1.len())
    }

    async fn text(r: Response<Incoming>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// A keep-alive connection is reused, with the request in origin-form and the Host header
    /// naming the origin; once upstream has closed it unannounced, the next request goes once,
    /// on a new connection.
    #[tokio::test]
    async fn a_pooled_connection_is_reused_and_one_closed_meanwhile_is_replaced() {
        let _ = tls_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = mpsc::channel::<(usize, String)>();
        let (close_tx, close) = mpsc::channel::<()>();
        let (closed_tx, closed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // First connection: two requests, then closed on the test's word, unannounced.
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for n in 0..2 {
                seen_tx.send((1, read_request(&mut r).unwrap())).unwrap();
                answer(&mut w, n);
            }
            close.recv().unwrap();
            w.shutdown(std::net::Shutdown::Both).unwrap();
            drop((r, w));
            closed_tx.send(()).unwrap();
            // Second connection: whatever comes.
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut n = 2;
            while let Some(req) = read_request(&mut r) {
                seen_tx.send((2, req)).unwrap();
                answer(&mut w, n);
                n += 1;
            }
        });
        let origin =
            Origin::new(format!("http://127.0.0.1:{port}/mcp?x=1").parse().unwrap()).unwrap();
        for n in 0..2 {
            let (r, lease) = send(&origin, post("{\"a\":1}")).await.unwrap();
            // Lent out until the exchange is over.
            assert_eq!(pooled(&origin), 0);
            assert_eq!(text(r).await, format!("{{\"n\":{n}}}"));
            drop(lease);
            assert_eq!(pooled(&origin), 1);
        }
        for _ in 0..2 {
            let (conn, req) = seen.recv().unwrap();
            assert_eq!(conn, 1, "the second request did not reuse the connection");
            assert!(req.starts_with("POST /mcp?x=1 HTTP/1.1\r\n"), "{req}");
            assert!(
                req.to_ascii_lowercase()
                    .contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
                "{req}"
            );
            assert!(req.ends_with("{\"a\":1}"), "{req}");
        }
        close_tx.send(()).unwrap();
        closed.recv().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (r, _lease) = send(&origin, post("{\"b\":2}")).await.unwrap();
        assert_eq!(text(r).await, "{\"n\":2}");
        let (conn, req) = seen.recv().unwrap();
        assert_eq!(conn, 2);
        assert!(req.ends_with("{\"b\":2}"), "{req}");
        assert!(seen.try_recv().is_err(), "the request was sent twice");
    }

    /// A request upstream read before it closed is not sent again (upstream may have acted
    /// on it): the caller gets the error.
    #[tokio::test]
    async fn a_request_upstream_received_is_never_resent() {
        let _ = tls_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            while let Ok((s, _)) = listener.accept() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                // The first request is answered; the second is read, then the socket closed.
                seen_tx.send(read_request(&mut r).unwrap()).unwrap();
                answer(&mut w, 0);
                if let Some(req) = read_request(&mut r) {
                    seen_tx.send(req).unwrap();
                }
            }
        });
        let origin = Origin::new(format!("http://127.0.0.1:{port}/mcp").parse().unwrap()).unwrap();
        let (r, lease) = send(&origin, post("{\"first\":1}")).await.unwrap();
        assert_eq!(text(r).await, "{\"n\":0}");
        drop(lease);
        assert!(send(&origin, post("{\"second\":1}")).await.is_err());
        assert!(seen.recv().unwrap().ends_with("{\"first\":1}"));
        assert!(seen.recv().unwrap().ends_with("{\"second\":1}"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            seen.try_recv().is_err(),
            "the second request was sent again"
        );
    }

    /// A call's future is moved a few times on its way into the event loop, so its size is
    /// copied per call: the connection setup (7 KiB of it, inline) stays boxed.
    #[test]
    fn a_call_future_stays_small() {
        let o = Origin::new("http://127.0.0.1:1/".parse().unwrap()).unwrap();
        let size = std::mem::size_of_val(&send(&o, post("{}")));
        assert!(size < 2048, "send's future is {size} bytes");
    }

    /// An upstream's announced keep-alive bounds how long its connection is reused: one
    /// second short of it, so a request never meets the close; at one second or less, not
    /// kept at all.
    #[tokio::test]
    async fn an_announced_keep_alive_timeout_is_honoured() {
        let _ = tls_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (ended_tx, ended) = mpsc::channel::<usize>();
        std::thread::spawn(move || {
            for (conn, timeout) in [(1, 3), (2, 1)] {
                let (s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                while read_request(&mut r).is_some() {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nKeep-Alive: max=100, Timeout={timeout}\r\ncontent-length: 2\r\n\r\n{{}}"
                    );
                    w.write_all(head.as_bytes()).unwrap();
                }
                ended_tx.send(conn).unwrap();
            }
        });
        let origin = Origin::new(format!("http://127.0.0.1:{port}/").parse().unwrap()).unwrap();
        let (r, lease) = send(&origin, post("{}")).await.unwrap();
        text(r).await;
        drop(lease);
        assert_eq!(pooled(&origin), 1);
        // Announced 3 s: kept for 2.
        sweep_at(Instant::now() + Duration::from_millis(1500));
        assert_eq!(pooled(&origin), 1, "dropped before its time");
        sweep_at(Instant::now() + Duration::from_millis(2500));
        assert_eq!(pooled(&origin), 0, "kept past upstream's announced close");
        // Its driver, on this thread, notices the handle is gone and closes the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ended.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        // Announced 1 s: closed as soon as the exchange is over.
        let (r, lease) = send(&origin, post("{}")).await.unwrap();
        text(r).await;
        drop(lease);
        assert_eq!(pooled(&origin), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ended.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
    }

    /// The sweep closes a connection idle past `IDLE_TIMEOUT`, and only then.
    #[tokio::test]
    async fn the_sweep_closes_long_idle_connections() {
        let _ = tls_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (ended_tx, ended) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            while read_request(&mut r).is_some() {
                answer(&mut w, 0);
            }
            ended_tx.send(()).unwrap();
        });
        let origin = Origin::new(format!("http://127.0.0.1:{port}/").parse().unwrap()).unwrap();
        let (r, lease) = send(&origin, post("{}")).await.unwrap();
        text(r).await;
        drop(lease);
        tokio::time::sleep(Duration::from_millis(50)).await;
        sweep();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            ended.try_recv().is_err(),
            "a fresh idle connection was closed"
        );
        sweep_at(Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1));
        // Its driver notices the handle is gone and closes the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ended.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn origins_give_the_request_target_and_host_as_sent() {
        let o = Origin::new("https://mcp.example.com/v1/mcp".parse().unwrap()).unwrap();
        assert_eq!(
            (o.path.to_string().as_str(), o.host.to_str().unwrap()),
            ("/v1/mcp", "mcp.example.com")
        );
        let o = Origin::new("https://mcp.example.com:443".parse().unwrap()).unwrap();
        assert_eq!(
            (o.path.to_string().as_str(), o.host.to_str().unwrap()),
            ("/", "mcp.example.com")
        );
        let o = Origin::new("http://127.0.0.1:8080/m?q=1".parse().unwrap()).unwrap();
        assert_eq!(
            (o.path.to_string().as_str(), o.host.to_str().unwrap()),
            ("/m?q=1", "127.0.0.1:8080")
        );
        let o2 = Origin::new("http://127.0.0.1:8080/m?q=1".parse().unwrap()).unwrap();
        assert_ne!(o.id, o2.id, "two services share a pool");
        assert!(Origin::new("ftp://example.com/".parse().unwrap()).is_err());
        assert!(Origin::new("/relative".parse().unwrap()).is_err());
    }
}
