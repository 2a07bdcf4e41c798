//! The SQLite store: one file, `tollgate.db`, in the data directory, in WAL mode so
//! readers never wait for the writer and a committed write survives `kill -9`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::keys::{generate_key, hash_key, new_id, KeyRecord, KeyStore, NewKey};
use crate::ledger::{LedgerFilter, LedgerRow, LedgerStore};
use crate::StoreError;

/// JSON text for a column.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    models      TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX keys_name ON keys(name);
"#,
    r#"
ALTER TABLE keys ADD COLUMN group_name TEXT;
ALTER TABLE keys ADD COLUMN budget TEXT;
ALTER TABLE keys ADD COLUMN rpm INTEGER;
ALTER TABLE keys ADD COLUMN tpm INTEGER;
CREATE TABLE ledger (
    id                 TEXT PRIMARY KEY,
    ts_ms              INTEGER NOT NULL,
    key_id             TEXT NOT NULL,
    key_name           TEXT NOT NULL,
    group_name         TEXT,
    requested_model    TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    price_id           TEXT,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    usage_source       TEXT NOT NULL,
    cost_nanos         INTEGER NOT NULL,
    cost_currency      TEXT NOT NULL,
    report_cost_nanos  INTEGER NOT NULL,
    report_currency    TEXT NOT NULL,
    fx_rate            TEXT,
    fx_month           TEXT,
    latency_ms         INTEGER NOT NULL,
    ttft_ms            INTEGER,
    status             TEXT NOT NULL,
    http_status        INTEGER NOT NULL,
    stream             INTEGER NOT NULL,
    attempts           TEXT NOT NULL
);
CREATE INDEX ledger_ts ON ledger(ts_ms);
CREATE INDEX ledger_key_ts ON ledger(key_id, ts_ms);
CREATE INDEX ledger_group_ts ON ledger(group_name, ts_ms);
CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_append_only_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"#,
    // Most rows have no group: index only those that do (one B-tree write less per row).
    r#"
DROP INDEX ledger_group_ts;
CREATE INDEX ledger_group_ts ON ledger(group_name, ts_ms) WHERE group_name IS NOT NULL;
"#,
    // No statement the code runs can use these two: `spend_since` filters with
    // `(?2 IS NULL OR key_id = ?2)`, which SQLite serves from `ledger_ts` (EXPLAIN QUERY
    // PLAN: `SEARCH ledger USING INDEX ledger_ts (ts_ms>?)`), and `rows` does the same.
    // Each was a B-tree insert per imported row for nothing: ~5,300 instructions of the
    // ~31,700 a row cost (dropping both: ~21,100). A query that needs a per-key or
    // per-group index adds it back in a new migration.
    r#"
DROP INDEX ledger_key_ts;
DROP INDEX ledger_group_ts;
"#,
];

