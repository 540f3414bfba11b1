//! The audit log: append-only entries in a SHA-256 hash chain (I6).
//!
//! Each entry's `hash` is SHA-256 over `prev_hash` and the canonical JSON of its other fields;
//! the chain head (last seq and hash) is kept beside it, so an edit, a deletion (inside or at
//! the tail), an insertion or a swap of two entries breaks verification at a named entry.
//! Strings that came from outside are escaped on the way in so they cannot forge line
//! breaks or carry terminal escapes into `audit list` or the console.
//!
//! The head (last seq and hash) is authenticated with an HMAC under a key derived from the
//! vault's data key, so cutting entries off the end and rewriting the head, or emptying the
//! log, is detected by anyone who has the passphrase (the server always does). The first
//! entry is always `store.create`.
//!
//! Limit: without the passphrase, `audit verify` on a copy checks the chain but not the head's
//! HMAC, and says so. It prints the head hash so it can be recorded elsewhere.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::secret::hex;

/// The first action of every store.
pub const GENESIS_ACTION: &str = "store.create";

/// The key that authenticates the audit head (derived from the vault's data key).
pub type HeadKey = Zeroizing<[u8; 32]>;

/// The stored head of the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub mac: String,
}

impl Head {
    pub fn new(key: &HeadKey, seq: u64, hash: &str) -> Self {
        Self {
            seq,
            hash: hash.to_owned(),
            mac: head_mac(key, seq, hash),
        }
    }

    pub fn authentic(&self, key: &HeadKey) -> bool {
        let want = head_mac(key, self.seq, &self.hash);
        subtle::ConstantTimeEq::ct_eq(want.as_bytes(), self.mac.as_bytes()).into()
    }
}

fn head_mac(key: &HeadKey, seq: u64, hash: &str) -> String {
    #[allow(clippy::expect_used)] // invariant: HMAC-SHA256 accepts keys of any length.
    let mut mac =
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.as_slice()).expect("hmac key");
    mac.update(b"scopegate/v1/audit-head");
    mac.update(&seq.to_be_bytes());
    mac.update(hash.as_bytes());
    hex(&mac.finalize().into_bytes())
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_FIELD_CHARS: usize = 512;
/// Room for a typical entry and its two hashes (a per-call entry is about 400 bytes).
pub const ENTRY_BYTES: usize = 512;

/// What an action did, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: BTreeMap<String, String>,
}

impl Event {
    pub fn new(actor: &str, action: &str, target: &str, outcome: &str) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            details: BTreeMap::new(),
        }
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

/// What an audit entry is made from: an `Event`, or a proxied call's record, which gives the
/// same fields without building an `Event` (no map, no owned strings on the commit path).
pub trait Record {
    /// Writes the entry's hashed body (`write_body`), with every field from outside escaped
    /// (`escape_cow`).
    fn write_body(&self, out: &mut Vec<u8>, seq: u64, time: &str);
}

impl Record for Event {
    fn write_body(&self, out: &mut Vec<u8>, seq: u64, time: &str) {
        let escaped = escape_details(self.details.clone());
        write_body(
            out,
            seq,
            time,
            [&self.actor, &self.action, &self.target, &self.outcome].map(|f| escape_cow(f)),
            escaped.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
    }
}

/// An entry's time as stored: RFC 3339, as `time::serde::rfc3339` writes it.
pub fn format_time(t: OffsetDateTime) -> String {
    #[allow(clippy::expect_used)] // invariant: RFC 3339 formats every time the clock gives.
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339")
}

/// The hashed part of an entry, written by hand in the bytes `serde_json` gives an `Entry`'s
/// first seven fields (compact, in declaration order, strings escaped by `serde_json`);
/// `the_encoded_entry_is_the_serialized_entry` checks it against `serde_json` itself.
/// `fields` (actor, action, target, outcome) and `details` (sorted by key, as a `BTreeMap`
/// is) must already be escaped (`escape_cow`).
pub fn write_body<'a, S: AsRef<str>>(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    fields: [S; 4],
    details: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let string = |out: &mut Vec<u8>, s: &str| {
        #[allow(clippy::expect_used)] // invariant: writing a string into a Vec cannot fail.
        serde_json::to_writer(&mut *out, s).expect("json string");
    };
    out.extend_from_slice(b"{\"seq\":");
    #[allow(clippy::expect_used)] // invariant: writing a number into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &seq).expect("json number");
    out.extend_from_slice(b",\"time\":");
    string(out, time);
    for (name, value) in ["actor", "action", "target", "outcome"].iter().zip(&fields) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        string(out, value.as_ref());
    }
    out.extend_from_slice(b",\"details\":{");
    for (i, (k, v)) in details.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        string(out, v);
    }
    out.extend_from_slice(b"}}");
}

