//! Provider revocation end to end through the real binary and listener (I18): an agent's call
//! works, the provider's signed webhook or Security Event Token arrives, the connection's
//! tokens are gone at once and the agent's next call gets the reconnect answer; nothing
//! secret reaches the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/provider_account.rs"]
mod provider_account;

use base64::Engine;
use harness::Instance;
use provider_account::{connect, hmac_hex, serve_fixed};
use ring::signature::{self as sig, KeyPair};
use scopegate::config::Config;
use scopegate::gateway::Gateway;
use scopegate::secret::Passphrase;
use scopegate::store::Store;
use scopegate::vault::Vault;
use serde_json::{Value, json};

const GH_SECRET: &str = "e2e-github-hook-secret";
const SLACK_SECRET: &str = "e2e-slack-signing-secret";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Records the three connections with the library while the server is stopped, as the
/// OAuth callback would.
fn connect_offline(inst: &Instance) {
    let vault = Vault::unlock(
        &inst.dir.join("secrets.redb"),
        &Passphrase::new(inst.pass.as_bytes().to_vec()),
    )
    .unwrap();
    let store = Store::open(
        &inst.dir.join("scopegate.redb"),
        vault.pairing_id(),
        vault.audit_head_key(),
    )
    .unwrap();
    let config = Config::load(&inst.dir.join("scopegate.toml")).unwrap();
    let g = Gateway::new(config, vault, store);
    for (service, subject, team) in [
        ("repos", "583231", None),
        ("chat", "U1", Some("T1")),
        ("drive", "S1", None),
    ] {
        connect(&g, "alice", service, subject, team);
    }
}

