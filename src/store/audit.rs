//! The audit log: append-only entries in a SHA-256 hash chain (I6).
//!
//! Each entry's `hash` is SHA-256 over `prev_hash` and the canonical JSON of its other fields;
//! the chain head (last seq and hash) is kept beside it, so an edit, a deletion (inside or at
//! the tail), an insertion or a swap of two entries breaks verification at a named entry.
//! Strings that came from outside are escaped on the way in so they cannot forge line
//! breaks or carry terminal escapes into `audit list` or the console.
//!
//! Limit: a writer with full access to the file can recompute the whole chain. `audit verify`
//! prints the head hash so it can be recorded elsewhere and compared later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::secret::hex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_FIELD_CHARS: usize = 512;

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

/// The hashed part of an entry, in a fixed field order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    details: &'a BTreeMap<String, String>,
}

impl Entry {
    pub fn chain(seq: u64, time: OffsetDateTime, event: &Event, prev_hash: &str) -> Entry {
        let details = event
            .details
            .iter()
            .map(|(k, v)| (escape_untrusted(k), escape_untrusted(v)))
            .collect();
        let mut e = Entry {
            seq,
            time,
            actor: escape_untrusted(&event.actor),
            action: escape_untrusted(&event.action),
            target: escape_untrusted(&event.target),
            outcome: escape_untrusted(&event.outcome),
            details,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    pub fn compute_hash(&self) -> String {
        let body = Body {
            seq: self.seq,
            time: self.time,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            outcome: &self.outcome,
            details: &self.details,
        };
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        #[allow(clippy::expect_used)] // invariant: a struct of strings always serializes.
        h.update(serde_json::to_vec(&body).expect("audit body serializes"));
        hex(&h.finalize())
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
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// Escapes control characters (C0, DEL, C1), bidi overrides and backslashes, and caps length,
/// so a string from outside cannot forge entries or drive a terminal.
pub fn escape_untrusted(s: &str) -> String {
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
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub entries: u64,
    pub head_hash: String,
}

/// A stored audit row: its key and its raw JSON.
pub type Row = (u64, Vec<u8>);

/// Walks `(key, raw entry)` pairs in key order and checks the chain against the stored head.
pub fn verify_chain<I>(entries: I, head: Option<(u64, String)>) -> Result<Verified, ChainError>
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
        prev_hash = entry.hash;
        expected += 1;
    }
    let last = expected - 1;
    match head {
        Some((seq, _)) if seq > last => Err(ChainError::Truncated {
            expected: seq,
            found: last,
        }),
        Some((seq, hash)) if seq != last || hash != prev_hash => {
            Err(ChainError::HeadMismatch { seq: last })
        }
        None if last > 0 => Err(ChainError::HeadMismatch { seq: last }),
        _ => Ok(Verified {
            entries: last,
            head_hash: prev_hash,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<Row>, (u64, String)) {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let e = Entry::chain(
                seq,
                OffsetDateTime::UNIX_EPOCH,
                &Event::new("admin", "user.add", &format!("u{seq}"), "ok"),
                &prev,
            );
            prev = e.hash.clone();
            out.push((seq, serde_json::to_vec(&e).unwrap()));
        }
        (out, (n, prev))
    }

    #[test]
    fn intact_chain_verifies() {
        let (c, head) = chain(5);
        assert_eq!(verify_chain(c, Some(head)).unwrap().entries, 5);
        assert_eq!(verify_chain(Vec::new(), None).unwrap().entries, 0);
    }

    #[test]
    fn edits_deletions_swaps_and_truncation_are_named() {
        let (c, head) = chain(5);
        let mut edited = c.clone();
        let mut e: Entry = serde_json::from_slice(&edited[2].1).unwrap();
        e.target = "someone-else".into();
        edited[2].1 = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            verify_chain(edited, Some(head.clone())),
            Err(ChainError::Edited { seq: 3 })
        );

        let mut deleted = c.clone();
        deleted.remove(1);
        assert_eq!(
            verify_chain(deleted, Some(head.clone())),
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
            verify_chain(swapped, Some(head.clone())),
            Err(ChainError::Misplaced { key: 2, seq: 3 })
        );

        let mut truncated = c.clone();
        truncated.pop();
        assert_eq!(
            verify_chain(truncated, Some(head)),
            Err(ChainError::Truncated {
                expected: 5,
                found: 4
            })
        );
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
    }
}
