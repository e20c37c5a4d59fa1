//! The ciphertext format of encrypted application columns: AES-256-GCM under
//! an org's data key (DEK), with a header naming the DEK version (a prefix in
//! the manner of Tink's) and associated data that binds the value to its
//! table, column and org, so a ciphertext copied to another row, column or
//! org does not decrypt.
//!
//! ```text
//! text   = "lethe1:" base64(bytes)                    (standard alphabet, padded)
//! bytes  = 0x01 ‖ dek_version (u32, big-endian) ‖ nonce (12) ‖ ciphertext ‖ tag (16)
//! aad    = "lethe1" 0x00 table 0x00 column 0x00 org 0x00 ‖ the 5 header bytes
//! ```
//!
//! An application in any language reads it in a few lines: strip the prefix,
//! base64-decode, take the version from bytes 1..5, fetch and unwrap that DEK
//! version of the org, and AES-GCM-open `bytes[17..]` with nonce `bytes[5..17]`
//! and the AAD above. Pure functions; no I/O.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// The text prefix of format version 1.
pub const PREFIX: &str = "lethe1:";
const FORMAT: u8 = 0x01;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;

/// Where a value lives: what the associated data binds it to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub org: &'a str,
}

/// Why a stored value could not be read. Never carries the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("not in the lethe1 format (no `lethe1:` prefix)")]
    NoPrefix,
    #[error("not in the lethe1 format (base64 does not decode)")]
    NotBase64,
    #[error("too short for the lethe1 format ({0} bytes)")]
    TooShort(usize),
    #[error("unknown format byte {0:#04x}")]
    UnknownFormat(u8),
    #[error("the data key must be 32 bytes (got {0})")]
    BadKey(usize),
    #[error("does not decrypt under DEK version {0} for this table, column and org (wrong key, or the value was moved or altered)")]
    Undecryptable(u32),
}

/// The DEK version a stored value names, read from its header alone.
pub fn dek_version(text: &str) -> Result<u32, CipherError> {
    Ok(Stored::parse(text)?.version())
}

/// A DEK made ready for AES-GCM once (its key schedule), to seal and open
/// many values: preparing it per value costs more than the value's crypto.
pub struct DataKey(LessSafeKey);

impl DataKey {
    pub fn new(dek: &[u8]) -> Result<DataKey, CipherError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, dek).map_err(|_| CipherError::BadKey(dek.len()))?;
        Ok(DataKey(LessSafeKey::new(unbound)))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)") // never the key
    }
}

/// A stored value decoded once: its prefix, base64, length and format
/// byte checked, so its version can be read and it can be opened without
/// decoding it again.
#[derive(Debug)]
pub struct Stored(Vec<u8>);

impl Stored {
    pub fn parse(text: &str) -> Result<Stored, CipherError> {
        decode(text).map(Stored)
    }

    pub fn version(&self) -> u32 {
        header_version(&self.0)
    }

    /// The plaintext, with `key`, which must be the version the header names.
    pub fn open(self, key: &DataKey, at: Binding<'_>) -> Result<Vec<u8>, CipherError> {
        let version = self.version();
        let mut bytes = self.0;
        let mut sealed = bytes.split_off(HEADER_LEN + NONCE_LEN);
        let (header, nonce) = bytes.split_at(HEADER_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CipherError::TooShort(HEADER_LEN + NONCE_LEN + sealed.len()))?;
        let plain_len = key
            .0
            .open_in_place(nonce, Aad::from(aad(at, header)), &mut sealed)
            .map_err(|_| CipherError::Undecryptable(version))?
            .len();
        sealed.truncate(plain_len);
        Ok(sealed)
    }
}

/// Encrypts `plaintext` under `dek` (version `version`) with a fresh random nonce.
pub fn seal(
    dek: &[u8],
    version: u32,
    at: Binding<'_>,
    plaintext: &[u8],
) -> Result<String, CipherError> {
    seal_with(&DataKey::new(dek)?, version, at, plaintext)
}

/// `seal` with a key prepared once.
pub fn seal_with(
    key: &DataKey,
    version: u32,
    at: Binding<'_>,
    plaintext: &[u8],
) -> Result<String, CipherError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    seal_prepared(key, version, at, plaintext, nonce)
}

