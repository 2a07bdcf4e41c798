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
/// Rows handed to the store per transaction (also by the gateway's in-memory hand-off).
pub const BATCH: usize = 2048;

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
    /// Rows written here whose [`Written`] claim is still alive (not in the store yet).
    unimported: AtomicU64,
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
            unimported: AtomicU64::new(0),
        })
    }
}

/// A claim on a row this process appended and will put in the store itself (its own
/// importer takes rows from memory, not from the file). Drop it once the row is in the
/// store: a rotated segment is deleted when no claim on it is left
/// ([`Journal::reap`]). If the process dies first, the file is still there and the next
/// importer reads the row from it.
pub struct Written(std::sync::Arc<Segment>);

impl Drop for Written {
    fn drop(&mut self) {
        self.0.unimported.fetch_sub(1, Ordering::AcqRel);
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
    active: RwLock<std::sync::Arc<Segment>>,
    /// Rotated segments whose rows are not all in the store yet (see [`Written`]).
    retired: std::sync::Mutex<Vec<std::sync::Arc<Segment>>>,
}

impl Journal {
    /// Opens a new segment in `<data_dir>/journal` (creating the directory).
    pub fn open(data_dir: &Path) -> Result<Journal, StoreError> {
        let dir = journal_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let seg = Segment::create(&dir)?;
        Ok(Journal {
            dir,
            active: RwLock::new(std::sync::Arc::new(seg)),
            retired: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Appends one row: one `write(2)` of one line. When this returns `Ok`, the row
    /// survives the death of the process.
    pub fn append(&self, row: &LedgerRow) -> Result<(), StoreError> {
        self.write(row).map(|_| ())
    }

    /// Appends one row like [`Journal::append`], for a process that also hands the row
    /// to its own importer in memory: the claim keeps the segment until the row is in
    /// the store, and that importer skips this process's segments ([`Journal::own`]).
    pub fn append_claimed(&self, row: &LedgerRow) -> Result<Written, StoreError> {
        self.write(row)
    }

    fn write(&self, row: &LedgerRow) -> Result<Written, StoreError> {
        let mut line = Vec::with_capacity(512);
        serde_json::to_writer(&mut line, &Positional(row))
            .map_err(|e| StoreError::Invalid(format!("cannot encode a ledger row: {e}")))?;
        line.push(b'\n');
        let seg = self.active.read().map_err(|_| StoreError::Poisoned)?;
        // Claimed before the write, under the read lock: a rotation (write lock) cannot
        // retire the segment in between, so `reap` never deletes a file holding a row
        // that is not in the store yet.
        seg.unimported.fetch_add(1, Ordering::AcqRel);
        let claim = Written(seg.clone());
        // O_APPEND: concurrent appends from several threads never interleave.
        (&seg.file)
            .write_all(&line)
            .map_err(|e| io_err(&seg.path, e))?;
        seg.len.fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(claim)
    }

    /// Starts a new segment when the current one holds more than `limit` bytes. The old
    /// one is sealed (closed, its lock released when its last claim goes) and left for
    /// the importer.
    pub fn rotate_if_larger(&self, limit: u64) -> Result<bool, StoreError> {
        {
            let seg = self.active.read().map_err(|_| StoreError::Poisoned)?;
            if seg.len.load(Ordering::Relaxed) <= limit {
                return Ok(false);
            }
        }
        let new = std::sync::Arc::new(Segment::create(&self.dir)?);
        let old = {
            let mut seg = self.active.write().map_err(|_| StoreError::Poisoned)?;
            std::mem::replace(&mut *seg, new)
        };
        // A segment with rows still claimed stays open (and locked) until they are in
        // the store; one without is sealed now, for whichever importer comes next.
        if old.unimported.load(Ordering::Acquire) > 0 {
            self.retired
                .lock()
                .map_err(|_| StoreError::Poisoned)?
                .push(old);
        }
        Ok(true)
    }

    /// This process's segments: the active one and rotated ones with rows still claimed.
    /// Its own importer skips them (it has their rows in memory).
    pub fn own(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = vec![self
            .active
            .read()
            .map_err(|_| StoreError::Poisoned)?
            .path
            .clone()];
        let retired = self.retired.lock().map_err(|_| StoreError::Poisoned)?;
        out.extend(retired.iter().map(|s| s.path.clone()));
        Ok(out)
    }

    /// Deletes rotated segments with no claim left: all their rows are in the store.
    pub fn reap(&self) -> Result<usize, StoreError> {
        let mut retired = self.retired.lock().map_err(|_| StoreError::Poisoned)?;
        let mut removed = 0;
        let mut err = None;
        retired.retain(|seg| {
            if seg.unimported.load(Ordering::Acquire) > 0 {
                return true;
            }
            match std::fs::remove_file(&seg.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    err = Some(io_err(&seg.path, e));
                    return true;
                }
            }
            false
        });
        match err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
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
        self.run_skipping(store, &[])
    }

    /// [`Importer::run`], leaving out the segments in `skip` (the calling process's own:
    /// their rows come to its importer in memory, see [`Written`]).
    pub fn run_skipping(
        &mut self,
        store: &dyn LedgerStore,
        skip: &[PathBuf],
    ) -> Result<Imported, StoreError> {
        let mut done = Imported::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
            Err(e) => return Err(io_err(&self.dir, e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && !skip.contains(p))
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

/// Reads one journal line (without its `\n`) as a row: the positional form by hand
/// ([`positional`]), anything else (a line written as an object by an earlier build, a
/// line that is not a row) by `serde_json`, which also says what is wrong with a bad line.
fn parse_line(line: &[u8]) -> Result<LedgerRow, serde_json::Error> {
    match positional(line) {
        Some(row) => Ok(row),
        None => serde_json::from_slice::<LedgerRow>(line),
    }
}

/// A line in the form [`Positional`] writes, read without serde: ~10,900 instructions
/// for a typical row against ~14,800 for `serde_json::from_slice` (the importer reads
/// every row the gateway serves; most of what is left is allocating the row's eleven or
/// so strings). It is strict: it returns a row only where `serde_json` would return
/// the same row, and `None` for anything else (another layout, a number that is not a
/// plain integer, an escape it does not know, a lone surrogate, a control character in
/// a string, trailing bytes), which then goes to `serde_json`.
fn positional(line: &[u8]) -> Option<LedgerRow> {
    // Validated once for the whole line; every string is then a slice of it, cut next to
    // a `"` (an ASCII byte, so always on a character boundary).
    let text = std::str::from_utf8(line).ok()?;
    let mut c = Cursor {
        s: text,
        b: line,
        i: 0,
    };
    c.eat(b'[')?;
    let row = LedgerRow {
        id: c.string()?,
        ts_ms: c.next()?.int()?,
        key_id: c.next()?.string()?,
        key_name: c.next()?.string()?,
        group: c.next()?.opt_string()?,
        requested_model: c.next()?.string()?,
        provider: c.next()?.string()?,
        model: c.next()?.string()?,
        price_id: c.next()?.opt_string()?,
        prompt_tokens: c.next()?.int()?,
        completion_tokens: c.next()?.int()?,
        cached_tokens: c.next()?.int()?,
        cache_write_tokens: c.next()?.int()?,
        reasoning_tokens: c.next()?.int()?,
        usage_source: c.next()?.string()?,
        cost_nanos: c.next()?.int()?,
        cost_currency: c.next()?.string()?,
        report_cost_nanos: c.next()?.int()?,
        report_currency: c.next()?.string()?,
        fx_rate: c.next()?.opt_string()?,
        fx_month: c.next()?.opt_string()?,
        latency_ms: c.next()?.int()?,
        ttft_ms: c.next()?.opt_int()?,
        status: c.next()?.string()?,
        http_status: c.next()?.int()?,
        stream: c.next()?.bool()?,
        attempts: c.next()?.string()?,
    };
    c.eat(b']')?;
    c.ws();
    (c.i == line.len()).then_some(row)
}

/// A position in a line being read by [`positional`]. Every method returns `None` on
/// anything it does not expect, and never indexes past the end.
struct Cursor<'a> {
    /// The line, and the same line as bytes.
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace and then `byte`.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        if self.b.get(self.i) == Some(&byte) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// The `,` before the next element.
    fn next(&mut self) -> Option<&mut Self> {
        self.eat(b',')?;
        Some(self)
    }

    /// Skips whitespace and then the literal `word`, if it is there.
    fn word(&mut self, word: &[u8]) -> bool {
        self.ws();
        let found = self
            .b
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(word));
        if found {
            self.i += word.len();
        }
        found
    }

    fn bool(&mut self) -> Option<bool> {
        if self.word(b"true") {
            Some(true)
        } else if self.word(b"false") {
            Some(false)
        } else {
            None
        }
    }

    /// A plain JSON integer (`-?(0|[1-9][0-9]*)`, not `-0`) that fits an `i64`. A fraction or an
    /// exponent is left to `serde_json` (which refuses it for an integer field).
    fn int(&mut self) -> Option<i64> {
        self.ws();
        let neg = self.b.get(self.i) == Some(&b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(&d) = self.b.get(self.i) {
            if !d.is_ascii_digit() {
                break;
            }
            let d = i64::from(d - b'0');
            v = v.checked_mul(10)?;
            v = if neg {
                v.checked_sub(d)?
            } else {
                v.checked_add(d)?
            };
            self.i += 1;
        }
        let digits = self.i - start;
        // `-0` too: `serde_json` reads it as the float -0.0, which an integer field refuses.
        if digits == 0 || (digits > 1 && self.b.get(start) == Some(&b'0')) || (neg && v == 0) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        Some(v)
    }

    fn opt_int(&mut self) -> Option<Option<i64>> {
        if self.word(b"null") {
            Some(None)
        } else {
            self.int().map(Some)
        }
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        if self.word(b"null") {
            Some(None)
        } else {
            self.string().map(Some)
        }
    }

    /// A JSON string. Most have no escape: one scan and one copy. Escapes are decoded as
    /// JSON defines them (`\uXXXX` with surrogate pairs); a lone surrogate is left to
    /// `serde_json` (which refuses it), as is a raw control character.
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let s = self.s.get(start..self.i)?;
                    self.i += 1;
                    return Some(s.to_owned());
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        // The decoded string is no longer than what is left of the line.
        let mut out = String::with_capacity((self.i - start + 128).min(self.b.len() - start));
        out.push_str(self.s.get(start..self.i)?);
        let mut run = self.i; // start of the bytes not yet copied to `out`
        loop {
            let byte = *self.b.get(self.i)?;
            match byte {
                b'"' => {
                    out.push_str(self.s.get(run..self.i)?);
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(self.s.get(run..self.i)?);
                    self.i += 1;
                    let esc = *self.b.get(self.i)?;
                    self.i += 1;
                    out.push(match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    });
                    run = self.i;
                }
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    /// The character of a `\uXXXX` escape (its `\u` already read), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) {
            if self.b.get(self.i..self.i + 2)? != b"\\u" {
                return None;
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return None;
            }
            char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
        } else {
            // A lone low surrogate is no `char`: `None`.
            char::from_u32(hi)
        }
    }

    /// Four hex digits.
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }
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
    fn claimed_rows_keep_a_rotated_segment_until_they_are_in_the_store() {
        let dir = tmp();
        let j = Journal::open(&dir).unwrap();
        let a = j.append_claimed(&row("a", 5)).unwrap();
        assert!(j.rotate_if_larger(10).unwrap());
        let b = j.append_claimed(&row("b", 7)).unwrap();
        // Both segments are this process's: its own importer skips them.
        let own = j.own().unwrap();
        assert_eq!(own.len(), 2);
        assert_eq!(segments(&dir), 2);
        // The rotated one is still locked: another process's importer reads its lines
        // but does not delete it.
        let other = SqliteStore::open(&dir).unwrap();
        let got = import_all(&dir, &other).unwrap();
        assert_eq!((got.rows, got.segments_removed), (2, 0));
        assert_eq!(j.reap().unwrap(), 0, "a claim is alive");
        drop(a); // "a" is in the store
        assert_eq!(j.reap().unwrap(), 1);
        assert_eq!(segments(&dir), 1);
        assert_eq!(j.own().unwrap().len(), 1);
        // A process that ends before its importer took "b" leaves the line in its
        // (now unlocked) segment for the next importer.
        drop(j);
        drop(b);
        let fresh_dir = tmp();
        let fresh = SqliteStore::open(&fresh_dir).unwrap();
        let got = import_all(&dir, &fresh).unwrap();
        assert_eq!((got.rows, got.segments_removed), (1, 1));
        assert_eq!(ids(&fresh), ["b"]);
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(fresh_dir).ok();
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

    /// `parse_line` must say exactly what `serde_json` says: the same row, or an error.
    fn same_as_serde(line: &[u8]) {
        let ours = parse_line(line).ok();
        let serde = serde_json::from_slice::<LedgerRow>(line).ok();
        assert_eq!(ours, serde, "{}", String::from_utf8_lossy(line));
    }

    /// A row whose strings need every kind of escape, and fields at their limits.
    fn awkward() -> LedgerRow {
        LedgerRow {
            id: "req_\"1\"\\/".into(),
            ts_ms: i64::MIN,
            key_id: "k\u{8}\u{c}\n\r\t\u{1}\u{1f}".into(),
            key_name: "é 😀 名前 \u{7f}".into(),
            group: None,
            requested_model: String::new(),
            provider: "p".into(),
            model: "m".into(),
            price_id: None,
            prompt_tokens: i64::MAX,
            completion_tokens: -1,
            cached_tokens: 0,
            usage_source: "vendor".into(),
            cost_currency: "USD".into(),
            report_currency: "USD".into(),
            fx_rate: Some("USD/CNY 7.1".into()),
            fx_month: None,
            ttft_ms: None,
            status: "ok".into(),
            http_status: 200,
            attempts: r#"[{"provider":"p","note":"a \"quoted\" \\ word"}]"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lines_read_by_hand_are_the_rows_serde_reads() {
        let r = awkward();
        let line = serde_json::to_vec(&Positional(&r)).unwrap();
        assert_eq!(positional(&line), Some(r.clone()));
        assert_eq!(parse_line(&line).unwrap(), r);
        let plain = row("a", 5);
        let line = serde_json::to_vec(&Positional(&plain)).unwrap();
        assert_eq!(positional(&line), Some(plain.clone()));
        // Escapes serde_json does not write but JSON allows, and whitespace.
        let hand = br#" [ "\u0072eq\/1" , 1 , "k\ud83d\ude00" , "n\u00e9" , null , "m" , "p" , "m" , null ,
            0 , 0 , 0 , 0 , 0 , "vendor" , -7 , "CNY" , 0 , "CNY" , null , null , 3 , 4 , "ok" , 200 ,
            false , "[]" ] "#;
        let hand: Vec<u8> = hand.iter().copied().filter(|&b| b != b'\n').collect();
        let got = positional(&hand).unwrap();
        assert_eq!((got.id.as_str(), got.key_id.as_str()), ("req/1", "k😀"));
        assert_eq!((got.key_name.as_str(), got.ttft_ms), ("né", Some(4)));
        same_as_serde(&hand);
    }

    #[test]
    fn lines_the_hand_reader_declines_go_to_serde() {
        let r = awkward();
        // The object form of earlier builds.
        let obj = serde_json::to_vec(&r).unwrap();
        assert_eq!(positional(&obj), None);
        assert_eq!(parse_line(&obj).unwrap(), r);
        let good =
            String::from_utf8(serde_json::to_vec(&Positional(&row("a", 5))).unwrap()).unwrap();
        let bad = [
            good.replacen("\"a\"", r#""\ud800""#, 1), // lone surrogate
            good.replacen("\"a\"", r#""\udc00""#, 1),
            good.replacen("\"a\"", r#""\ud800\u0041""#, 1),
            good.replacen("\"a\"", r#""\x""#, 1), // unknown escape
            good.replacen("\"a\"", r#""\u12""#, 1),
            good.replacen("\"a\"", "\"a\tb\"", 1), // raw control character
            good.replacen(",1000,", ",01000,", 1), // leading zero
            good.replacen(",1000,", ",1000.0,", 1), // not an integer
            good.replacen(",1000,", ",1e3,", 1),
            good.replacen(",1000,", ",9223372036854775808,", 1), // past i64
            good.replacen(",1000,", ",-,", 1),
            good.replacen(",1000,", ",-0,", 1), // a float to serde_json
            good.replacen(",1000,", ",null,", 1), // null where a value must be
            good.replacen("false", "0", 1),
            format!("{},1]", &good[..good.len() - 1]), // one element too many
            format!("{good}x"),
            good.replacen("\"[]\"]", "]", 1), // one element short
            good[..good.len() - 1].to_owned(),
            String::new(),
            "[]".into(),
            "null".into(),
        ];
        for line in &bad {
            assert_eq!(positional(line.as_bytes()), None, "{line}");
            same_as_serde(line.as_bytes());
        }
        assert!(parse_line(b"[\"\xff\"]").is_err());
        // Whatever a line is cut to or one byte of it becomes, the answer is serde's.
        let line = serde_json::to_vec(&Positional(&r)).unwrap();
        for n in 0..line.len() {
            same_as_serde(&line[..n]);
            for b in [
                b'"', b'\\', b',', b']', b'0', b'n', b'u', b'-', b'.', 0x1f, 0xff,
            ] {
                let mut l = line.clone();
                l[n] = b;
                same_as_serde(&l);
            }
        }
    }

    #[test]
    fn escaped_unicode_and_null_rows_survive_the_journal() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let j = Journal::open(&dir).unwrap();
        let mut r = awkward();
        r.ts_ms = 1;
        j.append(&r).unwrap();
        drop(j);
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.bad_lines), (1, 0));
        assert_eq!(s.rows(&LedgerFilter::default()).unwrap(), vec![r]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn partial_and_bad_lines_are_skipped_not_fatal() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let jd = journal_dir(&dir);
        std::fs::create_dir_all(&jd).unwrap();
        let mut good = serde_json::to_vec(&row("a", 5)).unwrap();
        good.extend_from_slice(b"\nnot json\n");
        // A positional line with a lone surrogate, one with a field missing.
        let mut lone = serde_json::to_vec(&Positional(&row("b", 1))).unwrap();
        lone.splice(1..4, *br#""\ud800""#);
        good.extend_from_slice(&lone);
        good.extend_from_slice(b"\n[\"c\",1]\n{\"id\":\"cut");
        std::fs::write(jd.join("0000000000001-1-0.jsonl"), &good).unwrap();
        let got = import_all(&dir, &s).unwrap();
        assert_eq!((got.rows, got.segments_removed, got.bad_lines), (1, 1, 4));
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
