//! Serves the admin API. Requests run on the blocking pool (redb is synchronous); the
//! request line is never logged because it can carry an API key.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::proto::{MAX_REQUEST_BYTES, Request, Response, Status};
use crate::gateway::{ADMIN, Gateway};

/// Binds the socket, replacing a stale one. The caller holds the data-folder lock, so a
/// socket file that exists now belongs to a process that is gone.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, u32)> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!("replaced a stale admin socket left by a stopped server"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(path)?.uid();
    Ok((listener, owner))
}

/// Refreshes one connection now (by id); given by the server that owns the single-flight
/// refresher, so an admin's refresh and an agent's never race with the same refresh token.
pub type RefreshNow = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

pub async fn run(
    listener: UnixListener,
    owner_uid: u32,
    gateway: Arc<Gateway>,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) {
    run_with(listener, owner_uid, gateway, status, None, shutdown).await;
}

pub async fn run_with(
    listener: UnixListener,
    owner_uid: u32,
    gateway: Arc<Gateway>,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
    refresh: Option<RefreshNow>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let gateway = gateway.clone();
        let status = status.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, owner_uid, gateway, status, refresh).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    owner_uid: u32,
    gateway: Arc<Gateway>,
    status: Arc<dyn Fn() -> Status + Send + Sync>,
    refresh: Option<RefreshNow>,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    if peer.uid() != owner_uid {
        tracing::warn!(
            peer_uid = peer.uid(),
            "refused an admin connection from another user"
        );
        let resp = Response::err(format!("uid {} may not use this admin socket", peer.uid()));
        return write_response(&mut stream, &resp).await;
    }
    // Read straight into `line` (no BufReader: its buffer would keep a copy of an API key
    // that nothing zeroizes); stop at the newline or the size limit.
    // Capacity for the largest request, so growing never leaves a stale copy behind.
    let mut line = Vec::with_capacity(MAX_REQUEST_BYTES + 4096);
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = zeroize::Zeroizing::new([0u8; 4096]);
        loop {
            let n = stream.read(chunk.as_mut_slice()).await?;
            line.extend_from_slice(&chunk[..n]);
            if n == 0 || chunk[..n].contains(&b'\n') || line.len() > MAX_REQUEST_BYTES {
                return Ok::<_, std::io::Error>(line.len());
            }
        }
    })
    .await;
    let resp = match read {
        Err(_) => Response::err("timed out reading the request"),
        Ok(Err(e)) => {
            zeroize::Zeroize::zeroize(&mut line);
            return Err(e);
        }
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => Response::err("request too large"),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            // The serde message could quote input; keep only its category.
            Err(e) => Response::err(format!(
                "malformed request ({:?} at column {})",
                e.classify(),
                e.column()
            )),
            // Network I/O: not on the blocking pool, and no store transaction across it.
            Ok(Request::ConnectionRefresh { id }) => match &refresh {
                None => Response::err("this server cannot refresh connections"),
                Some(f) => {
                    let started = std::time::Instant::now();
                    let r = f(id).await;
                    let micros = started.elapsed().as_micros() as u64;
                    tracing::info!(
                        op = "connection_refresh",
                        micros,
                        ok = r.is_ok(),
                        "admin request"
                    );
                    match r {
                        Ok(()) => Response::ok(serde_json::Value::Null),
                        Err(e) => Response::err(e),
                    }
                }
            },
            Ok(req) => {
                let g = gateway.clone();
                let st = status.clone();
                tokio::task::spawn_blocking(move || dispatch(&g, &*st, req))
                    .await
                    .unwrap_or_else(|_| Response::err("internal error"))
            }
        },
    };
    zeroize::Zeroize::zeroize(&mut line);
    write_response(&mut stream, &resp).await
}

/// Bounded in time, so a client that stops reading cannot hold a handler forever.
async fn write_response(stream: &mut UnixStream, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(Duration::from_secs(30), async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "admin client stopped reading")
    })?
}

fn to_value<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("internal error: {e}")),
    }
}

fn dispatch(g: &Gateway, status: &(dyn Fn() -> Status + Send + Sync), req: Request) -> Response {
    let op = req.op();
    let started = std::time::Instant::now();
    let resp = run_request(g, status, req);
    let micros = started.elapsed().as_micros() as u64;
    match &resp.error {
        None => tracing::info!(op, micros, "admin request ok"),
        // Error texts are built to carry no secret values (tests grep for planted ones).
        Some(e) => tracing::info!(op, micros, error = %e, "admin request failed"),
    }
    resp
}

fn run_request(g: &Gateway, status: &(dyn Fn() -> Status + Send + Sync), req: Request) -> Response {
    let result = match req {
        Request::Status => Ok(to_value(status())),
        Request::UserAdd { name } => g.user_add(&name).map(to_value),
        Request::UserList => g.users().map(to_value),
        Request::UserRemove { name } => g
            .user_remove(&name)
            .map(|()| Response::ok(serde_json::Value::Null)),
        Request::UserLink { name } => g.login_link(&name).map(|token| {
            let base = g.config.public_url.as_str().trim_end_matches('/');
            let t = String::from_utf8_lossy(token.expose_secret()).into_owned();
            to_value(serde_json::json!({ "url": format!("{base}/login?token={t}") }))
        }),
        Request::ConnectionList { user } => g.connections(user.as_deref()).map(to_value),
        Request::ConnectionRevoke { id } => g.connection_revoke(&id, ADMIN).map(to_value),
        Request::ApikeySet { service, user, key } => g.apikey_set(&service, &user, &key).map(|c| {
            to_value(serde_json::json!({"connection": c.id, "fingerprint": c.secret_fingerprint}))
        }),
        Request::AuditList { after, limit } => {
            g.audit_after(after, limit.min(10_000)).map(to_value)
        }
        Request::AuditVerify => g.audit_verify().map(to_value),
        // The token crosses the owner-only socket once, to be printed once.
        Request::AgentAdd { name, user, profile } => g.agent_add(&name, &user, profile.as_deref()).map(|(a, token)| {
            to_value(serde_json::json!({"agent": a.id, "token": String::from_utf8_lossy(token.expose_secret())}))
        }),
        Request::AgentList => g.agents().map(to_value),
        Request::AgentRevoke { name } => g.agent_revoke(&name).map(|()| Response::ok(serde_json::Value::Null)),
        Request::ProfileAdd { name, allow } => {
            match allow.iter().map(|r| crate::policy::parse_rule(r)).collect::<Result<Vec<_>, _>>() {
                Ok(rules) => g.profile_add(&name, rules).map(to_value),
                Err(e) => Ok(Response::err(e)),
            }
        }
        Request::ProfileList => g.profiles().map(to_value),
        Request::ProfileRemove { name } => g.profile_remove(&name).map(|()| Response::ok(serde_json::Value::Null)),
        Request::ProfileSet { name, allow } => {
            match allow.iter().map(|r| crate::policy::parse_rule(r)).collect::<Result<Vec<_>, _>>() {
                Ok(rules) => g.profile_set(&name, rules).map(to_value),
                Err(e) => Ok(Response::err(e)),
            }
        }
        Request::AgentActivity => g.agent_views().map(to_value),
        Request::ScopesReport => g.scopes_report().map(to_value),
        // Answered in `handle` (it needs the async refresher).
        Request::ConnectionRefresh { .. } => Ok(Response::err("internal error")),
    };
    result.unwrap_or_else(|e| Response::err(e.to_string()))
}
