//! Sealed-record framing: `version ‖ 24-byte random nonce ‖ ciphertext ‖ 16-byte tag`, sealed
//! with XChaCha20-Poly1305 under the data key, and the vault header that wraps that key.
//!
//! The associated data names where a value lives (table, record, field), length-prefixed so
//! that no two locations encode alike; a value copied anywhere else fails to open (I1).
//! The decoders here face bytes read from disk and are fuzzed (`fuzz/fuzz_targets/sealed.rs`).

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::kdf::{KdfError, KdfParams};
use crate::secret::{Passphrase, SecretBytes, random_array};

pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Where a sealed value lives; bound into its associated data.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub table: &'a str,
    pub record: &'a str,
    pub field: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed value is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("sealed value has unknown version {0}")]
    UnknownVersion(u8),
    #[error("sealed value failed authentication (damaged, or moved from another record)")]
    Inauthentic,
}

/// The framing of a sealed value, checked but not decrypted.
#[derive(Debug, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub nonce: &'a [u8; NONCE_LEN],
    pub ciphertext_and_tag: &'a [u8],
}

pub fn decode(bytes: &[u8]) -> Result<Sealed<'_>, OpenError> {
    if bytes.len() < OVERHEAD {
        return Err(OpenError::Truncated(bytes.len()));
    }
    let (version, rest) = bytes.split_at(1);
    if version[0] != VERSION {
        return Err(OpenError::UnknownVersion(version[0]));
    }
    let (nonce, ciphertext_and_tag) = rest.split_at(NONCE_LEN);
    let nonce = nonce
        .try_into()
        .map_err(|_| OpenError::Truncated(bytes.len()))?;
    Ok(Sealed {
        nonce,
        ciphertext_and_tag,
    })
}

