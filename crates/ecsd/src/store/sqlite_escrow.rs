//! [`EscrowStore`] on SQLite: the same connections as [`SqliteStore`]'s
//! `Store` side, and schema migration 11.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::escrow::*;
use super::sqlite::{SqliteStore, backend, opt_time};
use super::{StoreResult, fmt_time, parse_time};
use crate::domain::escrow::versions_to_prune;

/// Migration 11 (escrow, issue 15): recipients, escrowed versions (age
/// files: ciphertext only), pending retrievals, rotation policies.
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE escrow_recipients (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        recipient TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (project_id, id),
        UNIQUE (project_id, recipient)
    );
    CREATE TABLE escrow_versions (
        server_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        blob BLOB NOT NULL,
        final_state TEXT,
        PRIMARY KEY (server_id, version)
    );
    CREATE INDEX escrow_versions_request ON escrow_versions(request_id);
    CREATE INDEX escrow_versions_project ON escrow_versions(project_id, server_id);
    CREATE TABLE escrow_retrievals (
        server_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        retrieved_at TEXT NOT NULL
    );
    CREATE TABLE rotation_policies (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_run TEXT,
        UNIQUE (project_id, name)
    );
"#;

/// The reset state of a version: the target's while the reset is kept,
/// else the final state copied before it was pruned.
const VERSION_COLS: &str = "v.server_id, v.version, v.request_id, v.created_at, v.blob, \
    COALESCE((SELECT t.state FROM reset_targets t WHERE t.request_id = v.request_id \
    AND t.server_id = v.server_id), v.final_state)";

fn version_from_row(r: &rusqlite::Row<'_>) -> StoreResult<EscrowVersion> {
    let state: Option<String> = r.get(5)?;
    Ok(EscrowVersion {
        server_id: r.get(0)?,
        version: r.get(1)?,
        request_id: r.get(2)?,
        created: parse_time(&r.get::<_, String>(3)?)?,
        blob: r.get(4)?,
        state: state.map(|s| s.parse().map_err(backend)).transpose()?,
    })
}

