//! Gateway operations in-process: write ordering, reconciliation, fail-closed audit (I7),
//! audit chain tampering (I6).
#![allow(clippy::unwrap_used)]

use scopegate::config::Config;
use scopegate::gateway::Gateway;
use scopegate::secret::{ApiKey, Passphrase};
use scopegate::store::audit::ChainError;
use scopegate::store::{ConnectionStatus, OfflineStore, Store, StoreError};
use scopegate::vault::{KdfParams, Vault};

const CONFIG: &str = r#"
[services.search]
kind = "api_key"
mcp_url = "https://search.example/mcp"
rotate_after_days = 1
"#;

struct Fixture {
    _t: tempfile::TempDir,
    dir: std::path::PathBuf,
    g: Gateway,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let vault = Vault::create(
        &dir.join("secrets.redb"),
        &Passphrase::new(b"pw for tests".to_vec()),
        KdfParams::FLOOR,
    )
    .unwrap();
    let store = Store::create(
        &dir.join("scopegate.redb"),
        vault.pairing_id(),
        vault.audit_head_key(),
    )
    .unwrap();
    let g = Gateway::new(Config::parse(CONFIG, "t").unwrap(), vault, store);
    Fixture { _t: t, dir, g }
}

fn key(s: &str) -> ApiKey {
    ApiKey::new(s.as_bytes().to_vec())
}

#[test]
fn apikey_set_rotate_and_revoke() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let c1 = f.g.apikey_set("search", "alice", &key("key-one")).unwrap();
    let r1 = c1.secret_record.clone().unwrap();
    assert_eq!(
        f.g.vault
            .get(&r1, "api_key")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"key-one"
    );

    // Rotation keeps the connection, swaps the record, deletes the old one.
    let c2 = f.g.apikey_set("search", "alice", &key("key-two")).unwrap();
    assert_eq!(c1.id, c2.id);
    let r2 = c2.secret_record.clone().unwrap();
    assert_ne!(r1, r2);
    assert!(f.g.vault.get(&r1, "api_key").unwrap().is_none());
    assert_eq!(
        f.g.vault
            .get(&r2, "api_key")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"key-two"
    );
    assert_ne!(c1.secret_fingerprint, c2.secret_fingerprint);

    let revoked = f.g.connection_revoke(&c2.id, "admin").unwrap();
    assert_eq!(revoked.status, ConnectionStatus::Revoked);
    assert!(f.g.vault.records().unwrap().is_empty());
    assert!(
        f.g.connection_revoke(&c2.id, "admin")
            .unwrap_err()
            .to_string()
            .contains("already revoked")
    );

    let actions: Vec<String> =
        f.g.audit_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
    assert_eq!(
        actions,
        [
            "store.create",
            "user.add",
            "apikey.set",
            "apikey.rotate",
            "connection.revoke"
        ]
    );
    assert_eq!(f.g.audit_verify().unwrap().entries, 5);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    assert!(
        f.g.user_add("alice")
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    assert!(f.g.user_add("bad name\n").is_err());
    for (svc, user, k) in [
        ("nope", "alice", "k"),
        ("search", "bob", "k"),
        ("search", "alice", ""),
        ("search", "alice", "has space"),
        ("search", "alice", "ctl\u{1b}[2J"),
    ] {
        let err = f.g.apikey_set(svc, user, &key(k)).unwrap_err().to_string();
        assert!(
            !k.is_empty() && !err.contains(k) || k.is_empty(),
            "error repeats the key: {err}"
        );
    }
    assert!(f.g.vault.records().unwrap().is_empty());
    assert!(f.g.connections(None).unwrap().is_empty());
    assert_eq!(f.g.audit_verify().unwrap().entries, 2);
}

