//! [`LifecycleStore`] on the PostgreSQL store. Master-key rotation re-seals
//! the same columns as SQLite's ([`super::sqlite_lifecycle::SEALED_COLUMNS`]:
//! the tables and columns have the same names in both schemas).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::lifecycle::*;
use super::postgres::{Cached, PgStore, backend, opt_time, retrying};
use super::sqlite_lifecycle::SEALED_COLUMNS;
use super::{AuditEntry, Role, StoreResult, fmt_time, parse_time};

const AUDIT_COLS: &str = "id, at, request_id, project_id, actor, action, servers, dry_run, \
    outcome, source, user_id, user_name, error_code, http_status, rating";

fn audit_from_row(r: &Row) -> StoreResult<AuditRecord> {
    let rating: &str = r.try_get(14)?;
    let status: Option<i32> = r.try_get(13)?;
    Ok(AuditRecord {
        trace_id: r.try_get(0)?,
        entry: AuditEntry {
            at: parse_time(r.try_get(1)?)?,
            request_id: r.try_get(2)?,
            project_id: r.try_get(3)?,
            actor: r.try_get(4)?,
            action: r.try_get(5)?,
            servers: serde_json::from_str(r.try_get(6)?).map_err(backend)?,
            dry_run: r.try_get(7)?,
            outcome: r.try_get(8)?,
            source: r.try_get(9)?,
            user_id: r.try_get(10)?,
            user_name: r.try_get(11)?,
            error_code: r.try_get(12)?,
            http_status: status.map(u16::try_from).transpose().map_err(backend)?,
        },
        rating: TraceRating::parse(rating)
            .ok_or_else(|| backend(format!("bad rating {rating:?}")))?,
    })
}

/// Deletes the given parents with their children, in one transaction.
async fn delete_with_children(
    c: &impl GenericClient,
    ids: &[String],
    children: &str,
    parents: &str,
    key: &str,
) -> StoreResult<()> {
    c.cached_execute(
        &format!("DELETE FROM {children} WHERE {key} = ANY($1)"),
        &[&ids],
    )
    .await?;
    c.cached_execute(
        &format!("DELETE FROM {parents} WHERE {key} = ANY($1)"),
        &[&ids],
    )
    .await?;
    Ok(())
}

