//! The application store, `scopegate.redb`: users, agents, profiles, connections (metadata
//! only), pending authorizations and the audit log. Never holds a secret, not even sealed.
//!
//! Every change goes through `Store::write`, whose closure must append the audit entry for
//! what it did; the entry commits in the same transaction, so an action that cannot be
//! audited does not happen (I7).

mod agents;
pub mod audit;
pub mod records;
mod sessions;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::durable::{StorageError, begin_durable, storage};
use audit::{ChainError, Entry, Event, Head, HeadKey, Verified};
pub use records::*;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USER_NAMES: TableDefinition<&str, &str> = TableDefinition::new("user_names");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
const PROFILE_NAMES: TableDefinition<&str, &str> = TableDefinition::new("profile_names");
const AGENT_NAMES: TableDefinition<&str, &str> = TableDefinition::new("agent_names");
const AGENT_HASHES: TableDefinition<&str, &str> = TableDefinition::new("agent_token_hashes");
const CONNECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("connections");
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_authorizations");
/// `user_id \0 service` → id of that user's live (not revoked) connection to the service:
/// the proxy's per-request lookup, O(log n) however many connections are stored.
const LIVE_CONNECTIONS: TableDefinition<&str, &str> = TableDefinition::new("live_connections");
/// Sealed record → the connection holding it (only for statuses that hold secrets), so
/// start-up reconciliation checks record by record instead of loading every connection.
const SECRET_REFS: TableDefinition<&str, &str> = TableDefinition::new("secret_refs");
/// Connections per status, kept by `put_connection`, for /metrics and `status`.
const CONNECTION_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("connection_counts");
/// Version of the derived tables above; they are rebuilt once when it changes.
const INDEXES: &str = "indexes";
const INDEXES_VERSION: &[u8] = b"3";
const LOGIN_LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("login_links");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// The audit log in segments: each row holds entries one transaction appended, as JSON lines
/// in order, under the seq of its last entry. An action's own entry is a segment of one (as
/// every row was before segments); a group commit of calls is a few segments (see
/// `SEGMENT_BYTES`), so it costs the B-tree one insert per segment rather than one per call.
/// Every entry is still chained and verified on its own (`audit::verify_chain`).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// A segment's size cap, just under a power of two of redb's 4 KiB page so a segment fills its
/// page: one uncapped segment per commit wasted a third of each page on average and doubled
/// the file's growth. A commit still takes one insert per ~35 call entries. The cap is soft:
/// a single entry bigger than it (up to about 20 KB) is stored alone.
const SEGMENT_BYTES: usize = 16 * 1024 - 256;
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT_HEAD: &str = "audit_head";
const SCHEMA: &str = "schema";
const PAIRING: &str = "pairing";
/// Internal marker: a `write_optional` closure declined (the transaction is aborted).
const NOTHING_TO_DO: &str = "\0nothing to do";
const SCHEMA_VERSION: &[u8] = b"1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the application store is in use by another scopegate process")]
    InUse,
    #[error("record {table}/{key} is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("the audit log cannot be written ({0}); the action was not carried out")]
    AuditUnavailable(String),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0}")]
    Conflict(String),
    /// The commit returned an error after it may have reached the disk: the caller must not
    /// assume either outcome (start-up reconciliation settles it).
    #[error("the change may or may not have been saved ({0}); it is settled at the next start")]
    CommitUncertain(String),
    #[error(
        "secrets.redb and scopegate.redb belong to different installations (pairing ids differ); \
         refusing to start, since reconciling them would delete sealed credentials"
    )]
    Unpaired,
    #[error("{0}")]
    NotFound(String),
    #[error("cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn st<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Storage(storage(e))
}

pub struct Store {
    db: Database,
    audit_fault: AtomicBool,
    head_key: HeadKey,
    /// Bumped after every write that touched a connection, so in-memory copies of
    /// connections and their credentials know they may be stale (the proxy's cache).
    connections_generation: AtomicU64,
    /// The generation at which each (user, service) connection was last written, so a copy
    /// of one connection stays usable while others change (a refresh storm writes hundreds
    /// of connections a second).
    written: std::sync::Mutex<WrittenAt>,
    /// Told of every committed connection write (the refresh scheduler).
    observer: std::sync::OnceLock<ConnectionObserver>,
}

pub type ConnectionObserver = Box<dyn Fn(&[Connection]) + Send + Sync>;

/// Last-write generations by a hash of (user, service): 16 bytes an entry, no strings. Two
/// connections sharing a hash only make each other's copies stale early, which is safe.
/// Bounded: past the cap it forgets them all and treats every connection as written at the
/// generation it forgot them (all copies stale).
#[derive(Default)]
struct WrittenAt {
    by_key: std::collections::HashMap<u64, u64>,
    floor: u64,
}

const MAX_WRITTEN_AT: usize = 1 << 18;

fn written_key(user: &str, service: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (user, service).hash(&mut h);
    h.finish()
}

impl WrittenAt {
    fn record(&mut self, changed: &[Connection], generation: u64) {
        if self.by_key.len() + changed.len() > MAX_WRITTEN_AT {
            self.by_key.clear();
            self.floor = generation;
            return;
        }
        for c in changed {
            self.by_key
                .insert(written_key(&c.user_id, &c.service), generation);
        }
    }

    fn at(&self, user: &str, service: &str) -> u64 {
        self.by_key
            .get(&written_key(user, service))
            .copied()
            .unwrap_or(self.floor)
    }
}

