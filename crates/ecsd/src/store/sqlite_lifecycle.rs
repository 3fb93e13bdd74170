//! [`LifecycleStore`] on SQLite: the same connections and transactions as
//! [`SqliteStore`]'s `Store` side, and schema migration 7.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::lifecycle::*;
use super::sqlite::{SqliteStore, backend, opt_time};
use super::{AuditEntry, Role, StoreResult, fmt_time, parse_time};

/// Migration 7 (lifecycle): access key status and lockout state; the audit
/// table gains who (user), the error code, the HTTP status and the CTS
/// rating; audit records can be deleted (retention) but never changed.
pub(super) const MIGRATION: &str = r#"
    ALTER TABLE access_keys ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE access_keys ADD COLUMN auth_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE access_keys ADD COLUMN locked_until TEXT;
    ALTER TABLE audit ADD COLUMN user_id TEXT;
    ALTER TABLE audit ADD COLUMN user_name TEXT;
    ALTER TABLE audit ADD COLUMN error_code TEXT;
    ALTER TABLE audit ADD COLUMN http_status INTEGER;
    ALTER TABLE audit ADD COLUMN rating TEXT NOT NULL DEFAULT 'normal';
    UPDATE audit SET rating = 'warning', error_code = substr(outcome, 10)
        WHERE outcome LIKE 'rejected %';
    CREATE INDEX audit_project_id ON audit(project_id, id DESC);
    CREATE INDEX audit_at ON audit(at);
    CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit BEGIN
        SELECT RAISE(ABORT, 'the audit trail is append-only');
    END;
"#;

/// Retention of resets and jobs: finds the old ones without a scan.
pub(super) const RETENTION_MIGRATION: &str = r#"
    CREATE INDEX resets_created ON resets(created_at);
    CREATE INDEX jobs_begin ON jobs(begin_time);
"#;

/// Every column holding a secret sealed under the master key:
/// (table, owner column, sealed column, owner prefix — the associated data
/// is the prefix followed by the owner column's value). A new sealed column
/// must be listed here, or master-key rotation leaves it behind (the test
/// `every_sealed_column_is_rotated` checks the migrations).
pub(super) const SEALED_COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("access_keys", "ak", "sk_sealed", ""),
    ("work_keys", "public_key", "secret_sealed", "work-key:"),
    ("temporary_credentials", "ak", "sk_sealed", ""),
];

const AUDIT_COLS: &str = "id, at, request_id, project_id, actor, action, servers, dry_run, \
    outcome, source, user_id, user_name, error_code, http_status, rating";

fn audit_from_row(r: &rusqlite::Row<'_>) -> StoreResult<AuditRecord> {
    let servers: String = r.get(6)?;
    let rating: String = r.get(14)?;
    Ok(AuditRecord {
        trace_id: r.get(0)?,
        entry: AuditEntry {
            at: parse_time(&r.get::<_, String>(1)?)?,
            request_id: r.get(2)?,
            project_id: r.get(3)?,
            actor: r.get(4)?,
            action: r.get(5)?,
            servers: serde_json::from_str(&servers).map_err(backend)?,
            dry_run: r.get(7)?,
            outcome: r.get(8)?,
            source: r.get(9)?,
            user_id: r.get(10)?,
            user_name: r.get(11)?,
            error_code: r.get(12)?,
            http_status: r.get(13)?,
        },
        rating: TraceRating::parse(&rating)
            .ok_or_else(|| backend(format!("bad rating {rating:?}")))?,
    })
}

