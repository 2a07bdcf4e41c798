//! tollgate's durable state, behind one trait per concern so SQLite (one node) and,
//! later, PostgreSQL (many replicas) can serve it.
//!
//! # Layout
//! - [`keys`]: virtual API keys: [`KeyStore`], [`KeyRecord`], hashing and generation.
//! - [`ledger`]: the append-only ledger: [`LedgerStore`], [`LedgerRow`].
//! - [`journal`]: where rows become durable on the request path, before the store has them.
//! - [`sqlite`]: the SQLite implementation (WAL mode, one file in the data directory).

pub mod journal;
pub mod keys;
pub mod ledger;
pub mod sqlite;

pub use journal::{Importer, Journal};
pub use keys::{hash_key, BudgetSpec, KeyRecord, KeyStore, NewKey};
pub use ledger::{GroupBy, LedgerFilter, LedgerRow, LedgerStore};
pub use sqlite::SqliteStore;

/// A store failure. Messages are for the operator's log, never for API clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no key matches '{0}'")]
    NotFound(String),
    #[error("the random number source failed: {0}")]
    Random(String),
    #[error("the database lock was poisoned by a panic")]
    Poisoned,
}

/// Helpers the store's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    use crate::LedgerRow;

    /// A fresh directory under the system temp dir.
    pub fn tmp_dir(tag: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "tollgate-{tag}-test-{}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A plain ledger row of key `k1`.
    pub fn row(id: &str, ts_ms: i64, cost: i64) -> LedgerRow {
        LedgerRow {
            id: id.into(),
            ts_ms,
            key_id: "k1".into(),
            key_name: "n".into(),
            requested_model: "m".into(),
            provider: "deepseek".into(),
            model: "deepseek-chat".into(),
            usage_source: "vendor".into(),
            cost_nanos: cost,
            cost_currency: "CNY".into(),
            report_currency: "CNY".into(),
            report_cost_nanos: cost,
            status: "ok".into(),
            http_status: 200,
            attempts: "[]".into(),
            ..Default::default()
        }
    }
}