/// Appends entry `seq`'s stored form to `out`: the body `record` writes, then `prev_hash` and
/// the hash over both, exactly as `serde_json` writes the `Entry`. Returns the hash.
pub fn append_entry(
    out: &mut Vec<u8>,
    record: &impl Record,
    seq: u64,
    time: &str,
    prev_hash: &str,
) -> String {
    let start = out.len();
    record.write_body(out, seq, time);
    let hash = hash_of(prev_hash, &out[start..]);
    // Both hashes are lowercase hex: nothing in them needs JSON escaping.
    out.pop(); // the body's closing brace
    for part in [
        ",\"prev_hash\":\"",
        prev_hash,
        "\",\"hash\":\"",
        &hash,
        "\"}",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    hash
}

impl Entry {
    pub fn chain(seq: u64, time: OffsetDateTime, event: &Event, prev_hash: &str) -> Entry {
        Entry::chain_encoded(seq, time, event.clone(), prev_hash).0
    }

    /// `chain`, also returning the entry as stored (its JSON).
    pub fn chain_encoded(
        seq: u64,
        time: OffsetDateTime,
        event: Event,
        prev_hash: &str,
    ) -> (Entry, Vec<u8>) {
        let mut json = Vec::with_capacity(ENTRY_BYTES);
        append_entry(&mut json, &event, seq, &format_time(time), prev_hash);
        #[allow(clippy::expect_used)] // invariant: `append_entry` writes an `Entry`'s JSON.
        let entry = serde_json::from_slice(&json).expect("an entry just written reads back");
        (entry, json)
    }

    fn body_json(&self) -> Vec<u8> {
        // Stored fields were escaped when the entry was made: written as they are.
        let mut out = Vec::with_capacity(ENTRY_BYTES);
        write_body(
            &mut out,
            self.seq,
            &format_time(self.time),
            [&self.actor, &self.action, &self.target, &self.outcome],
            self.details.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        out
    }

    pub fn compute_hash(&self) -> String {
        hash_of(&self.prev_hash, &self.body_json())
    }

    /// One line for `audit list`; every field was escaped when the entry was made.
    pub fn to_line(&self) -> String {
        #[allow(clippy::expect_used)] // invariant: RFC 3339 formats every stored time.
        let time = self
            .time
            .format(&time::format_description::well_known::Rfc3339)
            .expect("rfc3339");
        let mut s = format!(
            "{:>6} {} {} {} {} {}",
            self.seq, time, self.actor, self.action, self.target, self.outcome
        );
        for (k, v) in &self.details {
            // Quoted, so a value cannot pose as further fields.
            s.push_str(&format!(" {k}=\"{}\"", v.replace('"', "\\\"")));
        }
        // Stored fields were escaped on the way in; escape again for display in case the
        // file was edited (the chain check is separate).
        s.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    }
}

/// SHA-256 over the previous entry's hash, a newline and this entry's body JSON.
fn hash_of(prev_hash: &str, body_json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body_json);
    hex(&h.finalize())
}

/// Printable ASCII without backslashes, within the cap, needs nothing (the usual case: names,
/// ids, numbers).
fn needs_no_escape(s: &str) -> bool {
    s.len() <= MAX_FIELD_CHARS && s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'\\')
}

/// `escape_owned` for every key and value; the usual map (keys and values that need nothing)
/// is kept as it is rather than rebuilt. Values are escaped in place: keys order the map, so
/// only a key that changes makes it rebuild.
fn escape_details(mut details: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if !details.keys().all(|k| needs_no_escape(k)) {
        return details
            .into_iter()
            .map(|(k, v)| (escape_owned(k), escape_owned(v)))
            .collect();
    }
    for v in details.values_mut() {
        if !needs_no_escape(v) {
            *v = escape_untrusted(v);
        }
    }
    details
}

/// `s` cut to what `escape_untrusted` reads of it (the field cap and one character more, so
/// the cut still shows): a string from outside held until it is written takes no more room.
pub fn cap_untrusted(s: &str) -> &str {
    match s.char_indices().nth(MAX_FIELD_CHARS + 1) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `escape_untrusted`, borrowing when nothing needs escaping (the usual case).
pub fn escape_cow(s: &str) -> std::borrow::Cow<'_, str> {
    if needs_no_escape(s) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(escape_untrusted(s))
    }
}

