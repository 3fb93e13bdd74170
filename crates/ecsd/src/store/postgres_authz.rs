//! [`AuthzStore`] on the PostgreSQL store.

use chrono::Utc;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::authz::{AuthzStore, Grant, Group, StoredPolicy, TagChange};
use super::postgres::{Cached, PgStore, backend, is_constraint};
use super::{StoreError, StoreResult, fmt_time, parse_time};
use crate::authz::tags;
use crate::domain::Entity;

/// Now, at the precision the store keeps (milliseconds).
fn now() -> chrono::DateTime<Utc> {
    parse_time(&fmt_time(Utc::now())).expect("our own format parses")
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn conflict(e: tokio_postgres::Error, what: String) -> StoreError {
    if is_constraint(&e) {
        StoreError::Conflict(what)
    } else {
        backend(e)
    }
}

fn not_found(entity: Entity, id: &str) -> StoreError {
    StoreError::NotFound {
        entity,
        id: id.to_owned(),
    }
}

const GROUP_COLS: &str = "id, domain_id, name, description, created_at";
const POLICY_COLS: &str = "id, domain_id, name, description, document, created_at";

fn group_from_row(r: &Row) -> StoreResult<Group> {
    Ok(Group {
        id: r.try_get(0)?,
        domain_id: r.try_get(1)?,
        name: r.try_get(2)?,
        description: r.try_get(3)?,
        created: parse_time(r.try_get(4)?)?,
    })
}

fn policy_from_row(r: &Row) -> StoreResult<StoredPolicy> {
    Ok(StoredPolicy {
        id: r.try_get(0)?,
        domain_id: r.try_get(1)?,
        name: r.try_get(2)?,
        description: r.try_get(3)?,
        document: r.try_get(4)?,
        created: parse_time(r.try_get(5)?)?,
    })
}

fn grant_from(raw: &str) -> StoreResult<Grant> {
    Grant::decode(raw).ok_or_else(|| backend(format!("bad grant {raw:?}")))
}

/// True if the row exists; locks it against deletion until the commit.
async fn exists_locked(c: &impl GenericClient, table: &str, id: &str) -> StoreResult<bool> {
    Ok(c.cached_query_opt(
        &format!("SELECT 1 FROM {table} WHERE id = $1 FOR KEY SHARE"),
        &[&id],
    )
    .await?
    .is_some())
}

async fn read_tags(
    c: &impl GenericClient,
    p: &str,
    s: &str,
    lock: bool,
) -> StoreResult<Option<Vec<String>>> {
    let sql = if lock {
        "SELECT tags FROM servers WHERE id = $1 AND project_id = $2 FOR UPDATE"
    } else {
        "SELECT tags FROM servers WHERE id = $1 AND project_id = $2"
    };
    c.cached_query_opt(sql, &[&s, &p])
        .await?
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(backend))
        .transpose()
}

