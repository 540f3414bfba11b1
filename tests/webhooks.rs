//! Provider revocation webhooks (I18), in-process through the router: a verified signal cleans
//! up exactly the named account's connections; forged, unsigned, tampered, stale and replayed
//! requests change nothing (store, vault and audit log compared before and after).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/provider_account.rs"]
mod provider_account;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use provider_account::{Fixed, connect, hmac_hex, serve_fixed};
use scopegate::gateway::Gateway;
use scopegate::store::ConnectionStatus;
use tower::ServiceExt;

const GITHUB_SECRET: &str = "gh-webhook-secret-for-tests";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

struct Fixture {
    _t: tempfile::TempDir,
    g: Arc<Gateway>,
    /// One router for the whole test, so its replay memory persists between requests.
    app: axum::Router,
}

fn fixture(extra: &str) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    std::fs::write(dir.join("gh.secret"), format!("{GITHUB_SECRET}\n")).unwrap();
    std::fs::write(dir.join("slack.secret"), SLACK_SECRET).unwrap();
    let config = format!(
        "[providers.gh]\npreset = \"github\"\nclient_id = \"c\"\nwebhook_secret_file = \"{d}/gh.secret\"\n\
         [providers.slack]\npreset = \"slack\"\nclient_id = \"c\"\nwebhook_secret_file = \"{d}/slack.secret\"\n\
         [services.repos]\nprovider = \"gh\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\n\
         [services.chat]\nprovider = \"slack\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\n{extra}",
        d = dir.display()
    );
    let g = Arc::new(provider_account::gateway(&dir, &config));
    Fixture {
        _t: t,
        app: scopegate::web::webhooks::routes_with(g.clone(), std::time::Duration::from_secs(2)),
        g,
    }
}

/// Everything a webhook could change: connections, sealed records, the audit log's length.
fn snapshot(
    g: &Gateway,
) -> (
    Vec<scopegate::store::Connection>,
    std::collections::BTreeSet<String>,
    u64,
) {
    let r = g.store.read().unwrap();
    (
        r.connections().unwrap(),
        g.vault.records().unwrap(),
        r.audit_len().unwrap(),
    )
}

/// A Slack event signed with the right secret, sent now.
async fn send_slack(f: &Fixture, body: &[u8]) -> (StatusCode, String) {
    send(
        f,
        "/webhooks/slack",
        &slack_headers(now(), body, SLACK_SECRET),
        body,
    )
    .await
}

