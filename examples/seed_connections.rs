//! Seeds N users, each with an API-key connection to one service, into an initialised data
//! folder through the real store and vault code (sealed keys, derived tables, audit entries),
//! in batches of one transaction each. For `bench/rss.sh`.
//! usage: SCOPEGATE_PASSPHRASE=… seed_connections DATA_DIR SERVICE N KEY [oauth]
//! With `oauth`, the connections are OAuth ones whose access tokens expired a minute ago
//! (sealed access and refresh tokens), for the refresh-storm benchmark.

use std::time::Instant;

use scopegate::datadir::DataDir;
use scopegate::passphrase::{self, Purpose};
use scopegate::store::audit::Event;
use scopegate::store::{Connection, ConnectionKind, ConnectionStatus, Store, User};
use scopegate::vault::Vault;

const BATCH: usize = 10_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(service), Some(n), Some(key)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: seed_connections DATA_DIR SERVICE N KEY");
    };
    let n: usize = n.parse()?;
    let oauth = args.next().as_deref() == Some("oauth");
    let dir = DataDir::new(dir);
    let pass = passphrase::read(Purpose::Unlock)?;
    let vault = Vault::unlock(&dir.vault_path(), &pass)?;
    let store = Store::open(
        &dir.store_path(),
        vault.pairing_id(),
        vault.audit_head_key(),
    )?;
    let fingerprint = vault.fingerprint(key.as_bytes());
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let end = (done + BATCH).min(n);
        let records: Vec<String> = (done..end).map(|i| format!("secret/seed-{i:09}")).collect();
        let items: Vec<(&str, &str, &[u8])> = if oauth {
            records
                .iter()
                .flat_map(|r| {
                    [
                        (r.as_str(), "access_token", key.as_bytes()),
                        (r.as_str(), "refresh_token", key.as_bytes()),
                    ]
                })
                .collect()
        } else {
            records
                .iter()
                .map(|r| (r.as_str(), "api_key", key.as_bytes()))
                .collect()
        };
        vault.put_many(&items)?;
        store.write(|t| {
            for (i, record) in (done..end).zip(&records) {
                let user = User {
                    id: format!("seed-user-{i:09}"),
                    name: format!("u{i}"),
                    created: t.now,
                };
                t.insert_user(&user)?;
                t.put_connection(&Connection {
                    id: format!("seed-conn-{i:09}"),
                    user_id: user.id.clone(),
                    service: service.clone(),
                    kind: if oauth {
                        ConnectionKind::Oauth
                    } else {
                        ConnectionKind::ApiKey
                    },
                    status: ConnectionStatus::Active,
                    status_reason: None,
                    secret_record: Some(record.clone()),
                    secret_fingerprint: Some(fingerprint.clone()),
                    scopes: Vec::new(),
                    created: t.now,
                    updated: t.now,
                    secret_set_at: Some(t.now - time::Duration::hours(1)),
                    access_expires: oauth.then(|| t.now - time::Duration::minutes(1)),
                    issuer: None,
                    strikes: 0,
                    last_refresh: None,
                    refresh: Default::default(),
                    subject: None,
                    dpop_jkt: None,
                })?;
            }
            t.audit(
                Event::new("bench", "bench.seed", "store", "ok")
                    .detail("connections", (end - done).to_string()),
            )
            .map(drop)
        })?;
        done = end;
    }
    eprintln!(
        "seeded {n} connections in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
