//! The ledger journal: where a request's row is made durable on the request path.
//!
//! Appending a row is one `write(2)` of one JSON line to a file opened with `O_APPEND`,
//! done by the request's own thread: no hand-off to another thread, no wait for a
//! database commit. Once the call returns, the row is in the kernel's page cache and
//! survives the death of the process (`kill -9`), exactly like a committed SQLite WAL
//! transaction with `synchronous = NORMAL` (neither survives a power cut without an
//! `fsync`). An [`Importer`], run every ~20 ms by a background thread and before every
//! read of the ledger, moves the journaled rows into the [`LedgerStore`] in large
//! transactions ([`LedgerStore::replay`]: rows whose id is already there are skipped, so
//! importing a line twice is harmless).
//!
//! # Files
//! `<data_dir>/journal/<ms>-<pid>-<n>.jsonl`, one *segment* per writer at a time. The
//! writing process holds an exclusive `flock` on its segment for as long as it may append
//! to it; a segment nobody holds a lock on is *sealed*: no line can be added to it. An
//! importer (in any process: the gateway, `tollgate usage`, `tollgate keys list`) imports
//! the complete lines of every segment and deletes a sealed segment once all of its lines
//! are in the store. A segment is created under a `.tmp` name, locked, then renamed, so an
//! importer never sees an unlocked fresh segment. The gateway rotates its segment when it
//! passes [`ROTATE_BYTES`]; segments left by a killed process are sealed (the kernel drops
//! the lock with the process) and imported at the next start or read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::{LedgerRow, LedgerStore, StoreError};

/// Size after which the gateway starts a new segment (the old one is imported and deleted).
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes read from a segment at a time.
const CHUNK: usize = 64 * 1024;
/// Rows handed to the store per transaction.
const BATCH: usize = 2048;

/// The journal directory of a data directory.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

struct Segment {
    file: File,
    path: PathBuf,
    len: AtomicU64,
}

static SEGMENT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Segment {
    /// Creates, locks, then publishes a new segment.
    fn create(dir: &Path) -> Result<Segment, StoreError> {
        let ms = chrono::Utc::now().timestamp_millis();
        let n = SEGMENT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{ms:013}-{}-{n}.jsonl", std::process::id());
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        file.try_lock()
            .map_err(|e| StoreError::Invalid(format!("cannot lock {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        Ok(Segment {
            file,
            path,
            len: AtomicU64::new(0),
        })
    }
}

/// A row as one JSON array, fields in [`LedgerRow`]'s declaration order: what a journal
/// line holds. Without field names a line is ~40% shorter and cheaper to write and to
/// read (serde's derived `Deserialize` for a struct takes the array in the same order;
/// lines written as JSON objects are read too).
struct Positional<'a>(&'a LedgerRow);

impl serde::Serialize for Positional<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let r = self.0;
        let mut t = s.serialize_tuple(27)?;
        t.serialize_element(&r.id)?;
        t.serialize_element(&r.ts_ms)?;
        t.serialize_element(&r.key_id)?;
        t.serialize_element(&r.key_name)?;
        t.serialize_element(&r.group)?;
        t.serialize_element(&r.requested_model)?;
        t.serialize_element(&r.provider)?;
        t.serialize_element(&r.model)?;
        t.serialize_element(&r.price_id)?;
        t.serialize_element(&r.prompt_tokens)?;
        t.serialize_element(&r.completion_tokens)?;
        t.serialize_element(&r.cached_tokens)?;
        t.serialize_element(&r.cache_write_tokens)?;
        t.serialize_element(&r.reasoning_tokens)?;
        t.serialize_element(&r.usage_source)?;
        t.serialize_element(&r.cost_nanos)?;
        t.serialize_element(&r.cost_currency)?;
        t.serialize_element(&r.report_cost_nanos)?;
        t.serialize_element(&r.report_currency)?;
        t.serialize_element(&r.fx_rate)?;
        t.serialize_element(&r.fx_month)?;
        t.serialize_element(&r.latency_ms)?;
        t.serialize_element(&r.ttft_ms)?;
        t.serialize_element(&r.status)?;
        t.serialize_element(&r.http_status)?;
        t.serialize_element(&r.stream)?;
        t.serialize_element(&r.attempts)?;
        t.end()
    }
}

/// The writing side: appends rows to this process's segment.
pub struct Journal {
    dir: PathBuf,
    active: RwLock<Segment>,
}

