//! Administration without the API: projects, access keys, servers and
//! enrollment tokens (`ecsd admin ...`). Also used by `--dev`.

use anyhow::Context;
use ecs_policy::OsType;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::identity;
use crate::secrets::{new_access_key, new_secret_key};
use crate::state::AppState;
use crate::store::identity::{Domain, User, UserRole};
use crate::store::{AccessKey, NewServer, Project, Role};

#[derive(Serialize)]
pub struct NewKey {
    pub project_id: String,
    pub ak: String,
    pub sk: String,
    pub role: &'static str,
}

pub async fn create_project(state: &AppState, name: &str) -> anyhow::Result<Project> {
    Ok(state.store.create_project(name).await?)
}

/// Creates an AK/SK pair; the SK is stored only encrypted under the master key.
pub async fn create_access_key(
    state: &AppState,
    project_id: &str,
    role: Role,
) -> anyhow::Result<(String, SecretString)> {
    state
        .store
        .project(project_id)
        .await?
        .with_context(|| format!("no project {project_id}"))?;
    let ak = new_access_key();
    let sk = new_secret_key();
    state
        .store
        .create_access_key(AccessKey {
            ak: ak.clone(),
            project_id: project_id.to_owned(),
            sk_sealed: state.master.encrypt(&ak, sk.expose_secret().as_bytes()),
            role,
        })
        .await?;
    Ok((ak, sk))
}

/// Registers a server whose agent key is known (for agents enrolled out of band).
pub async fn register_server(
    state: &AppState,
    project_id: &str,
    name: &str,
    os_type: OsType,
    public_key: Option<&str>,
) -> anyhow::Result<crate::store::Server> {
    let key = public_key
        .map(ecs_seal::PublicKey::from_base64)
        .transpose()
        .context("the public key must be a base64 X25519 key")?;
    Ok(state
        .store
        .register_server(NewServer {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.to_owned(),
            name: name.to_owned(),
            os_type,
            agent_public_key: key.map(|k| k.to_bytes()),
        })
        .await?)
}

/// Creates a project, in `domain` (created if absent) or the default domain.
pub async fn create_project_in(
    state: &AppState,
    name: &str,
    domain: Option<&str>,
) -> anyhow::Result<(Project, Domain)> {
    let project = state.store.create_project(name).await?;
    let domain = match domain {
        Some(d) => {
            let d = state.identity.ensure_domain(d).await?;
            state
                .identity
                .set_project_domain(&project.id, &d.id)
                .await?;
            d
        }
        None => state
            .identity
            .project_domain(&project.id)
            .await?
            .context("the new project has no domain")?,
    };
    Ok((project, domain))
}

/// A user as `ecsd admin user-list` shows it (never the password hash).
#[derive(Serialize)]
pub struct UserInfo {
    pub id: String,
    pub domain: String,
    pub name: String,
    pub enabled: bool,
    pub created: String,
    /// The user's role per project of its domain.
    pub roles: Vec<ProjectRole>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProjectRole {
    pub project: String,
    pub project_id: String,
    pub role: &'static str,
}

async fn domain_named(state: &AppState, domain: &str) -> anyhow::Result<Domain> {
    state
        .identity
        .domain_by_name(domain)
        .await?
        .with_context(|| format!("no domain {domain:?}"))
}

/// A project of the domain by id or name.
async fn domain_project(state: &AppState, d: &Domain, project: &str) -> anyhow::Result<Project> {
    let projects = state.identity.domain_projects(&d.id).await?;
    projects
        .into_iter()
        .find(|p| p.id == project || p.name == project)
        .with_context(|| format!("no project {project:?} in domain {:?}", d.name))
}

pub async fn find_user(state: &AppState, domain: &str, name: &str) -> anyhow::Result<User> {
    let d = domain_named(state, domain).await?;
    state
        .identity
        .user_by_name(&d.id, name)
        .await?
        .with_context(|| format!("no user {name:?} in domain {domain:?}"))
}

/// Creates a user with `role` in `project` (id or name), or in every
/// project of the domain when `project` is `None`; without a role the user
/// has none (its groups decide). The password is hashed
/// (argon2id) before it is stored.
pub async fn create_user(
    state: &AppState,
    domain: &str,
    name: &str,
    password: &SecretString,
    role: Option<UserRole>,
    project: Option<&str>,
) -> anyhow::Result<UserInfo> {
    identity::check_user_name(name).map_err(anyhow::Error::msg)?;
    identity::check_new_password(password.expose_secret()).map_err(anyhow::Error::msg)?;
    let d = domain_named(state, domain).await?;
    let projects = match (role, project) {
        (None, _) => Vec::new(),
        (Some(_), Some(p)) => vec![domain_project(state, &d, p).await?],
        (Some(_), None) => state.identity.domain_projects(&d.id).await?,
    };
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || identity::hash_password(&pw))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    let user = User {
        id: uuid::Uuid::new_v4().simple().to_string(),
        domain_id: d.id.clone(),
        name: name.to_owned(),
        password_hash: hash,
        enabled: true,
        created: chrono::Utc::now(),
    };
    state.identity.create_user(user.clone()).await?;
    if let Some(role) = role {
        for p in &projects {
            state.identity.assign_role(&user.id, &p.id, role).await?;
        }
    }
    user_info(state, &d, user).await
}

/// Sets the user's role in a project of its domain.
pub async fn assign_role(
    state: &AppState,
    domain: &str,
    name: &str,
    project: &str,
    role: UserRole,
) -> anyhow::Result<UserInfo> {
    let d = domain_named(state, domain).await?;
    let user = find_user(state, domain, name).await?;
    let p = domain_project(state, &d, project).await?;
    state.identity.assign_role(&user.id, &p.id, role).await?;
    user_info(state, &d, user).await
}

async fn user_info(state: &AppState, d: &Domain, u: User) -> anyhow::Result<UserInfo> {
    let mut roles = Vec::new();
    for p in state.identity.domain_projects(&d.id).await? {
        if let Some(r) = state.identity.user_role(&u.id, &p.id).await? {
            roles.push(ProjectRole {
                project: p.name,
                project_id: p.id,
                role: r.as_str(),
            });
        }
    }
    Ok(UserInfo {
        id: u.id,
        domain: d.name.clone(),
        name: u.name,
        enabled: u.enabled,
        created: crate::store::fmt_time(u.created),
        roles,
    })
}

pub async fn list_users(state: &AppState, domain: &str) -> anyhow::Result<Vec<UserInfo>> {
    let d = domain_named(state, domain).await?;
    let mut out = Vec::new();
    for u in state.identity.list_users(&d.id).await? {
        out.push(user_info(state, &d, u).await?);
    }
    Ok(out)
}

/// Enables or disables a user; a disabled user's tokens and temporary
/// credentials stop working at once.
pub async fn set_user_enabled(
    state: &AppState,
    domain: &str,
    name: &str,
    enabled: bool,
) -> anyhow::Result<UserInfo> {
    let u = find_user(state, domain, name).await?;
    state.identity.set_user_enabled(&u.id, enabled).await?;
    let d = domain_named(state, domain).await?;
    let u = state
        .identity
        .user(&u.id)
        .await?
        .context("the user vanished")?;
    user_info(state, &d, u).await
}

/// Deletes a user with its roles, tokens and temporary credentials.
pub async fn delete_user(state: &AppState, domain: &str, name: &str) -> anyhow::Result<String> {
    let u = find_user(state, domain, name).await?;
    state.identity.delete_user(&u.id).await?;
    Ok(u.id)
}
