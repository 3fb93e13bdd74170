//! [`EscrowStore`] on the PostgreSQL store: the tables of SQLite's
//! migration 11 (`sqlite_escrow.rs`) with the same names; several replicas
//! number a server's versions under its row lock (servers in id order).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::escrow::*;
use super::postgres::{Cached, PgStore, backend, opt_time};
use super::{StoreResult, fmt_time, parse_time};
use crate::domain::escrow::versions_to_prune;

const VERSION_COLS: &str = "v.server_id, v.version, v.request_id, v.created_at, v.blob, \
    COALESCE((SELECT t.state FROM reset_targets t WHERE t.request_id = v.request_id \
    AND t.server_id = v.server_id), v.final_state)";

fn version_from_row(r: &Row) -> StoreResult<EscrowVersion> {
    let state: Option<&str> = r.try_get(5)?;
    Ok(EscrowVersion {
        server_id: r.try_get(0)?,
        version: r.try_get(1)?,
        request_id: r.try_get(2)?,
        created: parse_time(r.try_get(3)?)?,
        blob: r.try_get(4)?,
        state: state.map(|s| s.parse().map_err(backend)).transpose()?,
    })
}

fn policy_from_row(r: &Row) -> StoreResult<RotationPolicy> {
    Ok(RotationPolicy {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        name: r.try_get(2)?,
        spec: r.try_get(3)?,
        created: parse_time(r.try_get(4)?)?,
        last_run: opt_time(r.try_get(5)?)?,
    })
}

