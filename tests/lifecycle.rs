//! The token lifecycle in-process, against a scripted token endpoint on 127.0.0.1, for paths
//! a real provider cannot be made to take on cue: here, a DPoP refresh answer sealed in the
//! vault whose store commit then failed (I16), adopted by the next attempt with the binding it
//! was issued with (RFC 9449 §5) and without a second token request.
#![allow(clippy::unwrap_used)]

#[path = "support/provider_account.rs"]
mod provider_account;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use scopegate::gateway::Gateway;
use scopegate::lifecycle::Refresher;
use scopegate::lifecycle::schedule::SystemClock;
use scopegate::oauth::client::OAuthClient;
use scopegate::oauth::dpop::DpopKey;
use scopegate::oauth::token::{TokenResponse, TokenType};
use scopegate::secret::{AccessToken, RefreshToken};

/// Answers token requests with DPoP-bound tokens; on the first one it makes the store's next
/// commit fail before answering, as a crash between the vault's commit and the store's would.
async fn token_endpoint(g: Arc<std::sync::OnceLock<Arc<Gateway>>>) -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proven = Arc::new(AtomicUsize::new(0));
    let p2 = proven.clone();
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = hits.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 65536];
            let len = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
            if head.contains("\r\ndpop: ") {
                p2.fetch_add(1, Ordering::SeqCst);
            }
            if n == 0 {
                g.get().unwrap().store.dangerous_inject_audit_failure(true);
            }
            let body = format!(
                r#"{{"access_token":"rotated-access-{n}","token_type":"DPoP","expires_in":600,"refresh_token":"rotated-refresh-{n}"}}"#
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (port, proven)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_dpop_answer_keeps_its_binding_and_is_not_requested_again() {
    let cell = Arc::new(std::sync::OnceLock::new());
    let (port, proven) = token_endpoint(cell.clone()).await;
    let t = tempfile::tempdir().unwrap();
    let config = format!(
        "[providers.stub]\nauthorization_endpoint = \"http://127.0.0.1:{port}/authorize\"\n\
         token_endpoint = \"http://127.0.0.1:{port}/token\"\nclient_id = \"c\"\ndpop = true\n\
         [services.files]\nprovider = \"stub\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\nscopes = [\"a\"]\n"
    );
    let g = Arc::new(provider_account::gateway(t.path(), &config));
    assert!(cell.set(g.clone()).is_ok());

    // Connected with a key whose proof the server ignored: Bearer tokens, not bound.
    let user = g.user_add("alice").unwrap();
    let key = scopegate::oauth::dpop::generate().unwrap();
    let jkt = DpopKey::from_pkcs8(key.expose_secret())
        .unwrap()
        .thumbprint()
        .to_owned();
    let pending = provider_account::pending(&user.id, "files");
    let tokens = TokenResponse {
        access_token: AccessToken::new(b"first-access".to_vec()),
        token_type: TokenType::Bearer,
        expires_in: Some(600),
        refresh_token: Some(RefreshToken::new(b"first-refresh".to_vec())),
        scope: None,
        subject: None,
        team: None,
    };
    let conn = g
        .finish_connect(&user, &pending, &tokens, vec![], Some(&key))
        .unwrap();
    assert_eq!(conn.dpop_jkt, None);

    let read = |id: &str| g.store.read().unwrap().connection(id).unwrap().unwrap();
    let refresher = Arc::new(Refresher::new(
        g.clone(),
        Arc::new(OAuthClient::new()),
        Arc::new(SystemClock),
    ));
    // The provider answers with DPoP-bound tokens, sealed; the store commit fails.
    let first = refresher
        .refresh(&conn.id, conn.secret_record.as_deref())
        .await;
    assert!(first.is_err(), "the store commit was made to fail");
    g.store.dangerous_inject_audit_failure(false);
    let c = read(&conn.id);
    let sealed = c
        .refresh
        .pending_record
        .clone()
        .expect("the marker names the record");
    assert!(c.refresh.in_flight_since.is_some());
    assert_eq!(
        g.vault
            .get(&sealed, "access_token")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"rotated-access-0"
    );

    // The next attempt adopts the sealed answer: no second token request (it would replay a
    // rotated refresh token), and the connection is bound as the answer said.
    refresher
        .refresh(&c.id, c.secret_record.as_deref())
        .await
        .unwrap();
    assert_eq!(
        proven.load(Ordering::SeqCst),
        1,
        "one token request, with a proof"
    );
    let c = read(&conn.id);
    assert_eq!(c.secret_record.as_deref(), Some(sealed.as_str()));
    assert_eq!(
        c.dpop_jkt.as_deref(),
        Some(jkt.as_str()),
        "adopted as Bearer"
    );
    assert!(c.refresh.in_flight_since.is_none());
    let audit = g.store.read().unwrap().audit_after(0, 10_000).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "oauth.refresh"
            && e.outcome == "ok"
            && e.details.contains_key("recovered")),
        "no recovery audited"
    );
}