/// `seal` with a given nonce: for the test vector only (a nonce must never repeat under a key).
pub fn seal_with_nonce(
    dek: &[u8],
    version: u32,
    at: Binding<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<String, CipherError> {
    seal_prepared(&DataKey::new(dek)?, version, at, plaintext, nonce)
}

fn seal_prepared(
    key: &DataKey,
    version: u32,
    at: Binding<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<String, CipherError> {
    let header = header(version);
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .0
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(at, &header)),
            &mut out[HEADER_LEN + NONCE_LEN..],
        )
        .map_err(|_| CipherError::Undecryptable(version))?;
    out.extend_from_slice(tag.as_ref());
    let mut text = String::with_capacity(PREFIX.len() + out.len().div_ceil(3) * 4);
    text.push_str(PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(out, &mut text);
    Ok(text)
}

/// Decrypts a stored value with `dek`, which must be the version its header names.
pub fn open(dek: &[u8], at: Binding<'_>, text: &str) -> Result<Vec<u8>, CipherError> {
    let stored = Stored::parse(text)?;
    stored.open(&DataKey::new(dek)?, at)
}

fn header(version: u32) -> [u8; HEADER_LEN] {
    let v = version.to_be_bytes();
    [FORMAT, v[0], v[1], v[2], v[3]]
}

fn header_version(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
}

/// Checks prefix, base64, length and format byte; the bytes are then safe to slice.
fn decode(text: &str) -> Result<Vec<u8>, CipherError> {
    let b64 = text.strip_prefix(PREFIX).ok_or(CipherError::NoPrefix)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| CipherError::NotBase64)?;
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CipherError::TooShort(bytes.len()));
    }
    if bytes[0] != FORMAT {
        return Err(CipherError::UnknownFormat(bytes[0]));
    }
    Ok(bytes)
}

fn aad(at: Binding<'_>, header: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + at.table.len() + at.column.len() + at.org.len());
    for part in ["lethe1", at.table, at.column, at.org] {
        a.extend_from_slice(part.as_bytes());
        a.push(0);
    }
    a.extend_from_slice(header);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Binding<'static> = Binding {
        table: "customers",
        column: "nik",
        org: "42",
    };

    fn dek() -> Vec<u8> {
        (0u8..32).collect()
    }

    /// The README's test vector; the expected text was computed independently
    /// with Python's `cryptography` (AESGCM), not with this code.
    #[test]
    fn test_vector() {
        let nonce: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
        let text = seal_with_nonce(&dek(), 7, AT, b"3171234567890001", nonce).unwrap();
        assert_eq!(text, VECTOR);
        assert_eq!(open(&dek(), AT, VECTOR).unwrap(), b"3171234567890001");
        assert_eq!(dek_version(VECTOR), Ok(7));
    }

    const VECTOR: &str =
        "lethe1:AQAAAAegoaKjpKWmp6ipqqvVKUscd/g2ilRSv+o3SvDvp3HCmdM/xJ5kSWhyYHAu8w==";

    #[test]
    fn a_value_moved_or_altered_does_not_decrypt() {
        let text = seal(&dek(), 3, AT, b"0812-555-0100").unwrap();
        for other in [
            Binding {
                table: "users",
                ..AT
            },
            Binding {
                column: "phone",
                ..AT
            },
            Binding { org: "43", ..AT },
        ] {
            assert_eq!(
                open(&dek(), other, &text),
                Err(CipherError::Undecryptable(3))
            );
        }
        let mut wrong = dek();
        wrong[0] ^= 1;
        assert_eq!(open(&wrong, AT, &text), Err(CipherError::Undecryptable(3)));
        // The version in the header is authenticated: claiming another version fails.
        let mut bytes = decode(&text).unwrap();
        bytes[4] = 4;
        let relabelled = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        assert_eq!(dek_version(&relabelled), Ok(4));
        assert_eq!(
            open(&dek(), AT, &relabelled),
            Err(CipherError::Undecryptable(4))
        );
    }

    #[test]
    fn malformed_values_are_named_not_echoed() {
        assert_eq!(
            open(&dek(), AT, "3171234567890001"),
            Err(CipherError::NoPrefix)
        );
        assert_eq!(open(&dek(), AT, "lethe1:%%%"), Err(CipherError::NotBase64));
        assert_eq!(
            open(&dek(), AT, "lethe1:AQAAAAc="),
            Err(CipherError::TooShort(5))
        );
        let bad_format = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode([2u8; 40])
        );
        assert_eq!(
            open(&dek(), AT, &bad_format),
            Err(CipherError::UnknownFormat(2))
        );
        assert_eq!(seal(&[0u8; 16], 1, AT, b"x"), Err(CipherError::BadKey(16)));
        for e in [CipherError::NoPrefix, CipherError::Undecryptable(1)] {
            assert!(!e.to_string().contains("3171"), "{e}");
        }
    }
}