#[async_trait::async_trait]
impl LifecycleStore for SqliteStore {
    async fn list_access_keys(&self, project_id: Option<&str>) -> StoreResult<Vec<AccessKeyInfo>> {
        let p = project_id.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT ak, project_id, role, enabled, created_at, locked_until, auth_failures \
                 FROM access_keys WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created_at, ak",
            )?;
            let mut rows = stmt.query([p])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let role: String = r.get(2)?;
                out.push(AccessKeyInfo {
                    ak: r.get(0)?,
                    project_id: r.get(1)?,
                    role: Role::parse(&role).ok_or_else(|| backend("bad role"))?,
                    enabled: r.get(3)?,
                    created: parse_time(&r.get::<_, String>(4)?)?,
                    locked_until: opt_time(r.get(5)?)?,
                    failures: r.get(6)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn set_access_key_enabled(&self, ak: &str, enabled: bool) -> StoreResult<bool> {
        let ak = ak.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE access_keys SET enabled = ?2 WHERE ak = ?1",
                params![ak, enabled],
            )? == 1)
        })
        .await
    }

    async fn delete_access_key(&self, ak: &str) -> StoreResult<bool> {
        let ak = ak.to_owned();
        self.write(move |c| Ok(c.execute("DELETE FROM access_keys WHERE ak = ?1", [ak])? == 1))
            .await
    }

    async fn unlock_access_key(&self, ak: &str) -> StoreResult<bool> {
        let ak = ak.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE access_keys SET locked_until = NULL, auth_failures = 0 WHERE ak = ?1",
                [ak],
            )? == 1)
        })
        .await
    }

    async fn key_gate(&self, ak: &str) -> StoreResult<Option<KeyGate>> {
        let ak = ak.to_owned();
        self.read_point(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT enabled, locked_until, auth_failures FROM access_keys WHERE ak = ?1",
                )?
                .query_row([ak], |r| {
                    Ok((
                        r.get::<_, bool>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })
                .optional()?;
            row.map(|(enabled, locked, failures)| {
                Ok(KeyGate {
                    enabled,
                    locked_until: opt_time(locked)?,
                    failures,
                })
            })
            .transpose()
        })
        .await
    }

    async fn record_auth_failure(
        &self,
        ak: &str,
        now: DateTime<Utc>,
        policy: LockPolicy,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let ak = ak.to_owned();
        self.write(move |c| {
            // IMMEDIATE: the read and the write are one step for every replica.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(u32, Option<String>)> = tx
                .query_row(
                    "SELECT auth_failures, locked_until FROM access_keys WHERE ak = ?1",
                    [&ak],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((failures, locked)) = row else {
                return Ok(None);
            };
            if let Some(t) = opt_time(locked)?.filter(|t| *t > now) {
                return Ok(Some(t)); // already locked: nothing to count
            }
            let (n, lock) = policy.after_failure(failures, now);
            tx.execute(
                "UPDATE access_keys SET auth_failures = ?2, locked_until = ?3 WHERE ak = ?1",
                params![ak, n, lock.map(fmt_time)],
            )?;
            tx.commit()?;
            Ok(lock)
        })
        .await
    }

    async fn reset_auth_failures(&self, ak: &str) -> StoreResult<()> {
        let ak = ak.to_owned();
        self.write(move |c| {
            c.execute(
                "UPDATE access_keys SET auth_failures = 0 WHERE ak = ?1 AND auth_failures != 0",
                [ak],
            )?;
            Ok(())
        })
        .await
    }

    async fn deregister_server(&self, server_id: &str) -> StoreResult<Option<String>> {
        let id = server_id.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            let project: Option<String> = tx
                .query_row("SELECT project_id FROM servers WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?;
            if project.is_none() {
                return Ok(None);
            }
            for sql in [
                "DELETE FROM rekey_challenges WHERE server_id = ?1",
                "DELETE FROM enroll_tokens WHERE server_id = ?1",
                "DELETE FROM reset_targets WHERE server_id = ?1",
                "DELETE FROM sub_jobs WHERE server_id = ?1",
                "DELETE FROM server_work WHERE server_id = ?1",
                "DELETE FROM servers WHERE id = ?1",
            ] {
                tx.execute(sql, [&id])?;
            }
            tx.commit()?;
            Ok(project)
        })
        .await
    }

    async fn revoke_agent(&self, server_id: &str) -> StoreResult<bool> {
        let id = server_id.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE servers SET agent_credential_hash = NULL, updated_at = ?2 WHERE id = ?1",
                params![id, fmt_time(Utc::now())],
            )? == 1)
        })
        .await
    }

    async fn list_enroll_tokens(
        &self,
        project_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<EnrollTokenInfo>> {
        let p = project_id.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT token_hash, project_id, uses_left, expires_at, created_at, server_id \
                 FROM enroll_tokens WHERE (?1 IS NULL OR project_id = ?1) \
                 AND uses_left > 0 AND expires_at > ?2 ORDER BY created_at, token_hash",
            )?;
            let mut rows = stmt.query(params![p, fmt_time(now)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let hash: String = r.get(0)?;
                out.push(EnrollTokenInfo {
                    id: hash.chars().take(TOKEN_ID_LEN).collect(),
                    project_id: r.get(1)?,
                    uses_left: r.get(2)?,
                    expires: parse_time(&r.get::<_, String>(3)?)?,
                    created: parse_time(&r.get::<_, String>(4)?)?,
                    server_id: r.get(5)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_enroll_token(&self, id_prefix: &str) -> StoreResult<Revoked> {
        let prefix = id_prefix.to_ascii_lowercase();
        self.write(move |c| {
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Revoked::None);
            }
            let tx = c.transaction()?;
            let hashes: Vec<String> = tx
                .prepare(
                    "SELECT token_hash FROM enroll_tokens WHERE substr(token_hash, 1, ?2) = ?1",
                )?
                .query_map(params![prefix, prefix.len()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let out = match hashes.as_slice() {
                [] => Revoked::None,
                [one] => {
                    tx.execute("DELETE FROM enroll_tokens WHERE token_hash = ?1", [one])?;
                    Revoked::One(one.chars().take(TOKEN_ID_LEN).collect())
                }
                many => Revoked::Ambiguous(many.len()),
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn reseal_all(&self, reseal: Box<Reseal>) -> StoreResult<usize> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut n = 0;
            for (table, owner_col, blob_col, prefix) in SEALED_COLUMNS {
                let rows: Vec<(String, Vec<u8>)> = tx
                    .prepare(&format!("SELECT {owner_col}, {blob_col} FROM {table}"))?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let mut update = tx.prepare(&format!(
                    "UPDATE {table} SET {blob_col} = ?2 WHERE {owner_col} = ?1"
                ))?;
                for (owner, blob) in rows {
                    let new = reseal(&format!("{prefix}{owner}"), &blob).map_err(|e| {
                        backend(format!("re-encrypting {table}.{blob_col} of {owner}: {e}"))
                    })?;
                    update.execute(params![owner, new])?;
                    n += 1;
                }
            }
            // Dropping the transaction on an error above rolls everything back.
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn list_audit(&self, q: AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| {
            let ratings = q
                .ratings
                .as_ref()
                .map(|rs| serde_json::to_string(&rs.iter().map(|r| r.as_str()).collect::<Vec<_>>()))
                .transpose()
                .map_err(backend)?;
            let sql = format!(
                "SELECT {AUDIT_COLS} FROM audit WHERE project_id = ?1 \
                 AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at <= ?3) \
                 AND (?4 IS NULL OR user_name = ?4 OR user_id = ?4 OR actor = ?4) \
                 AND (?5 IS NULL OR action = ?5) \
                 AND (?6 IS NULL OR EXISTS (SELECT 1 FROM json_each(audit.servers) WHERE value = ?6)) \
                 AND (?7 IS NULL OR rating IN (SELECT value FROM json_each(?7))) \
                 AND (?8 IS NULL OR id < ?8) \
                 ORDER BY id DESC LIMIT ?9"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![
                q.project_id,
                q.from.map(fmt_time),
                q.to.map(fmt_time),
                q.user,
                q.action,
                q.resource_id,
                ratings,
                q.before,
                q.limit
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(audit_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_audit(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 ORDER BY at LIMIT ?2)",
                params![fmt_time(before), batch],
            )?)
        })
        .await
    }

    async fn prune_resets(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT r.request_id FROM resets r WHERE r.created_at < ?1 AND NOT EXISTS \
                     (SELECT 1 FROM reset_targets t WHERE t.request_id = r.request_id \
                      AND t.state NOT IN ('APPLIED', 'FAILED', 'SUPERSEDED')) \
                     ORDER BY r.created_at LIMIT ?2",
                )?
                .query_map(params![fmt_time(before), batch], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                // server_work.last_reset_id may still name it: the server's
                // last reset is joined through its target, so it reads as none.
                tx.prepare_cached("DELETE FROM reset_targets WHERE request_id = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM resets WHERE request_id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(ids.len())
        })
        .await
    }

    async fn prune_jobs(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT j.job_id FROM jobs j WHERE j.begin_time < ?1 AND NOT EXISTS \
                     (SELECT 1 FROM sub_jobs s WHERE s.job_id = j.job_id \
                      AND s.status NOT IN ('SUCCESS', 'FAIL')) \
                     ORDER BY j.begin_time LIMIT ?2",
                )?
                .query_map(params![fmt_time(before), batch], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                tx.prepare_cached("DELETE FROM sub_jobs WHERE job_id = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM jobs WHERE job_id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(ids.len())
        })
        .await
    }

    async fn checkpoint(&self) -> StoreResult<()> {
        self.write(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn reclaim_pages(&self, max_pages: u32) -> StoreResult<usize> {
        self.write(move |c| {
            let free = |c: &rusqlite::Connection| {
                c.pragma_query_value(None, "freelist_count", |r| r.get::<_, i64>(0))
            };
            let before = free(c)?;
            // Without auto_vacuum = INCREMENTAL this is a no-op.
            let mut stmt = c.prepare(&format!("PRAGMA incremental_vacuum({max_pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            drop(stmt);
            Ok((before - free(c)?).max(0) as usize)
        })
        .await
    }

    async fn vacuum(&self) -> StoreResult<()> {
        self.write(|c| {
            c.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            c.execute_batch("VACUUM")?;
            // VACUUM may renumber the rowids the name index refers to.
            c.execute_batch("INSERT INTO servers_name_fts(servers_name_fts) VALUES ('rebuild')")?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `*_sealed` column the migrations create is re-encrypted by a
    /// master-key rotation.
    #[test]
    fn every_sealed_column_is_rotated() {
        let src = include_str!("sqlite.rs");
        let start = src.find("const MIGRATIONS").expect("the migration list");
        let end = start + src[start..].find("\n];").expect("its end");
        let mut found = Vec::new();
        for (i, _) in src[start..end].match_indices("_sealed ") {
            let head = &src[start..start + i];
            let word_start = head
                .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(0, |p| p + 1);
            found.push(format!("{}_sealed", &head[word_start..]));
        }
        assert!(found.len() >= 2, "{found:?}");
        for col in found {
            assert!(
                SEALED_COLUMNS.iter().any(|(_, _, c, _)| *c == col),
                "{col} is sealed under the master key but not in SEALED_COLUMNS"
            );
        }
    }
}

/// The write-ahead log stays bounded under constant writes (autocheckpoint
/// and `journal_size_limit`) and is truncated by a retention round.
#[cfg(test)]
mod wal {
    use super::super::sqlite::{JOURNAL_SIZE_LIMIT, SqliteStore};
    use super::super::*;
    use crate::store::lifecycle::LifecycleStore;
    use chrono::{Duration, Utc};
    use ecs_policy::OsType;

    /// A project with one Linux server that has an agent key.
    pub(super) async fn one_server(store: &SqliteStore) -> (Project, Server) {
        let p = store.create_project("p").await.unwrap();
        let s = store
            .register_server(NewServer {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: p.id.clone(),
                name: "s".into(),
                os_type: OsType::Linux,
                agent_public_key: Some(vec![7; 32]),
            })
            .await
            .unwrap();
        (p, s)
    }

    fn audit(project: &str, at: DateTime<Utc>) -> AuditEntry {
        AuditEntry {
            at,
            request_id: uuid::Uuid::new_v4().to_string(),
            project_id: project.to_owned(),
            actor: "wal".into(),
            action: "batch-reset-password".into(),
            servers: vec![],
            dry_run: false,
            outcome: "accepted".into(),
            source: "test".into(),
            user_id: None,
            user_name: None,
            error_code: None,
            http_status: None,
        }
    }

    #[tokio::test]
    async fn wal_is_bounded_and_truncated_by_a_retention_round() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecsd.sqlite");
        let wal = dir.path().join("ecsd.sqlite-wal");
        let store = SqliteStore::open(&path).unwrap();
        let (p, s) = one_server(&store).await;
        let old = Utc::now() - Duration::days(40);
        // Each reset supersedes the previous one: all finished but the last.
        let bound = 2 * JOURNAL_SIZE_LIMIT as u64;
        let mut max = 0;
        for i in 0..1500 {
            store
                .create_reset(NewReset {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    project_id: p.id.clone(),
                    apply_now: false,
                    created: old + Duration::milliseconds(i),
                    targets: vec![(s.id.clone(), vec![0; 512])],
                    audit: audit(&p.id, old),
                })
                .await
                .unwrap();
            max = max.max(std::fs::metadata(&wal).unwrap().len());
        }
        assert!(max <= bound, "the WAL grew to {max} bytes (bound {bound})");
        let cutoff = Utc::now() - Duration::days(30);
        let mut pruned = 0;
        loop {
            let n = store.prune_resets(cutoff, 500).await.unwrap();
            pruned += n;
            if n < 500 {
                break;
            }
        }
        assert_eq!(pruned, 1499, "all but the open one");
        store.checkpoint().await.unwrap();
        let after = std::fs::metadata(&wal).unwrap().len();
        assert_eq!(after, 0, "the WAL is truncated after a retention round");
    }
}

/// Pruned pages go back to the file system: the database file shrinks
/// (`auto_vacuum = INCREMENTAL` on new databases, `ecsd admin vacuum` for
/// older ones).
#[cfg(test)]
mod vacuum {
    use super::super::sqlite::SqliteStore;
    use super::super::*;
    use super::wal::one_server;
    use crate::store::lifecycle::LifecycleStore;
    use chrono::{Duration, Utc};

    /// 1500 resets, 40 days old, each superseding the one before (finished,
    /// but the last), with their audit records.
    async fn fill(store: &SqliteStore) {
        let (p, s) = one_server(store).await;
        let old = Utc::now() - Duration::days(40);
        for i in 0..1500 {
            let rid = uuid::Uuid::new_v4().to_string();
            store
                .create_reset(NewReset {
                    request_id: rid.clone(),
                    project_id: p.id.clone(),
                    apply_now: false,
                    created: old + Duration::milliseconds(i),
                    targets: vec![(s.id.clone(), vec![1; 2048])],
                    audit: AuditEntry {
                        at: old,
                        request_id: rid,
                        project_id: p.id.clone(),
                        actor: "vacuum".into(),
                        action: "batch-reset-password".into(),
                        servers: vec![s.id.clone()],
                        dry_run: false,
                        outcome: "accepted".into(),
                        source: "test".into(),
                        user_id: None,
                        user_name: None,
                        error_code: None,
                        http_status: None,
                    },
                })
                .await
                .unwrap();
        }
        store.checkpoint().await.unwrap();
    }

    /// Prunes everything finished, then reclaims as a retention round does.
    async fn prune_and_reclaim(store: &SqliteStore) -> usize {
        let cutoff = Utc::now() - Duration::days(30);
        while store.prune_resets(cutoff, 500).await.unwrap() == 500 {}
        while store.prune_audit(cutoff, 500).await.unwrap() == 500 {}
        let mut pages = 0;
        loop {
            let n = store.reclaim_pages(100).await.unwrap();
            pages += n;
            if n < 100 {
                break;
            }
        }
        store.checkpoint().await.unwrap();
        pages
    }

    fn auto_vacuum(path: &std::path::Path) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn the_file_shrinks_after_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecsd.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(auto_vacuum(&path), 2, "a new database is INCREMENTAL");
        fill(&store).await;
        let full = std::fs::metadata(&path).unwrap().len();
        assert!(full > 1_000_000, "{full} bytes");
        let pages = prune_and_reclaim(&store).await;
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(pages > 300, "{pages} pages reclaimed");
        assert!(after < full / 4, "{full} -> {after} bytes");
    }

    #[tokio::test]
    async fn an_older_database_shrinks_only_after_admin_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecsd.db");
        // As an older ecsd made it: tables before any auto_vacuum setting.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE older (x); DROP TABLE older;")
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(auto_vacuum(&path), 0);
        fill(&store).await;
        let full = std::fs::metadata(&path).unwrap().len();
        assert_eq!(prune_and_reclaim(&store).await, 0, "auto_vacuum is off");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
        store.vacuum().await.unwrap();
        store.checkpoint().await.unwrap();
        assert_eq!(auto_vacuum(&path), 2);
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < full / 4, "{full} -> {after} bytes");
    }
}

/// The lifecycle conformance suite on SQLite: one fresh database per check.
#[cfg(test)]
mod conformance {
    use super::SqliteStore;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).expect("open");
        (dir, store)
    }

    crate::lifecycle_conformance_tests!(fresh);
}
