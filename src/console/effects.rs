//! Effects run off the UI thread, each on a short-lived worker calling the admin socket; the
//! result comes back as a message. The UI never waits on the server.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use zeroize::Zeroizing;

use super::model::{Effect, Loaded, Msg, ShownOnce};
use crate::admin::client::call;
use crate::admin::proto::{Request, Status};

pub const AUDIT_PAGE: usize = 5_000;

/// At most this many effects run at once; the rest wait their turn in the worker queue.
const WORKERS: usize = 4;

pub struct Runner {
    tx: Sender<Effect>,
}

impl Runner {
    pub fn start(socket: PathBuf, results: Sender<Msg>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Effect>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..WORKERS {
            let (rx, results, socket) = (rx.clone(), results.clone(), socket.clone());
            std::thread::spawn(move || {
                loop {
                    let next = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(effect) = next else { return };
                    if results.send(perform(&socket, effect)).is_err() {
                        return;
                    }
                }
            });
        }
        Self { tx }
    }

    pub fn spawn(&self, effect: Effect) {
        let _ = self.tx.send(effect);
    }
}

fn failed(e: crate::admin::client::ClientError) -> Msg {
    Msg::Failed(e.to_string())
}

/// One effect, blocking; the message it produces.
pub fn perform(socket: &std::path::Path, effect: Effect) -> Msg {
    let loaded = |l: Result<Loaded, _>| l.map_or_else(failed, Msg::Loaded);
    match effect {
        Effect::LoadConnections => {
            loaded(call(socket, &Request::ConnectionList { user: None }).map(Loaded::Connections))
        }
        Effect::LoadAgents => loaded(call(socket, &Request::AgentActivity).map(Loaded::Agents)),
        Effect::LoadProfiles => loaded(call(socket, &Request::ProfileList).map(Loaded::Profiles)),
        Effect::LoadScopes => loaded(call(socket, &Request::ScopesReport).map(Loaded::Scopes)),
        Effect::AuditCount => loaded(
            call::<Status>(socket, &Request::Status).map(|s| Loaded::AuditCount(s.audit_entries)),
        ),
        Effect::LoadAudit { after } => loaded(
            call(
                socket,
                &Request::AuditList {
                    after,
                    limit: AUDIT_PAGE,
                },
            )
            .map(Loaded::Audit),
        ),
        Effect::Verify => Msg::Loaded(Loaded::Verify(
            call(socket, &Request::AuditVerify).map_err(|e| e.to_string()),
        )),
        Effect::RevokeConnection(id) => Msg::Done(
            call::<serde_json::Value>(socket, &Request::ConnectionRevoke { id: id.clone() })
                .map(|_| format!("revoked connection {id}"))
                .map_err(|e| e.to_string()),
        ),
        Effect::RefreshConnection(id) => Msg::Done(
            call::<serde_json::Value>(socket, &Request::ConnectionRefresh { id: id.clone() })
                .map(|_| format!("refreshed connection {id}"))
                .map_err(|e| e.to_string()),
        ),
        Effect::AgentAdd {
            name,
            user,
            profile,
        } => {
            let r = call::<serde_json::Value>(
                socket,
                &Request::AgentAdd {
                    name: name.clone(),
                    user,
                    profile,
                },
            );
            match r {
                Ok(mut v) => {
                    // Moved straight into a zeroizing string; the JSON value is then wiped.
                    let token = match v.get_mut("token").map(serde_json::Value::take) {
                        Some(serde_json::Value::String(s)) => Zeroizing::new(s),
                        _ => return Msg::Done(Err("the server returned no token".into())),
                    };
                    Msg::AgentAdded {
                        agent: name,
                        token: ShownOnce(token),
                    }
                }
                Err(e) => Msg::Done(Err(e.to_string())),
            }
        }
        Effect::AgentRevoke(name) => Msg::Done(
            call::<serde_json::Value>(socket, &Request::AgentRevoke { name: name.clone() })
                .map(|_| format!("revoked agent {name}"))
                .map_err(|e| e.to_string()),
        ),
        Effect::ProfileSet { name, allow } => Msg::Done(
            call::<serde_json::Value>(
                socket,
                &Request::ProfileSet {
                    name: name.clone(),
                    allow,
                },
            )
            .map(|_| format!("saved profile {name}"))
            .map_err(|e| e.to_string()),
        ),
    }
}