fn associated_data(loc: &Location<'_>) -> Vec<u8> {
    let mut ad = Vec::with_capacity(32 + loc.table.len() + loc.record.len() + loc.field.len());
    ad.extend_from_slice(b"scopegate/v1/sealed");
    // The record version is authenticated too, so a future format cannot be confused with it.
    ad.push(VERSION);
    for part in [loc.table, loc.record, loc.field] {
        ad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad
}

pub fn seal(cipher: &XChaCha20Poly1305, loc: &Location<'_>, plaintext: &[u8]) -> Vec<u8> {
    seal_with_ad(cipher, &associated_data(loc), plaintext)
}

/// A fresh 192-bit random nonce per seal: with XChaCha's nonce size, random nonces do not
/// collide in any realistic number of seals, across restarts, without any stored counter.
fn seal_with_ad(cipher: &XChaCha20Poly1305, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_array::<NONCE_LEN>();
    #[allow(clippy::expect_used)] // invariant: encryption fails only for inputs > 256 GiB.
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any plaintext under 256 GiB");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub fn open(
    cipher: &XChaCha20Poly1305,
    loc: &Location<'_>,
    bytes: &[u8],
) -> Result<SecretBytes, OpenError> {
    open_with_ad(cipher, &associated_data(loc), bytes).map(|p| SecretBytes::new(p.to_vec()))
}

fn open_with_ad(
    cipher: &XChaCha20Poly1305,
    ad: &[u8],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let sealed = decode(bytes)?;
    cipher
        .decrypt(
            &XNonce::from(*sealed.nonce),
            Payload {
                msg: sealed.ciphertext_and_tag,
                aad: ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Inauthentic)
}

// ---- the vault header --------------------------------------------------------------------

const MAGIC: &[u8; 8] = b"SGVAULT\x01";
const KDF_ARGON2ID_13: u8 = 1;
const SALT_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the vault header is missing")]
    Missing,
    #[error("not a scopegate vault header (bad magic)")]
    BadMagic,
    #[error("unknown key-derivation function {0}")]
    UnknownKdf(u8),
    #[error("the header is truncated")]
    Truncated,
    #[error("salt length {0} is outside 16..=64 bytes")]
    BadSalt(usize),
    #[error("the header is too long")]
    Trailing,
    #[error("{0}")]
    WeakKdf(#[from] KdfError),
    #[error("the wrapped data key is malformed: {0}")]
    Wrapped(OpenError),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub params: KdfParams,
    pub salt: &'a [u8],
    /// Everything before the wrapped key; the wrap's associated data, so changing the
    /// parameters or salt in the file makes the passphrase fail rather than weaken.
    pub authenticated_prefix: &'a [u8],
    pub wrapped_key: &'a [u8],
}

/// `magic(8) ‖ kdf(1) ‖ m(4) ‖ t(4) ‖ p(4) ‖ salt_len(1) ‖ salt ‖ sealed DEK`
pub fn parse_header(bytes: &[u8]) -> Result<Header<'_>, HeaderError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(HeaderError::BadMagic)?;
    let (&kdf, rest) = rest.split_first().ok_or(HeaderError::Truncated)?;
    if kdf != KDF_ARGON2ID_13 {
        return Err(HeaderError::UnknownKdf(kdf));
    }
    let (m, rest) = take_u32(rest)?;
    let (t, rest) = take_u32(rest)?;
    let (p, rest) = take_u32(rest)?;
    let params = KdfParams::new(m, t, p)?;
    let (&salt_len, rest) = rest.split_first().ok_or(HeaderError::Truncated)?;
    let salt_len = usize::from(salt_len);
    if !(16..=64).contains(&salt_len) {
        return Err(HeaderError::BadSalt(salt_len));
    }
    if rest.len() < salt_len {
        return Err(HeaderError::Truncated);
    }
    let (salt, wrapped_key) = rest.split_at(salt_len);
    let prefix_len = bytes.len() - wrapped_key.len();
    match decode(wrapped_key) {
        Ok(s) if s.ciphertext_and_tag.len() == 32 + TAG_LEN => {}
        Ok(_) => return Err(HeaderError::Trailing),
        Err(e) => return Err(HeaderError::Wrapped(e)),
    }
    Ok(Header {
        params,
        salt,
        authenticated_prefix: &bytes[..prefix_len],
        wrapped_key,
    })
}

fn take_u32(b: &[u8]) -> Result<(u32, &[u8]), HeaderError> {
    let (head, rest) = b.split_first_chunk::<4>().ok_or(HeaderError::Truncated)?;
    Ok((u32::from_be_bytes(*head), rest))
}

pub fn wrap_header(
    passphrase: &Passphrase,
    params: KdfParams,
    dek: &[u8; 32],
) -> Result<Vec<u8>, KdfError> {
    let params = KdfParams::new(params.memory_kib, params.iterations, params.parallelism)?;
    let salt = random_array::<SALT_LEN>();
    let kek = params.derive(passphrase, &salt)?;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(MAGIC);
    out.push(KDF_ARGON2ID_13);
    for v in [params.memory_kib, params.iterations, params.parallelism] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.push(SALT_LEN as u8);
    out.extend_from_slice(&salt);
    let wrapped = seal_with_ad(&XChaCha20Poly1305::new(&(*kek).into()), &out, dek);
    out.extend_from_slice(&wrapped);
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error("wrong passphrase")]
    WrongPassphrase,
}

impl From<UnwrapError> for super::UnlockError {
    fn from(e: UnwrapError) -> Self {
        match e {
            UnwrapError::Header(h) => Self::Header(h),
            UnwrapError::Kdf(k) => Self::Kdf(k),
            UnwrapError::WrongPassphrase => Self::WrongPassphrase,
        }
    }
}