/// `escape_untrusted` for a string we own: returned as it is when nothing needs escaping.
fn escape_owned(s: String) -> String {
    if needs_no_escape(&s) {
        s
    } else {
        escape_untrusted(&s)
    }
}

/// Escapes control characters (C0, DEL, C1), bidi overrides and backslashes, and caps length,
/// so a string from outside cannot forge entries or drive a terminal.
pub fn escape_untrusted(s: &str) -> String {
    if needs_no_escape(s) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len().min(MAX_FIELD_CHARS));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: stored under key {key} (entries reordered or renumbered)")]
    Misplaced { key: u64, seq: u64 },
    #[error("audit entry {expected} is missing (found {found} next)")]
    Gap { expected: u64, found: u64 },
    #[error(
        "audit entry {seq}: previous-hash link is broken (an entry before it was removed, swapped or edited)"
    )]
    BrokenLink { seq: u64 },
    #[error(
        "audit entries up to {last}: their stored segment holds {entries} entries that do not number up to it (entries removed from or added inside it)"
    )]
    SegmentCount { last: u64, entries: u64 },
    #[error("audit entry {seq}: content does not match its hash (edited)")]
    Edited { seq: u64 },
    #[error("audit entry {seq}: unreadable ({reason})")]
    Unreadable { seq: u64, reason: String },
    #[error(
        "audit log ends at entry {found} but its head records entry {expected} (entries after {found} were removed)"
    )]
    Truncated { expected: u64, found: u64 },
    #[error("audit log head does not match entry {seq} (head edited)")]
    HeadMismatch { seq: u64 },
    #[error(
        "audit log head is not authentic (entries removed from the end and the head rewritten)"
    )]
    HeadForged,
    #[error("the audit log is empty (its entries were removed)")]
    Empty,
    #[error("audit entry 1 is not the store's creation (the start of the log was replaced)")]
    BadGenesis,
}

impl ChainError {
    /// Whether this is a break found between the log's first entry and its last (not at its
    /// end: truncation, a head that does not match, an empty log).
    pub fn is_in_chain(&self) -> bool {
        matches!(
            self,
            Self::Misplaced { .. }
                | Self::Gap { .. }
                | Self::BrokenLink { .. }
                | Self::Edited { .. }
                | Self::Unreadable { .. }
                | Self::BadGenesis
                | Self::SegmentCount { .. }
        )
    }
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub entries: u64,
    pub head_hash: String,
    /// Whether the head's HMAC was checked (needs the vault's key).
    pub head_authenticated: bool,
}

/// A stored audit row: its key and its raw JSON.
pub type Row = (u64, Vec<u8>);

