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
