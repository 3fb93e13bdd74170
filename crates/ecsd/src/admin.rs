//! Administration without the API: projects, access keys, servers and
//! enrollment tokens (`ecsd admin ...`). Also used by `--dev`.

use anyhow::Context;
use ecs_policy::OsType;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::secrets::{new_access_key, new_secret_key};
use crate::state::AppState;
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
