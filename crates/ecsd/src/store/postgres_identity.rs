//! [`IdentityStore`] on the PostgreSQL store.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::identity::*;
use super::postgres::{Cached, PgStore, backend, is_constraint, project_from_row};
use super::{Project, StoreError, StoreResult, fmt_time, parse_time};

fn domain_from_row(r: &Row) -> StoreResult<Domain> {
    Ok(Domain {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created: parse_time(r.try_get(2)?)?,
    })
}

async fn query_domain(c: &impl GenericClient, col: &str, v: &str) -> StoreResult<Option<Domain>> {
    c.cached_query_opt(
        &format!("SELECT id, name, created_at FROM domains WHERE {col} = $1"),
        &[&v],
    )
    .await?
    .as_ref()
    .map(domain_from_row)
    .transpose()
}

const USER_COLS: &str = "id, domain_id, name, password_hash, enabled, created_at";

fn user_from_row(r: &Row) -> StoreResult<User> {
    Ok(User {
        id: r.try_get(0)?,
        domain_id: r.try_get(1)?,
        name: r.try_get(2)?,
        password_hash: r.try_get(3)?,
        enabled: r.try_get(4)?,
        created: parse_time(r.try_get(5)?)?,
    })
}

const TOKEN_COLS: &str = "id, token_hash, user_id, project_id, issued_at, expires_at, revoked";

fn token_from_row(r: &Row) -> StoreResult<StoredToken> {
    Ok(StoredToken {
        id: r.try_get(0)?,
        token_hash: r.try_get(1)?,
        user_id: r.try_get(2)?,
        project_id: r.try_get(3)?,
        issued: parse_time(r.try_get(4)?)?,
        expires: parse_time(r.try_get(5)?)?,
        revoked: r.try_get(6)?,
    })
}