#[async_trait::async_trait]
impl EscrowStore for PgStore {
    async fn add_recipient(&self, r: Recipient) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "INSERT INTO escrow_recipients (project_id, id, name, recipient, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &r.project_id,
                &r.id,
                &r.name,
                &r.recipient,
                &fmt_time(r.created),
            ],
        )
        .await?
            == 1)
    }

    async fn recipients(&self, project_id: &str) -> StoreResult<Vec<Recipient>> {
        let c = self.client().await?;
        c.cached_query(
            "SELECT id, project_id, name, recipient, created_at FROM escrow_recipients \
             WHERE project_id = $1 ORDER BY created_at, id",
            &[&project_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Recipient {
                id: r.try_get(0)?,
                project_id: r.try_get(1)?,
                name: r.try_get(2)?,
                recipient: r.try_get(3)?,
                created: parse_time(r.try_get(4)?)?,
            })
        })
        .collect()
    }

    async fn remove_recipient(&self, project_id: &str, id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "DELETE FROM escrow_recipients WHERE project_id = $1 AND id = $2",
            &[&project_id, &id],
        )
        .await?
            == 1)
    }

    async fn add_versions(&self, mut versions: Vec<NewVersion>, keep: usize) -> StoreResult<()> {
        versions.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        for v in &versions {
            // Numbering under the server's lock: replicas take turns.
            tx.cached_query_opt(
                "SELECT 1 FROM servers WHERE id = $1 FOR UPDATE",
                &[&v.server_id],
            )
            .await?;
            let next: i64 = tx
                .cached_query_one(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM escrow_versions WHERE server_id = $1",
                    &[&v.server_id],
                )
                .await?
                .try_get(0)?;
            tx.cached_execute(
                "INSERT INTO escrow_versions (server_id, version, project_id, request_id, created_at, blob) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &v.server_id,
                    &next,
                    &v.project_id,
                    &v.request_id,
                    &fmt_time(v.created),
                    &v.blob,
                ],
            )
            .await?;
            tx.cached_execute(
                "UPDATE escrow_versions e SET final_state = t.state FROM reset_targets t \
                 WHERE e.server_id = $1 AND e.final_state IS NULL AND t.request_id = e.request_id \
                 AND t.server_id = e.server_id AND t.state IN ('APPLIED', 'FAILED', 'SUPERSEDED')",
                &[&v.server_id],
            )
            .await?;
            let existing: Vec<(i64, bool)> = tx
                .cached_query(
                    "SELECT version, COALESCE(final_state = 'APPLIED', false) FROM escrow_versions \
                     WHERE server_id = $1",
                    &[&v.server_id],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<StoreResult<_>>()?;
            let prune = versions_to_prune(&existing, keep);
            if !prune.is_empty() {
                tx.cached_execute(
                    "DELETE FROM escrow_versions WHERE server_id = $1 AND version = ANY($2)",
                    &[&v.server_id, &prune],
                )
                .await?;
            }
            tx.cached_execute(
                "DELETE FROM escrow_retrievals WHERE server_id = $1",
                &[&v.server_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn discard_versions(&self, request_id: &str) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "DELETE FROM escrow_versions WHERE request_id = $1",
            &[&request_id],
        )
        .await?;
        Ok(())
    }

    async fn versions(&self, server_id: &str) -> StoreResult<Vec<EscrowVersion>> {
        let c = self.client().await?;
        c.cached_query(
            &format!(
                "SELECT {VERSION_COLS} FROM escrow_versions v WHERE v.server_id = $1 \
                 ORDER BY v.version DESC"
            ),
            &[&server_id],
        )
        .await?
        .iter()
        .map(version_from_row)
        .collect()
    }

    async fn newest_versions(&self, project_id: &str) -> StoreResult<Vec<EscrowVersion>> {
        let c = self.client().await?;
        c.cached_query(
            &format!(
                "SELECT {} FROM escrow_versions v WHERE v.project_id = $1 AND v.version = \
                 (SELECT MAX(w.version) FROM escrow_versions w WHERE w.server_id = v.server_id) \
                 ORDER BY v.server_id",
                VERSION_COLS.replace("v.blob", "''::bytea")
            ),
            &[&project_id],
        )
        .await?
        .iter()
        .map(version_from_row)
        .collect()
    }

    async fn record_retrieval(
        &self,
        project_id: &str,
        server_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO escrow_retrievals (server_id, project_id, retrieved_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&server_id, &project_id, &fmt_time(at)],
        )
        .await?;
        Ok(())
    }

    async fn pending_retrievals(&self) -> StoreResult<Vec<PendingRetrieval>> {
        let c = self.client().await?;
        c.cached_query(
            "SELECT project_id, server_id, retrieved_at FROM escrow_retrievals \
             ORDER BY retrieved_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, parse_time(r.try_get(2)?)?)))
        .collect()
    }

    async fn add_rotation_policy(&self, p: RotationPolicy) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "INSERT INTO rotation_policies (id, project_id, name, spec, created_at, last_run) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &p.id,
                &p.project_id,
                &p.name,
                &p.spec,
                &fmt_time(p.created),
                &p.last_run.map(fmt_time),
            ],
        )
        .await?
            == 1)
    }

    async fn rotation_policies(
        &self,
        project_id: Option<&str>,
    ) -> StoreResult<Vec<RotationPolicy>> {
        let c = self.client().await?;
        c.cached_query(
            "SELECT id, project_id, name, spec, created_at, last_run FROM rotation_policies \
             WHERE $1::TEXT IS NULL OR project_id = $1 ORDER BY created_at, id",
            &[&project_id],
        )
        .await?
        .iter()
        .map(policy_from_row)
        .collect()
    }

    async fn delete_rotation_policy(
        &self,
        project_id: &str,
        id_or_name: &str,
    ) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "DELETE FROM rotation_policies WHERE project_id = $1 AND (id = $2 OR name = $2)",
            &[&project_id, &id_or_name],
        )
        .await?
            >= 1)
    }

    async fn claim_rotation(
        &self,
        policy_id: &str,
        seen: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE rotation_policies SET last_run = $2 WHERE id = $1 \
             AND last_run IS NOT DISTINCT FROM $3",
            &[&policy_id, &fmt_time(now), &seen.map(fmt_time)],
        )
        .await?
            == 1)
    }
}

/// The escrow conformance suite on PostgreSQL: one fresh schema per check.
#[cfg(test)]
mod conformance {
    use super::super::postgres::testing::fresh;

    crate::escrow_conformance_tests!(fresh);
}