/// SQLite-backed store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) `tollgate.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("tollgate.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens a connection for the ledger writer. It keeps SQLite's automatic checkpoint
    /// (the only way the WAL stays bounded under continuous writes: a checkpoint from
    /// another connection never catches up with a writer that never pauses), while
    /// [`LedgerStore::maintain`] on another connection backfills the WAL in the
    /// background, so the writer's own checkpoints find little left to copy.
    pub fn open_for_writes(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self::open(data_dir)?;
        store.with(|c| {
            // Truncate the WAL file back to 64 MiB after a checkpoint resets it.
            c.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = conn.transaction()?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&conn)
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let models: String = r.get("models")?;
    Ok(KeyRecord {
        id: r.get("id")?,
        name: r.get("name")?,
        prefix: r.get("prefix")?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        created_at: r.get("created_at")?,
        revoked_at: r.get("revoked_at")?,
        group: r.get("group_name")?,
        budget: r
            .get::<_, Option<String>>("budget")?
            .and_then(|b| serde_json::from_str(&b).ok()),
        rpm: r.get("rpm")?,
        tpm: r.get("tpm")?,
    })
}

impl KeyStore for SqliteStore {
    fn create_key(&self, new: &NewKey) -> Result<(KeyRecord, String), StoreError> {
        let name = new.name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("a key needs a non-empty name".into()));
        }
        let key = generate_key()?;
        let now = now_secs();
        let rec = KeyRecord {
            id: new_id("key", chrono::Utc::now().timestamp_millis())?,
            name: name.to_owned(),
            prefix: key[..8].to_owned(),
            models: new.models.clone(),
            created_at: now,
            revoked_at: None,
            group: new.group.clone().filter(|g| !g.trim().is_empty()),
            budget: new.budget.clone(),
            rpm: new.rpm,
            tpm: new.tpm,
        };
        let models = to_json(&rec.models)?;
        let budget = rec.budget.as_ref().map(to_json).transpose()?;
        self.with(|c| {
            c.execute(
                "INSERT INTO keys (id, name, hash, prefix, models, created_at, group_name, budget, rpm, tpm) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    rec.id,
                    rec.name,
                    hash_key(&key),
                    rec.prefix,
                    models,
                    rec.created_at,
                    rec.group,
                    budget,
                    rec.rpm,
                    rec.tpm
                ],
            )?;
            Ok(())
        })?;
        Ok((rec, key))
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT * FROM keys ORDER BY created_at DESC, id DESC")?;
            let rows = st.query_map([], row_to_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_key(&self, which: &str) -> Result<KeyRecord, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT * FROM keys WHERE id = ?1 OR name = ?1 OR prefix = ?1 OR hash = ?2",
            )?;
            let found: Vec<KeyRecord> = st
                .query_map(params![which, hash_key(which)], row_to_key)?
                .collect::<Result<_, _>>()?;
            match found.len() {
                0 => Err(StoreError::NotFound(which.to_owned())),
                1 => {
                    let mut rec = found
                        .into_iter()
                        .next()
                        .ok_or_else(|| StoreError::NotFound(which.to_owned()))?;
                    if rec.revoked_at.is_none() {
                        let now = now_secs();
                        c.execute(
                            "UPDATE keys SET revoked_at = ?1 WHERE id = ?2",
                            params![now, rec.id],
                        )?;
                        rec.revoked_at = Some(now);
                    }
                    Ok(rec)
                }
                n => Err(StoreError::Invalid(format!(
                    "'{which}' matches {n} keys; revoke by id instead"
                ))),
            }
        })
    }

    fn find_key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT * FROM keys WHERE hash = ?1",
                params![hash],
                row_to_key,
            )
            .optional()?)
        })
    }
}

/// A row of [`SELECT_ROWS`], whose columns are [`ledger_columns!`] in order. Read by
/// position: a read by name (`r.get("id")`) looks the name up among the statement's
/// columns each time, and cost ~60,000 instructions a row (27 scans of 27 names), ten
/// times the rest of the read.
fn row_to_ledger(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        key_id: r.get(2)?,
        key_name: r.get(3)?,
        group: r.get(4)?,
        requested_model: r.get(5)?,
        provider: r.get(6)?,
        model: r.get(7)?,
        price_id: r.get(8)?,
        prompt_tokens: r.get(9)?,
        completion_tokens: r.get(10)?,
        cached_tokens: r.get(11)?,
        cache_write_tokens: r.get(12)?,
        reasoning_tokens: r.get(13)?,
        usage_source: r.get(14)?,
        cost_nanos: r.get(15)?,
        cost_currency: r.get(16)?,
        report_cost_nanos: r.get(17)?,
        report_currency: r.get(18)?,
        fx_rate: r.get(19)?,
        fx_month: r.get(20)?,
        latency_ms: r.get(21)?,
        ttft_ms: r.get(22)?,
        status: r.get(23)?,
        http_status: r.get(24)?,
        stream: r.get::<_, i64>(25)? != 0,
        attempts: r.get(26)?,
    })
}

