//! Secret value types. A secret has a redacted `Debug`, no `Display`, no `Serialize`,
//! constant-time equality, and its bytes are zeroized on drop. The plaintext is reachable only
//! through `expose_secret()`, so every use can be found with grep.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Zeroizing<Vec<u8>>);

        impl $name {
            pub fn new(bytes: Vec<u8>) -> Self {
                Self(Zeroizing::new(bytes))
            }

            pub fn expose_secret(&self) -> &[u8] {
                &self.0
            }

            pub fn len(&self) -> usize {
                self.0.len()
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted; {} bytes])"), self.0.len())
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                // Constant time in the contents; the length is not secret.
                self.0.len() == other.0.len() && bool::from(self.0.ct_eq(&other.0))
            }
        }
        impl Eq for $name {}
    };
}

secret_type!(
    /// Plaintext of a sealed vault value (token, API key) after `Vault::get`.
    SecretBytes
);
secret_type!(
    /// The vault passphrase. Never from argv; see `passphrase.rs`.
    Passphrase
);
secret_type!(
    /// An API key for a `kind = "api_key"` service, as read from stdin.
    ApiKey
);
secret_type!(
    /// A provider's OAuth access token.
    AccessToken
);
secret_type!(
    /// A provider's OAuth refresh token.
    RefreshToken
);
secret_type!(
    /// An OAuth client secret, read from the env var or file the config names.
    ClientSecret
);

impl ApiKey {
    /// Trailing newlines from `echo key | scopegate apikey set` are not part of the key.
    pub fn from_input(mut bytes: Vec<u8>) -> Self {
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Self::new(bytes)
    }
}

impl<'de> serde::Deserialize<'de> for ApiKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Ok(Self::new(s.as_bytes().to_vec()))
    }
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// Failure of the OS RNG leaves nothing safe to do (every nonce, key and token depends on it),
/// so it aborts the operation with a panic rather than continuing with predictable bytes.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)] // invariant: see the doc comment; no safe fallback exists.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// Lower-case hex, for hashes and fingerprints (never for secret values themselves).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = ApiKey::new(b"sk-canary-123".to_vec());
        let shown = format!("{k:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(ApiKey::new(b"a".to_vec()), ApiKey::new(b"a".to_vec()));
        assert_ne!(ApiKey::new(b"a".to_vec()), ApiKey::new(b"b".to_vec()));
        assert_ne!(ApiKey::new(b"a".to_vec()), ApiKey::new(b"ab".to_vec()));
    }

    #[test]
    fn input_newlines_are_trimmed() {
        assert_eq!(ApiKey::from_input(b"k\r\n".to_vec()).expose_secret(), b"k");
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
