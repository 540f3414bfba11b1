//! Replays every fuzz input kept in the repository (`fuzz/seeds/<target>`) and any local
//! corpus (`fuzz/corpus/<target>`) through the same entry points the fuzz targets call.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("seeds").join(target),
        root.join("corpus").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let committed = dir.starts_with(root.join("seeds"));
        for e in entries {
            let p = e.unwrap().path();
            // A running fuzzer rewrites its local corpus under us; committed seeds must read.
            let bytes = match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) if !committed && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", p.display()),
            };
            f(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn sealed_corpus_replays() {
    assert!(
        replay("sealed", scopegate::fuzzing::sealed) >= 2,
        "seeds missing"
    );
}

#[test]
fn config_corpus_replays() {
    assert!(
        replay("config", scopegate::fuzzing::config) >= 3,
        "seeds missing"
    );
}

#[test]
fn jsonrpc_corpus_replays() {
    assert!(
        replay("jsonrpc", scopegate::fuzzing::jsonrpc) >= 3,
        "seeds missing"
    );
}

#[test]
fn callback_corpus_replays() {
    assert!(
        replay("callback", scopegate::fuzzing::callback) >= 3,
        "seeds missing"
    );
}

#[test]
fn github_webhook_corpus_replays() {
    assert!(
        replay("github_webhook", scopegate::fuzzing::github_webhook) >= 3,
        "seeds missing"
    );
}

#[test]
fn slack_webhook_corpus_replays() {
    assert!(
        replay("slack_webhook", scopegate::fuzzing::slack_webhook) >= 3,
        "seeds missing"
    );
}

#[test]
fn security_event_token_corpus_replays() {
    assert!(
        replay(
            "security_event_token",
            scopegate::fuzzing::security_event_token
        ) >= 3,
        "seeds missing"
    );
}

#[test]
fn token_response_corpus_replays() {
    assert!(
        replay("token_response", scopegate::fuzzing::token_response) >= 6,
        "seeds missing"
    );
}

#[test]
fn jwks_corpus_replays() {
    assert!(
        replay("jwks", scopegate::fuzzing::jwks) >= 2,
        "seeds missing"
    );
}

/// Writes real sealed values and a real vault header as fuzz seeds:
/// `cargo test --test fuzz_corpus -- --ignored write_sealed_seeds`.
#[test]
#[ignore]
fn write_sealed_seeds() {
    use scopegate::secret::Passphrase;
    use scopegate::vault::{KdfParams, Vault};
    let t = tempfile::tempdir().unwrap();
    let v = Vault::create(
        &t.path().join("v.redb"),
        &Passphrase::new(b"seed passphrase".to_vec()),
        KdfParams::FLOOR,
    )
    .unwrap();
    v.put("secret/a", "api_key", b"seed-key").unwrap();
    let sealed = v.dangerous_raw("secret/a", "api_key").unwrap().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sealed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sealed-value"), &sealed).unwrap();
    let header = scopegate::vault::seal::wrap_header(
        &Passphrase::new(b"seed passphrase".to_vec()),
        KdfParams::FLOOR,
        &[7; 32],
    )
    .unwrap();
    std::fs::write(dir.join("vault-header"), header).unwrap();
}