/// The ledger's columns, in the order rows are bound (see `bind_row`) and read (see
/// `row_to_ledger`). A macro, so that SQL text can be built with `concat!`.
macro_rules! ledger_columns {
    () => {
        "id, ts_ms, key_id, key_name, group_name, requested_model, provider, model, \
         price_id, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, \
         reasoning_tokens, usage_source, cost_nanos, cost_currency, report_cost_nanos, \
         report_currency, fx_rate, fx_month, latency_ms, ttft_ms, status, http_status, stream, \
         attempts"
    };
}
const LEDGER_COLUMNS: &str = ledger_columns!();
/// Parameters per ledger row.
const LEDGER_PARAMS: usize = 27;
/// Rows per multi-row `INSERT`: one statement run per this many rows instead of one per
/// row. Each run costs SQLite ~3,000 instructions beyond the rows' own work (statement
/// halt and reset, cursors), a sixth of an imported row's cost when paid per row.
const ROWS_PER_INSERT: usize = 16;

/// `INSERT [OR IGNORE] INTO ledger (...) VALUES (...), ...` for `rows` rows. With `OR
/// IGNORE` every row is kept or skipped on its own, as single-row statements would.
fn insert_sql(or_ignore: bool, rows: usize) -> String {
    let mut sql = format!(
        "INSERT {}INTO ledger ({LEDGER_COLUMNS}) VALUES ",
        if or_ignore { "OR IGNORE " } else { "" }
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..LEDGER_PARAMS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(r * LEDGER_PARAMS + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// The SQL of one-row and [`ROWS_PER_INSERT`]-row inserts, plain and `OR IGNORE`, made
/// once (`prepare_cached` finds statements by their text).
fn insert_statements() -> &'static [[String; 2]; 2] {
    static SQL: std::sync::OnceLock<[[String; 2]; 2]> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        [false, true].map(|or_ignore| {
            [
                insert_sql(or_ignore, 1),
                insert_sql(or_ignore, ROWS_PER_INSERT),
            ]
        })
    })
}

/// Binds `r` as the row whose first parameter is `base + 1`. Every parameter is bound,
/// so none keeps an earlier row's value.
fn bind_row(
    st: &mut rusqlite::CachedStatement<'_>,
    base: usize,
    r: &LedgerRow,
) -> rusqlite::Result<()> {
    st.raw_bind_parameter(base + 1, &r.id)?;
    st.raw_bind_parameter(base + 2, r.ts_ms)?;
    st.raw_bind_parameter(base + 3, &r.key_id)?;
    st.raw_bind_parameter(base + 4, &r.key_name)?;
    st.raw_bind_parameter(base + 5, &r.group)?;
    st.raw_bind_parameter(base + 6, &r.requested_model)?;
    st.raw_bind_parameter(base + 7, &r.provider)?;
    st.raw_bind_parameter(base + 8, &r.model)?;
    st.raw_bind_parameter(base + 9, &r.price_id)?;
    st.raw_bind_parameter(base + 10, r.prompt_tokens)?;
    st.raw_bind_parameter(base + 11, r.completion_tokens)?;
    st.raw_bind_parameter(base + 12, r.cached_tokens)?;
    st.raw_bind_parameter(base + 13, r.cache_write_tokens)?;
    st.raw_bind_parameter(base + 14, r.reasoning_tokens)?;
    st.raw_bind_parameter(base + 15, &r.usage_source)?;
    st.raw_bind_parameter(base + 16, r.cost_nanos)?;
    st.raw_bind_parameter(base + 17, &r.cost_currency)?;
    st.raw_bind_parameter(base + 18, r.report_cost_nanos)?;
    st.raw_bind_parameter(base + 19, &r.report_currency)?;
    st.raw_bind_parameter(base + 20, &r.fx_rate)?;
    st.raw_bind_parameter(base + 21, &r.fx_month)?;
    st.raw_bind_parameter(base + 22, r.latency_ms)?;
    st.raw_bind_parameter(base + 23, r.ttft_ms)?;
    st.raw_bind_parameter(base + 24, &r.status)?;
    st.raw_bind_parameter(base + 25, r.http_status)?;
    st.raw_bind_parameter(base + 26, r.stream as i64)?;
    st.raw_bind_parameter(base + 27, &r.attempts)?;
    Ok(())
}