async fn send(
    f: &Fixture,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (StatusCode, String) {
    let app = f.app.clone();
    let mut req = Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = app
        .oneshot(req.body(Body::from(body.to_vec())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn status_of(g: &Gateway, id: &str) -> ConnectionStatus {
    g.store
        .read()
        .unwrap()
        .connections()
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
        .status
}

const GH_REVOKE: &[u8] =
    br#"{"action":"revoked","sender":{"login":"octocat","id":583231,"type":"User"}}"#;

fn gh_headers(sig: Option<String>, delivery: &str) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("x-github-event", "github_app_authorization".to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        ("content-type", "application/json".to_owned()),
    ];
    if let Some(s) = sig {
        h.push(("x-hub-signature-256", s));
    }
    h
}

#[tokio::test]
async fn github_revocation_cleans_up_only_the_named_user() {
    let f = fixture("");
    let octo = connect(&f.g, "alice", "repos", "583231", None);
    let other = connect(&f.g, "bob", "repos", "999", None);
    let octo_record = octo.secret_record.clone().unwrap();
    let sig = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[GH_REVOKE]));
    let (st, _) = send(
        &f,
        "/webhooks/github",
        &gh_headers(Some(sig.clone()), "d-1"),
        GH_REVOKE,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status_of(&f.g, &octo.id), ConnectionStatus::NeedsReauth);
    assert_eq!(status_of(&f.g, &other.id), ConnectionStatus::Active);
    let records = f.g.vault.records().unwrap();
    assert!(
        !records.contains(&octo_record),
        "the revoked tokens are still sealed"
    );
    assert!(records.contains(other.secret_record.as_ref().unwrap()));
    let audit = f.g.audit_after(0, 1000).unwrap();
    let e = audit
        .iter()
        .rev()
        .find(|e| e.action == "webhook.revocation")
        .unwrap();
    assert_eq!(e.details["connections"], octo.id);
    let line = format!("{audit:?}");
    assert!(!line.contains("planted-") && !line.contains(GITHUB_SECRET));
    // The same delivery again is acknowledged without a second entry.
    let before = snapshot(&f.g);
    let (st, body) = send(
        &f,
        "/webhooks/github",
        &gh_headers(Some(sig), "d-1"),
        GH_REVOKE,
    )
    .await;
    assert_eq!(
        (st, body.as_str()),
        (StatusCode::OK, "duplicate delivery\n")
    );
    assert_eq!(snapshot(&f.g), before);
}

#[tokio::test]
async fn forged_unsigned_and_tampered_github_deliveries_change_nothing() {
    let f = fixture("");
    connect(&f.g, "alice", "repos", "583231", None);
    let before = snapshot(&f.g);
    let good = hmac_hex(GITHUB_SECRET, &[GH_REVOKE]);
    let tampered =
        br#"{"action":"revoked","sender":{"login":"octocat","id":583232,"type":"User"}}"#;
    let cases: Vec<(Option<String>, &[u8])> = vec![
        (None, GH_REVOKE),
        (
            Some(format!("sha256={}", hmac_hex("wrong secret", &[GH_REVOKE]))),
            GH_REVOKE,
        ),
        (Some(format!("sha256={good}")), tampered),
        (Some(format!("sha1={good}")), GH_REVOKE),
        (Some(good.clone()), GH_REVOKE),
        (Some("sha256=".into()), GH_REVOKE),
        (Some(format!("sha256={}", &good[..63])), GH_REVOKE),
    ];
    for (i, (sig, body)) in cases.into_iter().enumerate() {
        let (st, _) = send(
            &f,
            "/webhooks/github",
            &gh_headers(sig, &format!("f-{i}")),
            body,
        )
        .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "case {i}");
        assert_eq!(snapshot(&f.g), before, "case {i} changed something");
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn slack_headers(ts: i64, body: &[u8], secret: &str) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let sig = format!(
        "v0={}",
        hmac_hex(secret, &[b"v0:", ts.as_bytes(), b":", body])
    );
    vec![
        ("x-slack-request-timestamp", ts),
        ("x-slack-signature", sig),
        ("content-type", "application/json".to_owned()),
    ]
}

fn slack_event(team: &str, event: &str, event_time: i64) -> Vec<u8> {
    format!(
        r#"{{"token":"legacy","team_id":"{team}","api_app_id":"A1","type":"event_callback","event_id":"Ev{event_time}","event_time":{event_time},"event":{event}}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn slack_tokens_revoked_and_app_uninstalled_clean_up_the_named_accounts() {
    let f = fixture("");
    let alice = connect(&f.g, "alice", "chat", "U1", Some("T1"));
    let bob = connect(&f.g, "bob", "chat", "U2", Some("T1"));
    let carol = connect(&f.g, "carol", "chat", "U1", Some("T2"));
    let gh = connect(&f.g, "dave", "repos", "U1", None);
    let body = slack_event(
        "T1",
        r#"{"type":"tokens_revoked","tokens":{"oauth":["U1"],"bot":[]}}"#,
        now(),
    );
    let (st, _) = send_slack(&f, &body).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status_of(&f.g, &alice.id), ConnectionStatus::NeedsReauth);
    for other in [&bob, &carol, &gh] {
        assert_eq!(
            status_of(&f.g, &other.id),
            ConnectionStatus::Active,
            "{}",
            other.user_id
        );
    }
    assert!(
        !f.g.vault
            .records()
            .unwrap()
            .contains(alice.secret_record.as_ref().unwrap())
    );
    let body = slack_event("T1", r#"{"type":"app_uninstalled"}"#, now());
    let (st, _) = send_slack(&f, &body).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status_of(&f.g, &bob.id), ConnectionStatus::NeedsReauth);
    assert_eq!(status_of(&f.g, &carol.id), ConnectionStatus::Active);
    assert_eq!(status_of(&f.g, &gh.id), ConnectionStatus::Active);
}

#[tokio::test]
async fn slack_url_verification_is_answered_only_when_signed() {
    let f = fixture("");
    let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (st, text) = send(&f, "/webhooks/slack", &[], body).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(!text.contains("3eZbrw1a"));
    let (st, text) = send(
        &f,
        "/webhooks/slack",
        &slack_headers(now(), body, "wrong"),
        body,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(!text.contains("3eZbrw1a"));
    let (st, text) = send(
        &f,
        "/webhooks/slack",
        &slack_headers(now(), body, SLACK_SECRET),
        body,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
}

#[tokio::test]
async fn forged_stale_future_and_replayed_slack_requests_change_nothing() {
    let f = fixture("");
    let alice = connect(&f.g, "alice", "chat", "U1", Some("T1"));
    let body = slack_event(
        "T1",
        r#"{"type":"tokens_revoked","tokens":{"oauth":["U1"]}}"#,
        now() - 400,
    );
    let before = snapshot(&f.g);
    let mut forged = slack_headers(now(), &body, SLACK_SECRET);
    forged[0].1 = (now() - 1).to_string(); // the signed timestamp swapped
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("unsigned", vec![]),
        (
            "wrong secret",
            slack_headers(now(), &body, "not-the-secret"),
        ),
        ("stale", slack_headers(now() - 301, &body, SLACK_SECRET)),
        ("future", slack_headers(now() + 120, &body, SLACK_SECRET)),
        ("timestamp swapped", forged),
    ];
    for (name, headers) in cases {
        let (st, _) = send(&f, "/webhooks/slack", &headers, &body).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(snapshot(&f.g), before, "{name} changed something");
    }
    // A genuine, fresh request revokes; the user reconnects; the captured request replayed
    // (same signature) and the old event re-signed later both leave the new grant alone.
    let event = slack_event(
        "T1",
        r#"{"type":"tokens_revoked","tokens":{"oauth":["U1"]}}"#,
        now() - 2,
    );
    let captured = slack_headers(now(), &event, SLACK_SECRET);
    let (st, _) = send(&f, "/webhooks/slack", &captured, &event).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(status_of(&f.g, &alice.id), ConnectionStatus::NeedsReauth);
    let again = connect(&f.g, "alice", "chat", "U1", Some("T1"));
    assert_eq!(again.status, ConnectionStatus::Active);
    let before = snapshot(&f.g);
    let (st, _) = send(&f, "/webhooks/slack", &captured, &event).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(snapshot(&f.g), before, "the replay changed something");
    let old = slack_event(
        "T1",
        r#"{"type":"tokens_revoked","tokens":{"oauth":["U1"]}}"#,
        now() - 3600,
    );
    let (st, _) = send(
        &f,
        "/webhooks/slack",
        &slack_headers(now(), &old, SLACK_SECRET),
        &old,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (conns, records, _) = snapshot(&f.g);
    assert_eq!(
        (conns, records),
        (before.0, before.1),
        "an old event undid a reconnection"
    );
}

// ---- Security Event Tokens (RFC 8417 / RFC 8935) ----

use base64::Engine;
use ring::signature::{self as sig, KeyPair};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

const ISSUER: &str = "https://issuer.example/";
const AUDIENCE: &str = "corp-client";
const RSA_KID: &str = "rsa-1";
const EC_KID: &str = "ec-1";

enum Signer {
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
}

impl Signer {
    fn rsa() -> Self {
        // A 2048-bit key made for these tests (`openssl genpkey`, PKCS#1 DER): ring signs RSA
        // but cannot generate RSA keys.
        let der = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/risc_test_rsa.der"
        ))
        .unwrap();
        Signer::Rsa(sig::RsaKeyPair::from_der(&der).unwrap())
    }

    fn ec() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pk8 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Signer::Ec(
            sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                pk8.as_ref(),
                &rng,
            )
            .unwrap(),
        )
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Signer::Rsa(k) => {
                let c: sig::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                serde_json::json!({"kty":"RSA","kid":kid,"use":"sig","alg":"RS256","n":b64(&c.n),"e":b64(&c.e)})
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                serde_json::json!({"kty":"EC","crv":"P-256","kid":kid,"x":b64(&p[1..33]),"y":b64(&p[33..65])})
            }
        }
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let s = match self {
            Signer::Rsa(k) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(&sig::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
                    .unwrap();
                out
            }
            Signer::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&s))
    }

    fn set(&self, kid: &str, claims: &serde_json::Value) -> String {
        let alg = match self {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        };
        self.sign(
            &serde_json::json!({"alg": alg, "kid": kid, "typ": "secevent+jwt"}),
            claims,
        )
    }
}