async fn tool_call(http: &reqwest::Client, base: &str, token: &str, service: &str) -> Value {
    let r = http
        .post(format!("{base}/mcp/{service}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn assert_works(v: &Value, service: &str) {
    assert_eq!(
        v["result"]["content"][0]["text"], "upstream ok",
        "{service}: {v}"
    );
}

fn assert_reconnect(v: &Value, service: &str) {
    assert_eq!(v["error"]["code"], -32042, "{service}: {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(service),
        "{v}"
    );
}

#[tokio::test]
async fn signed_revocations_through_the_listener_make_the_agent_reconnect() {
    let upstream = serve_fixed(
        json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"upstream ok"}]}})
            .to_string(),
    )
    .await;
    let rng = ring::rand::SystemRandom::new();
    let pk8 =
        sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng)
            .unwrap();
    let p = key.public_key().as_ref();
    let jwks = serve_fixed(json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":b64(&p[1..33]),"y":b64(&p[33..65])}]}).to_string()).await.port;
    let upstream = upstream.port;
    let gw = browser::free_port();
    let base = format!("http://127.0.0.1:{gw}");
    let tmp = tempfile::tempdir().unwrap();
    let slack_file = tmp.path().join("slack.secret");
    std::fs::write(&slack_file, format!("{SLACK_SECRET}\n")).unwrap();
    let inst = Instance::init_with(&format!(
        "listen = \"127.0.0.1:{gw}\"\npublic_url = \"{base}\"\n\
         [providers.gh]\npreset = \"github-app\"\nclient_id = \"c\"\nwebhook_secret_env = \"GH_HOOK_SECRET\"\n\
         [providers.slack]\npreset = \"slack\"\nclient_id = \"c\"\nwebhook_secret_file = \"{}\"\n\
         [providers.corp]\nauthorization_endpoint = \"http://127.0.0.1:9/a\"\ntoken_endpoint = \"http://127.0.0.1:9/t\"\n\
         client_id = \"corp-client\"\nrisc_jwks_uri = \"http://127.0.0.1:{jwks}/jwks\"\nrisc_issuer = \"https://issuer.example/\"\n\
         [services.repos]\nprovider = \"gh\"\nmcp_url = \"http://127.0.0.1:{upstream}/mcp\"\n\
         [services.chat]\nprovider = \"slack\"\nmcp_url = \"http://127.0.0.1:{upstream}/mcp\"\n\
         [services.drive]\nprovider = \"corp\"\nmcp_url = \"http://127.0.0.1:{upstream}/mcp\"\n",
        slack_file.display()
    ));
    connect_offline(&inst);
    let mut server = inst.start_with(|c| {
        c.env("GH_HOOK_SECRET", GH_SECRET);
    });
    let token = inst
        .ok(&["agent", "add", "claude", "--user", "alice"], b"")
        .trim()
        .to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for s in ["repos", "chat", "drive"] {
        assert_works(&tool_call(&http, &base, &token, s).await, s);
    }

    // GitHub: github_app_authorization / revoked, signed with the secret from the environment.
    let body = br#"{"action":"revoked","sender":{"login":"octocat","id":583231}}"#;
    let forged = http
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "github_app_authorization")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex("guess", &[body])),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    assert_works(&tool_call(&http, &base, &token, "repos").await, "repos");
    let r = http
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "github_app_authorization")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(GH_SECRET, &[body])),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_reconnect(&tool_call(&http, &base, &token, "repos").await, "repos");
    assert_works(&tool_call(&http, &base, &token, "chat").await, "chat");

    // Slack: tokens_revoked, signed with the secret from the file.
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let body = format!(
        r#"{{"team_id":"T1","type":"event_callback","event_id":"Ev1","event_time":{ts},"event":{{"type":"tokens_revoked","tokens":{{"oauth":["U1"]}}}}}}"#
    );
    let r = http
        .post(format!("{base}/webhooks/slack"))
        .header("x-slack-request-timestamp", &ts)
        .header(
            "x-slack-signature",
            format!(
                "v0={}",
                hmac_hex(
                    SLACK_SECRET,
                    &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]
                )
            ),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_reconnect(&tool_call(&http, &base, &token, "chat").await, "chat");
    assert_works(&tool_call(&http, &base, &token, "drive").await, "drive");

    // RISC: a Security Event Token verified against the JWKS served on 127.0.0.1.
    let claims = json!({"iss":"https://issuer.example/","aud":"corp-client","iat":time::OffsetDateTime::now_utc().unix_timestamp(),"jti":"e2e-1",
        "events":{"https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked":{"subject":{"subject_type":"iss-sub","iss":"https://issuer.example/","sub":"S1"}}}});
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"k1","typ":"secevent+jwt"}"#),
        b64(claims.to_string().as_bytes())
    );
    let set = format!(
        "{input}.{}",
        b64(key.sign(&rng, input.as_bytes()).unwrap().as_ref())
    );
    let r = http
        .post(format!("{base}/webhooks/risc/corp"))
        .header("content-type", "application/secevent+jwt")
        .body(set)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_reconnect(&tool_call(&http, &base, &token, "drive").await, "drive");

    let conns: Vec<Value> =
        serde_json::from_str(&inst.ok(&["connection", "list", "--json"], b"")).unwrap();
    assert_eq!(conns.len(), 3);
    assert!(
        conns.iter().all(|c| c["status"] == "needs_reauth"),
        "{conns:?}"
    );
    assert!(server.term().success());
    let logs = server.logs();
    for secret in [GH_SECRET, SLACK_SECRET, "planted-access", "planted-refresh"] {
        assert!(!logs.contains(secret), "{secret} reached the log");
    }
    let vault = Vault::unlock(
        &inst.dir.join("secrets.redb"),
        &Passphrase::new(inst.pass.as_bytes().to_vec()),
    )
    .unwrap();
    assert!(
        vault
            .records()
            .unwrap()
            .iter()
            .all(|r| !r.starts_with("secret/")),
        "sealed tokens remain"
    );
    let audit = inst.ok(&["audit", "list", "--json"], b"");
    assert_eq!(audit.matches("webhook.revocation").count(), 3, "{audit}");
    assert!(
        !audit.contains("planted-") && !audit.contains(GH_SECRET) && !audit.contains(SLACK_SECRET)
    );
}
