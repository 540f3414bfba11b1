//! The data folder: where each file lives, that the folder and its files are private to the
//! owner, and the lock that lets exactly one process own them.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{path}: {what} is {mode:04o}; it must not be accessible to group or others (chmod {want:o} {path})"
    )]
    TooOpen {
        path: String,
        what: &'static str,
        mode: u32,
        want: u32,
    },
    #[error("no data folder at {0} (run `scopegate init` first)")]
    Missing(String),
    #[error("{0} already holds a scopegate vault; refusing to overwrite it")]
    AlreadyInitialized(String),
    #[error("another scopegate process is using {0} (is `scopegate serve` running?)")]
    Locked(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Held for as long as a process owns the folder; released by the OS if it dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--data-dir`, else `SCOPEGATE_DATA_DIR` (both through clap), else
    /// `$XDG_DATA_HOME/scopegate`, else `~/.local/share/scopegate`.
    pub fn default_root() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("scopegate");
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local/share/scopegate"),
            None => PathBuf::from("scopegate-data"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn vault_path(&self) -> PathBuf {
        self.root.join("secrets.redb")
    }
    pub fn store_path(&self) -> PathBuf {
        self.root.join("scopegate.redb")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("scopegate.toml")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
    fn lock_path(&self) -> PathBuf {
        self.root.join("scopegate.lock")
    }

    /// Creates the folder with mode 0700 (parents as usual). An existing empty folder is
    /// accepted if private; one that already holds a vault or store is refused.
    pub fn create(&self) -> Result<(), DataDirError> {
        if self.vault_path().exists() || self.store_path().exists() {
            return Err(DataDirError::AlreadyInitialized(
                self.root.display().to_string(),
            ));
        }
        if !self.root.exists() {
            if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.root)
                .map_err(io(&self.root))?;
        }
        self.check_private()
    }

    /// Refuses to run when the folder or its data files are open to group or others.
    pub fn check_private(&self) -> Result<(), DataDirError> {
        let meta = std::fs::metadata(&self.root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataDirError::Missing(self.root.display().to_string()),
            _ => io(&self.root)(e),
        })?;
        check_mode(
            &self.root,
            "the data folder",
            meta.permissions().mode(),
            0o077,
            0o700,
        )?;
        for (path, what) in [
            (self.vault_path(), "the vault file"),
            (self.store_path(), "the store file"),
        ] {
            if let Ok(m) = std::fs::metadata(&path) {
                check_mode(&path, what, m.permissions().mode(), 0o077, 0o600)?;
            }
        }
        // The config holds no secrets, but whoever can write it can redirect tokens.
        if let Ok(m) = std::fs::metadata(self.config_path()) {
            check_mode(
                &self.config_path(),
                "the config file",
                m.permissions().mode(),
                0o022,
                0o600,
            )?;
        }
        Ok(())
    }

    /// A config file outside the folder (`--config`) gets the same check as the one inside:
    /// whoever can write it can redirect tokens.
    pub fn check_config(path: &Path) -> Result<(), DataDirError> {
        let m = std::fs::metadata(path).map_err(io(path))?;
        check_mode(
            path,
            "the config file",
            m.permissions().mode(),
            0o022,
            0o600,
        )
    }

    /// Takes the folder's exclusive lock without waiting: a second `serve` (or `rekey` while
    /// serving) fails fast and touches nothing of the first's.
    pub fn lock(&self) -> Result<DataDirLock, DataDirError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.lock_path();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(DataDirError::Locked(self.root.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }
}

fn check_mode(
    path: &Path,
    what: &'static str,
    mode: u32,
    forbidden: u32,
    want: u32,
) -> Result<(), DataDirError> {
    if mode & forbidden != 0 {
        return Err(DataDirError::TooOpen {
            path: path.display().to_string(),
            what,
            mode: mode & 0o7777,
            want,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_private_and_wide_modes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path().join("data"));
        d.create().unwrap();
        let mode = std::fs::metadata(d.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(d.root(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let e = d.check_private().unwrap_err().to_string();
        assert!(e.contains("0750") && e.contains("chmod 700"), "{e}");
    }

    #[test]
    fn second_lock_fails_fast() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path());
        let _held = d.lock().unwrap();
        assert!(matches!(d.lock(), Err(DataDirError::Locked(_))));
    }
}