#[async_trait::async_trait]
impl IdentityStore for PgStore {
    async fn ensure_domain(&self, name: &str) -> StoreResult<Domain> {
        let c = self.client().await?;
        // Replicas ensuring the same domain at once: one insert wins.
        c.cached_execute(
            "INSERT INTO domains (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[
                &uuid::Uuid::new_v4().simple().to_string(),
                &name,
                &fmt_time(Utc::now()),
            ],
        )
        .await?;
        query_domain(&*c, "name", name)
            .await?
            .ok_or_else(|| backend("the new domain vanished"))
    }

    async fn domain_by_name(&self, name: &str) -> StoreResult<Option<Domain>> {
        query_domain(&*self.client().await?, "name", name).await
    }

    async fn domain(&self, id: &str) -> StoreResult<Option<Domain>> {
        query_domain(&*self.client().await?, "id", id).await
    }

    async fn project_domain(&self, project_id: &str) -> StoreResult<Option<Domain>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT d.id, d.name, d.created_at FROM domains d \
             JOIN projects p ON p.domain_id = d.id WHERE p.id = $1",
            &[&project_id],
        )
        .await?
        .as_ref()
        .map(domain_from_row)
        .transpose()
    }

    async fn set_project_domain(&self, project_id: &str, domain_id: &str) -> StoreResult<()> {
        let c = self.client().await?;
        let n = c
            .cached_execute(
                "UPDATE projects SET domain_id = $2 WHERE id = $1",
                &[&project_id, &domain_id],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::storage(format!("no project {project_id}")));
        }
        Ok(())
    }

    async fn domain_projects(&self, domain_id: &str) -> StoreResult<Vec<Project>> {
        let c = self.client().await?;
        c.cached_query(
            "SELECT id, name, created_at FROM projects WHERE domain_id = $1 ORDER BY name",
            &[&domain_id],
        )
        .await?
        .iter()
        .map(project_from_row)
        .collect()
    }

    async fn project_in_domain(&self, domain_id: &str, name: &str) -> StoreResult<Option<Project>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT id, name, created_at FROM projects WHERE domain_id = $1 AND name = $2",
            &[&domain_id, &name],
        )
        .await?
        .as_ref()
        .map(project_from_row)
        .transpose()
    }

    async fn create_user(&self, u: User) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            &format!("INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
            &[
                &u.id,
                &u.domain_id,
                &u.name,
                &u.password_hash,
                &u.enabled,
                &fmt_time(u.created),
            ],
        )
        .await
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Conflict(format!("the domain has a user named {:?}", u.name))
            } else {
                backend(e)
            }
        })?;
        Ok(())
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        c.cached_query_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn user_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        c.cached_query_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE domain_id = $1 AND name = $2"),
            &[&domain_id, &name],
        )
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn list_users(&self, domain_id: &str) -> StoreResult<Vec<User>> {
        let c = self.client().await?;
        c.cached_query(
            &format!("SELECT {USER_COLS} FROM users WHERE domain_id = $1 ORDER BY name"),
            &[&domain_id],
        )
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn set_user_enabled(&self, id: &str, enabled: bool) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE users SET enabled = $2 WHERE id = $1",
            &[&id, &enabled],
        )
        .await?
            == 1)
    }

    async fn delete_user(&self, id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        // ON DELETE CASCADE removes roles, tokens and temporary credentials.
        Ok(c.cached_execute("DELETE FROM users WHERE id = $1", &[&id])
            .await?
            == 1)
    }

    async fn assign_role(
        &self,
        user_id: &str,
        project_id: &str,
        role: UserRole,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO user_roles (user_id, project_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, project_id) DO UPDATE SET role = excluded.role",
            &[&user_id, &project_id, &role.as_str()],
        )
        .await?;
        Ok(())
    }

    async fn user_role(&self, user_id: &str, project_id: &str) -> StoreResult<Option<UserRole>> {
        let c = self.client().await?;
        let role: Option<String> = c
            .cached_query_opt(
                "SELECT role FROM user_roles WHERE user_id = $1 AND project_id = $2",
                &[&user_id, &project_id],
            )
            .await?
            .map(|r| r.get(0));
        role.map(|r| UserRole::parse(&r).ok_or_else(|| backend(format!("bad role {r:?}"))))
            .transpose()
    }

    async fn create_token(&self, t: StoredToken) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                &t.id,
                &t.token_hash,
                &t.user_id,
                &t.project_id,
                &fmt_time(t.issued),
                &fmt_time(t.expires),
                &t.revoked,
            ],
        )
        .await?;
        Ok(())
    }

    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<StoredToken>> {
        let c = self.client().await?;
        c.cached_query_opt(
            &format!("SELECT {TOKEN_COLS} FROM tokens WHERE token_hash = $1"),
            &[&token_hash],
        )
        .await?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn revoke_token(&self, token_hash: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE tokens SET revoked = TRUE WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?
            == 1)
    }

    async fn extend_token(&self, token_hash: &str, expires: DateTime<Utc>) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(c.cached_execute(
            "UPDATE tokens SET expires_at = $2 WHERE token_hash = $1 AND revoked = FALSE",
            &[&token_hash, &fmt_time(expires)],
        )
        .await?
            == 1)
    }

    async fn create_temporary_credential(&self, t: TemporaryCredential) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO temporary_credentials \
             (ak, sk_sealed, security_token_hash, user_id, project_id, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &t.ak,
                &t.sk_sealed,
                &t.security_token_hash,
                &t.user_id,
                &t.project_id,
                &fmt_time(t.expires),
                &fmt_time(Utc::now()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn temporary_credential(&self, ak: &str) -> StoreResult<Option<TemporaryCredential>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT ak, sk_sealed, security_token_hash, user_id, project_id, expires_at \
             FROM temporary_credentials WHERE ak = $1",
            &[&ak],
        )
        .await?
        .map(|r| {
            Ok(TemporaryCredential {
                ak: r.try_get(0)?,
                sk_sealed: r.try_get(1)?,
                security_token_hash: r.try_get(2)?,
                user_id: r.try_get(3)?,
                project_id: r.try_get(4)?,
                expires: parse_time(r.try_get(5)?)?,
            })
        })
        .transpose()
    }
}

/// The identity conformance checks on PostgreSQL: one fresh schema each.
#[cfg(test)]
mod conformance {
    use super::super::postgres::testing::fresh;

    crate::identity_conformance_tests!(fresh);
}