/// [`LedgerStore::scan`]: served by `ledger_ts`. A cursor (`?4`, `?5`: the last row's
/// `ts_ms` and `id`) also raises `?1` to its `ts_ms`, so a page starts its index range
/// at the cursor instead of reading the window from its start; rows of that very
/// millisecond up to the cursor's id are filtered out. `?6` is the limit (-1: none).
const SELECT_ROWS: &str = concat!(
    "SELECT ",
    ledger_columns!(),
    " FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR key_id = ?3) \
     AND (?4 IS NULL OR ts_ms > ?4 OR id > ?5) \
     ORDER BY ts_ms, id LIMIT ?6"
);
/// [`LedgerStore::spend_since`]: served by `ledger_ts`.
const SPEND_SINCE: &str = "SELECT MIN(ts_ms), SUM(cost_nanos), cost_currency FROM ledger \
     WHERE ts_ms >= ?1 AND cost_nanos > 0 \
     AND (?2 IS NULL OR key_id = ?2) AND (?3 IS NULL OR group_name = ?3) \
     GROUP BY cost_currency, strftime('%Y-%m', ts_ms / 1000, 'unixepoch')";

impl SqliteStore {
    fn insert_rows(&self, rows: &[LedgerRow], skip_known: bool) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = conn.transaction()?;
        {
            let [one, many] = &insert_statements()[usize::from(skip_known)];
            let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
            if chunks.len() > 0 {
                let mut st = tx.prepare_cached(many)?;
                for chunk in &mut chunks {
                    for (k, r) in chunk.iter().enumerate() {
                        bind_row(&mut st, k * LEDGER_PARAMS, r)?;
                    }
                    st.raw_execute()?;
                }
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut st = tx.prepare_cached(one)?;
                for r in rest {
                    bind_row(&mut st, 0, r)?;
                    st.raw_execute()?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl LedgerStore for SqliteStore {
    fn append(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        self.insert_rows(rows, false)
    }

    fn replay(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        self.insert_rows(rows, true)
    }

    fn scan(
        &self,
        f: &LedgerFilter,
        visit: &mut dyn FnMut(LedgerRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut since = f.since_ms.unwrap_or(i64::MIN);
        if let Some((ts, _)) = &f.after {
            since = since.max(*ts);
        }
        let limit = match f.limit {
            Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
            None => -1,
        };
        self.with(|c| {
            let mut st = c.prepare_cached(SELECT_ROWS)?;
            let mut rows = st.query(params![
                since,
                f.until_ms.unwrap_or(i64::MAX),
                f.key_id,
                f.after.as_ref().map(|(ts, _)| *ts),
                f.after.as_ref().map(|(_, id)| id.as_str()),
                limit,
            ])?;
            while let Some(r) = rows.next()? {
                visit(row_to_ledger(r)?)?;
            }
            Ok(())
        })
    }

    fn position(&self, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT ts_ms FROM ledger WHERE id = ?1")?;
            let mut rows = st.query(params![id])?;
            Ok(match rows.next()? {
                Some(r) => Some((r.get(0)?, id.to_owned())),
                None => None,
            })
        })
    }

    fn maintain(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn spend_since(
        &self,
        key_id: Option<&str>,
        group: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        self.with(|c| {
            // Summed in SQLite per currency and UTC month (FX rates are monthly), so a
            // budget's first use reads a few sums, not every row of the window.
            let mut st = c.prepare_cached(SPEND_SINCE)?;
            let rows = st.query_map(params![since_ms, key_id, group], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        crate::testing::tmp_dir("store")
    }

    #[test]
    fn create_find_list_revoke() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let (rec, key) = s
            .create_key(&NewKey {
                name: "ci".into(),
                models: vec!["deepseek/*".into()],
                ..Default::default()
            })
            .unwrap();
        assert!(key.starts_with("tg-"));
        assert_eq!(s.find_key(&hash_key(&key)).unwrap().unwrap(), rec);
        assert_eq!(s.list_keys().unwrap().len(), 1);
        // The key itself is nowhere in the database file.
        drop(s);
        let bytes = std::fs::read(dir.join("tollgate.db")).unwrap();
        let wal = std::fs::read(dir.join("tollgate.db-wal")).unwrap_or_default();
        let hay = [bytes, wal].concat();
        assert!(!hay.windows(key.len()).any(|w| w == key.as_bytes()));
        let s = SqliteStore::open(&dir).unwrap();
        let revoked = s.revoke_key("ci").unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(!s.find_key(&hash_key(&key)).unwrap().unwrap().is_active());
        assert!(matches!(s.revoke_key("nope"), Err(StoreError::NotFound(_))));
        assert!(s
            .create_key(&NewKey {
                name: " ".into(),
                ..Default::default()
            })
            .is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    /// The plan SQLite picks for `sql` with parameters `p`, one detail per line.
    fn plan(c: &Connection, sql: &str, p: impl rusqlite::Params) -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let lines: Vec<String> = st
            .query_map(p, |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        lines.join("\n")
    }

    #[test]
    fn ledger_queries_search_an_index_never_scan_the_table() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let c = s.conn.lock().unwrap();
        for p in [
            plan(
                &c,
                SELECT_ROWS,
                params![0, 10, None::<String>, None::<i64>, None::<String>, -1],
            ),
            plan(
                &c,
                SELECT_ROWS,
                params![0, 10, "k1", None::<i64>, None::<String>, -1],
            ),
            // A page after a cursor, with a limit.
            plan(
                &c,
                SELECT_ROWS,
                params![5, 10, None::<String>, 5, "req_1", 101],
            ),
            plan(&c, SPEND_SINCE, params![0, "k1", None::<String>]),
            plan(&c, SPEND_SINCE, params![0, None::<String>, "g"]),
        ] {
            assert!(p.contains("SEARCH ledger USING INDEX ledger_ts"), "{p}");
            assert!(!p.contains("SCAN ledger"), "{p}");
        }
        drop(c);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_ledger_written_before_the_index_cleanup_survives_the_upgrade() {
        let dir = tmp();
        let row = crate::testing::row;
        {
            // The database as the build before migration 4 left it, with rows.
            let mut c = Connection::open(dir.join("tollgate.db")).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            let tx = c.transaction().unwrap();
            for (i, m) in MIGRATIONS[..3].iter().enumerate() {
                tx.execute_batch(m).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let old = SqliteStore {
            conn: Mutex::new(Connection::open(dir.join("tollgate.db")).unwrap()),
            path: dir.join("tollgate.db"),
        };
        let mut grouped = row("b", 20, 7);
        grouped.group = Some("team".into());
        old.append(&[row("a", 10, 5), grouped.clone()]).unwrap();
        drop(old);

        let s = SqliteStore::open(&dir).unwrap();
        let all = s.rows(&LedgerFilter::default()).unwrap();
        assert_eq!(all, vec![row("a", 10, 5), grouped]);
        assert_eq!(
            s.spend_since(None, Some("team"), 0).unwrap(),
            vec![(20, 7, "CNY".to_owned())]
        );
        {
            let c = s.conn.lock().unwrap();
            let v: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v as usize, MIGRATIONS.len());
            let names = |kind: &str| -> Vec<String> {
                let mut st = c
                    .prepare("SELECT name FROM sqlite_master WHERE type = ?1 AND tbl_name = 'ledger' ORDER BY name")
                    .unwrap();
                st.query_map([kind], |r| r.get(0))
                    .unwrap()
                    .map(|r| r.unwrap())
                    .collect()
            };
            assert_eq!(names("index"), ["ledger_ts", "sqlite_autoindex_ledger_1"]);
            assert_eq!(
                names("trigger"),
                ["ledger_append_only_delete", "ledger_append_only_update"]
            );
            assert!(c.execute("UPDATE ledger SET cost_nanos = 0", []).is_err());
            assert!(c.execute("DELETE FROM ledger", []).is_err());
        }
        // Still refused by `append`, still skipped by `replay`.
        assert!(s.append(&[row("a", 30, 1)]).is_err());
        s.replay(&[row("a", 30, 1), row("c", 40, 2)]).unwrap();
        let ids: Vec<_> = s
            .rows(&LedgerFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.ts_ms))
            .collect();
        assert_eq!(
            ids,
            [
                ("a".to_owned(), 10),
                ("b".to_owned(), 20),
                ("c".to_owned(), 40)
            ]
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// A row whose every field says which row it is (options set on odd rows only).
    fn full_row(i: usize, tag: &str) -> LedgerRow {
        let odd = i % 2 == 1;
        let n = i as i64;
        LedgerRow {
            id: format!("req_{i:08}"),
            ts_ms: 1_000 + n,
            key_id: format!("k{i}"),
            key_name: format!("name{i}{tag}"),
            group: odd.then(|| format!("g{i}")),
            requested_model: format!("rm{i}"),
            provider: format!("p{i}"),
            model: format!("m{i}"),
            price_id: odd.then(|| format!("price{i}")),
            prompt_tokens: n,
            completion_tokens: n + 1,
            cached_tokens: n + 2,
            cache_write_tokens: n + 3,
            reasoning_tokens: n + 4,
            usage_source: format!("src{i}"),
            cost_nanos: n * 10,
            cost_currency: "USD".into(),
            report_cost_nanos: n * 70,
            report_currency: "CNY".into(),
            fx_rate: odd.then(|| format!("USD/CNY {i}")),
            fx_month: odd.then(|| "2026-11".to_owned()),
            latency_ms: n + 5,
            ttft_ms: odd.then_some(n + 6),
            status: format!("s{i}"),
            http_status: 200 + n,
            stream: odd,
            attempts: format!("[{i}]"),
        }
    }

    /// Rows go in sixteen to a statement and the rest one by one: every field of every
    /// row, on both sides of each statement's boundary, reads back as written; a replay
    /// skips known ids (also a repeat inside one statement) and keeps the first copy; a
    /// duplicate in a plain append refuses the whole batch.
    #[test]
    fn rows_in_multi_row_statements_read_back_field_by_field() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let first: Vec<LedgerRow> = (0..40).map(|i| full_row(i, "")).collect();
        s.append(&first).unwrap();
        assert_eq!(s.rows(&LedgerFilter::default()).unwrap(), first);

        // 40 known (changed, so a replace would show) and 20 new, one of them twice in
        // the same sixteen.
        let mut again: Vec<LedgerRow> = (0..40).map(|i| full_row(i, "-changed")).collect();
        again.extend((40..60).map(|i| full_row(i, "")));
        again[46] = full_row(41, "-second");
        s.replay(&again).unwrap();
        let mut want = first.clone();
        want.extend((40..60).filter(|i| *i != 46).map(|i| full_row(i, "")));
        assert_eq!(s.rows(&LedgerFilter::default()).unwrap(), want);

        let mut bad: Vec<LedgerRow> = (100..133).map(|i| full_row(i, "")).collect();
        bad[20] = full_row(3, "");
        assert!(s.append(&bad).is_err());
        assert_eq!(s.rows(&LedgerFilter::default()).unwrap(), want);
        std::fs::remove_dir_all(dir).ok();
    }

    /// A scan hands over the filter's rows oldest first, one at a time, and stops at the
    /// first error its visitor returns, with that error.
    #[test]
    fn a_scan_visits_the_window_in_order_and_stops_at_an_error() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let rows: Vec<LedgerRow> = (0..30).rev().map(|i| full_row(i, "")).collect();
        s.append(&rows).unwrap();
        let window = LedgerFilter {
            since_ms: Some(1_005),
            until_ms: Some(1_020),
            ..Default::default()
        };
        let mut seen = Vec::new();
        s.scan(&window, &mut |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        let want: Vec<LedgerRow> = (5..20).map(|i| full_row(i, "")).collect();
        assert_eq!(seen, want);
        assert_eq!(s.rows(&window).unwrap(), want);

        let mut visits = 0;
        let err = s
            .scan(&LedgerFilter::default(), &mut |r| {
                visits += 1;
                Err(StoreError::Invalid(format!("stop at {}", r.id)))
            })
            .unwrap_err();
        assert_eq!(visits, 1);
        assert_eq!(err.to_string(), "stop at req_00000000");
        std::fs::remove_dir_all(dir).ok();
    }

    /// Pages of a listing, each starting after the last row of the one before, visit the
    /// window's rows exactly once and in order, rows sharing a millisecond included
    /// (they are ordered by id), whatever the page size.
    #[test]
    fn pages_after_a_cursor_cover_the_window_once_in_order() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        // 60 rows over 12 milliseconds, five to a millisecond, inserted out of order.
        let mut rows: Vec<LedgerRow> = (0..60)
            .map(|i| {
                let mut r = full_row(i, "");
                r.ts_ms = 2_000 + (i as i64 % 12);
                r
            })
            .collect();
        rows.reverse();
        s.append(&rows).unwrap();
        let window = LedgerFilter {
            since_ms: Some(2_002),
            until_ms: Some(2_010),
            ..Default::default()
        };
        let want = s.rows(&window).unwrap();
        assert_eq!(want.len(), 40);
        let order = |r: &LedgerRow| (r.ts_ms, r.id.clone());
        assert!(want.windows(2).all(|w| order(&w[0]) < order(&w[1])));
        for page in [1u64, 3, 5, 7, 40, 41] {
            let mut got: Vec<LedgerRow> = Vec::new();
            let mut pages = 0;
            loop {
                let after = got
                    .last()
                    .map(|last| s.position(&last.id).unwrap().unwrap());
                let f = LedgerFilter {
                    after,
                    limit: Some(page),
                    ..window.clone()
                };
                let next = s.rows(&f).unwrap();
                assert!(next.len() as u64 <= page);
                let full = next.len() as u64 == page;
                got.extend(next);
                pages += 1;
                if !full {
                    break;
                }
            }
            assert_eq!(got, want, "pages of {page}");
            assert_eq!(pages, 40 / page + 1, "pages of {page}");
        }
        // A cursor before the window does not widen it; one past it yields nothing.
        let early = s.position("req_00000000").unwrap().unwrap();
        assert_eq!(early, (2_000, "req_00000000".to_owned()));
        let f = LedgerFilter {
            after: Some(early),
            ..window.clone()
        };
        assert_eq!(s.rows(&f).unwrap(), want);
        let late = s.position("req_00000011").unwrap().unwrap();
        let f = LedgerFilter {
            after: Some(late),
            ..window.clone()
        };
        assert!(s.rows(&f).unwrap().is_empty());
        // With a key filter too.
        let f = LedgerFilter {
            key_id: Some("k14".into()),
            after: Some(s.position("req_00000002").unwrap().unwrap()),
            ..window.clone()
        };
        let ids: Vec<String> = s.rows(&f).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["req_00000014"]);
        assert_eq!(s.position("req_nope").unwrap(), None);
        std::fs::remove_dir_all(dir).ok();
    }

    /// `cargo test --release -p tollgate-store import_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement"]
    fn import_speed() {
        for batch in [20usize, 200, 2048] {
            let dir = tmp();
            let s = SqliteStore::open(&dir).unwrap();
            let rows: Vec<LedgerRow> = (0..40_960).map(|i| full_row(i, "")).collect();
            let t = std::time::Instant::now();
            for b in rows.chunks(batch) {
                s.replay(b).unwrap();
            }
            println!(
                "batches of {batch}: {:.0} ns per row",
                t.elapsed().as_nanos() as f64 / rows.len() as f64
            );
            std::fs::remove_dir_all(dir).ok();
        }
    }

    #[test]
    fn ledger_appends_reads_and_refuses_edits() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let row = crate::testing::row;
        s.append(&[row("a", 10, 5), row("b", 20, 7)]).unwrap();
        // A batch with a duplicate id is refused whole.
        assert!(s.append(&[row("c", 30, 1), row("a", 40, 1)]).is_err());
        let all = s.rows(&LedgerFilter::default()).unwrap();
        let ids: Vec<_> = all.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            s.spend_since(Some("k1"), None, 15).unwrap(),
            vec![(20, 7, "CNY".to_owned())]
        );
        assert_eq!(
            s.spend_since(Some("k1"), None, 0).unwrap(),
            vec![(10, 12, "CNY".to_owned())]
        );
        let c = s.conn.lock().unwrap();
        assert!(c.execute("UPDATE ledger SET cost_nanos = 0", []).is_err());
        assert!(c.execute("DELETE FROM ledger", []).is_err());
        drop(c);
        std::fs::remove_dir_all(dir).ok();
    }
}
