//! Crash consistency: processes SIGKILLed at seeded random points. Seeds can be changed with
//! SCOPEGATE_REKEY_SEED and SCOPEGATE_TORTURE_SEED to explore other kill points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::{Instance, Rng};
use scopegate::config::Config;
use scopegate::gateway::Gateway;
use scopegate::secret::Passphrase;
use scopegate::store::{ConnectionStatus, OfflineStore, Store};
use scopegate::vault::{UnlockError, Vault};

fn unlocks(path: &std::path::Path, pass: &str) -> bool {
    match Vault::unlock(path, &Passphrase::new(pass.as_bytes().to_vec())) {
        Ok(_) => true,
        Err(UnlockError::WrongPassphrase) => false,
        Err(e) => panic!("unlock failed for another reason: {e}"),
    }
}

/// `rekey` killed at random points, 50 times: afterwards exactly one of the two passphrases
/// unlocks, and every stored secret still opens with its original value.
#[test]
fn rekey_killed_at_random_points_leaves_exactly_one_passphrase() {
    let inst = Instance::init();
    let records: Vec<String> = {
        let mut s = inst.start();
        inst.ok(&["user", "add", "alice"], b"");
        inst.ok(&["user", "add", "bob"], b"");
        for (svc, user) in [("search", "alice"), ("files", "alice"), ("search", "bob")] {
            inst.ok(
                &["apikey", "set", svc, "--user", user],
                format!("key-{svc}-{user}").as_bytes(),
            );
        }
        assert!(s.term().success());
        let store = OfflineStore::open(&inst.dir.join("scopegate.redb")).unwrap();
        store
            .connections()
            .unwrap()
            .into_iter()
            .map(|c| c.secret_record.unwrap())
            .collect()
    };
    let vault_path = inst.dir.join("secrets.redb");
    // Values by record, read once with the original passphrase.
    let values: BTreeMap<String, Vec<u8>> = {
        let v =
            Vault::unlock(&vault_path, &Passphrase::new(inst.pass.as_bytes().to_vec())).unwrap();
        records
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    v.get(r, "api_key")
                        .unwrap()
                        .unwrap()
                        .expose_secret()
                        .to_vec(),
                )
            })
            .collect()
    };
    assert_eq!(values.len(), 3);

    let rekey = |old: &str, new: &str| {
        inst.command()
            .env("SCOPEGATE_PASSPHRASE", old)
            .env("SCOPEGATE_NEW_PASSPHRASE", new)
            .args([
                "rekey",
                "--kdf-memory-kib",
                "19456",
                "--kdf-iterations",
                "2",
                "--kdf-parallelism",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // One uninterrupted run, to learn how long a rekey takes here.
    let t = Instant::now();
    let out = rekey(&inst.pass, "passphrase number zero")
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t.elapsed();
    let mut current = "passphrase number zero".to_owned();

    let mut rng = Rng::new(harness::seed("SCOPEGATE_REKEY_SEED", 0x5eed_0001));
    let (mut kept_old, mut took_new) = (0, 0);
    for i in 0..50 {
        let next = format!("passphrase number {}", i + 1);
        let mut child = rekey(&current, &next);
        let delay = rng.below(full.as_micros() as u64 * 13 / 10 + 1);
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let _ = child.wait();
        let (old_ok, new_ok) = (unlocks(&vault_path, &current), unlocks(&vault_path, &next));
        assert!(
            old_ok ^ new_ok,
            "run {i} (kill at {delay} µs): old unlocks {old_ok}, new unlocks {new_ok}"
        );
        if new_ok {
            current = next;
            took_new += 1;
        } else {
            kept_old += 1;
        }
        let v = Vault::unlock(&vault_path, &Passphrase::new(current.as_bytes().to_vec())).unwrap();
        for (record, value) in &values {
            assert_eq!(
                v.get(record, "api_key").unwrap().unwrap().expose_secret(),
                &value[..],
                "run {i}"
            );
        }
    }
    eprintln!(
        "rekey kills: {kept_old} kept the old passphrase, {took_new} took the new one (full run {full:?})"
    );
    assert!(
        kept_old > 0 && took_new > 0,
        "kill points did not straddle the commit: {kept_old}/{took_new}"
    );
    // The store survived the kills too, and its audit chain is intact.
    let mut inst = inst;
    inst.pass = current;
    let out = inst.ok(&["audit", "verify"], b"");
    assert!(out.contains("audit log intact"), "{out}");
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// The slot's live API key (None: no live connection).
    Known(Option<String>),
    /// A command was interrupted: any of these outcomes is allowed, nothing else.
    OneOf(Vec<Option<String>>),
}

/// A loop of `apikey set` / `connection revoke` with the server SIGKILLed at random points,
/// 200 iterations: every command that reported success is durable after a restart, an
/// interrupted one took effect entirely or not at all, the store opens every time, and
/// reconciliation leaves no orphan and no lost secret.
#[test]
fn sigkill_torture_of_apikey_set_and_revoke() {
    let inst = Instance::init();
    let config = Config::load(&inst.dir.join("scopegate.toml")).unwrap();
    let slots = [
        ("search", "alice"),
        ("files", "alice"),
        ("search", "bob"),
        ("files", "bob"),
    ];
    let mut model: BTreeMap<usize, Expect> =
        (0..slots.len()).map(|i| (i, Expect::Known(None))).collect();
    let mut conn_ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut server = inst.start();
    inst.ok(&["user", "add", "alice"], b"");
    inst.ok(&["user", "add", "bob"], b"");

    let mut rng = Rng::new(harness::seed("SCOPEGATE_TORTURE_SEED", 0x70_27_0e));
    let (mut kills, mut interrupted, mut resolved_new, mut resolved_old) = (0, 0, 0, 0);
    for i in 0..200 {
        let slot = rng.below(slots.len() as u64) as usize;
        let (svc, user) = slots[slot];
        let revoke = matches!(model[&slot], Expect::Known(Some(_))) && rng.below(3) == 0;
        let key = format!("key-{i}-{:x}", rng.next());
        let mut cmd = inst.command();
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if revoke {
            cmd.args(["connection", "revoke", &conn_ids[&slot]]);
        } else {
            cmd.args(["apikey", "set", svc, "--user", user]);
        }
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if !revoke {
                stdin.write_all(key.as_bytes()).unwrap();
            }
        }
        let kill = rng.below(2) == 0;
        if kill {
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            server.kill9();
            kills += 1;
        }
        let out = child.wait_with_output().unwrap();
        let after = if revoke { None } else { Some(key.clone()) };
        let before = match &model[&slot] {
            Expect::Known(k) => k.clone(),
            Expect::OneOf(_) => unreachable!("resolved after every kill"),
        };
        if out.status.success() {
            model.insert(slot, Expect::Known(after));
            if !revoke {
                let stdout = String::from_utf8(out.stdout).unwrap();
                let id = stdout
                    .split("(connection ")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_owned();
                conn_ids.insert(slot, id);
            }
        } else {
            assert!(
                kill,
                "iteration {i}: failed without a kill: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            interrupted += 1;
            model.insert(slot, Expect::OneOf(vec![before.clone(), after.clone()]));
        }
        if kill {
            // Restart (the server's own start-up reconciliation runs), stop it cleanly, then
            // inspect the folder as that start left it.
            let mut restarted = inst.start();
            let status = restarted.term();
            assert!(
                status.success(),
                "iteration {i}: restart failed ({status}): {}",
                std::fs::read_to_string(&restarted.stderr).unwrap_or_default()
            );
            let vault = Vault::unlock(
                &inst.dir.join("secrets.redb"),
                &Passphrase::new(inst.pass.as_bytes().to_vec()),
            )
            .unwrap_or_else(|e| panic!("iteration {i}: vault does not open: {e}"));
            let store = Store::open(
                &inst.dir.join("scopegate.redb"),
                vault.pairing_id(),
                vault.audit_head_key(),
            )
            .unwrap_or_else(|e| panic!("iteration {i}: store does not open: {e}"));
            let g = Gateway::new(config.clone(), vault, store);
            let conns = g.connections(None).unwrap();
            assert!(
                conns
                    .iter()
                    .all(|c| c.status != ConnectionStatus::NeedsReauth),
                "iteration {i}: a secret was lost"
            );
            let records = g.vault.records().unwrap();
            let live = g
                .store
                .read()
                .unwrap()
                .connections()
                .unwrap()
                .into_iter()
                .filter(|c| c.status.holds_secrets())
                .filter_map(|c| c.secret_record)
                .collect::<std::collections::BTreeSet<_>>();
            assert_eq!(
                records, live,
                "iteration {i}: orphaned or missing sealed records after the restart's reconciliation"
            );
            for (s, (svc, user)) in slots.iter().enumerate() {
                let live: Vec<_> = conns
                    .iter()
                    .filter(|c| {
                        &c.service == svc && &c.user == user && c.status == ConnectionStatus::Active
                    })
                    .collect();
                assert!(
                    live.len() <= 1,
                    "iteration {i}: two live connections for one slot"
                );
                let observed = live.first().map(|c| {
                    let rec = g
                        .store
                        .read()
                        .unwrap()
                        .connections()
                        .unwrap()
                        .into_iter()
                        .find(|x| x.id == c.id)
                        .unwrap()
                        .secret_record
                        .unwrap();
                    String::from_utf8(
                        g.vault
                            .get(&rec, "api_key")
                            .unwrap()
                            .unwrap()
                            .expose_secret()
                            .to_vec(),
                    )
                    .unwrap()
                });
                match model[&s].clone() {
                    Expect::Known(k) => assert_eq!(
                        observed, k,
                        "iteration {i}: slot {svc}/{user} lost a reported success"
                    ),
                    Expect::OneOf(options) => {
                        assert!(
                            options.contains(&observed),
                            "iteration {i}: slot {svc}/{user} is {observed:?}, allowed {options:?}"
                        );
                        if observed == options[1] {
                            resolved_new += 1;
                        } else {
                            resolved_old += 1;
                        }
                        model.insert(s, Expect::Known(observed));
                    }
                }
                if let Some(c) = live.first() {
                    conn_ids.insert(s, c.id.clone());
                }
            }
            drop(g);
            server = inst.start();
        }
    }
    eprintln!(
        "torture: 200 iterations, {kills} kills, {interrupted} commands interrupted ({resolved_new} took effect, {resolved_old} did not)"
    );
    assert!(
        kills >= 50 && interrupted > 0,
        "kills {kills}, interrupted {interrupted}: the kill points missed the commands"
    );
    assert!(server.term().success());
    assert!(
        inst.ok(&["audit", "verify"], b"")
            .contains("audit log intact")
    );
}