impl Store {
    /// Creates the store, paired with its vault, with the genesis audit entry.
    pub fn create(path: &Path, pairing: &str, head_key: HeadKey) -> Result<Self, StoreError> {
        crate::durable::create_private_file(path).map_err(|source| StoreError::Create {
            path: path.to_owned(),
            source,
        })?;
        let db = crate::durable::builder().create(path).map_err(st)?;
        let store = Self {
            db,
            audit_fault: AtomicBool::new(false),
            head_key,
            connections_generation: AtomicU64::new(0),
            written: std::sync::Mutex::new(WrittenAt::default()),
            observer: std::sync::OnceLock::new(),
        };
        {
            let txn = begin_durable(&store.db)?;
            create_tables(&txn)?;
            let mut meta = txn.open_table(META).map_err(st)?;
            meta.insert(SCHEMA, SCHEMA_VERSION).map_err(st)?;
            meta.insert(PAIRING, pairing.as_bytes()).map_err(st)?;
            drop(meta);
            txn.commit().map_err(st)?;
        }
        store.write(|t| {
            t.audit(Event::new(
                "system",
                audit::GENESIS_ACTION,
                "scopegate.redb",
                "ok",
            ))
            .map(drop)
        })?;
        Ok(store)
    }

    /// Opens the store and checks that it belongs with the unlocked vault.
    pub fn open(path: &Path, pairing: &str, head_key: HeadKey) -> Result<Self, StoreError> {
        let db = match crate::durable::builder().open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse),
            Err(e) => return Err(st(e)),
        };
        let store = Self {
            db,
            audit_fault: AtomicBool::new(false),
            head_key,
            connections_generation: AtomicU64::new(0),
            written: std::sync::Mutex::new(WrittenAt::default()),
            observer: std::sync::OnceLock::new(),
        };
        let txn = begin_durable(&store.db)?;
        create_tables(&txn)?;
        rebuild_indexes(&txn)?;
        {
            let meta = txn.open_table(META).map_err(st)?;
            let stored = meta.get(PAIRING).map_err(st)?.map(|v| v.value().to_vec());
            if stored.as_deref() != Some(pairing.as_bytes()) {
                return Err(StoreError::Unpaired);
            }
        }
        txn.commit().map_err(st)?;
        Ok(store)
    }

    /// Makes every later audit append fail, as a full disk or a damaged table would. For the
    /// fail-closed tests (I7); nothing in the product calls it.
    #[doc(hidden)]
    pub fn dangerous_inject_audit_failure(&self, fail: bool) {
        self.audit_fault.store(fail, Ordering::SeqCst);
    }

    /// Runs `f` in one durable write transaction. `f` must record what it did with
    /// `Txn::audit`; if it does not, or the append fails, nothing is committed.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = begin_durable(&self.db)?;
        let mut t = Txn {
            txn: &txn,
            audited: false,
            changed: Vec::new(),
            audit_fault: self.audit_fault.load(Ordering::SeqCst),
            head_key: &self.head_key,
            now: OffsetDateTime::now_utc(),
        };
        let out = f(&mut t);
        let changed = std::mem::take(&mut t.changed);
        let result = match out {
            Ok(_) if !t.audited => Err(StoreError::AuditUnavailable(
                "no audit entry was recorded".into(),
            )),
            Ok(v) => txn
                .commit()
                .map(|()| v)
                .map_err(|e| StoreError::CommitUncertain(e.to_string())),
            Err(e) => Err(e),
        };
        // After the commit (or its failure), never before: a reader that saw the old
        // generation read the store before this point and its copy is now marked stale.
        if !changed.is_empty() {
            // Under the lock, so a reader's check sees the bump and the per-connection mark
            // together; both land before this write returns.
            let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let g = self.connections_generation.fetch_add(1, Ordering::SeqCst) + 1;
            w.record(&changed, g);
            drop(w);
            if !matches!(result, Err(ref e) if !matches!(e, StoreError::CommitUncertain(_)))
                && let Some(observe) = self.observer.get()
            {
                observe(&changed);
            }
        }
        result
    }

    /// Registers the one observer of committed connection writes; `false` if one was set.
    pub fn observe_connections(&self, f: ConnectionObserver) -> bool {
        self.observer.set(f).is_ok()
    }

    /// See `connections_generation`: read it before reading connections, and a cached copy
    /// is current while the generation is unchanged.
    pub fn connections_generation(&self) -> u64 {
        self.connections_generation.load(Ordering::SeqCst)
    }

    /// Whether a copy of `user`'s connection for `service`, read after loading generation
    /// `loaded_at` (see `connections_generation`), is still current: no write to that
    /// connection has committed since.
    pub fn connection_unchanged_since(&self, user: &str, service: &str, loaded_at: u64) -> bool {
        let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.at(user, service) <= loaded_at
    }

    /// As `write`, but the closure may find nothing to do and return `None`: the transaction is
    /// then dropped uncommitted, so nothing unaudited is ever saved.
    pub fn write_optional<T>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.write(|t| match f(t)? {
            Some(v) => Ok(Some(v)),
            None => Err(StoreError::Conflict(NOTHING_TO_DO.into())),
        }) {
            Err(StoreError::Conflict(m)) if m == NOTHING_TO_DO => Ok(None),
            other => other,
        }
    }

    /// Reopens the file with an empty page cache of `bytes` (see `durable::reopen`); only
    /// before serving starts.
    pub fn reset_page_cache(&mut self, path: &Path, bytes: usize) -> Result<(), StoreError> {
        crate::durable::reopen(&mut self.db, path, bytes).map_err(|e| st(e.0))
    }

    /// Verifies the whole chain, including the head's HMAC.
    pub fn verify_audit(&self) -> Result<Verified, StoreError> {
        self.read()?.verify_audit(Some(&self.head_key))
    }

    pub fn read(&self) -> Result<Reader, StoreError> {
        Ok(Reader(self.db.begin_read().map_err(st)?))
    }
}

