//! The vault as a library: sealing, binding to location (I1), wrong passphrase (I2), nonces,
//! rekey.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use scopegate::secret::Passphrase;
use scopegate::vault::{KdfParams, OpenError, UnlockError, Vault, VaultError, seal};

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.as_bytes().to_vec())
}

fn new_vault() -> (tempfile::TempDir, std::path::PathBuf, Vault) {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("secrets.redb");
    let v = Vault::create(&path, &pass("first passphrase"), KdfParams::FLOOR).unwrap();
    (t, path, v)
}

#[test]
fn put_get_round_trip_and_survives_reopen() {
    let (_t, path, v) = new_vault();
    let token = vec![0xA5u8; 2048];
    v.put("secret/a", "access_token", &token).unwrap();
    v.put("secret/a", "refresh_token", b"rt").unwrap();
    assert_eq!(
        v.get("secret/a", "access_token")
            .unwrap()
            .unwrap()
            .expose_secret(),
        &token[..]
    );
    assert!(v.get("secret/a", "nope").unwrap().is_none());
    drop(v);
    let v = Vault::unlock(&path, &pass("first passphrase")).unwrap();
    assert_eq!(
        v.get("secret/a", "refresh_token")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"rt"
    );
    assert!(v.delete_record("secret/a").unwrap());
    assert!(v.get("secret/a", "access_token").unwrap().is_none());
    assert!(v.records().unwrap().is_empty());
}

#[test]
fn create_refuses_an_existing_vault() {
    let (_t, path, v) = new_vault();
    drop(v);
    assert!(matches!(
        Vault::create(&path, &pass("another passphrase"), KdfParams::FLOOR),
        Err(VaultError::Exists(_))
    ));
}

/// I1: a sealed value copied to another connection's record, or to another field, does not
/// open; the error names the record and nothing else breaks.
#[test]
fn i1_sealed_value_moved_elsewhere_fails_to_open() {
    let (_t, _path, v) = new_vault();
    v.put("secret/conn-a", "access_token", b"token of A")
        .unwrap();
    v.put("secret/conn-b", "access_token", b"token of B")
        .unwrap();
    let raw = v
        .dangerous_raw("secret/conn-a", "access_token")
        .unwrap()
        .unwrap();
    v.dangerous_put_raw("secret/conn-b", "access_token", &raw)
        .unwrap();
    v.dangerous_put_raw("secret/conn-a", "refresh_token", &raw)
        .unwrap();
    for (record, field) in [
        ("secret/conn-b", "access_token"),
        ("secret/conn-a", "refresh_token"),
    ] {
        match v.get(record, field) {
            Err(VaultError::Open {
                record: r,
                field: f,
                source: OpenError::Inauthentic,
            }) => {
                assert_eq!((r.as_str(), f.as_str()), (record, field));
            }
            other => panic!("{record}/{field}: {other:?}"),
        }
    }
    assert_eq!(
        v.get("secret/conn-a", "access_token")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"token of A"
    );
}

#[test]
fn damaged_values_give_a_per_record_error_not_a_panic() {
    let (_t, _path, v) = new_vault();
    v.put("secret/x", "api_key", b"0123456789").unwrap();
    v.put("secret/y", "api_key", b"fine").unwrap();
    let raw = v.dangerous_raw("secret/x", "api_key").unwrap().unwrap();
    let mut flipped = raw.clone();
    flipped[raw.len() / 2] ^= 0x10;
    let mut unknown_version = raw.clone();
    unknown_version[0] = 9;
    let cases: Vec<(Vec<u8>, OpenError)> = vec![
        (flipped, OpenError::Inauthentic),
        (raw[..raw.len() - 1].to_vec(), OpenError::Inauthentic),
        (raw[..10].to_vec(), OpenError::Truncated(10)),
        (Vec::new(), OpenError::Truncated(0)),
        (unknown_version, OpenError::UnknownVersion(9)),
    ];
    for (bytes, want) in cases {
        v.dangerous_put_raw("secret/x", "api_key", &bytes).unwrap();
        match v.get("secret/x", "api_key") {
            Err(VaultError::Open { source, .. }) => assert_eq!(source, want),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.get("secret/y", "api_key")
                .unwrap()
                .unwrap()
                .expose_secret(),
            b"fine"
        );
    }
}

/// 100 000 seals of one plaintext at one location, 60 000 before a restart and 40 000 after:
/// no nonce repeats (a nonce derived from the location or a counter reset would).
#[test]
fn nonces_never_repeat_across_a_restart() {
    let (_t, path, v) = new_vault();
    let plaintext = b"the same plaintext every time";
    let mut sealed: Vec<Vec<u8>> = (0..60_000)
        .map(|_| v.dangerous_seal("secret/one", "api_key", plaintext))
        .collect();
    v.put("secret/one", "api_key", plaintext).unwrap();
    drop(v);
    let v = Vault::unlock(&path, &pass("first passphrase")).unwrap();
    sealed.extend((0..40_000).map(|_| v.dangerous_seal("secret/one", "api_key", plaintext)));
    assert_eq!(sealed.len(), 100_000);
    let nonces: HashSet<[u8; seal::NONCE_LEN]> = sealed
        .iter()
        .map(|s| *seal::decode(s).unwrap().nonce)
        .collect();
    assert_eq!(nonces.len(), sealed.len(), "a nonce repeated");
    // And every one of them opens where it belongs.
    v.dangerous_put_raw("secret/one", "api_key", &sealed[12_345])
        .unwrap();
    assert_eq!(
        v.get("secret/one", "api_key")
            .unwrap()
            .unwrap()
            .expose_secret(),
        plaintext
    );
}

/// I2: a wrong passphrase is reported as exactly that and the file is not written.
#[test]
fn i2_wrong_passphrase_is_exact_and_writes_nothing() {
    let (_t, path, v) = new_vault();
    v.put("secret/a", "api_key", b"k").unwrap();
    drop(v);
    let before = std::fs::read(&path).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let err = Vault::unlock(&path, &pass("not the passphrase")).unwrap_err();
    assert!(matches!(err, UnlockError::WrongPassphrase));
    assert_eq!(err.to_string(), "wrong passphrase");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn rekey_changes_which_passphrase_unlocks_and_keeps_every_secret() {
    let (_t, path, v) = new_vault();
    v.put("secret/a", "api_key", b"alpha").unwrap();
    v.rekey(&pass("second passphrase"), KdfParams::FLOOR)
        .unwrap();
    drop(v);
    assert!(matches!(
        Vault::unlock(&path, &pass("first passphrase")),
        Err(UnlockError::WrongPassphrase)
    ));
    let v = Vault::unlock(&path, &pass("second passphrase")).unwrap();
    assert_eq!(
        v.get("secret/a", "api_key")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"alpha"
    );
}

#[test]
fn a_second_open_of_the_same_vault_is_refused() {
    let (_t, path, _v) = new_vault();
    assert!(matches!(
        Vault::unlock(&path, &pass("first passphrase")),
        Err(UnlockError::InUse)
    ));
}

#[test]
fn fingerprints_are_keyed_per_vault() {
    let (_t, _p, a) = new_vault();
    let (_t2, _p2, b) = new_vault();
    assert_eq!(a.fingerprint(b"k"), a.fingerprint(b"k"));
    assert_ne!(a.fingerprint(b"k"), b.fingerprint(b"k"));
    assert_ne!(a.fingerprint(b"k"), a.fingerprint(b"l"));
}
