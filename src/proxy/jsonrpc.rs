//! Reads what the gateway needs from one JSON-RPC message body (MCP sends one per POST since
//! 2025-06-18): the kind, the id, the method and, for the methods that name one, the target
//! (`tools/call` and `prompts/get`: `params.name`; `resources/read`: `params.uri`). The body
//! itself is forwarded as received. Fuzzed (`fuzz/fuzz_targets/jsonrpc.rs`).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        target: Option<String>,
    },
    Notification {
        method: String,
    },
    /// A response or error from the client (to a server-to-client request).
    Response,
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Request { method, .. } | Self::Notification { method } => Some(method),
            Self::Response => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("the message repeats a key, or spells one of its keys in another case")]
    AmbiguousKey,
    #[error("only notifications/* methods may be sent without an id")]
    NotANotification,
    #[error("batches are not part of MCP since 2025-06-18")]
    Batch,
    #[error("not a JSON-RPC 2.0 message")]
    NotJsonRpc,
    #[error("{0} needs a string params.{1}")]
    MissingTarget(String, &'static str),
}

/// The keys the policy reads. A key that folds to one of these without being it is refused at
/// any depth (see `Keys`).
pub(crate) const SENSITIVE: [&str; 7] = [
    "jsonrpc",
    "id",
    "method",
    "params",
    "name",
    "uri",
    "arguments",
];

/// One JSON object's keys. Upstreams may read JSON differently from us: last-wins or
/// first-wins duplicate keys, and (Go's encoding/json) case-insensitive, Unicode-folded key
/// matching. Refusing every duplicate, and every key that folds to one the policy reads
/// without being it, leaves one reading (the go-sdk's GHSA-wvj2-96wp-fq3f was exactly this).
#[derive(Default)]
struct Keys<'de> {
    /// The first `FEW` keys, compared in place (no hashing for the usual small object); past
    /// that, all of them in `many`, so a huge object costs linear time, not quadratic.
    /// Inline: an object of up to `FEW` keys allocates no key list.
    few: smallvec::SmallVec<[Cow<'de, str>; FEW]>,
    many: HashSet<Cow<'de, str>>,
}

const FEW: usize = 16;

impl<'de> Keys<'de> {
    /// Whether `key` may join this object's keys. (By reference to the `Cow`: a key borrowed
    /// from the body is kept without copying it.)
    #[allow(clippy::ptr_arg)]
    fn admit(&mut self, key: &Cow<'de, str>) -> bool {
        let folded: Cow<'de, str> = match key {
            // The usual key (lowercase ASCII, no escapes) folds to itself: no allocation.
            Cow::Borrowed(k) if k.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) => {
                Cow::Borrowed(*k)
            }
            _ => Cow::Owned(fold(key)),
        };
        let poses = SENSITIVE.contains(&folded.as_ref()) && folded != *key;
        if poses {
            return false;
        }
        if self.many.is_empty() {
            if self.few.contains(&folded) {
                return false;
            }
            if self.few.len() < FEW {
                self.few.push(folded);
                return true;
            }
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(folded)
    }
}

/// Case folding as lenient JSON decoders apply it (including the long s and the Kelvin sign).
pub(crate) fn fold(key: &str) -> String {
    // The usual case, and the same answer: ASCII folds to its ASCII lowercase.
    if key.is_ascii() {
        return key.to_ascii_lowercase();
    }
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// An object key, borrowed from the body unless it had escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// The scalar visits of a visitor that answers every scalar alike (it only walks past them).
macro_rules! scalars_are {
    ($v:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($v)
        }
    };
}

/// Walks any value, checking the keys of every object in it; an ambiguous key is noted and
/// the walk goes on, so a body that is also malformed later is still "not JSON" (as before).
#[derive(Clone, Copy)]
struct Walk<'a> {
    ambiguous: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::default();
        while let Some(k) = map.next_key_seed(Key)? {
            if !keys.admit(&k) {
                self.ambiguous.set(true);
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    scalars_are!(());
}

/// A value kept only when it is one the checks read: a string or an integer.
enum Scalar<'de> {
    Str(Cow<'de, str>),
    I64(i64),
    U64(u64),
    Other,
}

/// Reads a `Scalar`; objects and arrays are walked (their keys checked) and count as `Other`.
struct Capture<'a>(Walk<'a>);

impl<'de, 'a> DeserializeSeed<'de> for Capture<'a> {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for Capture<'a> {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map).map(|()| Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(seq).map(|()| Scalar::Other)
    }
}