/// Rebuilds the tables derived from the connections (live index, secret references,
/// counts) when their version is not the current one, i.e. once after an upgrade. Every
/// `put_connection` keeps them exact in the same transaction after that, so an open does
/// not pay a pass over a million connections.
fn rebuild_indexes(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let meta = txn.open_table(META).map_err(st)?;
        if meta
            .get(INDEXES)
            .map_err(st)?
            .map(|v| v.value().to_vec())
            .as_deref()
            == Some(INDEXES_VERSION)
        {
            return Ok(());
        }
    }
    txn.delete_table(LIVE_CONNECTIONS).map_err(st)?;
    txn.delete_table(SECRET_REFS).map_err(st)?;
    txn.delete_table(CONNECTION_COUNTS).map_err(st)?;
    {
        let conns = txn.open_table(CONNECTIONS).map_err(st)?;
        let mut index = txn.open_table(LIVE_CONNECTIONS).map_err(st)?;
        let mut refs = txn.open_table(SECRET_REFS).map_err(st)?;
        let mut counts = std::collections::BTreeMap::<&'static str, u64>::new();
        for e in conns.iter().map_err(st)? {
            let (k, v) = e.map_err(st)?;
            let c: Connection = decode("connections", k.value(), v.value())?;
            if c.status != ConnectionStatus::Revoked {
                index
                    .insert(live_key(&c.user_id, &c.service).as_str(), c.id.as_str())
                    .map_err(st)?;
            }
            for r in secret_refs(&c) {
                refs.insert(r, c.id.as_str()).map_err(st)?;
            }
            *counts.entry(c.status.as_str()).or_default() += 1;
        }
        let mut t = txn.open_table(CONNECTION_COUNTS).map_err(st)?;
        for (status, n) in counts {
            t.insert(status, n).map_err(st)?;
        }
    }
    let mut meta = txn.open_table(META).map_err(st)?;
    meta.insert(INDEXES, INDEXES_VERSION).map_err(st)?;
    Ok(())
}

/// The sealed records a connection holds, if its status means it holds any: its current one
/// and the one an in-flight refresh may have sealed (never an orphan to reconciliation).
fn secret_refs(c: &Connection) -> impl Iterator<Item = &str> {
    let live = c.status.holds_secrets();
    [
        c.secret_record.as_deref(),
        c.refresh.pending_record.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(move |_| live)
}

fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(USERS).map_err(st)?;
    txn.open_table(USER_NAMES).map_err(st)?;
    txn.open_table(AGENTS).map_err(st)?;
    txn.open_table(PROFILES).map_err(st)?;
    txn.open_table(PROFILE_NAMES).map_err(st)?;
    txn.open_table(AGENT_NAMES).map_err(st)?;
    txn.open_table(AGENT_HASHES).map_err(st)?;
    txn.open_table(CONNECTIONS).map_err(st)?;
    txn.open_table(PENDING).map_err(st)?;
    txn.open_table(LOGIN_LINKS).map_err(st)?;
    txn.open_table(LIVE_CONNECTIONS).map_err(st)?;
    txn.open_table(SECRET_REFS).map_err(st)?;
    txn.open_table(CONNECTION_COUNTS).map_err(st)?;
    txn.open_table(SESSIONS).map_err(st)?;
    txn.open_table(AUDIT).map_err(st)?;
    txn.open_table(META).map_err(st)?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)] // invariant: records are plain structs that always serialize.
    serde_json::to_vec(v).expect("record serializes")
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    raw: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A write transaction in progress.
pub struct Txn<'a> {
    txn: &'a WriteTransaction,
    audited: bool,
    /// Connections written in this transaction, for the observer after the commit.
    changed: Vec<Connection>,
    audit_fault: bool,
    head_key: &'a HeadKey,
    pub now: OffsetDateTime,
}

