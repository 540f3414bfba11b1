//! The OAuth callback parser: a pure function from the raw query string of
//! `/oauth/callback` to a typed authorization response (RFC 6749 §4.1.2, §4.1.2.1; RFC 9207
//! `iss`). Strict: a repeated known parameter, a bad percent-escape, invalid UTF-8, a value
//! outside its RFC character set, or anything too large is an error. Fuzzed
//! (`fuzz/fuzz_targets/callback.rs`).

pub const MAX_QUERY_BYTES: usize = 8 * 1024;
pub const MAX_VALUE_BYTES: usize = 4 * 1024;
const MAX_PARAMS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("the callback query is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("the callback has more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("parameter {0} appears more than once")]
    Duplicate(&'static str),
    #[error("a parameter has no '=' sign")]
    Malformed,
    #[error("a parameter has an invalid percent-encoding or is not UTF-8")]
    BadEncoding,
    #[error("parameter {0} is longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(&'static str),
    #[error("parameter {0} has characters its specification does not allow")]
    BadCharacters(&'static str),
    #[error("the callback has neither code nor error")]
    Empty,
    #[error("the callback has both code and error")]
    CodeAndError,
}

/// The authorization server's error (RFC 6749 §4.1.2.1). Strings are as sent; escape them
/// before showing them anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub error: String,
    pub description: Option<String>,
    pub uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Code(String),
    Error(ProviderError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub outcome: Outcome,
    pub state: Option<String>,
    pub iss: Option<String>,
}

#[derive(Clone, Copy)]
enum Charset {
    /// VSCHAR without space: codes, state, iss (RFC 6749 Appendix A.11, A.5; a URL).
    Visible,
    /// NQSCHAR: error, error_description (Appendix A.7, A.8).
    Nq,
    /// error_uri: URI characters (Appendix A.9).
    Uri,
}

fn allowed(c: Charset, b: u8) -> bool {
    match c {
        Charset::Visible | Charset::Uri => (0x21..=0x7e).contains(&b),
        Charset::Nq => matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e),
    }
}

pub fn parse(query: &str) -> Result<Callback, CallbackError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(CallbackError::TooLong);
    }
    const KEYS: [(&str, Charset); 6] = [
        ("code", Charset::Visible),
        ("state", Charset::Visible),
        ("iss", Charset::Visible),
        ("error", Charset::Nq),
        ("error_description", Charset::Nq),
        ("error_uri", Charset::Uri),
    ];
    let mut values: [Option<String>; 6] = Default::default();
    let mut count = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        count += 1;
        if count > MAX_PARAMS {
            return Err(CallbackError::TooManyParams);
        }
        let (raw_key, raw_value) = pair.split_once('=').ok_or(CallbackError::Malformed)?;
        let key = decode(raw_key)?;
        let Some(i) = KEYS.iter().position(|(k, _)| *k == key) else {
            // Providers add their own (Google: scope, authuser, prompt; OIDC: session_state).
            decode(raw_value)?;
            continue;
        };
        let (name, charset) = KEYS[i];
        if values[i].is_some() {
            return Err(CallbackError::Duplicate(name));
        }
        let value = decode(raw_value)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(CallbackError::ValueTooLong(name));
        }
        if value.is_empty() || !value.bytes().all(|b| allowed(charset, b)) {
            return Err(CallbackError::BadCharacters(name));
        }
        values[i] = Some(value);
    }
    let [code, state, iss, error, description, uri] = values;
    let outcome = match (code, error) {
        (Some(_), Some(_)) => return Err(CallbackError::CodeAndError),
        (None, None) => return Err(CallbackError::Empty),
        (Some(code), None) => Outcome::Code(code),
        (None, Some(error)) => Outcome::Error(ProviderError {
            error,
            description,
            uri,
        }),
    };
    Ok(Callback {
        outcome,
        state,
        iss,
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result
/// must be UTF-8.
fn decode(s: &str) -> Result<String, CallbackError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(CallbackError::BadEncoding),
                }
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| CallbackError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn code_response() {
        let c =
            parse("code=SplxlOBeZQQYbYS6WxSbIA&state=xyz&iss=https%3A%2F%2Fas.example").unwrap();
        assert_eq!(c.outcome, Outcome::Code("SplxlOBeZQQYbYS6WxSbIA".into()));
        assert_eq!(c.state.as_deref(), Some("xyz"));
        assert_eq!(c.iss.as_deref(), Some("https://as.example"));
    }

    #[test]
    fn error_response_and_extra_params() {
        let c = parse("error=access_denied&error_description=The+user+said+no&state=s&authuser=0&prompt=consent").unwrap();
        assert_eq!(
            c.outcome,
            Outcome::Error(ProviderError {
                error: "access_denied".into(),
                description: Some("The user said no".into()),
                uri: None
            })
        );
    }

    #[test]
    fn strictness() {
        use CallbackError::*;
        let cases = [
            ("code=a&code=b&state=s", Duplicate("code")),
            ("code=a&state=s&state=t", Duplicate("state")),
            ("code=a&iss=x&iss=x", Duplicate("iss")),
            ("code", Malformed),
            ("code=%zz", BadEncoding),
            ("code=%e", BadEncoding),
            ("code=%ff%fe", BadEncoding),
            ("code=a+b", BadCharacters("code")),
            ("code=a%0Ab", BadCharacters("code")),
            ("code=", BadCharacters("code")),
            (
                "error=x&error_description=%22quoted%22",
                BadCharacters("error_description"),
            ),
            ("state=s", Empty),
            ("", Empty),
            ("code=a&error=b", CodeAndError),
        ];
        for (q, want) in cases {
            assert_eq!(parse(q), Err(want.clone()), "{q}");
        }
        assert_eq!(
            parse(&format!("code={}", "a".repeat(MAX_VALUE_BYTES + 1))),
            Err(ValueTooLong("code"))
        );
        assert_eq!(parse(&"x=1&".repeat(40)), Err(TooManyParams));
        assert_eq!(parse(&"a".repeat(MAX_QUERY_BYTES + 1)), Err(TooLong));
    }

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    proptest! {
        /// Any code and state a server can send (RFC 6749 VSCHAR without space) round-trip.
        #[test]
        fn round_trip(code in "[!-~]{1,200}", state in "[!-~]{1,100}", iss in proptest::option::of("[!-~]{1,80}")) {
            let mut q = format!("state={}&code={}", encode(&state), encode(&code));
            if let Some(i) = &iss { q.push_str(&format!("&iss={}", encode(i))); }
            let c = parse(&q).unwrap();
            prop_assert_eq!(c.outcome, Outcome::Code(code));
            prop_assert_eq!(c.state, Some(state));
            prop_assert_eq!(c.iss, iss);
        }

        /// Arbitrary input never panics, and a result always carries code xor error.
        #[test]
        fn never_panics(q in ".{0,300}") {
            if let Ok(c) = parse(&q) {
                match c.outcome { Outcome::Code(v) => prop_assert!(!v.is_empty()), Outcome::Error(e) => prop_assert!(!e.error.is_empty()) }
            }
        }

        /// A known parameter given twice is always refused, whatever the values.
        #[test]
        fn duplicates_refused(a in "[a-z]{1,10}", b in "[a-z]{1,10}", key in prop::sample::select(vec!["code", "state", "iss"])) {
            let q = format!("code=c&{key}={a}&{key}={b}");
            prop_assert!(matches!(parse(&q), Err(CallbackError::Duplicate(_))));
        }
    }
}