/// What a message's top level says, read in one pass over the body.
#[derive(Default)]
struct Fields<'de> {
    jsonrpc: Option<Scalar<'de>>,
    method: Option<Scalar<'de>>,
    id: Option<Scalar<'de>>,
    /// `params.name` and `params.uri`, when `params` is an object that has them.
    name: Option<Scalar<'de>>,
    uri: Option<Scalar<'de>>,
    result_or_error: bool,
}

enum Top<'de> {
    Object(Fields<'de>),
    Array,
    Other,
}

/// The top level: an object's fields are captured, anything else walked.
struct Message1<'a>(Walk<'a>);

impl<'de, 'a> DeserializeSeed<'de> for Message1<'a> {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for Message1<'a> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let walk = self.0;
        let mut keys = Keys::default();
        let mut f = Fields::default();
        while let Some(k) = map.next_key_seed(Key)? {
            if !keys.admit(&k) {
                walk.ambiguous.set(true);
            }
            match k.as_ref() {
                "jsonrpc" => f.jsonrpc = Some(map.next_value_seed(Capture(walk))?),
                "method" => f.method = Some(map.next_value_seed(Capture(walk))?),
                "id" => f.id = Some(map.next_value_seed(Capture(walk))?),
                "params" => {
                    let (name, uri) = map.next_value_seed(Params(walk))?;
                    (f.name, f.uri) = (name, uri);
                }
                "result" | "error" => {
                    f.result_or_error = true;
                    map.next_value_seed(walk)?;
                }
                _ => map.next_value_seed(walk)?,
            }
        }
        Ok(Top::Object(f))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(seq).map(|()| Top::Array)
    }
    scalars_are!(Top::Other);
}

/// `params`: its `name` and `uri` when it is an object; everything in it walked.
struct Params<'a>(Walk<'a>);

type Targets<'de> = (Option<Scalar<'de>>, Option<Scalar<'de>>);

impl<'de, 'a> DeserializeSeed<'de> for Params<'a> {
    type Value = Targets<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for Params<'a> {
    type Value = Targets<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let walk = self.0;
        let mut keys = Keys::default();
        let (mut name, mut uri) = (None, None);
        while let Some(k) = map.next_key_seed(Key)? {
            if !keys.admit(&k) {
                walk.ambiguous.set(true);
            }
            match k.as_ref() {
                "name" => name = Some(map.next_value_seed(Capture(walk))?),
                "uri" => uri = Some(map.next_value_seed(Capture(walk))?),
                _ => map.next_value_seed(walk)?,
            }
        }
        Ok((name, uri))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(seq).map(|()| (None, None))
    }
    scalars_are!((None, None));
}

/// Reads the message in one pass: no `Value` tree is built, keys and the few strings it keeps
/// are borrowed from the body, and every object at every depth has its keys checked.
pub fn inspect(body: &[u8]) -> Result<Message, InspectError> {
    let ambiguous = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Message1(Walk {
        ambiguous: &ambiguous,
    })
    .deserialize(&mut de)
    .map_err(|_| InspectError::NotJson)?;
    de.end().map_err(|_| InspectError::NotJson)?;
    if ambiguous.get() {
        return Err(InspectError::AmbiguousKey);
    }
    let f = match top {
        Top::Object(f) => f,
        Top::Array => return Err(InspectError::Batch),
        Top::Other => return Err(InspectError::NotJsonRpc),
    };
    if !matches!(&f.jsonrpc, Some(Scalar::Str(v)) if v == "2.0") {
        return Err(InspectError::NotJsonRpc);
    }
    let Some(method) = f.method else {
        return if f.result_or_error {
            Ok(Message::Response)
        } else {
            Err(InspectError::NotJsonRpc)
        };
    };
    let Scalar::Str(method) = method else {
        return Err(InspectError::NotJsonRpc);
    };
    let method = method.into_owned();
    let Some(id) = f.id else {
        // Without an id a generic JSON-RPC server still runs the method: a `tools/call`
        // notification must not slip past the tool check.
        if !method.starts_with("notifications/") {
            return Err(InspectError::NotANotification);
        }
        return Ok(Message::Notification { method });
    };
    let id = match id {
        Scalar::Str(s) => Value::String(s.into_owned()),
        Scalar::I64(i) => Value::from(i),
        Scalar::U64(u) => Value::from(u),
        Scalar::Other => return Err(InspectError::NotJsonRpc),
    };
    let (field, value) = match method.as_str() {
        "tools/call" | "prompts/get" => ("name", f.name),
        "resources/read" => ("uri", f.uri),
        _ => {
            return Ok(Message::Request {
                id,
                method,
                target: None,
            });
        }
    };
    match value {
        Some(Scalar::Str(t)) => Ok(Message::Request {
            id,
            method,
            target: Some(t.into_owned()),
        }),
        _ => Err(InspectError::MissingTarget(method, field)),
    }
}