/// I7: when the audit entry cannot be written, the action does not happen.
#[test]
fn i7_actions_fail_closed_when_the_audit_log_is_unwritable() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let c = f.g.apikey_set("search", "alice", &key("original")).unwrap();
    f.g.store.dangerous_inject_audit_failure(true);

    let err =
        f.g.apikey_set("search", "alice", &key("replacement"))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("audit log cannot be written") && err.contains("not carried out"),
        "{err}"
    );
    let err = f.g.user_add("bob").unwrap_err().to_string();
    assert!(err.contains("audit log cannot be written"), "{err}");
    assert!(f.g.connection_revoke(&c.id, "admin").is_err());

    // Nothing changed: one sealed record, still the original key, still active, no bob.
    let records = f.g.vault.records().unwrap();
    assert_eq!(records.len(), 1);
    let rec = records.iter().next().unwrap();
    assert_eq!(
        f.g.vault
            .get(rec, "api_key")
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"original"
    );
    let conns = f.g.connections(None).unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].status, ConnectionStatus::Active);
    assert_eq!(f.g.users().unwrap().len(), 1);

    f.g.store.dangerous_inject_audit_failure(false);
    f.g.user_add("bob").unwrap();
    assert_eq!(f.g.audit_verify().unwrap().entries, 4);
}

#[test]
fn an_unaudited_write_does_not_commit() {
    let f = fixture();
    let user = scopegate::store::User {
        id: "u-1".into(),
        name: "sneaky".into(),
        created: time::OffsetDateTime::now_utc(),
    };
    let err = f.g.store.write(|t| t.insert_user(&user)).unwrap_err();
    assert!(matches!(err, StoreError::AuditUnavailable(_)));
    assert!(
        f.g.users().unwrap().is_empty(),
        "an unaudited change was committed"
    );
}

#[test]
fn reconcile_deletes_orphans_and_flags_lost_secrets() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    f.g.user_add("bob").unwrap();
    let a = f.g.apikey_set("search", "alice", &key("a-key")).unwrap();
    let b = f.g.apikey_set("search", "bob", &key("b-key")).unwrap();
    // As if a crash hit between the vault write and the store commit of a third set...
    f.g.vault
        .put("secret/orphan", "api_key", b"never referenced")
        .unwrap();
    // ...and as if bob's sealed record was lost.
    f.g.vault
        .delete_record(b.secret_record.as_ref().unwrap())
        .unwrap();

    let report = f.g.reconcile().unwrap();
    assert_eq!(report.orphan_secrets_deleted, 1);
    assert_eq!(report.connections_needing_reauth, 1);
    assert!(f.g.vault.get("secret/orphan", "api_key").unwrap().is_none());
    let conns = f.g.connections(None).unwrap();
    let status = |id: &str| conns.iter().find(|c| c.id == id).unwrap().status;
    assert_eq!(status(&a.id), ConnectionStatus::Active);
    assert_eq!(status(&b.id), ConnectionStatus::NeedsReauth);
    assert_eq!(f.g.reconcile().unwrap(), Default::default());
}

#[test]
fn rotation_due_is_reported() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let c = f.g.apikey_set("search", "alice", &key("k")).unwrap();
    assert!(!f.g.connections(None).unwrap()[0].rotation_due);
    // Backdate the key past the service's rotate_after_days = 1.
    f.g.store
        .write(|t| {
            let mut c = t.connection(&c.id)?.unwrap();
            c.secret_set_at = Some(t.now - time::Duration::days(2));
            t.put_connection(&c)?;
            t.audit(scopegate::store::audit::Event::new(
                "test", "backdate", &c.id, "ok",
            ))
            .map(drop)
        })
        .unwrap();
    assert!(f.g.connections(None).unwrap()[0].rotation_due);
}

#[test]
fn a_store_from_another_installation_is_refused() {
    let a = fixture();
    let b = fixture();
    let Fixture {
        _t: _ta,
        dir: dir_a,
        g: ga,
    } = a;
    drop(ga);
    let err = Store::open(
        &dir_a.join("scopegate.redb"),
        b.g.vault.pairing_id(),
        b.g.vault.audit_head_key(),
    );
    assert!(matches!(err, Err(StoreError::Unpaired)));
}

#[test]
fn reconcile_refuses_to_mass_delete_sealed_records() {
    let f = fixture();
    for i in 0..40 {
        f.g.vault
            .put(&format!("secret/x{i}"), "api_key", b"v")
            .unwrap();
    }
    let err = f.g.reconcile().unwrap_err().to_string();
    assert!(err.contains("refusing to delete"), "{err}");
    assert_eq!(f.g.vault.records().unwrap().len(), 40);
}