impl Journal {
    /// Opens a new segment in `<data_dir>/journal` (creating the directory).
    pub fn open(data_dir: &Path) -> Result<Journal, StoreError> {
        let dir = journal_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let seg = Segment::create(&dir)?;
        Ok(Journal {
            dir,
            active: RwLock::new(seg),
        })
    }

    /// Appends one row: one `write(2)` of one line. When this returns `Ok`, the row
    /// survives the death of the process.
    pub fn append(&self, row: &LedgerRow) -> Result<(), StoreError> {
        let mut line = Vec::with_capacity(512);
        serde_json::to_writer(&mut line, &Positional(row))
            .map_err(|e| StoreError::Invalid(format!("cannot encode a ledger row: {e}")))?;
        line.push(b'\n');
        let seg = self.active.read().map_err(|_| StoreError::Poisoned)?;
        // O_APPEND: concurrent appends from several threads never interleave.
        (&seg.file)
            .write_all(&line)
            .map_err(|e| io_err(&seg.path, e))?;
        seg.len.fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new segment when the current one holds more than `limit` bytes. The old
    /// one is closed (its lock released: it is sealed) and left for the importer.
    pub fn rotate_if_larger(&self, limit: u64) -> Result<bool, StoreError> {
        {
            let seg = self.active.read().map_err(|_| StoreError::Poisoned)?;
            if seg.len.load(Ordering::Relaxed) <= limit {
                return Ok(false);
            }
        }
        let new = Segment::create(&self.dir)?;
        let mut seg = self.active.write().map_err(|_| StoreError::Poisoned)?;
        // The old segment is dropped here: its file closes and its lock goes with it.
        *seg = new;
        Ok(true)
    }
}

/// What one import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Lines read and handed to the store (including ones it already had).
    pub rows: usize,
    /// Sealed segments deleted after their rows were in the store.
    pub segments_removed: usize,
    /// Lines that were not a ledger row (logged, skipped, kept out of the store).
    pub bad_lines: usize,
}

/// The reading side: moves journaled rows into a [`LedgerStore`]. It remembers how far
/// it has read each segment, so an importer that runs often reads only new lines.
pub struct Importer {
    dir: PathBuf,
    read_to: HashMap<PathBuf, u64>,
}

impl Importer {
    pub fn new(data_dir: &Path) -> Importer {
        Importer {
            dir: journal_dir(data_dir),
            read_to: HashMap::new(),
        }
    }

    /// Imports every complete line not imported yet, and deletes sealed segments once
    /// their rows are in `store`.
    pub fn run(&mut self, store: &dyn LedgerStore) -> Result<Imported, StoreError> {
        let mut done = Imported::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
            Err(e) => return Err(io_err(&self.dir, e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        paths.sort();
        self.read_to.retain(|p, _| paths.contains(p));
        for path in paths {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                // Deleted by another importer since the listing: its rows are in.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, e)),
            };
            // Locked first, read after: if nobody holds the lock now, nobody can add a
            // line to this segment any more, so reading to its end reads all of it.
            let sealed = file.try_lock().is_ok();
            let start = self.read_to.get(&path).copied().unwrap_or(0);
            let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
            if len <= start && !sealed {
                continue; // nothing new in a live segment
            }
            file.seek(SeekFrom::Start(start))
                .map_err(|e| io_err(&path, e))?;
            // Read in bounded chunks and hand the store bounded batches: the importer's
            // memory stays small however far behind it is (one large transient buffer
            // per tick made the allocator keep growing the heap).
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut chunk = vec![0u8; CHUNK];
            let mut rows = Vec::with_capacity(BATCH);
            let mut consumed: u64 = 0;
            loop {
                let n = file.read(&mut chunk).map_err(|e| io_err(&path, e))?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&chunk[..n]);
                let Some(last_nl) = pending.iter().rposition(|&b| b == b'\n') else {
                    continue;
                };
                for line in pending[..last_nl].split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    match parse_line(line) {
                        Ok(r) => rows.push(r),
                        Err(e) => {
                            done.bad_lines += 1;
                            tracing::error!(segment = %path.display(), error = %e, "a journal line is not a ledger row; skipped");
                        }
                    }
                    if rows.len() >= BATCH {
                        store.replay(&rows)?;
                        done.rows += rows.len();
                        rows.clear();
                    }
                }
                consumed += last_nl as u64 + 1;
                pending.drain(..=last_nl);
            }
            if !rows.is_empty() {
                store.replay(&rows)?;
                done.rows += rows.len();
            }
            self.read_to.insert(path.clone(), start + consumed);
            if sealed {
                if !pending.is_empty() {
                    done.bad_lines += 1;
                    tracing::error!(segment = %path.display(), bytes = pending.len(),
                        "a journal segment ends in a partial line (a write cut short); skipped");
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => done.segments_removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path, e)),
                }
                self.read_to.remove(&path);
            }
        }
        Ok(done)
    }
}

