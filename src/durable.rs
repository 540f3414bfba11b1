//! redb conventions shared by the vault and the store: every write transaction commits with
//! `Durability::Immediate` and two-phase commit, and redb's many error types flatten into one.
//! Never holds a transaction across an `.await` (the callers are synchronous).

use redb::{Database, Durability, WriteTransaction};

/// redb's default page cache is 1 GiB; capping it keeps memory flat as the files grow. Each of
/// the two files gets this much; misses are served from the kernel's page cache. (64 MiB each
/// measured 208 MiB RSS with a million connections after start-up's scans filled both.)
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(#[from] pub redb::Error);

pub fn storage<E: Into<redb::Error>>(e: E) -> StorageError {
    StorageError(e.into())
}

/// A write transaction that is durable when `commit` returns. Two-phase commit because the
/// checksums of redb's one-phase commit are not cryptographic and token values come from
/// outside (redb docs, `set_two_phase_commit`).
pub fn begin_durable(db: &Database) -> Result<WriteTransaction, StorageError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

/// The cache for start-up's scans (reconciliation, the refresh scheduler's preload), which
/// read every page once: a cache that filled up there would be freed afterwards, but the
/// allocator keeps freed memory for reuse instead of returning it, so it would stay in RSS at
/// rest (measured: 70 MiB at rest with a million connections against 36 MiB with a thousand).
pub const START_UP_CACHE_BYTES: usize = 1024 * 1024;

pub fn builder() -> redb::Builder {
    builder_with_cache(CACHE_BYTES)
}

fn builder_with_cache(bytes: usize) -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(bytes);
    b
}

/// Closes `db` and opens `path` again with a page cache of `cache_bytes`, empty. redb allows
/// one handle per file, so a throwaway in-memory database stands in between. On an error `db`
/// is that placeholder and the caller must stop.
pub fn reopen(
    db: &mut Database,
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<(), StorageError> {
    let placeholder = redb::Builder::new()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(storage)?;
    drop(std::mem::replace(db, placeholder));
    *db = builder_with_cache(cache_bytes)
        .open(path)
        .map_err(storage)?;
    Ok(())
}

/// Creates `path` with mode 0600 (failing if it exists), so the file is private from its
/// first byte rather than after a chmod.
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}
