//! The ledger writer: one dedicated thread that appends rows in batches (group commit).
//!
//! A request hands its row to the writer and, for a completed request, waits until the
//! batch holding it has committed *before* the last bytes of the answer go out. So a
//! request whose answer reached the client in full is in the ledger even if the gateway
//! is killed right after (SQLite in WAL mode: a committed transaction survives the death
//! of the process; `synchronous = NORMAL` trades durability against power loss, not
//! against `kill -9`, for throughput). Concurrent requests share one commit, so the cost
//! per request stays a fraction of one transaction.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;
use tollgate_store::{LedgerRow, LedgerStore};

/// Largest batch one transaction takes.
const MAX_BATCH: usize = 2_048;

struct Job {
    row: LedgerRow,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A handle to the writer thread. Cloning is cheap.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Job>,
}

impl LedgerWriter {
    /// Starts the writer thread over `store` (give it its own connection), and a
    /// maintenance thread calling `maintenance.maintain()` every second (SQLite: a
    /// passive checkpoint that backfills the WAL without blocking the writer, so the
    /// writer's own, bounded checkpoints have little left to do).
    pub fn spawn(
        store: Arc<dyn LedgerStore>,
        maintenance: Arc<dyn LedgerStore>,
    ) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || run(store, rx))
            .map_err(|e| format!("cannot start the ledger writer: {e}"))?;
        std::thread::Builder::new()
            .name("tollgate-ledger-maint".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if let Err(e) = maintenance.maintain() {
                    tracing::warn!(error = %e, "ledger maintenance failed");
                }
            })
            .map_err(|e| format!("cannot start the ledger maintenance: {e}"))?;
        Ok(LedgerWriter { tx })
    }

    /// Appends `row` and waits for its commit.
    pub async fn append(&self, row: LedgerRow) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                row,
                done: Some(done),
            })
            .map_err(|_| "the ledger writer has stopped".to_owned())?;
        wait.await
            .map_err(|_| "the ledger writer has stopped".to_owned())?
    }

    /// Appends `row` without waiting (for rows written from `Drop`, where nobody can
    /// wait: a request abandoned by its client).
    pub fn append_detached(&self, row: LedgerRow) {
        if self.tx.send(Job { row, done: None }).is_err() {
            tracing::error!("the ledger writer has stopped; a row was lost");
        }
    }
}

fn run(store: Arc<dyn LedgerStore>, rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let rows: Vec<LedgerRow> = batch.iter().map(|j| j.row.clone()).collect();
        match store.append(&rows) {
            Ok(()) => {
                for j in batch.drain(..) {
                    if let Some(d) = j.done {
                        let _ = d.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                // One bad row must not sink its neighbours: retry them one by one.
                tracing::error!(error = %e, rows = rows.len(), "ledger batch failed; retrying row by row");
                for j in batch.drain(..) {
                    let r = store
                        .append(std::slice::from_ref(&j.row))
                        .map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        tracing::error!(error = %e, request_id = %j.row.id, "ledger row could not be written");
                    }
                    if let Some(d) = j.done {
                        let _ = d.send(r);
                    }
                }
            }
        }
    }
}