/// I6: editing, deleting, swapping, truncating or wiping entries in a copy of the store makes
/// verification fail and name the entry; cutting the end off and rewriting the head is caught
/// by the head's HMAC.
#[test]
fn i6_tampering_with_a_copy_is_detected_and_named() {
    let f = fixture();
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        f.g.user_add(name).unwrap();
    }
    let head_key = f.g.vault.audit_head_key();
    let Fixture { _t, dir, g } = f;
    drop(g);
    let original = dir.join("scopegate.redb");
    type Tamper = Box<dyn FnOnce(&mut Vec<scopegate::store::audit::Row>)>;
    let cases: Vec<(&str, Tamper, ChainError)> = vec![
        (
            "edit",
            Box::new(|rows| {
                let text = String::from_utf8(rows[3].1.clone())
                    .unwrap()
                    .replace("u3", "zz");
                rows[3].1 = text.into_bytes();
            }),
            ChainError::Edited { seq: 4 },
        ),
        (
            "delete",
            Box::new(|rows| drop(rows.remove(1))),
            ChainError::Gap {
                expected: 2,
                found: 3,
            },
        ),
        (
            "swap",
            Box::new(|rows| {
                let b = rows[3].1.clone();
                rows[3].1 = rows[2].1.clone();
                rows[2].1 = b;
            }),
            ChainError::Misplaced { key: 3, seq: 4 },
        ),
        (
            "truncate",
            Box::new(|rows| drop(rows.pop())),
            ChainError::Truncated {
                expected: 6,
                found: 5,
            },
        ),
        ("wipe", Box::new(|rows| rows.clear()), ChainError::Empty),
    ];
    for (name, tamper, want) in cases {
        let copy = dir.join(format!("copy-{name}.redb"));
        std::fs::copy(&original, &copy).unwrap();
        assert_eq!(
            OfflineStore::open(&copy)
                .unwrap()
                .verify_audit(Some(&head_key))
                .unwrap()
                .entries,
            6
        );
        scopegate::store::testing::rewrite_audit(&copy, tamper).unwrap();
        match OfflineStore::open(&copy)
            .unwrap()
            .verify_audit(Some(&head_key))
        {
            Err(StoreError::Chain(e)) => assert_eq!(e, want, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }

    // Cut entries off the end and rewrite the head to match, without the vault's key: the
    // chain alone looks whole, the head's HMAC does not.
    let copy = dir.join("copy-cut-and-rehead.redb");
    std::fs::copy(&original, &copy).unwrap();
    let mut last_hash = String::new();
    scopegate::store::testing::rewrite_audit(&copy, |rows| {
        rows.truncate(3);
        let e: scopegate::store::audit::Entry = serde_json::from_slice(&rows[2].1).unwrap();
        last_hash = e.hash;
    })
    .unwrap();
    let attacker_key = zeroize::Zeroizing::new([0x41u8; 32]);
    scopegate::store::testing::rewrite_head(&copy, 3, &last_hash, &attacker_key).unwrap();
    let store = OfflineStore::open(&copy).unwrap();
    assert!(!store.verify_audit(None).unwrap().head_authenticated);
    match store.verify_audit(Some(&head_key)) {
        Err(StoreError::Chain(e)) => assert_eq!(e, ChainError::HeadForged),
        other => panic!("{other:?}"),
    }
}

/// The admin server refuses a peer whose uid is not the owner's, whatever the file modes.
#[tokio::test]
async fn admin_socket_refuses_another_uid() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let socket = f.dir.join("admin.sock");
    let (listener, our_uid) = scopegate::admin::server::bind(&socket).unwrap();
    assert_eq!(our_uid, std::fs::metadata(&f.dir).unwrap().uid());
    let status: std::sync::Arc<dyn Fn() -> scopegate::admin::proto::Status + Send + Sync> =
        std::sync::Arc::new(|| unreachable!("a refused peer reaches no handler"));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let g = std::sync::Arc::new(f.g);
    // Pretend the owner is someone else: this process is then "another uid".
    tokio::spawn(scopegate::admin::server::run(
        listener,
        our_uid + 1,
        g.clone(),
        status,
        rx,
    ));
    let s = socket.clone();
    let err = tokio::task::spawn_blocking(move || {
        scopegate::admin::client::call::<serde_json::Value>(
            &s,
            &scopegate::admin::proto::Request::UserAdd {
                name: "mallory".into(),
            },
        )
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("uid {our_uid} may not use this admin socket")),
        "{err}"
    );
    assert!(g.users().unwrap().is_empty());
}

