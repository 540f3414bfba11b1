//! The connect flow's edges with stand-in servers on 127.0.0.1: bad token responses store
//! nothing; presets build the authorization URL their provider needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/harness.rs"]
mod harness;

use browser::{Browser, free_port};
use harness::Instance;

/// Serves one canned HTTP response to every request.
async fn canned(status: u16, body: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

async fn signed_in(inst: &Instance, base: &str) -> Browser {
    inst.ok(&["user", "add", "alice"], b"");
    let link = inst.ok(&["user", "link", "alice"], b"").trim().to_owned();
    let mut b = Browser::new();
    let token = Browser::form_value(&b.get(&link).await.body, "token");
    b.post(&format!("{base}/login"), &[("token", &token)]).await;
    b
}

#[tokio::test]
async fn malformed_token_responses_are_clear_errors_and_store_nothing() {
    let huge = format!(
        "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":60}}",
        "x".repeat(1_100_000)
    );
    let cases: Vec<(u16, String, &str)> = vec![
        (200, r#"{"token_type":"Bearer","expires_in":60}"#.into(), "no access_token"),
        (200, r#"{"access_token":"planted-at-1","expires_in":60}"#.into(), "no token_type"),
        (200, r#"{"access_token":"planted-at-2","token_type":"Bearer"}"#.into(), "no expires_in"),
        (200, r#"{"access_token":"planted-at-3","token_type":"Bearer","expires_in":-1}"#.into(), "invalid expires_in"),
        (200, r#"{"access_token":"planted-at-4","token_type":"Bearer","expires_in":"soon"}"#.into(), "invalid expires_in"),
        (200, r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#.into(), "bad_verification_code"),
        (200, "<html>not json</html>".into(), "not a JSON object"),
        (200, huge, "larger than 1 MiB"),
    ];
    for (status, body, want) in cases {
        let token_port = canned(status, body).await;
        let gw = free_port();
        let base = format!("http://127.0.0.1:{gw}");
        let inst = Instance::init_with(&format!(
            "listen = \"127.0.0.1:{gw}\"\n[providers.p]\nauthorization_endpoint = \"http://127.0.0.1:9/authorize\"\n\
             token_endpoint = \"http://127.0.0.1:{token_port}/token\"\nclient_id = \"c\"\n\
             [services.s]\nprovider = \"p\"\nmcp_url = \"http://127.0.0.1:9/mcp\"\nscopes = [\"x\"]\n"
        ));
        let mut server = inst.start();
        let mut b = signed_in(&inst, &base).await;
        let csrf = Browser::form_value(&b.get(&format!("{base}/connect")).await.body, "csrf");
        let start = b
            .post(&format!("{base}/connect/s"), &[("csrf", &csrf)])
            .await;
        let loc = reqwest::Url::parse(start.location.as_deref().unwrap()).unwrap();
        let state = loc
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let page = b
            .get(&format!("{base}/oauth/callback?code=abc&state={state}"))
            .await;
        assert_eq!(page.status, 502, "{want}: {}", page.body);
        assert!(page.body.contains(want), "{want}: {}", page.body);
        assert!(
            !page.body.contains("planted-at"),
            "a token value reached the page"
        );
        let conns: Vec<serde_json::Value> =
            serde_json::from_str(&inst.ok(&["connection", "list", "--json"], b"")).unwrap();
        assert!(conns.is_empty(), "{want}: a connection was recorded");
        assert!(server.term().success());
        assert!(
            !server.logs().contains("planted-at"),
            "a token value reached the log"
        );
        let v = scopegate::vault::Vault::unlock(
            &inst.dir.join("secrets.redb"),
            &scopegate::secret::Passphrase::new(inst.pass.as_bytes().to_vec()),
        )
        .unwrap();
        assert!(
            v.records()
                .unwrap()
                .iter()
                .all(|r| !r.starts_with("secret/")),
            "{want}: tokens were sealed"
        );
    }
}

#[tokio::test]
async fn presets_build_the_authorization_url_their_provider_needs() {
    let gw = free_port();
    let base = format!("http://127.0.0.1:{gw}");
    let inst = Instance::init_with(&format!(
        "listen = \"127.0.0.1:{gw}\"\npublic_url = \"{base}\"\n\
         [providers.google]\npreset = \"google\"\nclient_id = \"g-id\"\nclient_secret_env = \"G\"\n\
         [providers.slack]\npreset = \"slack\"\nclient_id = \"s-id\"\n\
         [providers.ms]\npreset = \"microsoft\"\ntenant = \"contoso\"\nclient_id = \"m-id\"\n\
         [services.drive]\nprovider = \"google\"\nmcp_url = \"https://drive.example/mcp\"\nscopes = [\"https://www.googleapis.com/auth/drive.readonly\"]\nresource = \"https://drive.example/mcp\"\n\
         [services.chat]\nprovider = \"slack\"\nmcp_url = \"https://chat.example/mcp\"\nscopes = [\"search:read\"]\n\
         [services.mail]\nprovider = \"ms\"\nmcp_url = \"https://mail.example/mcp\"\nscopes = [\"Mail.Read\"]\n"
    ));
    let _server = inst.start();
    let mut b = signed_in(&inst, &base).await;
    let csrf = Browser::form_value(&b.get(&format!("{base}/connect")).await.body, "csrf");
    let mut urls = std::collections::BTreeMap::new();
    for svc in ["drive", "chat", "mail"] {
        let start = b
            .post(&format!("{base}/connect/{svc}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(start.status, 302, "{svc}: {}", start.body);
        let u = reqwest::Url::parse(start.location.as_deref().unwrap()).unwrap();
        let q: std::collections::BTreeMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(q["redirect_uri"], format!("{base}/oauth/callback"), "{svc}");
        assert_eq!(q["code_challenge_method"], "S256", "{svc}");
        assert_eq!(q["response_type"], "code", "{svc}");
        assert_eq!(q["state"].len(), 43, "{svc}: 256-bit state");
        urls.insert(svc, (u.clone(), q));
    }
    let (u, q) = &urls["drive"];
    assert!(
        u.as_str()
            .starts_with("https://accounts.google.com/o/oauth2/v2/auth?")
    );
    assert_eq!(
        (q["access_type"].as_str(), q["prompt"].as_str()),
        ("offline", "consent")
    );
    assert_eq!(q["resource"], "https://drive.example/mcp");
    let (u, q) = &urls["chat"];
    assert!(
        u.as_str()
            .starts_with("https://slack.com/oauth/v2/authorize?")
    );
    assert_eq!(q["user_scope"], "search:read");
    assert!(!q.contains_key("scope"));
    let (u, q) = &urls["mail"];
    assert!(
        u.as_str()
            .starts_with("https://login.microsoftonline.com/contoso/oauth2/v2.0/authorize?")
    );
    assert_eq!(q["scope"], "Mail.Read offline_access");
    assert!(!q.contains_key("resource"));
    // A foreign Origin on the form post is refused, even with a valid CSRF token.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/connect/drive"))
        .header(
            "Cookie",
            b.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
        .header("Origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}