/// The maintenance writes, each one transaction; the trait runs them again
/// when PostgreSQL picks them as a deadlock's victim (they meet the request
/// path's locks in another order: by request or job, not by server).
impl PgStore {
    async fn deregister_server_once(&self, server_id: &str) -> StoreResult<Option<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let project: Option<String> = tx
            .cached_query_opt(
                "SELECT project_id FROM servers WHERE id = $1 FOR UPDATE",
                &[&server_id],
            )
            .await?
            .map(|r| r.get(0));
        if project.is_none() {
            return Ok(None);
        }
        for sql in [
            "DELETE FROM rekey_challenges WHERE server_id = $1",
            "DELETE FROM enroll_tokens WHERE server_id = $1",
            "DELETE FROM reset_targets WHERE server_id = $1",
            "DELETE FROM sub_jobs WHERE server_id = $1",
            "DELETE FROM servers WHERE id = $1",
        ] {
            tx.cached_execute(sql, &[&server_id]).await?;
        }
        tx.commit().await?;
        Ok(project)
    }

    async fn prune_resets_once(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Finished targets are never reopened, so a request found finished
        // stays finished; the resets' rows are locked against a second pruner.
        let ids: Vec<String> = tx
            .cached_query(
                "SELECT r.request_id FROM resets r WHERE r.created_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM reset_targets t WHERE t.request_id = r.request_id \
                  AND t.state NOT IN ('APPLIED', 'FAILED', 'SUPERSEDED')) \
                 ORDER BY r.created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&fmt_time(before), &i64::from(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // servers.last_reset_id may still name one: the server's last reset
        // is joined through its target, so it reads as none.
        delete_with_children(&tx, &ids, "reset_targets", "resets", "request_id").await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn prune_jobs_once(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let ids: Vec<String> = tx
            .cached_query(
                "SELECT j.job_id FROM jobs j WHERE j.begin_time < $1 AND NOT EXISTS \
                 (SELECT 1 FROM sub_jobs s WHERE s.job_id = j.job_id \
                  AND s.status NOT IN ('SUCCESS', 'FAIL')) \
                 ORDER BY j.begin_time LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&fmt_time(before), &i64::from(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        delete_with_children(&tx, &ids, "sub_jobs", "jobs", "job_id").await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}

#[async_trait::async_trait]
impl LifecycleStore for PgStore {
    async fn list_access_keys(&self, project_id: Option<&str>) -> StoreResult<Vec<AccessKeyInfo>> {
        let c = self.client().await?;
        let rows = c
            .cached_query(
                "SELECT ak, project_id, role, enabled, created_at, locked_until, auth_failures \
                 FROM access_keys WHERE $1::text IS NULL OR project_id = $1 ORDER BY created_at, ak",
                &[&project_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let role: &str = r.try_get(2)?;
                Ok(AccessKeyInfo {
                    ak: r.try_get(0)?,
                    project_id: r.try_get(1)?,
                    role: Role::parse(role).ok_or_else(|| backend("bad role"))?,
                    enabled: r.try_get(3)?,
                    created: parse_time(r.try_get(4)?)?,
                    locked_until: opt_time(r.try_get(5)?)?,
                    failures: u32::try_from(r.try_get::<_, i64>(6)?).map_err(backend)?,
                })
            })
            .collect()
    }

    async fn set_access_key_enabled(&self, ak: &str, enabled: bool) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE access_keys SET enabled = $2 WHERE ak = $1",
            &[&ak, &enabled],
        )
        .await?
            == 1)
    }

    async fn delete_access_key(&self, ak: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(
            c.cached_execute("DELETE FROM access_keys WHERE ak = $1", &[&ak])
                .await?
                == 1,
        )
    }

    async fn unlock_access_key(&self, ak: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE access_keys SET auth_failures = 0, locked_until = NULL WHERE ak = $1",
            &[&ak],
        )
        .await?
            == 1)
    }

    async fn key_gate(&self, ak: &str) -> StoreResult<Option<KeyGate>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT enabled, locked_until, auth_failures FROM access_keys WHERE ak = $1",
            &[&ak],
        )
        .await?
        .map(|r| {
            Ok(KeyGate {
                enabled: r.try_get(0)?,
                locked_until: opt_time(r.try_get(1)?)?,
                failures: u32::try_from(r.try_get::<_, i64>(2)?).map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn record_auth_failure(
        &self,
        ak: &str,
        now: DateTime<Utc>,
        policy: LockPolicy,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The key's row locked: failures on every replica count together.
        let Some(r) = tx
            .cached_query_opt(
                "SELECT auth_failures, locked_until FROM access_keys WHERE ak = $1 FOR UPDATE",
                &[&ak],
            )
            .await?
        else {
            return Ok(None);
        };
        let failures = u32::try_from(r.try_get::<_, i64>(0)?).map_err(backend)?;
        if let Some(t) = opt_time(r.try_get(1)?)?.filter(|t| *t > now) {
            return Ok(Some(t)); // already locked: nothing to count
        }
        let (n, lock) = policy.after_failure(failures, now);
        tx.cached_execute(
            "UPDATE access_keys SET auth_failures = $2, locked_until = $3 WHERE ak = $1",
            &[&ak, &i64::from(n), &lock.map(fmt_time)],
        )
        .await?;
        tx.commit().await?;
        Ok(lock)
    }

    async fn reset_auth_failures(&self, ak: &str) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "UPDATE access_keys SET auth_failures = 0 WHERE ak = $1 AND auth_failures != 0",
            &[&ak],
        )
        .await?;
        Ok(())
    }

    async fn deregister_server(&self, server_id: &str) -> StoreResult<Option<String>> {
        retrying(|| self.deregister_server_once(server_id)).await
    }

    async fn revoke_agent(&self, server_id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE servers SET agent_credential_hash = NULL, updated_at = $2 WHERE id = $1",
            &[&server_id, &fmt_time(Utc::now())],
        )
        .await?
            == 1)
    }

    async fn list_enroll_tokens(
        &self,
        project_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<EnrollTokenInfo>> {
        let c = self.client().await?;
        let rows = c
            .cached_query(
                "SELECT token_hash, project_id, uses_left, expires_at, created_at, server_id \
                 FROM enroll_tokens WHERE ($1::text IS NULL OR project_id = $1) \
                 AND uses_left > 0 AND expires_at > $2 ORDER BY created_at, token_hash",
                &[&project_id, &fmt_time(now)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let hash: &str = r.try_get(0)?;
                Ok(EnrollTokenInfo {
                    id: hash.chars().take(TOKEN_ID_LEN).collect(),
                    project_id: r.try_get(1)?,
                    uses_left: r.try_get(2)?,
                    expires: parse_time(r.try_get(3)?)?,
                    created: parse_time(r.try_get(4)?)?,
                    server_id: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn revoke_enroll_token(&self, id_prefix: &str) -> StoreResult<Revoked> {
        let prefix = id_prefix.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Revoked::None);
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let hashes: Vec<String> = tx
            .cached_query(
                "SELECT token_hash FROM enroll_tokens WHERE left(token_hash, $2) = $1 FOR UPDATE",
                &[&prefix, &(prefix.len() as i32)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let out = match hashes.as_slice() {
            [] => Revoked::None,
            [one] => {
                tx.cached_execute("DELETE FROM enroll_tokens WHERE token_hash = $1", &[one])
                    .await?;
                Revoked::One(one.chars().take(TOKEN_ID_LEN).collect())
            }
            many => Revoked::Ambiguous(many.len()),
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn reseal_all(&self, reseal: Box<Reseal>) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // No replica adds or changes a sealed secret while they are
        // re-sealed (reads go on); an error rolls everything back.
        let tables: Vec<&str> = SEALED_COLUMNS.iter().map(|(t, _, _, _)| *t).collect();
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .await?;
        let mut n = 0;
        for (table, owner_col, blob_col, prefix) in SEALED_COLUMNS {
            let rows = tx
                .cached_query(&format!("SELECT {owner_col}, {blob_col} FROM {table}"), &[])
                .await?;
            let update = tx
                .prepare(&format!(
                    "UPDATE {table} SET {blob_col} = $2 WHERE {owner_col} = $1"
                ))
                .await?;
            for r in &rows {
                let (owner, blob): (&str, &[u8]) = (r.try_get(0)?, r.try_get(1)?);
                let new = reseal(&format!("{prefix}{owner}"), blob).map_err(|e| {
                    backend(format!("re-encrypting {table}.{blob_col} of {owner}: {e}"))
                })?;
                tx.execute(&update, &[&owner, &new]).await?;
                n += 1;
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn list_audit(&self, q: AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        let ratings: Option<Vec<&str>> = q
            .ratings
            .as_ref()
            .map(|rs| rs.iter().map(|r| r.as_str()).collect());
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM audit WHERE project_id = $1 \
             AND ($2::text IS NULL OR at >= $2) AND ($3::text IS NULL OR at <= $3) \
             AND ($4::text IS NULL OR user_name = $4 OR user_id = $4 OR actor = $4) \
             AND ($5::text IS NULL OR action = $5) \
             AND ($6::text IS NULL OR servers::jsonb @> jsonb_build_array($6::text)) \
             AND ($7::text[] IS NULL OR rating = ANY($7)) \
             AND ($8::bigint IS NULL OR id < $8) \
             ORDER BY id DESC LIMIT $9"
        );
        let rows = c
            .cached_query(
                &sql,
                &[
                    &q.project_id,
                    &q.from.map(fmt_time),
                    &q.to.map(fmt_time),
                    &q.user,
                    &q.action,
                    &q.resource_id,
                    &ratings,
                    &q.before,
                    &i64::from(q.limit),
                ],
            )
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn prune_audit(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2)",
            &[&fmt_time(before), &i64::from(batch)],
        )
        .await? as usize)
    }

    async fn prune_resets(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        retrying(|| self.prune_resets_once(before, batch)).await
    }

    async fn prune_jobs(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize> {
        retrying(|| self.prune_jobs_once(before, batch)).await
    }

    /// PostgreSQL manages its own write-ahead log: nothing to do.
    async fn checkpoint(&self) -> StoreResult<()> {
        Ok(())
    }

    /// PostgreSQL's autovacuum reuses the space of deleted rows.
    async fn reclaim_pages(&self, _max_pages: u32) -> StoreResult<usize> {
        Ok(0)
    }

    /// `ecsd admin vacuum`: a plain `VACUUM (ANALYZE)` of the database
    /// (autovacuum does the same in the background).
    async fn vacuum(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.batch_execute("VACUUM (ANALYZE)").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `*_sealed` column the PostgreSQL migrations create is
    /// re-encrypted by a master-key rotation.
    #[test]
    fn every_sealed_column_is_rotated() {
        let mut found = Vec::new();
        for sql in super::super::postgres_schema::MIGRATIONS {
            for (i, _) in sql.match_indices("_sealed ") {
                let head = &sql[..i];
                let word_start = head
                    .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map_or(0, |p| p + 1);
                found.push(format!("{}_sealed", &head[word_start..]));
            }
        }
        assert!(found.len() >= 3, "{found:?}");
        for col in found {
            assert!(
                SEALED_COLUMNS.iter().any(|(_, _, c, _)| *c == col),
                "{col} is sealed under the master key but not in SEALED_COLUMNS"
            );
        }
    }
}

/// The lifecycle conformance suite on PostgreSQL: one fresh schema per check.
#[cfg(test)]
mod conformance {
    use super::super::postgres::testing::fresh;

    crate::lifecycle_conformance_tests!(fresh);
}
