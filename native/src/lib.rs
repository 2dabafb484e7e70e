//! keyturn_native: the two pure steps every ValidateHandle takes before it touches the
//! store, in Rust: is the presented token well formed (its type, its checksum), and its
//! keyed digest (HMAC-SHA-256/384/512 under the keyring's token key).
//!
//! The rules are those of `keyturn_server.domain.tokens` and `Keyring.digest`, which stay
//! the reference implementation; the test suite runs both against the same cases. Each
//! call keeps the GIL: the work is well under a microsecond, and releasing the GIL would
//! hand it to the store's commit thread for far longer than it saves.

use hmac::{Hmac, KeyInit, Mac};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use sha2::{Sha256, Sha384, Sha512};

const PREFIX: &[u8] = b"kt_";
const CHECKSUM_WIDTH: usize = 6;
const MAX_TOKEN_LENGTH: usize = 256;
const MAX_TYPE_LENGTH: usize = 32;

fn base62(digit: u8) -> Option<u64> {
    match digit {
        b'0'..=b'9' => Some(u64::from(digit - b'0')),
        b'A'..=b'Z' => Some(u64::from(digit - b'A') + 10),
        b'a'..=b'z' => Some(u64::from(digit - b'a') + 36),
        _ => None,
    }
}

/// The type name of a well-formed token (`kt_<type>_<secret><checksum>`), else None.
fn parse(token: &str) -> Option<&str> {
    let bytes = token.as_bytes();
    // Python counts characters, this counts bytes: they differ only for non-ASCII text,
    // which is never a token either way.
    if bytes.len() > MAX_TOKEN_LENGTH || !bytes.starts_with(PREFIX) {
        return None;
    }
    let rest = &bytes[PREFIX.len()..];
    let type_length = rest.iter().position(|&b| b == b'_')?;
    if type_length == 0 || type_length > MAX_TYPE_LENGTH || !rest[0].is_ascii_lowercase() {
        return None;
    }
    let type_ok = rest[1..type_length]
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let tail = &rest[type_length + 1..];
    if !type_ok || tail.len() <= CHECKSUM_WIDTH || !tail.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut value: u64 = 0;
    for &digit in &tail[tail.len() - CHECKSUM_WIDTH..] {
        value = value * 62 + base62(digit)?;
    }
    let head = &bytes[..bytes.len() - CHECKSUM_WIDTH];
    if value != u64::from(crc32fast::hash(head)) {
        return None;
    }
    Some(&token[PREFIX.len()..PREFIX.len() + type_length])
}

/// The token's type if it is well formed, else None (also for text that is not valid
/// Unicode, such as a lone surrogate, which no token is).
#[pyfunction]
fn token_type<'py>(token: &Bound<'py, PyString>) -> Option<Bound<'py, PyString>> {
    let text = token.to_str().ok()?;
    parse(text).map(|name| PyString::new(token.py(), name))
}

/// Keyed digests of bearer secrets: the HMAC state is keyed once, and cloned per digest.
#[pyclass(frozen)]
struct TokenMac {
    sha256: Hmac<Sha256>,
    sha384: Hmac<Sha384>,
    sha512: Hmac<Sha512>,
}

fn keyed<M: KeyInit>(key: &[u8]) -> PyResult<M> {
    M::new_from_slice(key).map_err(|_| PyValueError::new_err("invalid HMAC key length"))
}

#[pymethods]
impl TokenMac {
    #[new]
    fn new(key: &[u8]) -> PyResult<Self> {
        Ok(TokenMac {
            sha256: keyed(key)?,
            sha384: keyed(key)?,
            sha512: keyed(key)?,
        })
    }

    /// HMAC-`algorithm` of the secret's UTF-8 bytes (sha256, sha384 or sha512).
    fn digest<'py>(
        &self,
        py: Python<'py>,
        secret: &str,
        algorithm: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = secret.as_bytes();
        match algorithm {
            "sha256" => Ok(PyBytes::new(py, &finish(self.sha256.clone(), data))),
            "sha384" => Ok(PyBytes::new(py, &finish(self.sha384.clone(), data))),
            "sha512" => Ok(PyBytes::new(py, &finish(self.sha512.clone(), data))),
            other => Err(PyKeyError::new_err(other.to_string())),
        }
    }
}

fn finish<M: Mac>(mut mac: M, data: &[u8]) -> Vec<u8> {
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[pymodule]
fn keyturn_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(token_type, module)?)?;
    module.add_class::<TokenMac>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn refuses_shapes_before_the_checksum() {
        for token in ["", "kt_", "kt__abcdefgh", "kt_Bad_abcdefgh", "xx_bench_abcdefgh", "kt_bench_abc"] {
            assert_eq!(parse(token), None, "{token}");
        }
    }
}
