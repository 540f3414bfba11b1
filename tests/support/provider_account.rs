//! Helpers for the provider revocation tests: a connection recorded as the OAuth callback
//! would record it (with the provider's account ids), a fixed HTTP answer on 127.0.0.1, and
//! the HMAC the providers sign with.
#![allow(dead_code, clippy::unwrap_used)]

use hmac::{Hmac, Mac};
use scopegate::gateway::Gateway;
use scopegate::oauth::token::{TokenResponse, TokenType};
use scopegate::secret::{AccessToken, RefreshToken};
use scopegate::store::{Connection, PendingAuthorization};
use sha2::Sha256;

/// Connects `user` (created when missing) to `service` as the account `subject` (in `team`).
/// The tokens are `planted-access-{user}-{service}` / `planted-refresh-…`.
pub fn connect(
    g: &Gateway,
    user: &str,
    service: &str,
    subject: &str,
    team: Option<&str>,
) -> Connection {
    let u = match g.users().unwrap().into_iter().find(|u| u.name == user) {
        Some(u) => u,
        None => g.user_add(user).unwrap(),
    };
    let pending = pending(&u.id, service);
    let tokens = TokenResponse {
        access_token: AccessToken::new(format!("planted-access-{user}-{service}").into_bytes()),
        token_type: TokenType::Bearer,
        expires_in: Some(3600),
        refresh_token: Some(RefreshToken::new(
            format!("planted-refresh-{user}-{service}").into_bytes(),
        )),
        scope: None,
        subject: Some(subject.into()),
        team: team.map(str::to_owned),
    };
    g.finish_connect(&u, &pending, &tokens, vec![], None)
        .unwrap()
}

/// A pending authorization as the callback would have found it, for `finish_connect`.
pub fn pending(user_id: &str, service: &str) -> PendingAuthorization {
    PendingAuthorization {
        state_hash: "h".into(),
        user_id: user_id.into(),
        service: service.into(),
        browser_session_hash: "s".into(),
        verifier_record: "pending/x".into(),
        issuer: None,
        iss_required: false,
        scopes: vec![],
        redirect_uri: "http://127.0.0.1/cb".into(),
        expires: time::OffsetDateTime::now_utc(),
    }
}

/// A gateway in-process on a fresh data folder in `dir` (vault at the KDF floor).
pub fn gateway(dir: &std::path::Path, config: &str) -> Gateway {
    use scopegate::secret::Passphrase;
    use scopegate::vault::{KdfParams, Vault};
    let vault = Vault::create(
        &dir.join("secrets.redb"),
        &Passphrase::new(b"pw for tests".to_vec()),
        KdfParams::FLOOR,
    )
    .unwrap();
    let store = scopegate::store::Store::create(
        &dir.join("scopegate.redb"),
        vault.pairing_id(),
        vault.audit_head_key(),
    )
    .unwrap();
    Gateway::new(
        scopegate::config::Config::parse(config, "t").unwrap(),
        vault,
        store,
    )
}

pub fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut m = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Answers every request on 127.0.0.1 with the current `body` (JSON), counting requests.
pub struct Fixed {
    pub port: u16,
    pub body: std::sync::Arc<std::sync::Mutex<String>>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn serve_fixed(body: String) -> Fixed {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(std::sync::Mutex::new(body));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b, n) = (body.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let text = b.lock().unwrap().clone();
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Fixed { port, body, hits }
}
