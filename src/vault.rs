//! The vault: sealed secret values in `secrets.redb`. Never logs, prints or returns a
//! plaintext except through `Vault::get`, and never writes one unencrypted (I4).
//!
//! Layout: table `vault_header` holds one record, the KDF parameters, salt and the data key
//! (DEK) wrapped under the passphrase-derived key (KEK). Table `secrets` maps
//! `(record, field)` to `seal::seal` output whose associated data names the table, record and
//! field (I1). `rekey` rewrites only the header, in one durable transaction.

pub mod kdf;
pub mod seal;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hmac::{Hmac, Mac};
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::durable::{StorageError, begin_durable, storage};
use crate::secret::{Passphrase, SecretBytes, hex, random_array};
use crate::store::audit::HeadKey;
pub use kdf::{KdfError, KdfParams};
pub use seal::{Location, OpenError};

const HEADER_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("vault_header");
const HEADER_KEY: &str = "header";
/// Random id shared with `scopegate.redb`, so a store from another installation is refused.
const PAIRING_KEY: &str = "pairing";
const SECRETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("secrets");
const SECRETS_TABLE_NAME: &str = "secrets";

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("no vault at {0} (run `scopegate init` first)")]
    NotFound(PathBuf),
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the vault is in use by another scopegate process")]
    InUse,
    #[error("vault header is unreadable: {0}")]
    Header(#[from] seal::HeaderError),
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("a vault already exists at {0}; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("secret {record}/{field} does not open: {source}")]
    Open {
        record: String,
        field: String,
        #[source]
        source: OpenError,
    },
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An unlocked vault. Code that needs secrets takes `&Vault`, so nothing can read them while
/// the vault is sealed.
pub struct Vault {
    db: Database,
    /// The data key (zeroized on drop); `cipher` holds a copy that it zeroizes itself.
    dek: Zeroizing<[u8; 32]>,
    cipher: XChaCha20Poly1305,
    fingerprint_key: Zeroizing<[u8; 32]>,
    pairing: String,
    path: PathBuf,
}

impl Vault {
    /// Reopens the file with an empty page cache of `bytes` (see `durable::reopen`); only
    /// before serving starts.
    pub fn reset_page_cache(&mut self, bytes: usize) -> Result<(), VaultError> {
        let path = self.path.clone();
        crate::durable::reopen(&mut self.db, &path, bytes)?;
        Ok(())
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Creates a new vault file with a fresh random 256-bit data key. Refuses an existing file.
    pub fn create(
        path: &Path,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<Self, VaultError> {
        if path.exists() {
            return Err(VaultError::Exists(path.to_owned()));
        }
        crate::durable::create_private_file(path).map_err(|source| VaultError::Create {
            path: path.to_owned(),
            source,
        })?;
        let dek = Zeroizing::new(random_array::<32>());
        let header = seal::wrap_header(passphrase, params, &dek)?;
        let db = crate::durable::builder().create(path).map_err(storage)?;
        let pairing = hex(&random_array::<16>());
        let txn = begin_durable(&db)?;
        {
            let mut t = txn.open_table(HEADER_TABLE).map_err(storage)?;
            t.insert(HEADER_KEY, header.as_slice()).map_err(storage)?;
            t.insert(PAIRING_KEY, pairing.as_bytes()).map_err(storage)?;
            txn.open_table(SECRETS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Self::from_parts(db, &dek, path, pairing))
    }

    /// Checks the passphrase against the header and opens the vault for writing.
    ///
    /// The check runs on a read-only open, so a wrong passphrase writes nothing to the file
    /// (I2). Only a file left unclean by a crash is opened for writing first, because redb
    /// must repair it before it can be read.
    pub fn unlock(path: &Path, passphrase: &Passphrase) -> Result<Self, UnlockError> {
        if !path.exists() {
            return Err(UnlockError::NotFound(path.to_owned()));
        }
        let mut writable = None;
        let header = match ReadOnlyDatabase::open(path) {
            Ok(ro) => read_header(&ro)?,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(UnlockError::InUse),
            Err(redb::DatabaseError::RepairAborted) => {
                let db = open_writable(path)?;
                let header = read_header(&db)?;
                writable = Some(db);
                header
            }
            Err(e) => return Err(storage(e).into()),
        };
        let dek = seal::unwrap_header(&header, passphrase)?;
        let db = match writable {
            Some(db) => db,
            None => open_writable(path)?,
        };
        // The header could only differ if another process rekeyed between the two opens.
        if read_header(&db)? != header {
            return Err(UnlockError::InUse);
        }
        let pairing = read_value(&db, PAIRING_KEY)?
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or(seal::HeaderError::Missing)?;
        Ok(Self::from_parts(db, &dek, path, pairing))
    }

    /// The audit-head key for a stopped folder or a copy, without writing to the vault file:
    /// lets `audit verify` check the head's HMAC offline when the passphrase is at hand.
    pub fn audit_head_key_offline(
        path: &Path,
        passphrase: &Passphrase,
    ) -> Result<HeadKey, UnlockError> {
        if !path.exists() {
            return Err(UnlockError::NotFound(path.to_owned()));
        }
        let header = match ReadOnlyDatabase::open(path) {
            Ok(ro) => read_header(&ro)?,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(UnlockError::InUse),
            Err(e) => return Err(storage(e).into()),
        };
        let dek = seal::unwrap_header(&header, passphrase)?;
        Ok(derive_key(&dek, b"scopegate/v1/audit-head-key"))
    }

    fn from_parts(db: Database, dek: &[u8; 32], path: &Path, pairing: String) -> Self {
        // Separate key for fingerprints so an HMAC output never relates to the sealing key.
        let fingerprint_key = derive_key(dek, b"scopegate/v1/fingerprint-key");
        Self {
            db,
            dek: Zeroizing::new(*dek),
            cipher: XChaCha20Poly1305::new(&(*dek).into()),
            fingerprint_key,
            pairing,
            path: path.to_owned(),
        }
    }

    pub fn pairing_id(&self) -> &str {
        &self.pairing
    }

    /// The key that authenticates the audit log's head (see `store::audit`).
    pub fn audit_head_key(&self) -> HeadKey {
        derive_key(&self.dek, b"scopegate/v1/audit-head-key")
    }

    /// A key for a named purpose (CSRF tokens and the like), independent of the sealing key.
    pub fn derived_key(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        derive_key(&self.dek, purpose)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals and stores one value; durable when this returns.
    pub fn put(&self, record: &str, field: &str, plaintext: &[u8]) -> Result<(), VaultError> {
        let sealed = seal::seal(&self.cipher, &location(record, field), plaintext);
        let txn = begin_durable(&self.db)?;
        {
            let mut t = txn.open_table(SECRETS).map_err(storage)?;
            t.insert((record, field), sealed.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// Seals and stores many values in one durable commit (one fsync for the batch).
    pub fn put_many(&self, items: &[(&str, &str, &[u8])]) -> Result<(), VaultError> {
        self.put_and_delete(items, &[])
    }

    /// Seals `items` and removes every field of the records in `delete`, in one durable
    /// commit (the token lifecycle's group commit).
    pub fn put_and_delete(
        &self,
        items: &[(&str, &str, &[u8])],
        delete: &[String],
    ) -> Result<(), VaultError> {
        let txn = begin_durable(&self.db)?;
        {
            let mut t = txn.open_table(SECRETS).map_err(storage)?;
            for record in delete {
                remove_fields(&mut t, record)?;
            }
            for (record, field, plaintext) in items {
                let sealed = seal::seal(&self.cipher, &location(record, field), plaintext);
                t.insert((*record, *field), sealed.as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    pub fn get(&self, record: &str, field: &str) -> Result<Option<SecretBytes>, VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        let Some(sealed) = t.get((record, field)).map_err(storage)? else {
            return Ok(None);
        };
        seal::open(&self.cipher, &location(record, field), sealed.value())
            .map(Some)
            .map_err(|source| VaultError::Open {
                record: record.to_owned(),
                field: field.to_owned(),
                source,
            })
    }

    /// Removes every field of `record`; durable when this returns. Returns whether any existed.
    pub fn delete_record(&self, record: &str) -> Result<bool, VaultError> {
        let txn = begin_durable(&self.db)?;
        let removed;
        {
            let mut t = txn.open_table(SECRETS).map_err(storage)?;
            removed = remove_fields(&mut t, record)?;
        }
        txn.commit().map_err(storage)?;
        Ok(removed)
    }

    /// Calls `f` once per distinct record name, in order, without holding them all.
    pub fn for_each_record(
        &self,
        mut f: impl FnMut(&str) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        let mut last = String::new();
        for e in t.iter().map_err(storage)? {
            let (k, _) = e.map_err(storage)?;
            let record = k.value().0;
            if record != last {
                f(record)?;
                last.clear();
                last.push_str(record);
            }
        }
        Ok(())
    }

    /// Whether any field of `record` is stored.
    pub fn has_record(&self, record: &str) -> Result<bool, VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        let first = t.range((record, "")..).map_err(storage)?.next();
        Ok(match first {
            Some(e) => e.map_err(storage)?.0.value().0 == record,
            None => false,
        })
    }

    /// The distinct record names that hold at least one value (for start-up reconciliation).
    pub fn records(&self) -> Result<BTreeSet<String>, VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        let mut out = BTreeSet::new();
        for e in t.iter().map_err(storage)? {
            let (k, _) = e.map_err(storage)?;
            out.insert(k.value().0.to_owned());
        }
        Ok(out)
    }

    /// Re-wraps the data key under a new passphrase. One durable redb transaction replaces
    /// the header, so a crash at any point leaves exactly one of the two passphrases working
    /// and every sealed value untouched.
    pub fn rekey(&self, new_passphrase: &Passphrase, params: KdfParams) -> Result<(), VaultError> {
        let header = seal::wrap_header(new_passphrase, params, &self.dek)?;
        let txn = begin_durable(&self.db)?;
        {
            let mut t = txn.open_table(HEADER_TABLE).map_err(storage)?;
            t.insert(HEADER_KEY, header.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// A keyed fingerprint of a secret value, for audit entries and the console: stable for
    /// one vault, useless for guessing the value without the data key (DESIGN "audit log").
    pub fn fingerprint(&self, value: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.fingerprint_key.as_slice())
                .expect_hmac();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        format!("hmac:{}", hex(&tag[..8]))
    }

    /// The KDF parameters currently in the header.
    pub fn kdf_params(&self) -> Result<KdfParams, UnlockError> {
        let header = read_header(&self.db)?;
        Ok(seal::parse_header(&header)?.params)
    }
}

fn location<'a>(record: &'a str, field: &'a str) -> Location<'a> {
    Location {
        table: SECRETS_TABLE_NAME,
        record,
        field,
    }
}

fn open_writable(path: &Path) -> Result<Database, UnlockError> {
    match crate::durable::builder().open(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(UnlockError::InUse),
        Err(e) => Err(storage(e).into()),
    }
}

fn read_header(db: &impl ReadableDatabase) -> Result<Vec<u8>, UnlockError> {
    Ok(read_value(db, HEADER_KEY)?.ok_or(seal::HeaderError::Missing)?)
}

fn read_value(db: &impl ReadableDatabase, key: &str) -> Result<Option<Vec<u8>>, UnlockError> {
    let txn = db.begin_read().map_err(storage)?;
    let t = txn
        .open_table(HEADER_TABLE)
        .map_err(|_| seal::HeaderError::Missing)?;
    Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
}

/// HMAC-SHA256(data key, purpose): one key per purpose, none related to the sealing key.
fn derive_key(dek: &[u8; 32], purpose: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(dek).expect_hmac();
    mac.update(purpose);
    Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()))
}

trait ExpectHmac<T> {
    fn expect_hmac(self) -> T;
}
impl<T, E: std::fmt::Debug> ExpectHmac<T> for Result<T, E> {
    fn expect_hmac(self) -> T {
        #[allow(clippy::expect_used)] // invariant: HMAC-SHA256 accepts keys of any length.
        self.expect("HMAC accepts any key length")
    }
}

/// Raw access to sealed bytes, for tests that tamper with the file as an attacker would.
#[doc(hidden)]
impl Vault {
    pub fn dangerous_raw(&self, record: &str, field: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        Ok(t.get((record, field))
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    pub fn dangerous_put_raw(
        &self,
        record: &str,
        field: &str,
        sealed: &[u8],
    ) -> Result<(), VaultError> {
        let txn = begin_durable(&self.db)?;
        {
            let mut t = txn.open_table(SECRETS).map_err(storage)?;
            t.insert((record, field), sealed).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// Seals without storing: for nonce-uniqueness tests at one fixed location.
    pub fn dangerous_seal(&self, record: &str, field: &str, plaintext: &[u8]) -> Vec<u8> {
        seal::seal(&self.cipher, &location(record, field), plaintext)
    }

    pub fn dangerous_all_sealed(&self) -> Result<Vec<Vec<u8>>, VaultError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(storage)? {
            out.push(e.map_err(storage)?.1.value().to_vec());
        }
        Ok(out)
    }
}

/// Removes every field of `record` in an open transaction; whether any existed.
fn remove_fields(
    t: &mut redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    record: &str,
) -> Result<bool, VaultError> {
    let fields: Vec<String> = t
        .range((record, "")..)
        .map_err(storage)?
        .map_while(|e| {
            let (k, _) = e.ok()?;
            let (r, f) = k.value();
            (r == record).then(|| f.to_owned())
        })
        .collect();
    for f in &fields {
        t.remove((record, f.as_str())).map_err(storage)?;
    }
    Ok(!fields.is_empty())
}
