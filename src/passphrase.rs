//! Where the vault passphrase comes from: `SCOPEGATE_PASSPHRASE`, the file named by
//! `SCOPEGATE_PASSPHRASE_FILE` (systemd `LoadCredential=`), or a terminal prompt. Never argv,
//! where other users can read it in `ps`.

use std::io::IsTerminal;

use zeroize::Zeroizing;

use crate::secret::Passphrase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Unlock an existing vault.
    Unlock,
    /// A passphrase being set (init): asked twice on a terminal.
    Create,
    /// The new passphrase for `rekey`, from `SCOPEGATE_NEW_PASSPHRASE[_FILE]` or asked twice.
    Rekey,
}

#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    #[error("no passphrase: set {var}_FILE (or {var}), or run on a terminal to be asked")]
    Missing { var: &'static str },
    #[error("cannot read the passphrase file named by {var}_FILE: {source}")]
    File {
        var: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the passphrase is empty")]
    Empty,
    #[error("a new passphrase must be at least 12 characters")]
    TooShort,
    #[error("the two passphrases do not match")]
    Mismatch,
    #[error("cannot read from the terminal: {0}")]
    Terminal(std::io::Error),
}

pub fn read(purpose: Purpose) -> Result<Passphrase, PassphraseError> {
    let var = var(purpose);
    let value = if let Some(p) = from_env(purpose)? {
        p
    } else if std::io::stdin().is_terminal() {
        prompt(purpose)?
    } else {
        return Err(PassphraseError::Missing { var });
    };
    if value.is_empty() {
        return Err(PassphraseError::Empty);
    }
    if purpose != Purpose::Unlock && value.len() < 12 {
        return Err(PassphraseError::TooShort);
    }
    Ok(value)
}

fn var(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Unlock | Purpose::Create => "SCOPEGATE_PASSPHRASE",
        Purpose::Rekey => "SCOPEGATE_NEW_PASSPHRASE",
    }
}

/// The passphrase from the environment (the file first), or `None` when neither is set.
pub fn from_env(purpose: Purpose) -> Result<Option<Passphrase>, PassphraseError> {
    let var = var(purpose);
    if let Some(path) = std::env::var_os(format!("{var}_FILE")).filter(|v| !v.is_empty()) {
        let mut bytes = Zeroizing::new(
            std::fs::read(path).map_err(|source| PassphraseError::File { var, source })?,
        );
        // One trailing newline is the file's, not the passphrase's.
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        return Ok(Some(Passphrase::new(bytes.to_vec())));
    }
    Ok(std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(|v| Passphrase::new(v.into_encoded_bytes())))
}

fn prompt(purpose: Purpose) -> Result<Passphrase, PassphraseError> {
    let ask = |text: &str| {
        rpassword::prompt_password(text)
            .map(|s| Passphrase::new(Zeroizing::new(s).as_bytes().to_vec()))
            .map_err(PassphraseError::Terminal)
    };
    match purpose {
        Purpose::Unlock => ask("Vault passphrase: "),
        Purpose::Create | Purpose::Rekey => {
            let label = if purpose == Purpose::Rekey {
                "New vault passphrase"
            } else {
                "Vault passphrase"
            };
            let first = ask(&format!("{label}: "))?;
            let second = ask(&format!("{label} (again): "))?;
            if first != second {
                return Err(PassphraseError::Mismatch);
            }
            Ok(first)
        }
    }
}