#[async_trait::async_trait]
impl AuthzStore for PgStore {
    async fn create_group(
        &self,
        domain_id: &str,
        name: &str,
        description: &str,
    ) -> StoreResult<Group> {
        let g = Group {
            id: new_id(),
            domain_id: domain_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            created: now(),
        };
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO iam_groups (id, domain_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&g.id, &g.domain_id, &g.name, &g.description, &fmt_time(g.created)],
        )
        .await
        .map_err(|e| conflict(e, format!("a group named {:?} exists", g.name)))?;
        Ok(g)
    }

    async fn group(&self, id: &str) -> StoreResult<Option<Group>> {
        let c = self.client().await?;
        c.cached_query_opt(
            &format!("SELECT {GROUP_COLS} FROM iam_groups WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(group_from_row)
        .transpose()
    }

    async fn group_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<Group>> {
        let c = self.client().await?;
        c.cached_query_opt(
            &format!("SELECT {GROUP_COLS} FROM iam_groups WHERE domain_id = $1 AND name = $2"),
            &[&domain_id, &name],
        )
        .await?
        .as_ref()
        .map(group_from_row)
        .transpose()
    }

    async fn groups(&self, domain_id: &str) -> StoreResult<Vec<Group>> {
        let c = self.client().await?;
        c.cached_query(
            &format!("SELECT {GROUP_COLS} FROM iam_groups WHERE domain_id = $1 ORDER BY name"),
            &[&domain_id],
        )
        .await?
        .iter()
        .map(group_from_row)
        .collect()
    }

    async fn delete_group(&self, id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(
            c.cached_execute("DELETE FROM iam_groups WHERE id = $1", &[&id])
                .await?
                > 0,
        )
    }

    async fn add_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !exists_locked(&tx, "iam_groups", group_id).await? {
            return Err(not_found(Entity::Group, group_id));
        }
        tx.cached_execute(
            "INSERT INTO iam_group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&group_id, &user_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "DELETE FROM iam_group_members WHERE group_id = $1 AND user_id = $2",
            &[&group_id, &user_id],
        )
        .await?
            > 0)
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<String>> {
        let c = self.client().await?;
        Ok(c.cached_query(
            "SELECT user_id FROM iam_group_members WHERE group_id = $1 ORDER BY user_id",
            &[&group_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn create_policy(
        &self,
        domain_id: &str,
        name: &str,
        description: &str,
        document: &str,
    ) -> StoreResult<StoredPolicy> {
        let p = StoredPolicy {
            id: new_id(),
            domain_id: domain_id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            document: document.to_owned(),
            created: now(),
        };
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO iam_policies (id, domain_id, name, description, document, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&p.id, &p.domain_id, &p.name, &p.description, &p.document, &fmt_time(p.created)],
        )
        .await
        .map_err(|e| conflict(e, format!("a policy named {:?} exists", p.name)))?;
        Ok(p)
    }

    async fn policy(&self, id: &str) -> StoreResult<Option<StoredPolicy>> {
        Ok(self.policies_by_ids(&[id.to_owned()]).await?.pop())
    }

    async fn policies(&self, domain_id: &str) -> StoreResult<Vec<StoredPolicy>> {
        let c = self.client().await?;
        c.cached_query(
            &format!("SELECT {POLICY_COLS} FROM iam_policies WHERE domain_id = $1 ORDER BY name"),
            &[&domain_id],
        )
        .await?
        .iter()
        .map(policy_from_row)
        .collect()
    }

    async fn policies_by_ids(&self, ids: &[String]) -> StoreResult<Vec<StoredPolicy>> {
        let c = self.client().await?;
        c.cached_query(
            &format!("SELECT {POLICY_COLS} FROM iam_policies WHERE id = ANY($1)"),
            &[&ids],
        )
        .await?
        .iter()
        .map(policy_from_row)
        .collect()
    }

    async fn delete_policy(&self, id: &str) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.cached_execute(
            "DELETE FROM iam_group_grants WHERE grant_ref = $1",
            &[&Grant::Policy(id.to_owned()).encode()],
        )
        .await?;
        let n = tx
            .cached_execute("DELETE FROM iam_policies WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn attach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !exists_locked(&tx, "iam_groups", group_id).await? {
            return Err(not_found(Entity::Group, group_id));
        }
        if !exists_locked(&tx, "projects", project_id).await? {
            return Err(not_found(Entity::Project, project_id));
        }
        // The policy is locked too: a concurrent delete_policy waits, then
        // removes this attachment with the policy.
        if let Grant::Policy(id) = grant
            && !exists_locked(&tx, "iam_policies", id).await?
        {
            return Err(not_found(Entity::Policy, id));
        }
        tx.cached_execute(
            "INSERT INTO iam_group_grants (group_id, project_id, grant_ref) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&group_id, &project_id, &grant.encode()],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn detach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "DELETE FROM iam_group_grants WHERE group_id = $1 AND project_id = $2 AND grant_ref = $3",
            &[&group_id, &project_id, &grant.encode()],
        )
        .await?
            > 0)
    }

    async fn attachments(&self, group_id: &str) -> StoreResult<Vec<(String, Grant)>> {
        let c = self.client().await?;
        c.cached_query(
            "SELECT project_id, grant_ref FROM iam_group_grants WHERE group_id = $1 ORDER BY project_id, grant_ref",
            &[&group_id],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, grant_from(r.try_get(1)?)?)))
        .collect()
    }

    async fn caller_grants(
        &self,
        project_id: &str,
        access_key: &str,
        user_id: Option<&str>,
    ) -> StoreResult<Option<Vec<Grant>>> {
        let c = self.client().await?;
        let user: String = match user_id {
            Some(u) => u.to_owned(),
            None => match c
                .cached_query_opt(
                    "SELECT user_id FROM iam_key_users WHERE ak = $1",
                    &[&access_key],
                )
                .await?
            {
                Some(r) => r.try_get(0)?,
                None => return Ok(None),
            },
        };
        let mut grants = c
            .cached_query(
                "SELECT DISTINCT g.grant_ref FROM iam_group_members m \
                 JOIN iam_group_grants g ON g.group_id = m.group_id \
                 WHERE m.user_id = $1 AND g.project_id = $2",
                &[&user, &project_id],
            )
            .await?
            .iter()
            .map(|r| grant_from(r.try_get(0)?))
            .collect::<StoreResult<Vec<_>>>()?;
        grants.sort();
        Ok(Some(grants))
    }

    async fn authz_version(&self, access_key: &str) -> StoreResult<(i64, Option<String>)> {
        let c = self.client().await?;
        let r = c
            .cached_query_one(
                "SELECT (SELECT n FROM iam_version), (SELECT user_id FROM iam_key_users WHERE ak = $1)",
                &[&access_key],
            )
            .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    async fn bind_access_key_user(&self, ak: &str, user_id: &str) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO iam_key_users (ak, user_id) VALUES ($1, $2) \
             ON CONFLICT (ak) DO UPDATE SET user_id = excluded.user_id",
            &[&ak, &user_id],
        )
        .await
        .map_err(|e| conflict(e, format!("no access key {ak}")))?;
        Ok(())
    }

    async fn server_tags(
        &self,
        project_id: &str,
        server_id: &str,
    ) -> StoreResult<Option<Vec<String>>> {
        read_tags(&*self.client().await?, project_id, server_id, false).await
    }

    async fn change_server_tags(
        &self,
        project_id: &str,
        server_id: &str,
        change: TagChange,
    ) -> StoreResult<Option<Vec<String>>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Locked: two replicas changing the tags of one server do not lose
        // each other's change.
        let Some(current) = read_tags(&tx, project_id, server_id, true).await? else {
            return Ok(None);
        };
        let next = match &change {
            TagChange::Create(t) => {
                tags::create(&current, t).map_err(|e| StoreError::invalid(e.field, e.message))?
            }
            TagChange::Delete(t) => tags::delete(&current, t),
        };
        if next != current {
            tx.cached_execute(
                "UPDATE servers SET tags = $1, updated_at = $2 WHERE id = $3 AND project_id = $4",
                &[
                    &serde_json::to_string(&next).map_err(backend)?,
                    &fmt_time(Utc::now()),
                    &server_id,
                    &project_id,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(next))
    }
}

/// The authorization store conformance suite on PostgreSQL.
#[cfg(test)]
mod conformance {
    use super::super::postgres::testing::fresh;

    crate::authz_store_conformance_tests!(fresh);
}
