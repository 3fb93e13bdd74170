//! [`AuthzStore`] on the embedded SQLite store (migration 6).

use chrono::Utc;
use rusqlite::{OptionalExtension, Row, params};

use super::authz::{AuthzStore, Grant, Group, StoredPolicy, TagChange};
use super::sqlite::{SqliteStore, backend};
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

fn conflict(e: rusqlite::Error, what: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what)
        }
        e => backend(e),
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

fn group_from_row(r: &Row<'_>) -> StoreResult<Group> {
    Ok(Group {
        id: r.get(0)?,
        domain_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        created: parse_time(&r.get::<_, String>(4)?)?,
    })
}

fn policy_from_row(r: &Row<'_>) -> StoreResult<StoredPolicy> {
    Ok(StoredPolicy {
        id: r.get(0)?,
        domain_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        document: r.get(4)?,
        created: parse_time(&r.get::<_, String>(5)?)?,
    })
}

fn collect<T>(
    rows: &mut rusqlite::Rows<'_>,
    f: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

fn exists(c: &rusqlite::Connection, sql: &str, id: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached(sql)?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

#[async_trait::async_trait]
impl AuthzStore for SqliteStore {
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
        let row = g.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO iam_groups (id, domain_id, name, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.domain_id, row.name, row.description, fmt_time(row.created)],
            )
            .map_err(|e| conflict(e, format!("a group named {:?} exists", row.name)))?;
            Ok(())
        })
        .await?;
        Ok(g)
    }

    async fn group(&self, id: &str) -> StoreResult<Option<Group>> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {GROUP_COLS} FROM iam_groups WHERE id = ?1"
            ))?;
            let mut rows = s.query([id])?;
            rows.next()?.map(group_from_row).transpose()
        })
        .await
    }

    async fn group_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<Group>> {
        let (d, n) = (domain_id.to_owned(), name.to_owned());
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {GROUP_COLS} FROM iam_groups WHERE domain_id = ?1 AND name = ?2"
            ))?;
            let mut rows = s.query([d, n])?;
            rows.next()?.map(group_from_row).transpose()
        })
        .await
    }

    async fn groups(&self, domain_id: &str) -> StoreResult<Vec<Group>> {
        let d = domain_id.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {GROUP_COLS} FROM iam_groups WHERE domain_id = ?1 ORDER BY name"
            ))?;
            collect(&mut s.query([d])?, group_from_row)
        })
        .await
    }

    async fn delete_group(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| Ok(c.execute("DELETE FROM iam_groups WHERE id = ?1", [id])? > 0))
            .await
    }

    async fn add_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<()> {
        let (g, u) = (group_id.to_owned(), user_id.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            if !exists(&tx, "SELECT 1 FROM iam_groups WHERE id = ?1", &g)? {
                return Err(not_found(Entity::Group, &g));
            }
            tx.execute(
                "INSERT OR IGNORE INTO iam_group_members (group_id, user_id) VALUES (?1, ?2)",
                [&g, &u],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<bool> {
        let (g, u) = (group_id.to_owned(), user_id.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_group_members WHERE group_id = ?1 AND user_id = ?2",
                [g, u],
            )? > 0)
        })
        .await
    }

    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<String>> {
        let g = group_id.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT user_id FROM iam_group_members WHERE group_id = ?1 ORDER BY user_id",
            )?;
            collect(&mut s.query([g])?, |r| Ok(r.get(0)?))
        })
        .await
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
        let row = p.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO iam_policies (id, domain_id, name, description, document, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.id, row.domain_id, row.name, row.description, row.document, fmt_time(row.created)],
            )
            .map_err(|e| conflict(e, format!("a policy named {:?} exists", row.name)))?;
            Ok(())
        })
        .await?;
        Ok(p)
    }

    async fn policy(&self, id: &str) -> StoreResult<Option<StoredPolicy>> {
        Ok(self.policies_by_ids(&[id.to_owned()]).await?.pop())
    }

    async fn policies(&self, domain_id: &str) -> StoreResult<Vec<StoredPolicy>> {
        let d = domain_id.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {POLICY_COLS} FROM iam_policies WHERE domain_id = ?1 ORDER BY name"
            ))?;
            collect(&mut s.query([d])?, policy_from_row)
        })
        .await
    }

    async fn policies_by_ids(&self, ids: &[String]) -> StoreResult<Vec<StoredPolicy>> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            // In chunks below SQLite's parameter limit.
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut s = c.prepare_cached(&format!(
                    "SELECT {POLICY_COLS} FROM iam_policies WHERE id IN ({marks})"
                ))?;
                out.extend(collect(
                    &mut s.query(rusqlite::params_from_iter(chunk.iter()))?,
                    policy_from_row,
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_policy(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM iam_group_grants WHERE grant_ref = ?1",
                [Grant::Policy(id.clone()).encode()],
            )?;
            let n = tx.execute("DELETE FROM iam_policies WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn attach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<()> {
        let (g, p, grant) = (group_id.to_owned(), project_id.to_owned(), grant.clone());
        self.write(move |c| {
            let tx = c.transaction()?;
            if !exists(&tx, "SELECT 1 FROM iam_groups WHERE id = ?1", &g)? {
                return Err(not_found(Entity::Group, &g));
            }
            if !exists(&tx, "SELECT 1 FROM projects WHERE id = ?1", &p)? {
                return Err(not_found(Entity::Project, &p));
            }
            if let Grant::Policy(id) = &grant
                && !exists(&tx, "SELECT 1 FROM iam_policies WHERE id = ?1", id)?
            {
                return Err(not_found(Entity::Policy, id));
            }
            tx.execute(
                "INSERT OR IGNORE INTO iam_group_grants (group_id, project_id, grant_ref) VALUES (?1, ?2, ?3)",
                [&g, &p, &grant.encode()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn detach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<bool> {
        let (g, p, r) = (group_id.to_owned(), project_id.to_owned(), grant.encode());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_group_grants WHERE group_id = ?1 AND project_id = ?2 AND grant_ref = ?3",
                [g, p, r],
            )? > 0)
        })
        .await
    }

    async fn attachments(&self, group_id: &str) -> StoreResult<Vec<(String, Grant)>> {
        let g = group_id.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT project_id, grant_ref FROM iam_group_grants WHERE group_id = ?1 ORDER BY project_id, grant_ref",
            )?;
            collect(&mut s.query([g])?, |r| {
                let raw: String = r.get(1)?;
                let grant = Grant::decode(&raw)
                    .ok_or_else(|| backend(format!("bad grant {raw:?}")))?;
                Ok((r.get(0)?, grant))
            })
        })
        .await
    }

    async fn caller_grants(
        &self,
        project_id: &str,
        access_key: &str,
        user_id: Option<&str>,
    ) -> StoreResult<Option<Vec<Grant>>> {
        let (p, ak, u) = (
            project_id.to_owned(),
            access_key.to_owned(),
            user_id.map(str::to_owned),
        );
        self.read(move |c| {
            let user = match u {
                Some(u) => u,
                None => match c
                    .prepare_cached("SELECT user_id FROM iam_key_users WHERE ak = ?1")?
                    .query_row([&ak], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    Some(u) => u,
                    None => return Ok(None),
                },
            };
            let mut s = c.prepare_cached(
                "SELECT DISTINCT g.grant_ref FROM iam_group_members m \
                 JOIN iam_group_grants g ON g.group_id = m.group_id \
                 WHERE m.user_id = ?1 AND g.project_id = ?2",
            )?;
            let mut grants = collect(&mut s.query([&user, &p])?, |r| {
                let raw: String = r.get(0)?;
                Grant::decode(&raw).ok_or_else(|| backend(format!("bad grant {raw:?}")))
            })?;
            grants.sort();
            Ok(Some(grants))
        })
        .await
    }

    async fn authz_version(&self, access_key: &str) -> StoreResult<(i64, Option<String>)> {
        let ak = access_key.to_owned();
        self.read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT (SELECT n FROM iam_version), (SELECT user_id FROM iam_key_users WHERE ak = ?1)",
            )?
            .query_row([ak], |r| Ok((r.get(0)?, r.get(1)?)))?)
        })
        .await
    }

    async fn bind_access_key_user(&self, ak: &str, user_id: &str) -> StoreResult<()> {
        let (ak, u) = (ak.to_owned(), user_id.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO iam_key_users (ak, user_id) VALUES (?1, ?2) \
                 ON CONFLICT (ak) DO UPDATE SET user_id = excluded.user_id",
                [&ak, &u],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict(format!("no access key {ak}"))
                }
                e => backend(e),
            })?;
            Ok(())
        })
        .await
    }

    async fn server_tags(
        &self,
        project_id: &str,
        server_id: &str,
    ) -> StoreResult<Option<Vec<String>>> {
        let (p, s) = (project_id.to_owned(), server_id.to_owned());
        self.read(move |c| read_tags(c, &p, &s)).await
    }

    async fn change_server_tags(
        &self,
        project_id: &str,
        server_id: &str,
        change: TagChange,
    ) -> StoreResult<Option<Vec<String>>> {
        let (p, s) = (project_id.to_owned(), server_id.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(current) = read_tags(&tx, &p, &s)? else {
                return Ok(None);
            };
            let next = match &change {
                TagChange::Create(t) => tags::create(&current, t)
                    .map_err(|e| StoreError::invalid(e.field, e.message))?,
                TagChange::Delete(t) => tags::delete(&current, t),
            };
            if next != current {
                tx.execute(
                    "UPDATE servers SET tags = ?1, updated_at = ?2 WHERE id = ?3 AND project_id = ?4",
                    params![
                        serde_json::to_string(&next).map_err(backend)?,
                        fmt_time(Utc::now()),
                        s,
                        p
                    ],
                )?;
            }
            tx.commit()?;
            Ok(Some(next))
        })
        .await
    }
}

fn read_tags(c: &rusqlite::Connection, p: &str, s: &str) -> StoreResult<Option<Vec<String>>> {
    let raw: Option<String> = c
        .prepare_cached("SELECT tags FROM servers WHERE id = ?1 AND project_id = ?2")?
        .query_row([s, p], |r| r.get(0))
        .optional()?;
    raw.map(|t| serde_json::from_str(&t).map_err(backend))
        .transpose()
}

/// The authorization store conformance suite on SQLite.
#[cfg(test)]
mod conformance {
    use super::SqliteStore;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).expect("open");
        (dir, store)
    }

    crate::authz_store_conformance_tests!(fresh);
}
