//! A cookie-keeping HTTP client that acts as the user's browser: follows redirects by hand so
//! tests can stop at, inspect or alter the OAuth callback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

pub struct Browser {
    http: reqwest::Client,
    /// name → value; tests run on 127.0.0.1 only, and the peers' cookie names differ.
    pub cookies: BTreeMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub url: String,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, url: &str, resp: reqwest::Response) -> Page {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let first = v.split(';').next().unwrap();
            if let Some((k, val)) = first.split_once('=') {
                let expired = v.to_ascii_lowercase().contains("max-age=0") || val.is_empty();
                if expired {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_owned(), val.to_owned());
                }
            }
        }
        let status = resp.status().as_u16();
        let location = resp.headers().get(reqwest::header::LOCATION).map(|l| {
            let l = l.to_str().unwrap();
            reqwest::Url::parse(url)
                .unwrap()
                .join(l)
                .unwrap()
                .to_string()
        });
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Page {
            status,
            location,
            headers,
            body,
            url: url.to_owned(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let resp = self
            .http
            .get(url)
            .header("Cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.finish(url, resp).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let resp = self
            .http
            .post(url)
            .header("Cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.finish(url, resp).await
    }

    /// Follows redirects from `page` until one points at a URL starting with `stop` (returned
    /// unvisited) or a page is not a redirect.
    pub async fn follow_until(&mut self, mut page: Page, stop: &str) -> Result<String, Page> {
        for _ in 0..20 {
            match page.location.clone() {
                Some(l) if l.starts_with(stop) => return Ok(l),
                Some(l) => page = self.get(&l).await,
                None => return Err(page),
            }
        }
        panic!("redirect loop");
    }

    pub fn form_value(body: &str, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let start = body
            .find(&needle)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            + needle.len();
        body[start..].split('"').next().unwrap().to_owned()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The user's half of `serve --dev`'s loop, as a browser walks it: the printed login link, the
/// Connect button on `demo`, the demo provider's consent (as `account`, approving `scopes`),
/// then the gateway's callback. Returns the callback's status (303 when connected).
pub async fn connect_demo(base: &str, login_link: &str, account: &str, scopes: &[&str]) -> u16 {
    let mut b = Browser::new();
    let page = b.get(login_link).await;
    let token = Browser::form_value(&page.body, "token");
    b.post(&format!("{base}/login"), &[("token", &token)]).await;
    let page = b.get(&format!("{base}/connect")).await;
    let csrf = Browser::form_value(&page.body, "csrf");
    let r = b
        .post(&format!("{base}/connect/demo"), &[("csrf", &csrf)])
        .await;
    let consent = b.get(&r.location.expect("connect redirects")).await;
    let id = Browser::form_value(&consent.body, "id");
    let mut form = vec![
        ("id", id.as_str()),
        ("decision", "approve"),
        ("account", account),
    ];
    form.extend(scopes.iter().map(|s| ("scope", *s)));
    let r = b.post(&format!("{base}/demo/oauth/decide"), &form).await;
    b.get(&r.location.expect("consent redirects")).await.status
}
