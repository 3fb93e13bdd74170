//! [`IdentityStore`] on the embedded SQLite store (migration 5).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::identity::*;
use super::sqlite::{backend, project_from_row, to_project};
use super::{Project, SqliteStore, StoreError, StoreResult, fmt_time, parse_time};

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn domain_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn to_domain((id, name, created): (String, String, String)) -> StoreResult<Domain> {
    Ok(Domain {
        id,
        name,
        created: parse_time(&created)?,
    })
}

fn query_domain(c: &Connection, col: &str, v: &str) -> StoreResult<Option<Domain>> {
    c.prepare_cached(&format!(
        "SELECT id, name, created_at FROM domains WHERE {col} = ?1"
    ))?
    .query_row([v], domain_from_row)
    .optional()?
    .map(to_domain)
    .transpose()
}

const USER_COLS: &str = "id, domain_id, name, password_hash, enabled, created_at";

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<(User, String)> {
    Ok((
        User {
            id: r.get(0)?,
            domain_id: r.get(1)?,
            name: r.get(2)?,
            password_hash: r.get(3)?,
            enabled: r.get(4)?,
            created: Utc::now(),
        },
        r.get(5)?,
    ))
}

fn to_user((mut u, created): (User, String)) -> StoreResult<User> {
    u.created = parse_time(&created)?;
    Ok(u)
}

const TOKEN_COLS: &str = "id, token_hash, user_id, project_id, issued_at, expires_at, revoked";

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<(StoredToken, String, String)> {
    let now = Utc::now();
    Ok((
        StoredToken {
            id: r.get(0)?,
            token_hash: r.get(1)?,
            user_id: r.get(2)?,
            project_id: r.get(3)?,
            issued: now,
            expires: now,
            revoked: r.get(6)?,
        },
        r.get(4)?,
        r.get(5)?,
    ))
}

#[async_trait::async_trait]
impl IdentityStore for SqliteStore {
    async fn ensure_domain(&self, name: &str) -> StoreResult<Domain> {
        let name = name.to_owned();
        self.write(move |c| {
            if let Some(d) = query_domain(c, "name", &name)? {
                return Ok(d);
            }
            let d = Domain {
                id: uuid::Uuid::new_v4().simple().to_string(),
                name,
                created: Utc::now(),
            };
            c.execute(
                "INSERT INTO domains (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![d.id, d.name, fmt_time(d.created)],
            )?;
            // As stored (milliseconds).
            query_domain(c, "id", &d.id)?.ok_or_else(|| backend("the new domain vanished"))
        })
        .await
    }

    async fn domain_by_name(&self, name: &str) -> StoreResult<Option<Domain>> {
        let name = name.to_owned();
        self.read(move |c| query_domain(c, "name", &name)).await
    }

    async fn domain(&self, id: &str) -> StoreResult<Option<Domain>> {
        let id = id.to_owned();
        self.read(move |c| query_domain(c, "id", &id)).await
    }

