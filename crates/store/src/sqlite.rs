//! The SQLite store: one file, `tollgate.db`, in the data directory, in WAL mode so
//! readers never wait for the writer and a committed write survives `kill -9`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::keys::{generate_key, hash_key, new_id, KeyRecord, KeyStore, NewKey};
use crate::StoreError;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

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
        };
        let models =
            serde_json::to_string(&rec.models).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO keys (id, name, hash, prefix, models, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![rec.id, rec.name, hash_key(&key), rec.prefix, models, rec.created_at],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tollgate-store-test-{}-{}",
            std::process::id(),
            new_id("t", chrono::Utc::now().timestamp_millis()).unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_find_list_revoke() {
        let dir = tmp();
        let s = SqliteStore::open(&dir).unwrap();
        let (rec, key) = s
            .create_key(&NewKey {
                name: "ci".into(),
                models: vec!["deepseek/*".into()],
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
                models: vec![]
            })
            .is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
