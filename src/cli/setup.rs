//! `init` and `rekey`: the commands that create the data folder or change its key.

use anyhow::{Context, bail};

use super::KdfArgs;
use crate::config;
use crate::datadir::DataDir;
use crate::gateway::ADMIN;
use crate::passphrase::{self, Purpose};
use crate::store::Store;
use crate::store::audit::Event;
use crate::vault::{KdfParams, Vault};

fn params(k: &KdfArgs) -> anyhow::Result<KdfParams> {
    Ok(KdfParams::new(
        k.kdf_memory_kib,
        k.kdf_iterations,
        k.kdf_parallelism,
    )?)
}

pub fn init(dir: &DataDir, k: KdfArgs) -> anyhow::Result<()> {
    let params = params(&k)?;
    dir.create()?;
    let _lock = dir.lock()?;
    let pass = passphrase::read(Purpose::Create)?;
    let created = create_files(dir, &pass, params);
    if created.is_err() {
        // Leave no half-made folder behind: a retry would refuse it.
        let _ = std::fs::remove_file(dir.vault_path());
        let _ = std::fs::remove_file(dir.store_path());
    }
    created?;
    let config = dir.config_path();
    if !config.exists() {
        crate::durable::create_private_file(&config)
            .with_context(|| format!("cannot create {}", config.display()))?;
        std::fs::write(&config, config::STARTER)
            .with_context(|| format!("cannot write {}", config.display()))?;
    }
    println!("initialized {}", dir.root().display());
    println!(
        "edit {} to add providers and services, then run `scopegate serve`",
        config.display()
    );
    Ok(())
}

fn create_files(
    dir: &DataDir,
    pass: &crate::secret::Passphrase,
    params: KdfParams,
) -> anyhow::Result<()> {
    let vault = Vault::create(&dir.vault_path(), pass, params)?;
    let store = Store::create(
        &dir.store_path(),
        vault.pairing_id(),
        vault.audit_head_key(),
    )?;
    store.write(|t| {
        t.audit(
            Event::new(ADMIN, "vault.init", &dir.root().display().to_string(), "ok").detail(
                "kdf",
                format!(
                    "argon2id m={} t={} p={}",
                    params.memory_kib, params.iterations, params.parallelism
                ),
            ),
        )
        .map(drop)
    })?;
    Ok(())
}

pub fn rekey(dir: &DataDir, k: KdfArgs) -> anyhow::Result<()> {
    let params = params(&k)?;
    dir.check_private()?;
    let _lock = dir
        .lock()
        .context("stop `scopegate serve` before changing the passphrase")?;
    let old = passphrase::read(Purpose::Unlock)?;
    let vault = Vault::unlock(&dir.vault_path(), &old)?;
    let new = passphrase::read(Purpose::Rekey)?;
    if new == old {
        bail!("the new passphrase is the same as the old one");
    }
    let store = Store::open(
        &dir.store_path(),
        vault.pairing_id(),
        vault.audit_head_key(),
    )?;
    let kdf = format!(
        "argon2id m={} t={} p={}",
        params.memory_kib, params.iterations, params.parallelism
    );
    // Audited before it happens (fail closed), and its outcome after.
    store.write(|t| {
        t.audit(Event::new(ADMIN, "vault.rekey", "vault", "begun").detail("kdf", &kdf))
            .map(drop)
    })?;
    let outcome = vault.rekey(&new, params);
    let word = if outcome.is_ok() { "ok" } else { "failed" };
    let audited = store.write(|t| {
        t.audit(Event::new(ADMIN, "vault.rekey", "vault", word))
            .map(drop)
    });
    outcome.context("the passphrase was not changed")?;
    if let Err(e) = audited {
        // The new passphrase is in force whatever happens to this entry: say so plainly.
        eprintln!(
            "scopegate: warning: the passphrase WAS changed, but its audit entry could not be written: {e}"
        );
    }
    println!("passphrase changed");
    Ok(())
}