/// A JSON-RPC error response to `id`.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut err = serde_json::json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": id, "error": err}))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's raw-value marker is just a key here: a message wrapped in it is not read
    /// as the message (the old reader unwrapped it and checked the inner tool), and one inside
    /// `arguments` (never policy-checked) is an ordinary key.
    #[test]
    fn the_raw_value_marker_is_an_ordinary_key() {
        let wrapped = r#"{"$serde_json::private::RawValue":"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\"}}"}"#;
        assert_eq!(inspect(wrapped.as_bytes()), Err(InspectError::NotJsonRpc));
        let params = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"$serde_json::private::RawValue":"{\"name\":\"x\"}"}}"#;
        assert!(matches!(
            inspect(params.as_bytes()),
            Err(InspectError::MissingTarget(..))
        ));
        let args = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"$serde_json::private::RawValue":5}}}"#;
        assert_eq!(
            inspect(args.as_bytes()),
            Ok(Message::Request {
                id: 1.into(),
                method: "tools/call".into(),
                target: Some("read_file".into())
            })
        );
    }

    /// The one-pass reader gives the answer the two-pass one gave (`fuzzing::jsonrpc` checks,
    /// and panics otherwise), for the hand-made cases below; `tests/fuzz_corpus.rs` replays the
    /// 2,000+ inputs of the fuzz corpus through the same check, and `cargo fuzz run jsonrpc`
    /// keeps looking.
    #[test]
    fn same_answers_as_the_two_pass_reader() {
        for extra in [
            r#"{"jsonrpc":"2.0","id":-5,"method":"tools/call","params":{"name":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":"\u0041","method":"tools\/call","params":{"na\u006de":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[{"name":"a"}]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"u","name":"n"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x"} trailing"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","Method":"y"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","a":{"b":1,"b":2}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","a":{"b":{"c":1,"C":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","a":[{"B":1,"b":2}]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","a":[{"Uri":1}]}"#,
            r#"{"jsonrpc":2.0,"id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":["x"]}"#,
            r#"{"jsonrpc":"2.0","result":{},"id":1}"#,
            r#"{"jsonrpc":"2.0","error":null}"#,
            r#"{"JSONRPC":"2.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","\u017fcope":1,"scope":2}"#,
            r#"[1,2,{"a":1,"A":2}]"#,
            r#""just a string""#,
            "",
            "   ",
            "{}",
            "1e400",
        ] {
            crate::fuzzing::jsonrpc(extra.as_bytes());
        }
        // Not UTF-8 inside a string.
        crate::fuzzing::jsonrpc(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\xff\"}");
    }

    /// Regression: a tools/call without an id, duplicate keys and case-variant keys would let
    /// an upstream run a tool the gateway never checked.
    #[test]
    fn refuses_messages_an_upstream_could_read_differently() {
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"write_file"}}"#),
            Err(InspectError::NotANotification)
        );
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","name":"write_file"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","Name":"write_file"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            // `param\u{17f}` (long s) folds to `params` in Go's decoder.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\"},\"param\u{17f}\":{\"name\":\"write_file\"}}",
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}"#,
        ] {
            assert_eq!(
                inspect(body.as_bytes()),
                Err(InspectError::AmbiguousKey),
                "{body}"
            );
        }
        // Around the switch from compared-in-place keys to hashed ones: a duplicate is
        // refused wherever its two halves fall, and distinct keys pass.
        for n in [FEW - 1, FEW, FEW + 1, 3 * FEW] {
            let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let ok = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{{{}}}}}}}"#,
                keys.join(",")
            );
            assert!(inspect(ok.as_bytes()).is_ok(), "{n} distinct keys");
            for (first, again) in [(0, n - 1), (n - 1, n - 1), (n / 2, 0)] {
                let mut dup = keys.clone();
                dup.insert(again, format!("\"K{first}\":true"));
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{{{}}}}}}}"#,
                    dup.join(",")
                );
                assert_eq!(
                    inspect(body.as_bytes()),
                    Err(InspectError::AmbiguousKey),
                    "k{first} again (folded) at {again} of {n}"
                );
                crate::fuzzing::jsonrpc(body.as_bytes());
            }
        }
        // Repeated keys at different levels are fine.
        assert!(
            inspect(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"name":"b","params":{"id":3}}}}"#)
                .is_ok()
        );
    }
}