    async fn project_domain(&self, project_id: &str) -> StoreResult<Option<Domain>> {
        let id = project_id.to_owned();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT d.id, d.name, d.created_at FROM domains d \
                 JOIN projects p ON p.domain_id = d.id WHERE p.id = ?1",
            )?
            .query_row([id], domain_from_row)
            .optional()?
            .map(to_domain)
            .transpose()
        })
        .await
    }

    async fn set_project_domain(&self, project_id: &str, domain_id: &str) -> StoreResult<()> {
        let (p, d) = (project_id.to_owned(), domain_id.to_owned());
        self.write(move |c| {
            let n = c.execute(
                "UPDATE projects SET domain_id = ?2 WHERE id = ?1",
                params![p, d],
            )?;
            if n == 0 {
                return Err(StoreError::storage(format!("no project {p}")));
            }
            Ok(())
        })
        .await
    }

    async fn domain_projects(&self, domain_id: &str) -> StoreResult<Vec<Project>> {
        let d = domain_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, name, created_at FROM projects WHERE domain_id = ?1 ORDER BY name",
            )?;
            let rows = st.query_map([d], project_from_row)?;
            rows.map(|r| to_project(r?)).collect()
        })
        .await
    }

    async fn project_in_domain(&self, domain_id: &str, name: &str) -> StoreResult<Option<Project>> {
        let (d, n) = (domain_id.to_owned(), name.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, created_at FROM projects WHERE domain_id = ?1 AND name = ?2",
                params![d, n],
                project_from_row,
            )
            .optional()?
            .map(to_project)
            .transpose()
        })
        .await
    }

    async fn create_user(&self, u: User) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    u.id,
                    u.domain_id,
                    u.name,
                    u.password_hash,
                    u.enabled,
                    fmt_time(u.created)
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Conflict(format!("the domain has a user named {:?}", u.name))
                } else {
                    backend(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))?
                .query_row([id], user_from_row)
                .optional()?
                .map(to_user)
                .transpose()
        })
        .await
    }

    async fn user_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<User>> {
        let (d, n) = (domain_id.to_owned(), name.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLS} FROM users WHERE domain_id = ?1 AND name = ?2"
            ))?
            .query_row(params![d, n], user_from_row)
            .optional()?
            .map(to_user)
            .transpose()
        })
        .await
    }

    async fn list_users(&self, domain_id: &str) -> StoreResult<Vec<User>> {
        let d = domain_id.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {USER_COLS} FROM users WHERE domain_id = ?1 ORDER BY name"
            ))?;
            let rows = st.query_map([d], user_from_row)?;
            rows.map(|r| to_user(r?)).collect()
        })
        .await
    }

    async fn set_user_enabled(&self, id: &str, enabled: bool) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE users SET enabled = ?2 WHERE id = ?1",
                params![id, enabled],
            )? == 1)
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        // ON DELETE CASCADE removes roles, tokens and temporary credentials.
        self.write(move |c| Ok(c.execute("DELETE FROM users WHERE id = ?1", [id])? == 1))
            .await
    }

    async fn assign_role(
        &self,
        user_id: &str,
        project_id: &str,
        role: UserRole,
    ) -> StoreResult<()> {
        let (u, p) = (user_id.to_owned(), project_id.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO user_roles (user_id, project_id, role) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (user_id, project_id) DO UPDATE SET role = excluded.role",
                params![u, p, role.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn user_role(&self, user_id: &str, project_id: &str) -> StoreResult<Option<UserRole>> {
        let (u, p) = (user_id.to_owned(), project_id.to_owned());
        self.read(move |c| {
            let role: Option<String> = c
                .prepare_cached(
                    "SELECT role FROM user_roles WHERE user_id = ?1 AND project_id = ?2",
                )?
                .query_row(params![u, p], |r| r.get(0))
                .optional()?;
            role.map(|r| UserRole::parse(&r).ok_or_else(|| backend(format!("bad role {r:?}"))))
                .transpose()
        })
        .await
    }

    async fn create_token(&self, t: StoredToken) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    t.id,
                    t.token_hash,
                    t.user_id,
                    t.project_id,
                    fmt_time(t.issued),
                    fmt_time(t.expires),
                    t.revoked
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<StoredToken>> {
        let h = token_hash.to_owned();
        self.read(move |c| {
            let row = c
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLS} FROM tokens WHERE token_hash = ?1"
                ))?
                .query_row([h], token_from_row)
                .optional()?;
            row.map(|(mut t, issued, expires)| {
                t.issued = parse_time(&issued)?;
                t.expires = parse_time(&expires)?;
                Ok(t)
            })
            .transpose()
        })
        .await
    }

    async fn revoke_token(&self, token_hash: &str) -> StoreResult<bool> {
        let h = token_hash.to_owned();
        self.write(move |c| {
            Ok(c.execute("UPDATE tokens SET revoked = 1 WHERE token_hash = ?1", [h])? == 1)
        })
        .await
    }

    async fn extend_token(&self, token_hash: &str, expires: DateTime<Utc>) -> StoreResult<bool> {
        let h = token_hash.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE tokens SET expires_at = ?2 WHERE token_hash = ?1 AND revoked = 0",
                params![h, fmt_time(expires)],
            )? == 1)
        })
        .await
    }

    async fn create_temporary_credential(&self, t: TemporaryCredential) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO temporary_credentials \
                 (ak, sk_sealed, security_token_hash, user_id, project_id, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.ak,
                    t.sk_sealed,
                    t.security_token_hash,
                    t.user_id,
                    t.project_id,
                    fmt_time(t.expires),
                    fmt_time(Utc::now())
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn temporary_credential(&self, ak: &str) -> StoreResult<Option<TemporaryCredential>> {
        let ak = ak.to_owned();
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT ak, sk_sealed, security_token_hash, user_id, project_id, expires_at \
                     FROM temporary_credentials WHERE ak = ?1",
                )?
                .query_row([ak], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .optional()?;
            row.map(
                |(ak, sk_sealed, security_token_hash, user_id, project_id, expires)| {
                    Ok(TemporaryCredential {
                        ak,
                        sk_sealed,
                        security_token_hash,
                        user_id,
                        project_id,
                        expires: parse_time(&expires)?,
                    })
                },
            )
            .transpose()
        })
        .await
    }
}

/// The identity conformance checks on SQLite: one fresh database each.
#[cfg(test)]
mod conformance {
    use super::SqliteStore;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).expect("open");
        (dir, store)
    }

    crate::identity_conformance_tests!(fresh);
}
