//! Server-rendered HTML: small pages that read well without JavaScript. Every string that
//! came from outside (provider errors, names) goes through `esc`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// HTML escaping for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.4rem}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.4rem;border-bottom:1px solid #ddd;vertical-align:top}\
.ok{color:#0a6b2b}.bad{color:#a4161a}.note{background:#f3f6f9;padding:.6rem .8rem;border-radius:.3rem}\
button{font:inherit;padding:.3rem .8rem;cursor:pointer}form{display:inline}code{background:#f3f3f3;padding:0 .2rem}";

/// A whole page. `body` must already be escaped HTML.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Scopegate</title><style>{STYLE}</style></head><body><h1>{}</h1>{body}</body></html>",
        esc(title),
        esc(title)
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A refusal page: what went wrong and what to do, nothing else.
pub fn refusal(status: StatusCode, title: &str, reason: &str) -> Response {
    page(
        status,
        title,
        &format!(
            "<p class=\"bad\">{}</p><p><a href=\"/connect\">Back to your connections</a></p>",
            esc(reason)
        ),
    )
}

/// Headers for every page that takes part in a flow (RFC 9700 §4.2.4, §4.16; DESIGN
/// "Limits and hygiene"): nothing cached, no Referer leaking codes, no framing.
pub fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}"
        );
    }
}