fn claims(event: &str, sub: &str, jti: &str, iat: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": iat, "jti": jti,
        "events": { event: { "subject": {"subject_type": "iss-sub", "iss": ISSUER, "sub": sub} } }
    })
}

const TOKENS_REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked";
const SESSIONS_REVOKED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";

async fn jwks_server(keys: Vec<serde_json::Value>) -> Fixed {
    serve_fixed(serde_json::json!({ "keys": keys }).to_string()).await
}

fn risc_config(port: u16) -> String {
    format!(
        "[providers.corp]\nauthorization_endpoint = \"http://127.0.0.1:9/authorize\"\n\
         token_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"{AUDIENCE}\"\n\
         risc_jwks_uri = \"http://127.0.0.1:{port}/jwks\"\nrisc_issuer = \"{ISSUER}\"\n\
         [services.drive]\nprovider = \"corp\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\n"
    )
}

async fn post_set(f: &Fixture, set: &str) -> (StatusCode, String) {
    send(
        f,
        "/webhooks/risc/corp",
        &[("content-type", "application/secevent+jwt".to_owned())],
        set.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn signed_security_event_tokens_clean_up_the_named_subject() {
    let (rsa, ec) = (Signer::rsa(), Signer::ec());
    let jwks = jwks_server(vec![rsa.jwk(RSA_KID), ec.jwk(EC_KID)]).await;
    let f = fixture(&risc_config(jwks.port));
    let alice = connect(&f.g, "alice", "drive", "S1", None);
    let bob = connect(&f.g, "bob", "drive", "S2", None);
    let carol = connect(&f.g, "carol", "drive", "S3", None);
    let (st, body) = post_set(
        &f,
        &rsa.set(RSA_KID, &claims(TOKENS_REVOKED, "S1", "j-1", now())),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(status_of(&f.g, &alice.id), ConnectionStatus::NeedsReauth);
    assert_eq!(status_of(&f.g, &bob.id), ConnectionStatus::Active);
    assert!(
        !f.g.vault
            .records()
            .unwrap()
            .contains(alice.secret_record.as_ref().unwrap())
    );
    let (st, _) = post_set(
        &f,
        &ec.set(EC_KID, &claims(SESSIONS_REVOKED, "S2", "j-2", now())),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(status_of(&f.g, &bob.id), ConnectionStatus::NeedsReauth);
    let mut disabled = claims(
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        "S3",
        "j-3",
        now(),
    );
    disabled["events"]["https://schemas.openid.net/secevent/risc/event-type/account-disabled"]["reason"] =
        "hijacking".into();
    assert_eq!(
        post_set(&f, &rsa.set(RSA_KID, &disabled)).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(status_of(&f.g, &carol.id), ConnectionStatus::NeedsReauth);
    // Google's verification event is acknowledged and recorded, nothing more.
    let verification = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "iat": now(), "jti": "j-4",
        "events": {"https://schemas.openid.net/secevent/risc/event-type/verification": {"state": "abc"}}});
    assert_eq!(
        post_set(&f, &rsa.set(RSA_KID, &verification)).await.0,
        StatusCode::ACCEPTED
    );
    let audit = f.g.audit_after(0, 1000).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "webhook.event" && e.target == "verification")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "webhook.revocation")
            .count(),
        3
    );
    assert_eq!(
        jwks.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );
}