impl Txn<'_> {
    /// Whether this transaction has appended an audit entry yet.
    pub fn has_audited(&self) -> bool {
        self.audited
    }

    /// Appends one entry to the hash chain, in this transaction.
    pub fn audit(&mut self, event: Event) -> Result<Entry, StoreError> {
        let (_, segment) = self.append_audit([event])?;
        serde_json::from_slice(&segment)
            .map_err(|e| StoreError::AuditUnavailable(format!("entry unreadable: {e}")))
    }

    /// Appends several entries in order, in segments (see `AUDIT`): the head is checked and
    /// written once and the table takes one insert per segment, so a group commit of many
    /// calls' entries costs one head HMAC and a few B-tree inserts, not one per entry.
    /// Returns how many were appended.
    pub fn audit_all<R: audit::Record>(
        &mut self,
        records: impl IntoIterator<Item = R>,
    ) -> Result<usize, StoreError> {
        Ok(self.append_audit(records)?.0)
    }

    /// Appends `records` in segments; returns how many and the last segment (empty for none).
    fn append_audit<R: audit::Record>(
        &mut self,
        records: impl IntoIterator<Item = R>,
    ) -> Result<(usize, Vec<u8>), StoreError> {
        if self.audit_fault {
            return Err(StoreError::AuditUnavailable("injected failure".into()));
        }
        let mut records = records.into_iter().peekable();
        if records.peek().is_none() {
            return Ok((0, Vec::new()));
        }
        let fail = |e: redb::Error| StoreError::AuditUnavailable(e.to_string());
        let mut meta = self.txn.open_table(META).map_err(|e| fail(e.into()))?;
        let mut table = self.txn.open_table(AUDIT).map_err(|e| fail(e.into()))?;
        // A segment is keyed by its last entry, so the table's last key is the head's seq.
        let last_key = table
            .last()
            .map_err(|e| fail(e.into()))?
            .map(|(k, _)| k.value());
        // Fail closed on a head that is missing, forged or out of step with the table: an
        // append must never overwrite or fork history.
        let (mut seq, mut prev) = match meta.get(AUDIT_HEAD).map_err(|e| fail(e.into()))? {
            None if last_key.is_none() => (0, audit::GENESIS.to_owned()),
            None => {
                return Err(StoreError::AuditUnavailable(
                    "the audit head is missing".into(),
                ));
            }
            Some(v) => {
                let head = parse_head(v.value())?;
                if !head.authentic(self.head_key) || last_key != Some(head.seq) {
                    return Err(StoreError::AuditUnavailable(
                        "the audit head is not authentic".into(),
                    ));
                }
                (head.seq, head.hash)
            }
        };
        // One transaction, one time: formatted once for all its entries.
        let time = audit::format_time(self.now);
        let mut segment = Vec::with_capacity(
            SEGMENT_BYTES.min(records.size_hint().0.max(1) * audit::ENTRY_BYTES),
        );
        let mut n = 0;
        for record in records {
            n += 1;
            let start = segment.len();
            if start > 0 {
                segment.push(b'\n');
            }
            prev = audit::append_entry(&mut segment, &record, seq + 1, &time, &prev);
            if segment.len() > SEGMENT_BYTES && start > 0 {
                // Full: what came before this entry is one segment, and this entry starts the
                // next.
                let next = segment.split_off(start + 1);
                segment.truncate(start);
                table
                    .insert(seq, segment.as_slice())
                    .map_err(|e| fail(e.into()))?;
                segment = next;
            }
            seq += 1;
        }
        table
            .insert(seq, segment.as_slice())
            .map_err(|e| fail(e.into()))?;
        meta.insert(
            AUDIT_HEAD,
            encode(&Head::new(self.head_key, seq, &prev)).as_slice(),
        )
        .map_err(|e| fail(e.into()))?;
        self.audited = true;
        Ok((n, segment))
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let names = self.txn.open_table(USER_NAMES).map_err(st)?;
        let Some(id) = names.get(name).map_err(st)? else {
            return Ok(None);
        };
        let id = id.value().to_owned();
        let users = self.txn.open_table(USERS).map_err(st)?;
        match users.get(id.as_str()).map_err(st)? {
            Some(v) => decode("users", &id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let users = self.txn.open_table(USERS).map_err(st)?;
        match users.get(id).map_err(st)? {
            Some(v) => decode("users", id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn insert_user(&mut self, user: &User) -> Result<(), StoreError> {
        let mut names = self.txn.open_table(USER_NAMES).map_err(st)?;
        if names.get(user.name.as_str()).map_err(st)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "user {} already exists",
                user.name
            )));
        }
        names
            .insert(user.name.as_str(), user.id.as_str())
            .map_err(st)?;
        let mut users = self.txn.open_table(USERS).map_err(st)?;
        users
            .insert(user.id.as_str(), encode(user).as_slice())
            .map_err(st)?;
        Ok(())
    }

    pub fn remove_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.txn
            .open_table(USER_NAMES)
            .map_err(st)?
            .remove(user.name.as_str())
            .map_err(st)?;
        self.txn
            .open_table(USERS)
            .map_err(st)?
            .remove(user.id.as_str())
            .map_err(st)?;
        Ok(())
    }

    pub fn connection(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        let t = self.txn.open_table(CONNECTIONS).map_err(st)?;
        match t.get(id).map_err(st)? {
            Some(v) => decode("connections", id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        let t = self.txn.open_table(CONNECTIONS).map_err(st)?;
        collect(&t, "connections")
    }

    /// Writes a connection and keeps the derived tables (live index, secret references,
    /// counts per status) in step with it.
    pub fn put_connection(&mut self, c: &Connection) -> Result<(), StoreError> {
        self.changed.push(c.clone());
        let mut t = self.txn.open_table(CONNECTIONS).map_err(st)?;
        let old: Option<Connection> = match t.get(c.id.as_str()).map_err(st)? {
            Some(v) => Some(decode("connections", &c.id, v.value())?),
            None => None,
        };
        t.insert(c.id.as_str(), encode(c).as_slice()).map_err(st)?;
        let mut index = self.txn.open_table(LIVE_CONNECTIONS).map_err(st)?;
        let key = live_key(&c.user_id, &c.service);
        if c.status == ConnectionStatus::Revoked {
            let points_here = index
                .get(key.as_str())
                .map_err(st)?
                .is_some_and(|v| v.value() == c.id);
            if points_here {
                index.remove(key.as_str()).map_err(st)?;
            }
        } else {
            index.insert(key.as_str(), c.id.as_str()).map_err(st)?;
        }
        let mut refs = self.txn.open_table(SECRET_REFS).map_err(st)?;
        let new_refs: Vec<&str> = secret_refs(c).collect();
        if let Some(o) = &old {
            for r in secret_refs(o).filter(|r| !new_refs.contains(r)) {
                refs.remove(r).map_err(st)?;
            }
        }
        for r in &new_refs {
            refs.insert(*r, c.id.as_str()).map_err(st)?;
        }
        let mut counts = self.txn.open_table(CONNECTION_COUNTS).map_err(st)?;
        if let Some(o) = &old {
            let n = counts
                .get(o.status.as_str())
                .map_err(st)?
                .map_or(0, |v| v.value());
            counts
                .insert(o.status.as_str(), n.saturating_sub(1))
                .map_err(st)?;
        }
        let n = counts
            .get(c.status.as_str())
            .map_err(st)?
            .map_or(0, |v| v.value());
        counts.insert(c.status.as_str(), n + 1).map_err(st)?;
        Ok(())
    }
}

fn live_key(user_id: &str, service: &str) -> String {
    format!("{user_id}\0{service}")
}

fn live_connection_in(
    index: &impl ReadableTable<&'static str, &'static str>,
    conns: &impl ReadableTable<&'static str, &'static [u8]>,
    user_id: &str,
    service: &str,
) -> Result<Option<Connection>, StoreError> {
    let Some(id) = index
        .get(live_key(user_id, service).as_str())
        .map_err(st)?
        .map(|v| v.value().to_owned())
    else {
        return Ok(None);
    };
    let Some(raw) = conns.get(id.as_str()).map_err(st)? else {
        return Ok(None);
    };
    let c: Connection = decode("connections", &id, raw.value())?;
    Ok((c.status != ConnectionStatus::Revoked).then_some(c))
}

fn parse_head(raw: &[u8]) -> Result<Head, StoreError> {
    serde_json::from_slice(raw)
        .map_err(|e| StoreError::AuditUnavailable(format!("audit head unreadable: {e}")))
}

fn collect<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for e in t.iter().map_err(st)? {
        let (k, v) = e.map_err(st)?;
        out.push(decode(name, k.value(), v.value())?);
    }
    Ok(out)
}

