//! The ledger: one append-only row per request (and per upstream attempt inside it).
//!
//! Rows are made durable in the [journal](crate::journal) on the request path, then moved
//! into the store in large batches by an importer; they are never updated: a row records the price period it used and the FX rate,
//! so history is never rewritten when prices change.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One request as the ledger keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The request id (`x-tollgate-request-id`).
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    pub key_id: String,
    pub key_name: String,
    /// The key's group (team/project), if any.
    pub group: Option<String>,
    /// What the client asked for (`model` as sent).
    pub requested_model: String,
    /// The provider and model that served it (empty when none did).
    pub provider: String,
    pub model: String,
    /// The catalog price period used, e.g. `deepseek/deepseek-chat@2025-09-05`.
    pub price_id: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    /// `vendor` (reported by the vendor), `estimated` (tollgate counted: the vendor gave
    /// none, e.g. a cut stream) or `none` (nothing was consumed).
    pub usage_source: String,
    /// Cost in the vendor's currency, nano-units.
    pub cost_nanos: i64,
    pub cost_currency: String,
    /// Cost in the reporting currency, nano-units, with the FX rate used.
    pub report_cost_nanos: i64,
    pub report_currency: String,
    pub fx_rate: Option<String>,
    pub fx_month: Option<String>,
    pub latency_ms: i64,
    /// Time to first token (streams) or to the response head.
    pub ttft_ms: Option<i64>,
    /// `ok`, `upstream_error`, `client_disconnected`, `upstream_cut`, ...
    pub status: String,
    /// The HTTP status the client got.
    pub http_status: i64,
    pub stream: bool,
    /// JSON array of the upstream attempts (provider, model, outcome, latency).
    pub attempts: String,
}

/// A usage report's grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Provider,
    Day,
    Request,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "day" => GroupBy::Day,
            "request" => GroupBy::Request,
            other => {
                return Err(format!(
                    "cannot group by '{other}' (key, model, provider, day, request)"
                ))
            }
        })
    }
}

/// Rows selected for a report: `[since_ms, until_ms)`, in the scan's order (`ts_ms`,
/// then `id`), optionally only those after a cursor and at most `limit` of them: how a
/// listing of single requests is paged.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub key_id: Option<String>,
    /// Only rows after this one in the scan's order: its `(ts_ms, id)`, as
    /// [`LedgerStore::position`] finds it for a request id.
    pub after: Option<(i64, String)>,
    /// At most this many rows.
    pub limit: Option<u64>,
}

/// The ledger, whatever the backend.
pub trait LedgerStore: Send + Sync {
    /// Appends rows in one transaction: all or none (a duplicate id refuses the batch).
    fn append(&self, rows: &[LedgerRow]) -> Result<(), StoreError>;
    /// Appends rows in one transaction, skipping rows whose id is already there: how the
    /// [journal](crate::journal) is imported (a line may be imported twice).
    fn replay(&self, rows: &[LedgerRow]) -> Result<(), StoreError>;
    /// Hands each row matching the filter to `visit`, oldest first, one at a time: a
    /// report over months of traffic holds one row in memory, not all of them. A `visit`
    /// that returns an error stops the scan with it.
    fn scan(
        &self,
        filter: &LedgerFilter,
        visit: &mut dyn FnMut(LedgerRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Where the row of request `id` sits in a scan's order: its `(ts_ms, id)`, the
    /// cursor [`LedgerFilter::after`] takes. `None` when no row has that id.
    fn position(&self, id: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// Rows matching the filter, oldest first, collected.
    fn rows(&self, filter: &LedgerFilter) -> Result<Vec<LedgerRow>, StoreError> {
        let mut rows = Vec::new();
        self.scan(filter, &mut |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }
    /// Spend of a key (or a group) since a time, to rebuild a budget's state:
    /// `(first ts_ms, summed cost_nanos, currency)` per currency and UTC month (the FX
    /// table is monthly, so each sum converts at one rate).
    fn spend_since(
        &self,
        key_id: Option<&str>,
        group: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError>;

    /// Housekeeping the backend wants done off the request path, called about once a
    /// second from a background thread (SQLite: a passive WAL checkpoint).
    fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