#[tokio::test]
async fn unverifiable_security_event_tokens_change_nothing() {
    let (rsa, ec, stranger) = (Signer::rsa(), Signer::ec(), Signer::ec());
    let jwks = jwks_server(vec![rsa.jwk(RSA_KID), ec.jwk(EC_KID)]).await;
    let f = fixture(&risc_config(jwks.port));
    let alice = connect(&f.g, "alice", "drive", "S1", None);
    let good = claims(TOKENS_REVOKED, "S1", "j-1", now());
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let valid = rsa.set(RSA_KID, &good);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = b64(with("jti", "j-9".into()).to_string().as_bytes());
    let tampered = parts.join(".");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unsigned",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"secevent+jwt"}"#),
                b64(good.to_string().as_bytes())
            ),
            "invalid_key",
        ),
        (
            "another key, same kid",
            stranger.set(EC_KID, &good),
            "authentication_failed",
        ),
        (
            "unknown kid",
            stranger.set("stranger", &good),
            "invalid_key",
        ),
        ("tampered payload", tampered, "authentication_failed"),
        (
            "RSA key named for ES256",
            ec.set(RSA_KID, &good),
            "authentication_failed",
        ),
        (
            "wrong issuer",
            rsa.set(RSA_KID, &with("iss", "https://evil.example/".into())),
            "invalid_issuer",
        ),
        (
            "wrong audience",
            rsa.set(RSA_KID, &with("aud", "someone-else".into())),
            "invalid_audience",
        ),
        (
            "stale",
            rsa.set(RSA_KID, &with("iat", (now() - 8 * 24 * 3600).into())),
            "invalid_request",
        ),
        (
            "from the future",
            rsa.set(RSA_KID, &with("iat", (now() + 3600).into())),
            "invalid_request",
        ),
        (
            "an ID token",
            rsa.sign(
                &serde_json::json!({"alg":"RS256","kid":RSA_KID,"typ":"JWT"}),
                &good,
            ),
            "invalid_request",
        ),
        ("not a JWS", "hello".into(), "invalid_request"),
    ];
    let before = snapshot(&f.g);
    for (name, set, code) in cases {
        let (st, body) = post_set(&f, &set).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["err"], code, "{name}");
        assert!(v["description"].is_string(), "{name}");
        assert_eq!(snapshot(&f.g), before, "{name} changed something");
    }
    // Unknown kids refetch the JWKS at most once per interval.
    assert!(jwks.hits.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    // A genuine SET acts; replayed after the user reconnects, its jti is known: nothing moves.
    assert_eq!(post_set(&f, &valid).await.0, StatusCode::ACCEPTED);
    assert_eq!(status_of(&f.g, &alice.id), ConnectionStatus::NeedsReauth);
    connect(&f.g, "alice", "drive", "S1", None);
    let before = snapshot(&f.g);
    assert_eq!(post_set(&f, &valid).await.0, StatusCode::ACCEPTED);
    assert_eq!(snapshot(&f.g), before, "the replayed SET changed something");
    // An old event with a new jti leaves the newer grant alone too.
    let old = rsa.set(
        RSA_KID,
        &claims(TOKENS_REVOKED, "S1", "j-old", now() - 3600),
    );
    assert_eq!(post_set(&f, &old).await.0, StatusCode::ACCEPTED);
    let (conns, records, _) = snapshot(&f.g);
    assert_eq!((conns, records), (before.0, before.1));
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let (old, new) = (Signer::ec(), Signer::ec());
    let jwks = jwks_server(vec![old.jwk("k-old")]).await;
    let f = fixture(&risc_config(jwks.port));
    let c = connect(&f.g, "alice", "drive", "S1", None);
    let verification = |jti: &str| {
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "iat": now(), "jti": jti,
        "events": {"https://schemas.openid.net/secevent/risc/event-type/verification": {}}})
    };
    assert_eq!(
        post_set(&f, &old.set("k-old", &verification("v1"))).await.0,
        StatusCode::ACCEPTED
    );
    *jwks.body.lock().unwrap() = serde_json::json!({"keys": [new.jwk("k-new")]}).to_string();
    // Within the refetch interval the new kid is unknown...
    assert_eq!(
        post_set(&f, &new.set("k-new", &verification("v2"))).await.0,
        StatusCode::BAD_REQUEST
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // ...after it, the token that names it makes the gateway fetch the set again.
    let (st, body) = post_set(
        &f,
        &new.set("k-new", &claims(TOKENS_REVOKED, "S1", "r1", now())),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(status_of(&f.g, &c.id), ConnectionStatus::NeedsReauth);
    assert_eq!(jwks.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}
