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

use tollgate_store::journal::{Importer, Journal, Written, BATCH, ROTATE_BYTES};
use tollgate_store::{LedgerRow, LedgerStore};

/// How often the importer moves journaled rows into the store. Short, so each import is a
/// short burst of CPU (at 100 ms, the bursts showed in the gateway's p99 on a 2-core box).
const IMPORT_EVERY: Duration = Duration::from_millis(20);
/// How often the store's housekeeping runs (SQLite: a passive WAL checkpoint).
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// The most rows whose vectors are kept between imports (20 ms at 100k requests/s; a
/// row is ~0.5 KB).
const SPARE_ROWS: usize = 2048;

/// Rows this process journaled, waiting for the importer: it takes them from here
/// instead of reading back and parsing the lines it just wrote (that was ~13k
/// instructions per row, a tenth of a request's).
#[derive(Default)]
struct Pending {
    rows: Vec<LedgerRow>,
    /// One per row, same order.
    claims: Vec<Written>,
}

/// A handle to the journal and its importer. Cloning is cheap.
#[derive(Clone)]
pub struct LedgerWriter {
    journal: Arc<Journal>,
    importer: Arc<Mutex<Importer>>,
    store: Arc<dyn LedgerStore>,
    pending: Arc<Mutex<Pending>>,
    /// The vectors of the last import, emptied, put back in place of those it takes:
    /// rows are appended into memory that is already there instead of a vector that
    /// grows (and is copied) by doubling after every import.
    spare: Arc<Mutex<Pending>>,
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
            pending: Arc::new(Mutex::new(Pending::default())),
            spare: Arc::new(Mutex::new(Pending::default())),
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

    /// Appends `row` to the journal: durable when this returns `Ok`. The row then waits
    /// in memory for the importer. On failure the row comes back with the error.
    pub fn append(&self, row: LedgerRow) -> Result<(), Box<(String, LedgerRow)>> {
        match self.journal.append_claimed(&row) {
            Ok(claim) => {
                let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                p.rows.push(row);
                p.claims.push(claim);
                Ok(())
            }
            Err(e) => Err(Box::new((e.to_string(), row))),
        }
    }

    /// Moves every journaled row into the store now (blocking: call it off the async
    /// threads): this process's rows from memory, then what other processes (or a killed
    /// earlier run) left in the journal's files. Reads of the ledger call this first, so
    /// they see every row.
    pub fn sync(&self) -> Result<(), String> {
        let mut imp = self
            .importer
            .lock()
            .map_err(|_| "the ledger importer panicked".to_owned())?;
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|p| p.into_inner()));
        let mut taken = std::mem::replace(
            &mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()),
            spare,
        );
        let mut done = 0;
        while done < taken.rows.len() {
            let n = (taken.rows.len() - done).min(BATCH);
            if let Err(e) = self.store.replay(&taken.rows[done..done + n]) {
                // What is in the store lets its claims go; the rest goes back in front of
                // what arrived meanwhile, tried again next time.
                let mut rest = Pending {
                    rows: taken.rows.split_off(done),
                    claims: taken.claims.split_off(done),
                };
                drop(taken);
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::take(&mut *pending);
                rest.rows.extend(newer.rows);
                rest.claims.extend(newer.claims);
                *pending = rest;
                return Err(e.to_string());
            }
            done += n;
        }
        // All in the store: the claims go with them (a rotated segment can be deleted).
        taken.rows.clear();
        taken.claims.clear();
        // Not kept when a burst made them large: memory goes back after the burst.
        if taken.rows.capacity() <= SPARE_ROWS {
            *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = taken;
        }
        let own = self.journal.own().map_err(|e| e.to_string())?;
        imp.run_skipping(self.store.as_ref(), &own)
            .map_err(|e| e.to_string())?;
        self.journal.reap().map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_store::{LedgerFilter, SqliteStore};

    fn tmp(tag: &str) -> std::path::PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "tollgate-ledger-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn row(id: &str) -> LedgerRow {
        LedgerRow {
            id: id.into(),
            ts_ms: 1_000,
            key_id: "k1".into(),
            status: "ok".into(),
            attempts: "[]".into(),
            ..Default::default()
        }
    }

    fn count(s: &SqliteStore) -> usize {
        s.rows(&LedgerFilter::default()).unwrap().len()
    }

    #[test]
    fn rows_reach_the_store_from_memory_and_are_on_disk_before_that() {
        let dir = tmp("w");
        let store = Arc::new(SqliteStore::open(&dir).unwrap());
        let w = LedgerWriter::spawn(&dir, store.clone(), store.clone()).unwrap();
        for i in 0..50 {
            w.append(row(&format!("r{i}"))).unwrap();
        }
        // Durable when append returns: another process's importer finds every row in
        // the journal's files, whatever this process's importer has done by now.
        let other_dir = tmp("other");
        let other = SqliteStore::open(&other_dir).unwrap();
        tollgate_store::journal::import_all(&dir, &other).unwrap();
        assert_eq!(count(&other), 50);
        // This process's own rows come from memory, once each.
        w.sync().unwrap();
        assert_eq!(count(&store), 50);
        w.append(row("r50")).unwrap();
        w.sync().unwrap();
        assert_eq!(count(&store), 51);
        std::fs::remove_dir_all(other_dir).ok();
    }
}