/// Reads one journal line (without its `\n`) as a row.
fn parse_line(line: &[u8]) -> Result<LedgerRow, serde_json::Error> {
    serde_json::from_slice::<LedgerRow>(line)
}

/// Imports whatever the journal of `data_dir` holds into `store`: for a process that
/// reads the ledger (reports) and did not write it.
pub fn import_all(data_dir: &Path, store: &dyn LedgerStore) -> Result<Imported, StoreError> {
    Importer::new(data_dir).run(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LedgerFilter, SqliteStore};

    fn tmp() -> PathBuf {
        crate::testing::tmp_dir("journal")
    }

    fn row(id: &str, cost: i64) -> LedgerRow {
        crate::testing::row(id, 1_000, cost)
    }

    fn ids(s: &SqliteStore) -> Vec<String> {
        s.rows(&LedgerFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(journal_dir(dir)).unwrap().count()
    }

    #[test]
    fn rows_reach_the_store_once_and_the_active_segment_stays() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let j = Journal::open(&dir).unwrap();
        j.append(&row("a", 5)).unwrap();
        j.append(&row("b", 7)).unwrap();
        let mut imp = Importer::new(&dir);
        let got = imp.run(&s).unwrap();
        assert_eq!((got.rows, got.segments_removed, got.bad_lines), (2, 0, 0));
        assert_eq!(ids(&s), ["a", "b"]);
        // Only new lines are read the next time; the live segment is never deleted.
        j.append(&row("c", 1)).unwrap();
        assert_eq!(imp.run(&s).unwrap().rows, 1);
        assert_eq!(segments(&dir), 1);
        // Another importer (another process: a report) reads everything again: harmless.
        assert_eq!(import_all(&dir, &s).unwrap().rows, 3);
        assert_eq!(ids(&s), ["a", "b", "c"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn sealed_segments_are_imported_then_deleted() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let j = Journal::open(&dir).unwrap();
        j.append(&row("a", 5)).unwrap();
        assert!(!j.rotate_if_larger(1 << 20).unwrap());
        assert!(j.rotate_if_larger(10).unwrap());
        j.append(&row("b", 7)).unwrap();
        assert_eq!(segments(&dir), 2);
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.segments_removed), (2, 1));
        assert_eq!(segments(&dir), 1);
        // A process that dies leaves its segment unlocked: the next import takes it whole.
        drop(j);
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.segments_removed), (1, 1));
        assert_eq!(segments(&dir), 0);
        assert_eq!(ids(&s), ["a", "b"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_line_holds_every_field_in_order() {
        let r = LedgerRow {
            id: "req_1".into(),
            ts_ms: 1,
            key_id: "k".into(),
            key_name: "name \"quoted\"".into(),
            group: Some("g".into()),
            requested_model: "rm".into(),
            provider: "p".into(),
            model: "m".into(),
            price_id: Some("p/m@2025-01-01".into()),
            prompt_tokens: 2,
            completion_tokens: 3,
            cached_tokens: 4,
            cache_write_tokens: 5,
            reasoning_tokens: 6,
            usage_source: "vendor".into(),
            cost_nanos: 7,
            cost_currency: "CNY".into(),
            report_cost_nanos: 8,
            report_currency: "USD".into(),
            fx_rate: Some("USD/CNY 7.1".into()),
            fx_month: Some("2026-11".into()),
            latency_ms: 9,
            ttft_ms: Some(10),
            status: "ok".into(),
            http_status: 200,
            stream: true,
            attempts: "[{\"a\":1}]".into(),
        };
        let line = serde_json::to_vec(&Positional(&r)).unwrap();
        assert_eq!(line[0], b'[');
        assert_eq!(serde_json::from_slice::<LedgerRow>(&line).unwrap(), r);
        // A line written as an object (an earlier build) still reads.
        let obj = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<LedgerRow>(&obj).unwrap(), r);
    }

    #[test]
    fn partial_and_bad_lines_are_skipped_not_fatal() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let jd = journal_dir(&dir);
        std::fs::create_dir_all(&jd).unwrap();
        let mut good = serde_json::to_vec(&row("a", 5)).unwrap();
        good.extend_from_slice(b"\nnot json\n{\"id\":\"cut");
        std::fs::write(jd.join("0000000000001-1-0.jsonl"), &good).unwrap();
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.segments_removed, got.bad_lines), (1, 1, 2));
        assert_eq!(ids(&s), ["a"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let j = std::sync::Arc::new(Journal::open(&dir).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        let mut r = row(&format!("t{t}-{i}"), 1);
                        r.attempts = "x".repeat(i * 7);
                        j.append(&r).unwrap();
                        if i == 100 {
                            j.rotate_if_larger(4096).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.bad_lines), (1000, 0));
        assert_eq!(ids(&s).len(), 1000);
        std::fs::remove_dir_all(dir).ok();
    }
}

