//! Provider revocation signals (I18): GitHub and Slack webhook signatures, Security Event
//! Tokens (RFC 8417) and the JWKS they are checked against. Pure verification and parsing over
//! raw bytes, so each parser can be fuzzed; the HTTP glue is `web::webhooks` and the clean-up
//! `gateway::provider_events`. Nothing here acts on a request that did not verify, and no
//! error or log line carries a secret or a signature.

pub mod github;
pub mod jwks;
pub mod risc;
pub mod slack;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Webhook bodies larger than this are refused (the listener's body limit applies first).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// HMAC-SHA256 of `parts` under `key`, compared in constant time with `presented_hex`
/// (lowercase or uppercase hex). A malformed `presented_hex` simply does not match.
pub(crate) fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], presented_hex: &str) -> bool {
    let Some(presented) = decode_hex(presented_hex) else {
        return false;
    };
    #[allow(clippy::expect_used)] // invariant: HMAC-SHA256 accepts keys of any length.
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("hmac key");
    for p in parts {
        mac.update(p);
    }
    // `verify_slice` compares in constant time (subtle), so the signature leaks nothing.
    mac.verify_slice(&presented).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Remembers what was already accepted (delivery ids, signatures, `jti`s) for `ttl`, at most
/// `cap` of them: at the cap the oldest goes. Keys are hashed, so their length is bounded.
pub struct ReplayGuard {
    ttl: Duration,
    cap: usize,
    seen: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl ReplayGuard {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `key`; false when it was already seen within the window.
    pub fn first_sight(&mut self, key: &[u8], now: Instant) -> bool {
        while let Some((k, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl && self.order.len() < self.cap {
                break;
            }
            if self.seen.get(k) == Some(at) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
        let h: [u8; 32] = Sha256::digest(key).into();
        if self.seen.contains_key(&h) {
            return false;
        }
        self.seen.insert(h, now);
        self.order.push_back((h, now));
        true
    }

    /// Forgets `key` again (the action it guarded failed and the sender will retry).
    pub fn forget(&mut self, key: &[u8]) {
        let h: [u8; 32] = Sha256::digest(key).into();
        self.seen.remove(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_compare_rejects_malformed_and_wrong_values() {
        // RFC 4231 test case 2.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(hmac_sha256_matches(
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
            want
        ));
        assert!(hmac_sha256_matches(
            b"Jefe",
            &[b"what do ya want for nothing?"],
            &want.to_uppercase()
        ));
        assert!(!hmac_sha256_matches(
            b"Jefe",
            &[b"what do ya want for nothing!"],
            want
        ));
        assert!(!hmac_sha256_matches(b"Jefe", &[b"x"], ""));
        assert!(!hmac_sha256_matches(b"Jefe", &[b"x"], "zz"));
        assert!(!hmac_sha256_matches(
            b"Jefe",
            &[b"what do ya want for nothing?"],
            &want[..62]
        ));
    }

    #[test]
    fn replay_guard_is_bounded_in_time_and_size() {
        let t0 = Instant::now();
        let mut g = ReplayGuard::new(Duration::from_secs(10), 3);
        assert!(g.first_sight(b"a", t0));
        assert!(!g.first_sight(b"a", t0 + Duration::from_secs(9)));
        assert!(g.first_sight(b"a", t0 + Duration::from_secs(11)), "expired");
        for k in [b"b", b"c", b"d", b"e"] {
            assert!(g.first_sight(k, t0 + Duration::from_secs(12)));
        }
        assert!(g.seen.len() <= 3 && g.order.len() <= 3);
        g.forget(b"e");
        assert!(g.first_sight(b"e", t0 + Duration::from_secs(12)));
    }
}
