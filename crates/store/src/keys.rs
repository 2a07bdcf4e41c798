//! Virtual API keys. A key is shown once, at creation; only its SHA-256 is stored.
//!
//! Keys are 32 random base62 characters (about 190 bits) behind the prefix `tg-`, so a
//! plain SHA-256 is enough (no salt or slow hash is needed for secrets this long: there
//! is nothing to brute-force). The first 8 characters are kept in clear as a `prefix`,
//! so people can tell keys apart in listings.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Stable id, e.g. `key_01J...`.
    pub id: String,
    pub name: String,
    /// The first characters of the key, e.g. `tg-AbC12`, for people to recognise it.
    pub prefix: String,
    /// Models the key may use (`provider/model`, `provider/*`, or a bare model id);
    /// empty means every model.
    pub models: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; set once revoked.
    pub revoked_at: Option<i64>,
    /// The team or project the key belongs to; group budgets apply to all its keys.
    pub group: Option<String>,
    /// The key's own spending cap.
    pub budget: Option<BudgetSpec>,
    /// Requests per minute (sliding window).
    pub rpm: Option<u32>,
    /// Tokens per minute (sliding window; reserved at the worst case, settled to usage).
    pub tpm: Option<u32>,
}

/// A spending cap: `amount` (decimal text, e.g. `"500"`) in `currency` per `period`
/// (`day`, `month` or `total`), with day and month boundaries in `time_zone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub amount: String,
    pub currency: String,
    pub period: String,
    /// A fixed-offset zone (`Asia/Shanghai`, `UTC`, `+08:00`). Default: Asia/Shanghai
    /// for CNY budgets, UTC otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl KeyRecord {
    /// Whether the key may use `provider/model` (also matched by its bare id).
    pub fn allows(&self, provider: &str, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| {
                m == "*"
                    || m == model
                    || match m.split_once('/') {
                        Some((p, rest)) => p == provider && (rest == "*" || rest == model),
                        None => false,
                    }
            })
    }

    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// What `keys create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub models: Vec<String>,
    pub group: Option<String>,
    pub budget: Option<BudgetSpec>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

/// Keys, whatever the backend.
pub trait KeyStore: Send + Sync {
    /// Creates a key; returns its record and the key itself (shown once).
    fn create_key(&self, new: &NewKey) -> Result<(KeyRecord, String), StoreError>;
    /// Every key, newest first.
    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes the key whose id, name or prefix is `which`; returns the record.
    fn revoke_key(&self, which: &str) -> Result<KeyRecord, StoreError>;
    /// The key with this hash, revoked or not.
    fn find_key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    // By hand: `hex::encode` collects an iterator of chars (~1,700 instructions a key,
    // and every request hashes the key it presents).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(2 * digest.len());
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random key, `tg-` + 32 base62 characters.
pub fn generate_key() -> Result<String, StoreError> {
    let mut out = String::from("tg-");
    let mut buf = [0u8; 64];
    getrandom::getrandom(&mut buf).map_err(|e| StoreError::Random(e.to_string()))?;
    // Rejection sampling keeps the distribution uniform (248 = 4 * 62).
    for b in buf {
        if out.len() == 35 {
            break;
        }
        if b < 248 {
            out.push(BASE62[(b % 62) as usize] as char);
        }
    }
    if out.len() < 35 {
        return generate_key();
    }
    Ok(out)
}

/// A time-ordered id with a prefix: unix milliseconds then random bits, hex.
pub fn new_id(prefix: &str, now_ms: i64) -> Result<String, StoreError> {
    let mut r = [0u8; 6];
    getrandom::getrandom(&mut r).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{prefix}_{now_ms:012x}{}", hex::encode(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_well_formed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 35);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(hash_key("x").len(), 64);
    }

    /// The stored form must never change (keys already issued would stop matching):
    /// FIPS 180-2's test vector, and `hex::encode` of the digest for other keys.
    #[test]
    fn key_hashes_are_lowercase_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for k in ["", "tg-0123456789abcdefABCDEF0123456789", "\u{e9}\u{1f600}"] {
            assert_eq!(hash_key(k), hex::encode(Sha256::digest(k.as_bytes())));
        }
    }

    #[test]
    fn model_allow_lists() {
        let mut k = KeyRecord {
            id: "k".into(),
            name: "n".into(),
            prefix: "tg-".into(),
            models: vec![],
            created_at: 0,
            revoked_at: None,
            group: None,
            budget: None,
            rpm: None,
            tpm: None,
        };
        assert!(k.allows("openai", "gpt-4o"));
        k.models = vec![
            "deepseek/*".into(),
            "openai/gpt-4o-mini".into(),
            "glm-4-flash".into(),
        ];
        assert!(k.allows("deepseek", "deepseek-chat"));
        assert!(k.allows("openai", "gpt-4o-mini"));
        assert!(!k.allows("openai", "gpt-4o"));
        assert!(k.allows("zhipu", "glm-4-flash"));
    }
}