/// I8: a `state` older than ten minutes is refused, and so is one from another session; the
/// checks change nothing (the right session can still use a fresh one).
#[test]
fn i8_expired_and_foreign_state_are_refused() {
    use scopegate::gateway::connect::CallbackRefusal;
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let link = f.g.login_link("alice").unwrap();
    let (session, user) = f.g.login(link.expose_secret()).unwrap();
    assert!(
        f.g.login(link.expose_secret()).is_err(),
        "a login link works once"
    );
    let begun =
        f.g.begin_connect(
            &user,
            session.expose_secret(),
            &scopegate::gateway::connect::FlowTarget {
                service: "search",
                issuer: Some("https://as.example"),
                iss_required: true,
                scopes: &["a".into()],
                redirect_uri: "http://127.0.0.1/cb",
                dpop: false,
            },
        )
        .unwrap();
    let state = String::from_utf8(begun.state.expose_secret().to_vec()).unwrap();
    let ok =
        f.g.check_callback(
            &state,
            Some(session.expose_secret()),
            Some("https://as.example"),
            true,
        )
        .unwrap();
    assert_eq!(ok.user_id, user.id);
    assert_eq!(
        f.g.check_callback(
            &state,
            Some(b"another session"),
            Some("https://as.example"),
            true
        )
        .unwrap_err(),
        CallbackRefusal::OtherSession
    );
    assert_eq!(
        f.g.check_callback(&state, None, Some("https://as.example"), true)
            .unwrap_err(),
        CallbackRefusal::OtherSession
    );
    // Age it past its ten minutes.
    f.g.store
        .write(|t| {
            let mut p = t.take_pending(&ok.state_hash)?.unwrap();
            p.expires = t.now - time::Duration::seconds(1);
            t.put_pending(&p)?;
            t.audit(scopegate::store::audit::Event::new(
                "test", "age", "pending", "ok",
            ))
            .map(drop)
        })
        .unwrap();
    assert_eq!(
        f.g.check_callback(
            &state,
            Some(session.expose_secret()),
            Some("https://as.example"),
            true
        )
        .unwrap_err(),
        CallbackRefusal::Expired
    );
    // Start-up reconciliation purges it and its sealed verifier.
    assert!(
        f.g.vault
            .records()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("pending/"))
    );
    f.g.reconcile().unwrap();
    assert!(f.g.vault.records().unwrap().is_empty());
    assert_eq!(
        f.g.check_callback(
            &state,
            Some(session.expose_secret()),
            Some("https://as.example"),
            true
        )
        .unwrap_err(),
        CallbackRefusal::UnknownState
    );
}

/// The proxy finds a user's live connection through an index: it follows set, rotate, revoke
/// and set-again, never points at a revoked connection, and is rebuilt when the store opens.
#[test]
fn the_live_connection_index_follows_every_change() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let uid = f.g.users().unwrap()[0].id.clone();
    assert!(f.g.live_connection(&uid, "search").unwrap().is_none());
    let c1 = f.g.apikey_set("search", "alice", &key("k1")).unwrap();
    assert_eq!(
        f.g.live_connection(&uid, "search").unwrap().unwrap().id,
        c1.id
    );
    let rotated = f.g.apikey_set("search", "alice", &key("k2")).unwrap();
    assert_eq!(rotated.id, c1.id);
    f.g.connection_revoke(&c1.id, "admin").unwrap();
    assert!(
        f.g.live_connection(&uid, "search").unwrap().is_none(),
        "the index points at a revoked connection"
    );
    let c2 = f.g.apikey_set("search", "alice", &key("k3")).unwrap();
    assert_ne!(c2.id, c1.id);
    assert_eq!(
        f.g.live_connection(&uid, "search").unwrap().unwrap().id,
        c2.id
    );
    // Reopen: the index is rebuilt from the connections and agrees.
    let pairing = f.g.vault.pairing_id().to_owned();
    let head_key = f.g.vault.audit_head_key();
    let Fixture { _t, dir, g } = f;
    let gateway_config = g.config.clone();
    drop(g);
    let vault = Vault::unlock(
        &dir.join("secrets.redb"),
        &Passphrase::new(b"pw for tests".to_vec()),
    )
    .unwrap();
    let store = Store::open(&dir.join("scopegate.redb"), &pairing, head_key).unwrap();
    let g = Gateway::new(gateway_config, vault, store);
    assert_eq!(
        g.live_connection(&uid, "search").unwrap().unwrap().id,
        c2.id
    );
}