/// A consistent snapshot for reads.
pub struct Reader(ReadTransaction);

impl Reader {
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let t = self.0.open_table(USERS).map_err(st)?;
        let mut users: Vec<User> = collect(&t, "users")?;
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    pub fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        let t = self.0.open_table(CONNECTIONS).map_err(st)?;
        let mut c: Vec<Connection> = collect(&t, "connections")?;
        c.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(c)
    }

    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        audit_after(&self.0, after, limit)
    }

    /// How many users there are (the table's length; nothing is decoded).
    pub fn user_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        self.0.open_table(USERS).map_err(st)?.len().map_err(st)
    }

    pub fn connection(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        let t = self.0.open_table(CONNECTIONS).map_err(st)?;
        match t.get(id).map_err(st)? {
            Some(v) => decode("connections", id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` with each connection in turn, without holding them all in memory.
    pub fn for_each_connection(
        &self,
        mut f: impl FnMut(Connection) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let t = self.0.open_table(CONNECTIONS).map_err(st)?;
        for e in t.iter().map_err(st)? {
            let (k, v) = e.map_err(st)?;
            f(decode("connections", k.value(), v.value())?)?;
        }
        Ok(())
    }

    /// The user's live (not revoked) connections, through the index.
    pub fn user_connections(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let index = self.0.open_table(LIVE_CONNECTIONS).map_err(st)?;
        let conns = self.0.open_table(CONNECTIONS).map_err(st)?;
        let prefix = format!("{user_id}\0");
        let mut out = Vec::new();
        for e in index.range(prefix.as_str()..).map_err(st)? {
            let (k, v) = e.map_err(st)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            if let Some(c) = conns.get(v.value()).map_err(st)? {
                out.push(decode("connections", v.value(), c.value())?);
            }
        }
        Ok(out)
    }

    /// Whether a connection holding secrets points at this sealed record.
    pub fn secret_referenced(&self, record: &str) -> Result<bool, StoreError> {
        let t = self.0.open_table(SECRET_REFS).map_err(st)?;
        Ok(t.get(record).map_err(st)?.is_some())
    }

    /// Connections per status (status name → count).
    pub fn connection_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.0.open_table(CONNECTION_COUNTS).map_err(st)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(st)? {
            let (k, v) = e.map_err(st)?;
            if v.value() > 0 {
                out.push((k.value().to_owned(), v.value()));
            }
        }
        Ok(out)
    }

    /// The user's live connection to a service, through the index.
    pub fn live_connection(
        &self,
        user_id: &str,
        service: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let index = self.0.open_table(LIVE_CONNECTIONS).map_err(st)?;
        let conns = self.0.open_table(CONNECTIONS).map_err(st)?;
        live_connection_in(&index, &conns, user_id, service)
    }

    /// Verifies the chain and, with the key, the head's HMAC.
    pub fn verify_audit(&self, key: Option<&HeadKey>) -> Result<Verified, StoreError> {
        verify(&self.0, key)
    }

    /// The number of entries, from the head (one lookup; no verification).
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let meta = self.0.open_table(META).map_err(st)?;
        Ok(match meta.get(AUDIT_HEAD).map_err(st)? {
            Some(v) => parse_head(v.value())?.seq,
            None => 0,
        })
    }
}

fn audit_after(txn: &ReadTransaction, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
    let t = txn.open_table(AUDIT).map_err(st)?;
    let mut out = Vec::new();
    // The first segment whose last entry is past `after` holds the first entry wanted.
    for e in t.range(after.saturating_add(1)..).map_err(st)? {
        let (k, v) = e.map_err(st)?;
        for (seq, raw) in segment_rows(k.value(), v.value()) {
            if seq <= after {
                continue;
            }
            if out.len() == limit {
                return Ok(out);
            }
            out.push(decode("audit", &seq.to_string(), raw)?);
        }
    }
    Ok(out)
}

/// A stored segment's entries, each with the seq its place implies (the segment's key is its
/// last entry's seq). `verify_chain` checks each entry's own seq against that place, so an
/// entry moved, removed or added within a segment is named just as one between segments is.
/// Entries are JSON lines: `serde_json` escapes every control character inside strings, so
/// a newline only ever separates entries.
fn segment_rows(key: u64, value: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let n = value.split(|&b| b == b'\n').count() as u64;
    let first = key.saturating_add(1).saturating_sub(n);
    (first..).zip(value.split(|&b| b == b'\n'))
}

fn verify(txn: &ReadTransaction, key: Option<&HeadKey>) -> Result<Verified, StoreError> {
    let meta = txn.open_table(META).map_err(st)?;
    let head = match meta.get(AUDIT_HEAD).map_err(st)? {
        Some(v) => Some(parse_head(v.value()).map_err(|_| ChainError::HeadMismatch { seq: 0 })?),
        None => None,
    };
    /// Just an entry's own number.
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let t = txn.open_table(AUDIT).map_err(st)?;
    let mut rows = Vec::new();
    // The first segment whose entries do not number up to its key: reported after any
    // earlier break in the chain, which `verify_chain` finds in order.
    let mut miscounted = None;
    for e in t.iter().map_err(st)? {
        let (k, v) = e.map_err(st)?;
        let start = rows.len();
        rows.extend(segment_rows(k.value(), v.value()).map(|(seq, raw)| (seq, raw.to_vec())));
        // A segment's entries must number up to its key from its first entry's own seq; if
        // not, entries were removed from or added inside it (a whole row removed is a `Gap`,
        // an unparsable first entry is `Unreadable`).
        let entries = (rows.len() - start) as u64;
        if miscounted.is_none()
            && entries > 1
            && let Ok(first) = serde_json::from_slice::<Seq>(&rows[start].1)
            && first.seq != rows[start].0
        {
            let last = k.value();
            miscounted = Some((start, ChainError::SegmentCount { last, entries }));
        }
    }
    let Some((start, miscount)) = miscounted else {
        return Ok(audit::verify_chain(rows, head.as_ref(), key)?);
    };
    rows.truncate(start);
    Err(match audit::verify_chain(rows, head.as_ref(), key) {
        // A break before the miscounted segment comes first.
        Err(e) if e.is_in_chain() => e,
        _ => miscount,
    }
    .into())
}

/// Access to a stopped data folder (or a copy) without a server, for `audit list|verify`.
/// Read-only, except that a file left unclean by a crash is first repaired by redb's own
/// recovery (a read-only open cannot repair it).
pub struct OfflineStore(OfflineDb);

enum OfflineDb {
    ReadOnly(ReadOnlyDatabase),
    Repaired(Database),
}

impl OfflineStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        match ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(Self(OfflineDb::ReadOnly(db))),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::InUse),
            Err(redb::DatabaseError::RepairAborted) => match crate::durable::builder().open(path) {
                Ok(db) => Ok(Self(OfflineDb::Repaired(db))),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::InUse),
                Err(e) => Err(st(e)),
            },
            Err(e) => Err(st(e)),
        }
    }

    fn txn(&self) -> Result<ReadTransaction, StoreError> {
        match &self.0 {
            OfflineDb::ReadOnly(db) => db.begin_read().map_err(st),
            OfflineDb::Repaired(db) => db.begin_read().map_err(st),
        }
    }

    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        audit_after(&self.txn()?, after, limit)
    }

    pub fn verify_audit(&self, key: Option<&HeadKey>) -> Result<Verified, StoreError> {
        verify(&self.txn()?, key)
    }

    pub fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        Reader(self.txn()?).connections()
    }
}

#[doc(hidden)]
pub mod testing {
    //! Tamper helpers for tests of `audit verify`: they edit a copy of a store file the way an
    //! attacker with file access would.
    use super::*;

    pub fn rewrite_audit(
        path: &Path,
        f: impl FnOnce(&mut Vec<(u64, Vec<u8>)>),
    ) -> Result<(), StoreError> {
        let db = Database::open(path).map_err(st)?;
        let txn = begin_durable(&db)?;
        {
            let mut t = txn.open_table(AUDIT).map_err(st)?;
            let mut rows = Vec::new();
            for e in t.iter().map_err(st)? {
                let (k, v) = e.map_err(st)?;
                rows.push((k.value(), v.value().to_vec()));
            }
            for (k, _) in &rows {
                t.remove(*k).map_err(st)?;
            }
            f(&mut rows);
            for (k, v) in &rows {
                t.insert(*k, v.as_slice()).map_err(st)?;
            }
        }
        txn.commit().map_err(st)?;
        Ok(())
    }

    /// Replaces the head with `(seq, hash)` and a MAC under a key the attacker chose.
    pub fn rewrite_head(
        path: &Path,
        seq: u64,
        hash: &str,
        forged_key: &HeadKey,
    ) -> Result<(), StoreError> {
        let db = Database::open(path).map_err(st)?;
        let txn = begin_durable(&db)?;
        {
            let mut meta = txn.open_table(META).map_err(st)?;
            meta.insert(
                AUDIT_HEAD,
                encode(&Head::new(forged_key, seq, hash)).as_slice(),
            )
            .map_err(st)?;
        }
        txn.commit().map_err(st)?;
        Ok(())
    }
}

/// Records for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn connection(
        id: &str,
        user: &str,
        status: ConnectionStatus,
        record: Option<&str>,
    ) -> Connection {
        let now = OffsetDateTime::UNIX_EPOCH;
        Connection {
            id: id.into(),
            user_id: user.into(),
            service: "svc".into(),
            kind: ConnectionKind::ApiKey,
            status,
            status_reason: None,
            secret_record: record.map(Into::into),
            secret_fingerprint: None,
            scopes: Vec::new(),
            created: now,
            updated: now,
            secret_set_at: None,
            access_expires: None,
            issuer: None,
            strikes: 0,
            last_refresh: None,
            refresh: Default::default(),
            subject: None,
            dpop_jkt: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fixtures::connection as conn;
    use super::*;

    /// A batch append chains exactly as one-by-one appends do: consecutive numbers, each entry
    /// linked to the one before (across batches too), one authentic head at the end, and
    /// every field escaped. The batch is one stored row (a segment), and reading from any
    /// point, with any limit, gives the same entries as one row per entry would.
    #[test]
    fn a_batch_of_audit_entries_chains_like_single_appends() {
        let dir = tempfile::tempdir().unwrap();
        let key = HeadKey::new([9; 32]);
        let path = dir.path().join("s.redb");
        let store = Store::create(&path, "p", key.clone()).unwrap();
        let before = store.verify_audit().unwrap().entries;
        let ev =
            |i: usize| Event::new("agent:a", "mcp.call", "svc", "ok").detail("n", i.to_string());
        let single = store.write(|t| t.audit(ev(0))).unwrap();
        let n = store
            .write(|t| {
                t.audit_all((1..=4).map(ev).chain([Event::new(
                    "x\u{1b}[2J\nforged",
                    "a",
                    "t",
                    "ok",
                )]))
            })
            .unwrap();
        assert_eq!(n, 5);
        let batch = store.read().unwrap().audit_after(single.seq, 100).unwrap();
        assert_eq!(batch.len(), 5);
        assert_eq!(batch[0].seq, single.seq + 1);
        assert_eq!(batch[0].prev_hash, single.hash);
        for w in batch.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert_eq!(batch[4].actor, "x\\u{1b}[2J\\u{a}forged");
        let v = store.verify_audit().unwrap();
        assert_eq!(v.entries, before + 6);
        assert_eq!(v.head_hash, batch[4].hash);
        assert!(v.head_authenticated);
        // The next single append continues from the batch's head.
        let next = store.write(|t| t.audit(ev(9))).unwrap();
        assert_eq!(next.prev_hash, batch[4].hash);
        store.verify_audit().unwrap();

        // Every start and limit, across the segment's edges, against the whole list.
        let all = store.read().unwrap().audit_after(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, next.seq);
        for after in 0..=next.seq + 1 {
            for limit in 0..=8 {
                let got = store.read().unwrap().audit_after(after, limit).unwrap();
                let want: Vec<Entry> = all
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(got, want, "after {after}, limit {limit}");
            }
        }
        drop(store);
        let mut rows = 0;
        testing::rewrite_audit(&path, |r| rows = r.len()).unwrap();
        assert_eq!(rows as u64, next.seq - 4, "the batch of 5 is one row");
    }

    /// A commit bigger than a segment is stored as several, each within `SEGMENT_BYTES` and
    /// keyed by its last entry; reading and verifying see one unbroken chain.
    #[test]
    fn a_big_commit_is_split_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let key = HeadKey::new([9; 32]);
        let path = dir.path().join("s.redb");
        let store = Store::create(&path, "p", key.clone()).unwrap();
        let ev = |i: usize| {
            Event::new("agent:a", "mcp.call", "svc", "ok").detail("n", format!("{i:0>200}"))
        };
        assert_eq!(store.write(|t| t.audit_all((0..500).map(ev))).unwrap(), 500);
        let v = store.verify_audit().unwrap();
        assert_eq!(v.entries, 501);
        let all = store.read().unwrap().audit_after(0, usize::MAX).unwrap();
        assert_eq!(all.len(), 501);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
        }
        assert_eq!(all[500].hash, v.head_hash);
        drop(store);
        let mut rows = Vec::new();
        testing::rewrite_audit(&path, |r| rows = r.clone()).unwrap();
        assert!(rows.len() > 5, "{} rows", rows.len());
        let mut next = 1;
        for (k, v) in &rows {
            assert!(v.len() <= SEGMENT_BYTES, "{} bytes", v.len());
            next += v.split(|&b| b == b'\n').count() as u64;
            assert_eq!(*k, next - 1, "keyed by its last entry");
        }
        let store = OfflineStore::open(&path).unwrap();
        for after in [0, 1, 2, 40, 41, 42, 250, 499, 500, 501] {
            let got = store.audit_after(after, 3).unwrap();
            let want: Vec<Entry> = all
                .iter()
                .filter(|e| e.seq > after)
                .take(3)
                .cloned()
                .collect();
            assert_eq!(got, want, "after {after}");
        }
    }

    /// Tampering inside a segment is named like tampering between rows: an edited, removed,
    /// swapped or inserted entry, and a segment removed whole.
    #[test]
    fn tampering_inside_a_segment_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = HeadKey::new([9; 32]);
        let path = dir.path().join("s.redb");
        let store = Store::create(&path, "p", key.clone()).unwrap();
        let ev =
            |i: usize| Event::new("agent:a", "mcp.call", "svc", "ok").detail("n", format!("v{i}"));
        store
            .write(|t| t.audit_all((2..=5).map(ev).collect::<Vec<_>>()))
            .unwrap();
        store.write(|t| t.audit(ev(6))).unwrap();
        drop(store);
        // Rows: [1] genesis, [2..=5] one segment under key 5, [6].
        let lines =
            |v: &[u8]| -> Vec<Vec<u8>> { v.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect() };
        let join = |l: Vec<Vec<u8>>| l.join(&b'\n');
        type Tamper = Box<dyn FnOnce(&mut Vec<audit::Row>)>;
        let cases: Vec<(&str, Tamper, ChainError)> = vec![
            (
                "edit",
                Box::new(move |rows| {
                    let t = String::from_utf8(rows[1].1.clone())
                        .unwrap()
                        .replace("v3", "zz");
                    rows[1].1 = t.into_bytes();
                }),
                ChainError::Edited { seq: 3 },
            ),
            (
                "remove a line",
                Box::new(move |rows| {
                    let mut l = lines(&rows[1].1);
                    l.remove(1);
                    rows[1].1 = join(l);
                }),
                ChainError::SegmentCount {
                    last: 5,
                    entries: 3,
                },
            ),
            (
                "remove its first line",
                Box::new(move |rows| {
                    let mut l = lines(&rows[1].1);
                    l.remove(0);
                    rows[1].1 = join(l);
                }),
                ChainError::Gap {
                    expected: 2,
                    found: 3,
                },
            ),
            (
                "swap lines",
                Box::new(move |rows| {
                    let mut l = lines(&rows[1].1);
                    l.swap(1, 2);
                    rows[1].1 = join(l);
                }),
                ChainError::Misplaced { key: 3, seq: 4 },
            ),
            (
                "duplicate a line",
                Box::new(move |rows| {
                    let mut l = lines(&rows[1].1);
                    let d = l[3].clone();
                    l.push(d);
                    rows[1].1 = join(l);
                }),
                ChainError::SegmentCount {
                    last: 5,
                    entries: 5,
                },
            ),
            (
                "garble its first line",
                Box::new(move |rows| {
                    let mut l = lines(&rows[1].1);
                    l[0] = b"garbage".to_vec();
                    rows[1].1 = join(l);
                }),
                ChainError::Unreadable {
                    seq: 2,
                    reason: "expected value at line 1 column 1".into(),
                },
            ),
            (
                "an earlier edit is named before a later miscount",
                Box::new(move |rows| {
                    let t = String::from_utf8(rows[0].1.clone())
                        .unwrap()
                        .replace("\"ok\"", "\"ko\"");
                    rows[0].1 = t.into_bytes();
                    let mut l = lines(&rows[1].1);
                    l.remove(1);
                    rows[1].1 = join(l);
                }),
                ChainError::Edited { seq: 1 },
            ),
            (
                "remove the segment",
                Box::new(|rows| drop(rows.remove(1))),
                ChainError::Gap {
                    expected: 2,
                    found: 6,
                },
            ),
        ];
        let original = std::fs::read(&path).unwrap();
        for (name, tamper, want) in cases {
            std::fs::write(&path, &original).unwrap();
            testing::rewrite_audit(&path, tamper).unwrap();
            match OfflineStore::open(&path).unwrap().verify_audit(Some(&key)) {
                Err(StoreError::Chain(e)) => assert_eq!(e, want, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        std::fs::write(&path, &original).unwrap();
        assert_eq!(
            OfflineStore::open(&path)
                .unwrap()
                .verify_audit(Some(&key))
                .unwrap()
                .entries,
            6
        );
    }

    /// The derived tables (counts, secret references, live index) follow every change, and a
    /// rebuild from scratch gives the same answer.
    #[test]
    fn derived_tables_follow_every_connection_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = HeadKey::new([7; 32]);
        let store = Store::create(&path, "p", key.clone()).unwrap();
        let put = |c: Connection| {
            store
                .write(|t| {
                    t.put_connection(&c)?;
                    t.audit(Event::new("test", "put", &c.id, "ok")).map(drop)
                })
                .unwrap()
        };
        let g0 = store.connections_generation();
        put(conn("c1", "u1", ConnectionStatus::Active, Some("secret/a")));
        put(conn("c2", "u2", ConnectionStatus::Active, Some("secret/b")));
        assert!(store.connections_generation() > g0);
        // A copy is current until its own connection is written, whatever else changes.
        let svc = conn("c1", "u1", ConnectionStatus::Active, None).service;
        let loaded = store.connections_generation();
        assert!(!store.connection_unchanged_since("u1", &svc, g0));
        assert!(store.connection_unchanged_since("u1", &svc, loaded));
        put(conn(
            "c2",
            "u2",
            ConnectionStatus::Active,
            Some("secret/b2"),
        ));
        assert!(store.connection_unchanged_since("u1", &svc, loaded));
        assert!(!store.connection_unchanged_since("u2", &svc, loaded));
        put(conn(
            "c1",
            "u1",
            ConnectionStatus::Active,
            Some("secret/a2"),
        ));
        assert!(!store.connection_unchanged_since("u1", &svc, loaded));
        assert!(
            store.connection_unchanged_since("u9", &svc, loaded),
            "never written"
        );
        // Rotation: c1 moves to a new record; revocation: c2 drops its record.
        put(conn("c1", "u1", ConnectionStatus::Active, Some("secret/c")));
        put(conn(
            "c2",
            "u2",
            ConnectionStatus::Revoked,
            Some("secret/b"),
        ));
        let check = |store: &Store| {
            let r = store.read().unwrap();
            assert!(!r.secret_referenced("secret/a").unwrap());
            assert!(
                !r.secret_referenced("secret/b").unwrap(),
                "revoked holds none"
            );
            assert!(r.secret_referenced("secret/c").unwrap());
            let counts = r.connection_counts().unwrap();
            assert_eq!(
                counts,
                vec![("active".to_owned(), 1), ("revoked".to_owned(), 1)]
            );
            assert_eq!(r.user_connections("u1").unwrap().len(), 1);
            assert!(r.user_connections("u2").unwrap().is_empty());
            assert!(r.live_connection("u2", "svc").unwrap().is_none());
        };
        check(&store);
        // Forget the version: the next open rebuilds everything from the connections.
        store
            .write(|t| {
                t.txn
                    .open_table(META)
                    .map_err(st)?
                    .remove(INDEXES)
                    .map_err(st)?;
                t.txn.delete_table(SECRET_REFS).map_err(st)?;
                t.txn.delete_table(CONNECTION_COUNTS).map_err(st)?;
                t.audit(Event::new("test", "forget", "meta", "ok"))
                    .map(drop)
            })
            .unwrap();
        drop(store);
        let store = Store::open(&path, "p", key).unwrap();
        check(&store);
    }
}