/// Derives the KEK and unwraps the data key. An authentication failure here can only mean
/// the wrong passphrase (or a header edited in a way that amounts to the same thing).
pub fn unwrap_header(
    bytes: &[u8],
    passphrase: &Passphrase,
) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    let h = parse_header(bytes)?;
    let kek = h.params.derive(passphrase, h.salt)?;
    let dek = open_with_ad(
        &XChaCha20Poly1305::new(&(*kek).into()),
        h.authenticated_prefix,
        h.wrapped_key,
    )
    .map_err(|_| UnwrapError::WrongPassphrase)?;
    let key: [u8; 32] = dek
        .as_slice()
        .try_into()
        .map_err(|_| UnwrapError::WrongPassphrase)?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&[7u8; 32].into())
    }
    const LOC: Location<'static> = Location {
        table: "secrets",
        record: "secret/a",
        field: "api_key",
    };

    #[test]
    fn round_trip() {
        let c = cipher();
        let s = seal(&c, &LOC, b"hello token");
        assert_eq!(s.len(), OVERHEAD + 11);
        assert_eq!(s[0], VERSION);
        assert_eq!(open(&c, &LOC, &s).unwrap().expose_secret(), b"hello token");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let c = cipher();
        let s = seal(&c, &LOC, b"0123456789abcdef");
        for i in 0..s.len() * 8 {
            let mut t = s.clone();
            t[i / 8] ^= 1 << (i % 8);
            let err = open(&c, &LOC, &t).unwrap_err();
            if i < 8 {
                assert!(
                    matches!(err, OpenError::UnknownVersion(_)),
                    "bit {i}: {err:?}"
                );
            } else {
                assert_eq!(err, OpenError::Inauthentic, "bit {i}");
            }
        }
    }

    #[test]
    fn truncation_is_caught_at_every_length() {
        let c = cipher();
        let s = seal(&c, &LOC, b"abc");
        for n in 0..s.len() {
            let err = open(&c, &LOC, &s[..n]).unwrap_err();
            assert!(
                matches!(err, OpenError::Truncated(_) | OpenError::Inauthentic),
                "len {n}: {err:?}"
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_location_fails_to_open() {
        let c = cipher();
        let s = seal(&c, &LOC, b"secret");
        for other in [
            Location {
                record: "secret/b",
                ..LOC
            },
            Location {
                field: "refresh_token",
                ..LOC
            },
            Location {
                table: "other",
                ..LOC
            },
            // Length prefixes: shifting bytes between parts must not collide.
            Location {
                record: "secret/aapi_key",
                field: "",
                ..LOC
            },
        ] {
            assert_eq!(
                open(&c, &other, &s).unwrap_err(),
                OpenError::Inauthentic,
                "{other:?}"
            );
        }
    }

    #[test]
    fn header_wraps_and_rejects_a_wrong_passphrase() {
        let dek = [9u8; 32];
        let pass = Passphrase::new(b"correct horse".to_vec());
        let h = wrap_header(&pass, KdfParams::FLOOR, &dek).unwrap();
        assert_eq!(*unwrap_header(&h, &pass).unwrap(), dek);
        let wrong = Passphrase::new(b"correct horsf".to_vec());
        assert!(matches!(
            unwrap_header(&h, &wrong),
            Err(UnwrapError::WrongPassphrase)
        ));
    }

    /// The header prefix (parameters, salt) is the wrap's associated data: under one fixed
    /// key, changing any byte of it makes the wrapped key fail to open.
    #[test]
    fn header_prefix_is_associated_data() {
        let kek = XChaCha20Poly1305::new(&[5u8; 32].into());
        let prefix = b"SGVAULT\x01 params and salt".to_vec();
        let wrapped = seal_with_ad(&kek, &prefix, &[1u8; 32]);
        assert!(open_with_ad(&kek, &prefix, &wrapped).is_ok());
        for i in 0..prefix.len() {
            let mut p = prefix.clone();
            p[i] ^= 1;
            assert_eq!(
                open_with_ad(&kek, &p, &wrapped).unwrap_err(),
                OpenError::Inauthentic,
                "byte {i}"
            );
        }
    }

    #[test]
    fn header_parameter_edits_fail_or_are_refused() {
        let pass = Passphrase::new(b"pw".to_vec());
        let mut h = wrap_header(&pass, KdfParams::FLOOR, &[1; 32]).unwrap();
        // Raise t from 2 to 3: still above the floor, but the wrap no longer authenticates.
        h[9 + 7] = 3;
        assert!(matches!(
            unwrap_header(&h, &pass),
            Err(UnwrapError::WrongPassphrase)
        ));
        // Lower t below the floor: refused before any derivation.
        h[9 + 7] = 1;
        assert!(matches!(
            unwrap_header(&h, &pass),
            Err(UnwrapError::Header(HeaderError::WeakKdf(_)))
        ));
    }
}
