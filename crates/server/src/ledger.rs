//! The ledger on the request path: a row is appended to the [journal] by the request's
//! own thread before the last bytes of its answer go out, and an importer thread moves
//! journaled rows into the ledger store in large batches.
//!
//! So a request whose answer reached the client in full is in the ledger even if the
//! gateway is killed right after: the journal line is in the kernel's page cache when
//! [`LedgerWriter::append`] returns (the same promise as a committed SQLite WAL
//! transaction with `synchronous = NORMAL`: safe against `kill -9`, not against a power
//! cut). Rows left in the journal by a killed gateway are imported at the next start or
//! by the next report (`tollgate usage`, `/admin/usage`, a budget's first load), which
//! all call [`LedgerWriter::sync`] or [`tollgate_store::journal::import_all`] first.
//!
//! Why not commit to SQLite on the request path: a commit per request (or per small
//! group of requests) wrote ~5 WAL pages (~20 KB) and, every ~140 requests, waited on a
//! checkpoint's `fsync`; every request handed its row to a writer thread and waited to be
//! woken. That cost more CPU than the rest of the request (bench/README.md). One
//! `write(2)` of a ~600-byte line costs a few microseconds and wakes nobody.
//!
//! [journal]: tollgate_store::journal

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_store::journal::{Importer, Journal, ROTATE_BYTES};
use tollgate_store::{LedgerRow, LedgerStore};

/// How often the importer moves journaled rows into the store. Short, so each import is a
/// short burst of CPU (at 100 ms, the bursts showed in the gateway's p99 on a 2-core box).
const IMPORT_EVERY: Duration = Duration::from_millis(20);
/// How often the store's housekeeping runs (SQLite: a passive WAL checkpoint).
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// A handle to the journal and its importer. Cloning is cheap.
#[derive(Clone)]
pub struct LedgerWriter {
    journal: Arc<Journal>,
    importer: Arc<Mutex<Importer>>,
    store: Arc<dyn LedgerStore>,
}

impl LedgerWriter {
    /// Imports what an earlier process left in the journal of `data_dir`, opens this
    /// process's journal segment, and starts the importer thread over `store` (give it
    /// its own connection), which also calls `maintenance.maintain()` every second.
    pub fn spawn(
        data_dir: &std::path::Path,
        store: Arc<dyn LedgerStore>,
        maintenance: Arc<dyn LedgerStore>,
    ) -> Result<Self, String> {
        let mut importer = Importer::new(data_dir);
        let left = importer
            .run(store.as_ref())
            .map_err(|e| format!("cannot import the ledger journal: {e}"))?;
        if left.rows > 0 {
            tracing::info!(
                rows = left.rows,
                segments = left.segments_removed,
                "imported ledger rows an earlier run left in the journal"
            );
        }
        let journal = Arc::new(
            Journal::open(data_dir).map_err(|e| format!("cannot open the ledger journal: {e}"))?,
        );
        let w = LedgerWriter {
            journal,
            importer: Arc::new(Mutex::new(importer)),
            store,
        };
        let bg = w.clone();
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                let mut last_maintain = Instant::now();
                loop {
                    std::thread::sleep(IMPORT_EVERY);
                    if let Err(e) = bg.sync() {
                        tracing::error!(error = %e, "importing the ledger journal failed; retrying");
                    }
                    if let Err(e) = bg.journal.rotate_if_larger(ROTATE_BYTES) {
                        tracing::error!(error = %e, "rotating the ledger journal failed");
                    }
                    if last_maintain.elapsed() >= MAINTAIN_EVERY {
                        last_maintain = Instant::now();
                        if let Err(e) = maintenance.maintain() {
                            tracing::warn!(error = %e, "ledger maintenance failed");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the ledger importer: {e}"))?;
        Ok(w)
    }

    /// Appends `row` to the journal: durable when this returns `Ok`.
    pub fn append(&self, row: &LedgerRow) -> Result<(), String> {
        self.journal.append(row).map_err(|e| e.to_string())
    }

    /// Moves every journaled row into the store now (blocking: call it off the async
    /// threads). Reads of the ledger call this first, so they see every row.
    pub fn sync(&self) -> Result<(), String> {
        let mut imp = self
            .importer
            .lock()
            .map_err(|_| "the ledger importer panicked".to_owned())?;
        imp.run(self.store.as_ref()).map_err(|e| e.to_string())?;
        Ok(())
    }
}
