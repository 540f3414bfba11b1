//! Argon2id key derivation for the key-encryption key (RFC 9106). Parameters live in the vault
//! header; anything below OWASP's floor (m = 19 MiB, t = 2) is refused, at init and at unlock,
//! so a tampered header cannot downgrade the passphrase's protection.

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::secret::Passphrase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KdfError {
    #[error(
        "argon2id parameters m={memory_kib} KiB, t={iterations}, p={parallelism} are outside the \
         accepted range (19456 <= m <= 2097152 KiB, 2 <= t <= 64, 1 <= p <= 64)"
    )]
    TooWeak {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    },
    #[error("argon2id failed: {0}")]
    Argon2(String),
}

impl KdfParams {
    /// RFC 9106's second recommended option: m = 64 MiB, t = 3, p = 4.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };
    /// OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1): the fastest we accept.
    pub const FLOOR: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, KdfError> {
        let p = KdfParams {
            memory_kib,
            iterations,
            parallelism,
        };
        let too_weak = memory_kib < Self::FLOOR.memory_kib
            || iterations < Self::FLOOR.iterations
            || !(1..=64).contains(&parallelism)
            // Upper bounds too: a tampered header must not make unlock take hours.
            || memory_kib > 2 * 1024 * 1024
            || iterations > 64;
        if too_weak {
            return Err(KdfError::TooWeak {
                memory_kib,
                iterations,
                parallelism,
            });
        }
        Ok(p)
    }

    /// Derives the 256-bit key-encryption key.
    pub fn derive(
        &self,
        passphrase: &Passphrase,
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, KdfError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KdfError::Argon2(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.expose_secret(), salt, out.as_mut_slice())
            .map_err(|e| KdfError::Argon2(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_enforced() {
        assert!(KdfParams::new(19 * 1024, 2, 1).is_ok());
        assert!(matches!(
            KdfParams::new(19 * 1024 - 1, 2, 1),
            Err(KdfError::TooWeak { .. })
        ));
        assert!(matches!(
            KdfParams::new(64 * 1024, 1, 4),
            Err(KdfError::TooWeak { .. })
        ));
        assert!(matches!(
            KdfParams::new(64 * 1024, 3, 0),
            Err(KdfError::TooWeak { .. })
        ));
    }

    #[test]
    fn derivation_depends_on_passphrase_and_salt() {
        let p = KdfParams::FLOOR;
        let a = p
            .derive(&Passphrase::new(b"one".to_vec()), &[1; 16])
            .unwrap();
        let b = p
            .derive(&Passphrase::new(b"two".to_vec()), &[1; 16])
            .unwrap();
        let c = p
            .derive(&Passphrase::new(b"one".to_vec()), &[2; 16])
            .unwrap();
        let a2 = p
            .derive(&Passphrase::new(b"one".to_vec()), &[1; 16])
            .unwrap();
        assert_eq!(*a, *a2);
        assert_ne!(*a, *b);
        assert_ne!(*a, *c);
    }
}