/// The API-key rotation policy: a key older than `rotate_after_days` is flagged in the list,
/// once in the audit log (not again on the next sweep), counted for /metrics, and a new key
/// (`apikey set` on the existing connection) starts a new period.
#[test]
fn overdue_api_keys_are_flagged_once_and_rotation_clears_them() {
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let c =
        f.g.apikey_set("search", "alice", &key("old-key-1"))
            .unwrap();
    assert_eq!(f.g.rotation_sweep().unwrap(), 0, "a fresh key is not due");
    // Age the key by two days (the policy is one day).
    f.g.store
        .write(|t| {
            let mut c = t.connection(&c.id)?.unwrap();
            c.secret_set_at = Some(t.now - time::Duration::days(2));
            t.put_connection(&c)?;
            t.audit(scopegate::store::audit::Event::new(
                "test", "age", &c.id, "ok",
            ))
            .map(drop)
        })
        .unwrap();
    let flagged = |g: &Gateway| {
        g.audit_after(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "apikey.rotation_due")
            .count()
    };
    assert_eq!(f.g.rotation_sweep().unwrap(), 1);
    assert_eq!(f.g.rotation_sweep().unwrap(), 1, "still due");
    assert_eq!(flagged(&f.g), 1, "flagged once, not per sweep");
    assert_eq!(
        f.g.overdue_api_keys
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(f.g.connections(None).unwrap()[0].rotation_due);
    f.g.apikey_set("search", "alice", &key("new-key-2"))
        .unwrap();
    assert_eq!(f.g.rotation_sweep().unwrap(), 0, "the rotated key is fresh");
    assert!(!f.g.connections(None).unwrap()[0].rotation_due);
}

/// The per-agent cap on requests in flight counts across principal-cache invalidations: the
/// principal made after an admin change shares the count of the one made before (requests
/// still open), so an agent cannot get round the cap whenever agents or profiles change.
#[test]
fn an_agents_in_flight_count_survives_a_cache_invalidation() {
    use std::sync::atomic::Ordering;
    let f = fixture();
    f.g.user_add("alice").unwrap();
    let (_, token) = f.g.agent_add("bot", "alice", None).unwrap();
    let (_, other) = f.g.agent_add("bot2", "alice", None).unwrap();
    let before =
        f.g.authenticate_agent(token.expose_secret())
            .unwrap()
            .unwrap();
    before.in_flight.fetch_add(3, Ordering::SeqCst);
    f.g.agent_add("bot3", "alice", None).unwrap();
    f.g.agent_revoke("bot3").unwrap(); // invalidates the principal cache
    let after =
        f.g.authenticate_agent(token.expose_secret())
            .unwrap()
            .unwrap();
    assert!(!std::sync::Arc::ptr_eq(&before, &after), "a new principal");
    assert!(std::sync::Arc::ptr_eq(&before.in_flight, &after.in_flight));
    assert_eq!(after.in_flight.load(Ordering::SeqCst), 3);
    let bot2 =
        f.g.authenticate_agent(other.expose_secret())
            .unwrap()
            .unwrap();
    assert_eq!(
        bot2.in_flight.load(Ordering::SeqCst),
        0,
        "another agent's count is its own"
    );
}