/// What the importer costs per row, split into parsing and the store's insert: not a
/// test of behaviour but a repeatable measurement, run under callgrind (instruction counts
/// do not depend on the machine's load):
///
/// ```text
/// cargo test --release -p tollgate-store --no-run
/// valgrind --tool=callgrind --callgrind-out-file=cg.out \
///     target/release/deps/tollgate_store-<hash> --ignored --exact --test-threads=1 \
///     journal::cost::import_cost
/// callgrind_annotate --inclusive=yes cg.out | grep -E 'cost_(parse|insert)'
/// ```
///
/// Divide the inclusive counts of `cost_parse` and `cost_insert` by [`cost::N`].
#[cfg(test)]
mod cost {
    use super::*;
    use crate::SqliteStore;

    /// Rows written then imported.
    pub const N: usize = 20_000;

    /// A row as the gateway writes it (ids from `next_request_id` in the server: ms,
    /// pid and a sequence number in fixed-width hex; `attempts` as `attempts_json` makes it).
    fn realistic(i: usize) -> LedgerRow {
        let ms = 1_732_850_000_000 + (i as i64) / 4;
        LedgerRow {
            id: format!("req_{ms:012x}{:04x}{i:08x}", 12345 & 0xffff),
            ts_ms: ms,
            key_id: format!(
                "key_{:012x}a1b2c3d4e5f6",
                1_732_000_000_000i64 + (i % 8) as i64
            ),
            key_name: format!("bench-{}", i % 8),
            group: Some("bench".into()),
            requested_model: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            price_id: Some("openai/gpt-4o-mini@2024-07-18".into()),
            prompt_tokens: 1200 + (i % 300) as i64,
            completion_tokens: 300 + (i % 97) as i64,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            usage_source: "vendor".into(),
            cost_nanos: 360_000 + i as i64,
            cost_currency: "USD".into(),
            report_cost_nanos: 360_000 + i as i64,
            report_currency: "USD".into(),
            fx_rate: None,
            fx_month: None,
            latency_ms: 850 + (i % 400) as i64,
            ttft_ms: Some(240 + (i % 50) as i64),
            status: "ok".into(),
            http_status: 200,
            stream: false,
            attempts: format!(
                r#"[{{"provider":"openai","model":"gpt-4o-mini","outcome":"ok","http_status":200,"latency_ms":{}}}]"#,
                850 + i % 400
            ),
        }
    }

    #[inline(never)]
    fn cost_parse(text: &[u8]) -> Vec<LedgerRow> {
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_line(l).unwrap())
            .collect()
    }

    #[inline(never)]
    fn cost_insert(store: &SqliteStore, rows: &[LedgerRow]) {
        for batch in rows.chunks(BATCH) {
            store.replay(batch).unwrap();
        }
    }

    #[test]
    #[ignore = "a measurement: run under callgrind, see the module's doc"]
    fn import_cost() {
        let dir = crate::testing::tmp_dir("import-cost");
        let rows: Vec<LedgerRow> = (0..N).map(realistic).collect();
        let j = Journal::open(&dir).unwrap();
        for r in &rows {
            j.append(r).unwrap();
        }
        drop(j);
        let seg = std::fs::read_dir(journal_dir(&dir))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let text = std::fs::read(seg.path()).unwrap();
        let parsed = cost_parse(&text);
        assert!(parsed == rows);
        let store = SqliteStore::open(&dir).unwrap();
        cost_insert(&store, &parsed);
        assert_eq!(
            store.rows(&crate::LedgerFilter::default()).unwrap().len(),
            N
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