fn add_versions_tx(c: &mut Connection, versions: &[NewVersion], keep: usize) -> StoreResult<()> {
    let tx = c.transaction()?;
    for v in versions {
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM escrow_versions WHERE server_id = ?1",
            [&v.server_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO escrow_versions (server_id, version, project_id, request_id, created_at, blob) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                v.server_id,
                next,
                v.project_id,
                v.request_id,
                fmt_time(v.created),
                v.blob
            ],
        )?;
        // Final states are copied while the resets are still there.
        tx.execute(
            "UPDATE escrow_versions SET final_state = (SELECT t.state FROM reset_targets t \
             WHERE t.request_id = escrow_versions.request_id AND t.server_id = escrow_versions.server_id) \
             WHERE server_id = ?1 AND final_state IS NULL AND EXISTS (SELECT 1 FROM reset_targets t \
             WHERE t.request_id = escrow_versions.request_id AND t.server_id = escrow_versions.server_id \
             AND t.state IN ('APPLIED', 'FAILED', 'SUPERSEDED'))",
            [&v.server_id],
        )?;
        let existing: Vec<(i64, bool)> = tx
            .prepare_cached(
                "SELECT version, final_state = 'APPLIED' FROM escrow_versions WHERE server_id = ?1",
            )?
            .query_map([&v.server_id], |r| {
                Ok((r.get(0)?, r.get::<_, Option<bool>>(1)?.unwrap_or(false)))
            })?
            .collect::<Result<_, _>>()?;
        for old in versions_to_prune(&existing, keep) {
            tx.execute(
                "DELETE FROM escrow_versions WHERE server_id = ?1 AND version = ?2",
                params![v.server_id, old],
            )?;
        }
        tx.execute(
            "DELETE FROM escrow_retrievals WHERE server_id = ?1",
            [&v.server_id],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn policy_from_row(r: &rusqlite::Row<'_>) -> StoreResult<RotationPolicy> {
    Ok(RotationPolicy {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        spec: r.get(3)?,
        created: parse_time(&r.get::<_, String>(4)?)?,
        last_run: opt_time(r.get(5)?)?,
    })
}

#[async_trait::async_trait]
impl EscrowStore for SqliteStore {
    async fn add_recipient(&self, r: Recipient) -> StoreResult<bool> {
        self.write(move |c| {
            Ok(c.execute(
                "INSERT INTO escrow_recipients (project_id, id, name, recipient, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![r.project_id, r.id, r.name, r.recipient, fmt_time(r.created)],
            )? == 1)
        })
        .await
    }

    async fn recipients(&self, project_id: &str) -> StoreResult<Vec<Recipient>> {
        let p = project_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, project_id, name, recipient, created_at FROM escrow_recipients \
                 WHERE project_id = ?1 ORDER BY created_at, id",
            )?;
            let mut rows = stmt.query([p])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Recipient {
                    id: r.get(0)?,
                    project_id: r.get(1)?,
                    name: r.get(2)?,
                    recipient: r.get(3)?,
                    created: parse_time(&r.get::<_, String>(4)?)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn remove_recipient(&self, project_id: &str, id: &str) -> StoreResult<bool> {
        let (p, id) = (project_id.to_owned(), id.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM escrow_recipients WHERE project_id = ?1 AND id = ?2",
                params![p, id],
            )? == 1)
        })
        .await
    }

    async fn add_versions(&self, versions: Vec<NewVersion>, keep: usize) -> StoreResult<()> {
        self.write(move |c| add_versions_tx(c, &versions, keep))
            .await
    }

    async fn discard_versions(&self, request_id: &str) -> StoreResult<()> {
        let id = request_id.to_owned();
        self.write(move |c| {
            c.execute("DELETE FROM escrow_versions WHERE request_id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    async fn versions(&self, server_id: &str) -> StoreResult<Vec<EscrowVersion>> {
        let id = server_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {VERSION_COLS} FROM escrow_versions v WHERE v.server_id = ?1 \
                 ORDER BY v.version DESC"
            ))?;
            let mut rows = stmt.query([id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(version_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn newest_versions(&self, project_id: &str) -> StoreResult<Vec<EscrowVersion>> {
        let p = project_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM escrow_versions v WHERE v.project_id = ?1 AND v.version = \
                 (SELECT MAX(w.version) FROM escrow_versions w WHERE w.server_id = v.server_id) \
                 ORDER BY v.server_id",
                VERSION_COLS.replace("v.blob", "x''")
            ))?;
            let mut rows = stmt.query([p])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(version_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn record_retrieval(
        &self,
        project_id: &str,
        server_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (p, s) = (project_id.to_owned(), server_id.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO escrow_retrievals (server_id, project_id, retrieved_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![s, p, fmt_time(at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn pending_retrievals(&self) -> StoreResult<Vec<PendingRetrieval>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT project_id, server_id, retrieved_at FROM escrow_retrievals \
                 ORDER BY retrieved_at",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((r.get(0)?, r.get(1)?, parse_time(&r.get::<_, String>(2)?)?));
            }
            Ok(out)
        })
        .await
    }

    async fn add_rotation_policy(&self, p: RotationPolicy) -> StoreResult<bool> {
        self.write(move |c| {
            Ok(c.execute(
                "INSERT INTO rotation_policies (id, project_id, name, spec, created_at, last_run) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![
                    p.id,
                    p.project_id,
                    p.name,
                    p.spec,
                    fmt_time(p.created),
                    p.last_run.map(fmt_time)
                ],
            )? == 1)
        })
        .await
    }

    async fn rotation_policies(
        &self,
        project_id: Option<&str>,
    ) -> StoreResult<Vec<RotationPolicy>> {
        let p = project_id.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, project_id, name, spec, created_at, last_run FROM rotation_policies \
                 WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created_at, id",
            )?;
            let mut rows = stmt.query([p])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(policy_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_rotation_policy(
        &self,
        project_id: &str,
        id_or_name: &str,
    ) -> StoreResult<bool> {
        let (p, k) = (project_id.to_owned(), id_or_name.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM rotation_policies WHERE project_id = ?1 AND (id = ?2 OR name = ?2)",
                params![p, k],
            )? >= 1)
        })
        .await
    }

    async fn claim_rotation(
        &self,
        policy_id: &str,
        seen: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let id = policy_id.to_owned();
        self.write(move |c| {
            let current: Option<Option<String>> = c
                .query_row(
                    "SELECT last_run FROM rotation_policies WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Ok(false);
            };
            if current != seen.map(fmt_time) {
                return Ok(false);
            }
            Ok(c.execute(
                "UPDATE rotation_policies SET last_run = ?2 WHERE id = ?1 AND last_run IS ?3",
                params![id, fmt_time(now), current],
            )? == 1)
        })
        .await
    }
}

/// The escrow conformance suite on SQLite: one fresh database per check.
#[cfg(test)]
mod conformance {
    use super::SqliteStore;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).expect("open");
        (dir, store)
    }

    crate::escrow_conformance_tests!(fresh);
}