/// Walks `(key, raw entry)` pairs in key order and checks the chain against the stored head.
pub fn verify_chain<I>(
    entries: I,
    head: Option<&Head>,
    key: Option<&HeadKey>,
) -> Result<Verified, ChainError>
where
    I: IntoIterator<Item = Row>,
{
    let mut prev_hash = GENESIS.to_owned();
    let mut expected = 1u64;
    for (key, raw) in entries {
        let entry: Entry = serde_json::from_slice(&raw).map_err(|e| ChainError::Unreadable {
            seq: key,
            reason: e.to_string(),
        })?;
        if key != expected {
            return Err(ChainError::Gap {
                expected,
                found: key,
            });
        }
        if entry.seq != key {
            return Err(ChainError::Misplaced {
                key,
                seq: entry.seq,
            });
        }
        if entry.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { seq: key });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainError::Edited { seq: key });
        }
        if key == 1 && entry.action != GENESIS_ACTION {
            return Err(ChainError::BadGenesis);
        }
        prev_hash = entry.hash;
        expected += 1;
    }
    let last = expected - 1;
    if last == 0 {
        return Err(ChainError::Empty);
    }
    let head = head.ok_or(ChainError::HeadMismatch { seq: last })?;
    if head.seq > last {
        return Err(ChainError::Truncated {
            expected: head.seq,
            found: last,
        });
    }
    if head.seq != last || head.hash != prev_hash {
        return Err(ChainError::HeadMismatch { seq: last });
    }
    if let Some(k) = key
        && !head.authentic(k)
    {
        return Err(ChainError::HeadForged);
    }
    Ok(Verified {
        entries: last,
        head_hash: prev_hash,
        head_authenticated: key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HeadKey {
        Zeroizing::new([3u8; 32])
    }

    fn chain(n: u64) -> (Vec<Row>, Head) {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let action = if seq == 1 { GENESIS_ACTION } else { "user.add" };
            let event = Event::new("admin", action, &format!("u{seq}"), "ok");
            let e = Entry::chain(seq, OffsetDateTime::UNIX_EPOCH, &event, &prev);
            prev = e.hash.clone();
            out.push((seq, serde_json::to_vec(&e).unwrap()));
        }
        (out, Head::new(&key(), n, &prev))
    }

    fn check(rows: Vec<Row>, head: &Head) -> Result<Verified, ChainError> {
        verify_chain(rows, Some(head), Some(&key()))
    }

    /// The spliced stored form is byte for byte what serializing the entry gives, escapes,
    /// details and all, and carries the hash verification recomputes.
    #[test]
    fn the_encoded_entry_is_the_serialized_entry() {
        let event = Event::new("agent:a\"b", "mcp.call", "files\u{1b}[2J", "ok")
            .detail("tool", "read_\\file")
            .detail("micros", "123")
            .detail("\u{202e}k", "v\u{0}");
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::nanoseconds(1_234_567_891);
        let prev = "ab".repeat(32);
        let (e, json) = Entry::chain_encoded(42, t, event.clone(), &prev);
        // The hash is the chain's (what verification recomputes), over escaped fields.
        assert_eq!(e.hash, e.compute_hash());
        assert_eq!(e.target, "files\\u{1b}[2J");
        assert_eq!(e.details["\\u{202e}k"], "v\\u{0}");
        assert_eq!(json, serde_json::to_vec(&e).unwrap());
        assert_eq!(serde_json::from_slice::<Entry>(&json).unwrap(), e);
    }

    /// An entry as an earlier version stored it (serialized by `serde_json`, before entries
    /// were written by hand and stored in segments): its hash still verifies, and the hand
    /// encoder writes the same bytes for the same event.
    #[test]
    fn an_entry_stored_by_an_earlier_version_verifies() {
        let stored = r#"{"seq":2,"time":"2026-11-28T01:46:51.25478537Z","actor":"admin","action":"vault.init","target":"/tmp/oldfmt/d","outcome":"ok","details":{"kdf":"argon2id m=19456 t=2 p=1"},"prev_hash":"b08ba3c88c0ba96b987945f75e0eb8fdfd053366b09f25313649a70523a6c88c","hash":"72172a5d463244988506e8a8b1af311769ba0219796782b3b63ee092be160520"}"#;
        let e: Entry = serde_json::from_str(stored).unwrap();
        assert_eq!(e.compute_hash(), e.hash);
        let event = Event::new("admin", "vault.init", "/tmp/oldfmt/d", "ok")
            .detail("kdf", "argon2id m=19456 t=2 p=1");
        let mut out = Vec::new();
        let hash = append_entry(&mut out, &event, 2, &format_time(e.time), &e.prev_hash);
        assert_eq!(hash, e.hash);
        assert_eq!(String::from_utf8(out).unwrap(), stored);
    }

    /// A string cut by `cap_untrusted` escapes exactly as the whole string does.
    #[test]
    fn capping_keeps_what_escaping_writes() {
        for s in [
            "short".to_owned(),
            "x".repeat(512),
            "x".repeat(513),
            "x".repeat(5000),
            "é".repeat(600),
            format!("{}\u{1b}", "a".repeat(520)),
        ] {
            let capped = cap_untrusted(&s);
            assert!(capped.chars().count() <= MAX_FIELD_CHARS + 1);
            assert_eq!(escape_untrusted(capped), escape_untrusted(&s));
        }
    }

    #[test]
    fn intact_chain_verifies() {
        let (c, head) = chain(5);
        let v = check(c.clone(), &head).unwrap();
        assert_eq!((v.entries, v.head_authenticated), (5, true));
        assert!(
            !verify_chain(c, Some(&head), None)
                .unwrap()
                .head_authenticated
        );
        assert_eq!(verify_chain(Vec::new(), None, None), Err(ChainError::Empty));
    }

    #[test]
    fn edits_deletions_swaps_and_truncation_are_named() {
        let (c, head) = chain(5);
        let mut edited = c.clone();
        let mut e: Entry = serde_json::from_slice(&edited[2].1).unwrap();
        e.target = "someone-else".into();
        edited[2].1 = serde_json::to_vec(&e).unwrap();
        assert_eq!(check(edited, &head), Err(ChainError::Edited { seq: 3 }));

        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(
            check(deleted, &head),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );

        let mut swapped = c.clone();
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        assert_eq!(
            check(swapped, &head),
            Err(ChainError::Misplaced { key: 2, seq: 3 })
        );

        let mut truncated = c.clone();
        truncated.pop();
        assert_eq!(
            check(truncated.clone(), &head),
            Err(ChainError::Truncated {
                expected: 5,
                found: 4
            })
        );

        // Truncation with the head rewritten to the new last entry: only the HMAC catches it,
        // whether the forger writes garbage or uses a key of their own.
        let last: Entry = serde_json::from_slice(&truncated[3].1).unwrap();
        let garbage = Head {
            seq: 4,
            hash: last.hash.clone(),
            mac: "00".repeat(32),
        };
        assert_eq!(
            check(truncated.clone(), &garbage),
            Err(ChainError::HeadForged)
        );
        let other_key = Head::new(&Zeroizing::new([9u8; 32]), 4, &last.hash);
        assert_eq!(check(truncated, &other_key), Err(ChainError::HeadForged));

        // Dropping the first entry and renumbering the rest.
        let (mut c2, _) = chain(3);
        c2.remove(0);
        for (i, row) in c2.iter_mut().enumerate() {
            row.0 = i as u64 + 1;
        }
        assert!(check(c2, &head).is_err());
    }

    #[test]
    fn the_log_must_start_with_the_store_creation() {
        let mut prev = GENESIS.to_owned();
        let mut rows = Vec::new();
        for seq in 1..=2 {
            let e = Entry::chain(
                seq,
                OffsetDateTime::UNIX_EPOCH,
                &Event::new("a", "user.add", "x", "ok"),
                &prev,
            );
            prev = e.hash.clone();
            rows.push((seq, serde_json::to_vec(&e).unwrap()));
        }
        let head = Head::new(&key(), 2, &prev);
        assert_eq!(check(rows, &head), Err(ChainError::BadGenesis));
    }

    #[test]
    fn outside_strings_are_escaped() {
        let e = escape_untrusted("evil\n    7 2026 admin user.remove\x1b[2J\u{202e}\\");
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        assert!(
            e.contains("\\u{a}")
                && e.contains("\\u{1b}")
                && e.contains("\\u{202e}")
                && e.ends_with("\\\\")
        );
        assert_eq!(
            escape_untrusted(&"x".repeat(10_000)).chars().count(),
            MAX_FIELD_CHARS + 1
        );
        // The plain-ASCII fast path: unchanged up to the cap, capped one past it, and a
        // backslash or a DEL still escaped.
        let at_cap = "y".repeat(MAX_FIELD_CHARS);
        assert_eq!(escape_untrusted(&at_cap), at_cap);
        assert!(escape_untrusted(&"y".repeat(MAX_FIELD_CHARS + 1)).ends_with('…'));
        assert_eq!(escape_untrusted("a\\b"), "a\\\\b");
        assert_eq!(escape_untrusted("a\x7fb"), "a\\u{7f}b");
    }

    /// Details are escaped like every other field: a map whose keys are all plain keeps its
    /// order and has only its values escaped; a key that needs escaping is escaped too.
    #[test]
    fn details_are_escaped_keys_and_values() {
        let event = Event::new("a", "b", "c", "ok")
            .detail("plain", "v")
            .detail("tool", "x\u{1b}[2J\u{202e}");
        let e = Entry::chain(1, OffsetDateTime::UNIX_EPOCH, &event, GENESIS);
        assert_eq!(e.details["plain"], "v");
        assert_eq!(e.details["tool"], "x\\u{1b}[2J\\u{202e}");
        let event = Event::new("a", "b", "c", "ok")
            .detail("tool", "\u{7}")
            .detail("k\n", "v\u{85}");
        let e = Entry::chain(1, OffsetDateTime::UNIX_EPOCH, &event, GENESIS);
        let all: Vec<(&str, &str)> = e
            .details
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(all, [("k\\u{a}", "v\\u{85}"), ("tool", "\\u{7}")]);
        assert_eq!(e.hash, e.compute_hash());
    }

    #[test]
    fn display_quotes_values_so_they_cannot_pose_as_fields() {
        let event =
            Event::new("admin", "user.add", "x", "ok").detail("note", "a ok key=\"forged\"");
        let line = Entry::chain(1, OffsetDateTime::UNIX_EPOCH, &event, GENESIS).to_line();
        assert!(line.ends_with(r#"note="a ok key=\"forged\"""#), "{line}");
    }
}
