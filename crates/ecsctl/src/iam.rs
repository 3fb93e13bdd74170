//! `ecsctl users|groups|policies|keys`: remote IAM administration of the
//! caller's domain (issue #10). Names are resolved to ids by listing.

use anyhow::Context;
use clap::Subcommand;
use ecs_api::iam_admin::{
    CreateRoleOption, CreateRoleRequest, CreateUserOption, CreateUserRequest,
};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::api::Api;
use crate::{Out, read_password};

#[derive(Debug, Subcommand)]
pub enum Users {
    /// Create an IAM user; the password is asked twice without echo, or read
    /// from standard input with --password-stdin. No role unless --role:
    /// its groups decide.
    Create {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// admin, operator or readonly in this project.
        #[arg(long)]
        role: Option<String>,
    },
    /// The users of the domain.
    List,
    /// Disable a user: no login; its tokens stop at once.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Delete a user with its keys, tokens and memberships.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum Groups {
    /// Create a user group.
    Create { name: String },
    /// The user groups.
    List,
    /// Add a user to a group.
    AddUser { group: String, user: String },
    /// Remove a user from a group.
    RemoveUser { group: String, user: String },
    /// Grant a system role or a custom policy to the group in this project.
    Grant {
        group: String,
        /// admin, operator or readonly.
        #[arg(long, conflicts_with = "policy", required_unless_present = "policy")]
        role: Option<String>,
        /// A custom policy's name or id.
        #[arg(long)]
        policy: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Policies {
    /// Create a custom policy from a Huawei IAM policy document (JSON file).
    Create {
        name: String,
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// System roles and custom policies.
    List,
}

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Create an access key acting as a user; the SK is printed once, to stdout.
    Create {
        #[arg(long)]
        user: String,
    },
    /// The project's keys (never an SK).
    List,
    /// Disable an access key.
    Disable { ak: String },
    /// Enable a disabled access key.
    Enable { ak: String },
    /// Delete an access key.
    Delete { ak: String },
}

async fn user_id(api: &Api, name: &str) -> anyhow::Result<String> {
    let r = api.api_result("GET /v3/users", api.client().list_users().await)?;
    r.body
        .users
        .into_iter()
        .find(|u| u.name == name || u.id == name)
        .map(|u| u.id)
        .with_context(|| format!("no user {name:?}"))
}

async fn group_id(api: &Api, name: &str) -> anyhow::Result<String> {
    let r = api.api_result("GET /v3/groups", api.client().list_groups().await)?;
    r.body
        .groups
        .into_iter()
        .find(|g| g.name == name || g.id == name)
        .map(|g| g.id)
        .with_context(|| format!("no group {name:?}"))
}

fn done(out: &Out, value: serde_json::Value, text: String) {
    if out.json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

pub async fn users(api: &Api, cmd: Users, out: &Out) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Users::Create {
            name,
            password_stdin,
            role,
        } => {
            let pw = read_password(password_stdin, true)?.context("a password is needed")?;
            let req = CreateUserRequest {
                user: CreateUserOption {
                    name,
                    password: pw.into(),
                    enabled: None,
                    role,
                    description: None,
                    domain_id: None,
                },
            };
            let r = api.api_result("POST /v3.0/OS-USER/users", c.create_user(&req).await)?;
            let u = r.body.user;
            done(
                out,
                serde_json::to_value(&u)?,
                format!("created user {} ({})", u.name, u.id),
            );
        }
        Users::List => {
            let r = api.api_result("GET /v3/users", c.list_users().await)?;
            if out.json {
                println!("{}", serde_json::to_string(&r.body)?);
            } else {
                out.table(
                    &["ID", "NAME", "ENABLED", "CREATED"],
                    r.body
                        .users
                        .iter()
                        .map(|u| {
                            vec![
                                u.id.clone(),
                                u.name.clone(),
                                u.enabled.to_string(),
                                u.create_time.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Users::Disable { name } => {
            let id = user_id(api, &name).await?;
            let r = api.api_result(
                "PUT /v3.0/OS-USER/users/{id}",
                c.set_user_enabled(&id, false).await,
            )?;
            done(
                out,
                serde_json::to_value(&r.body.user)?,
                format!("disabled user {name}"),
            );
        }
        Users::Enable { name } => {
            let id = user_id(api, &name).await?;
            let r = api.api_result(
                "PUT /v3.0/OS-USER/users/{id}",
                c.set_user_enabled(&id, true).await,
            )?;
            done(
                out,
                serde_json::to_value(&r.body.user)?,
                format!("enabled user {name}"),
            );
        }
        Users::Delete { name } => {
            let id = user_id(api, &name).await?;
            api.api_result("DELETE /v3/users/{id}", c.delete_user(&id).await)?;
            done(
                out,
                json!({"user_id": id, "deleted": true}),
                format!("deleted user {name}"),
            );
        }
    }
    Ok(0)
}

pub async fn groups(api: &Api, cmd: Groups, out: &Out) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Groups::Create { name } => {
            let r = api.api_result("POST /v3/groups", c.create_group(&name).await)?;
            let g = r.body.group;
            done(
                out,
                serde_json::to_value(&g)?,
                format!("created group {} ({})", g.name, g.id),
            );
        }
        Groups::List => {
            let r = api.api_result("GET /v3/groups", c.list_groups().await)?;
            if out.json {
                println!("{}", serde_json::to_string(&r.body)?);
            } else {
                out.table(
                    &["ID", "NAME", "DESCRIPTION"],
                    r.body
                        .groups
                        .iter()
                        .map(|g| vec![g.id.clone(), g.name.clone(), g.description.clone()])
                        .collect(),
                );
            }
        }
        Groups::AddUser { group, user } => {
            let (g, u) = (group_id(api, &group).await?, user_id(api, &user).await?);
            api.api_result(
                "PUT /v3/groups/{g}/users/{u}",
                c.group_member(&g, &u, true).await,
            )?;
            done(
                out,
                json!({"group_id": g, "user_id": u}),
                format!("added {user} to {group}"),
            );
        }
        Groups::RemoveUser { group, user } => {
            let (g, u) = (group_id(api, &group).await?, user_id(api, &user).await?);
            api.api_result(
                "DELETE /v3/groups/{g}/users/{u}",
                c.group_member(&g, &u, false).await,
            )?;
            done(
                out,
                json!({"group_id": g, "user_id": u, "removed": true}),
                format!("removed {user} from {group}"),
            );
        }
        Groups::Grant {
            group,
            role,
            policy,
        } => {
            let g = group_id(api, &group).await?;
            let role_id = match (role, policy) {
                (Some(r), _) => r,
                (None, Some(p)) => {
                    let r = api.api_result("GET /v3.0/OS-ROLE/roles", c.list_roles().await)?;
                    r.body
                        .roles
                        .into_iter()
                        .find(|r| r.role_type != "system" && (r.display_name == p || r.id == p))
                        .map(|r| r.id)
                        .with_context(|| format!("no policy {p:?}"))?
                }
                (None, None) => anyhow::bail!("give --role or --policy"),
            };
            api.api_result(
                "PUT /v3/projects/{p}/groups/{g}/roles/{r}",
                c.grant_role(&g, &role_id, true).await,
            )?;
            done(
                out,
                json!({"group_id": g, "role_id": role_id, "project_id": c.config().project_id}),
                format!(
                    "granted {role_id} to {group} in project {}",
                    c.config().project_id
                ),
            );
        }
    }
    Ok(0)
}

pub async fn policies(api: &Api, cmd: Policies, out: &Out) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Policies::Create { name, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let policy: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let req = CreateRoleRequest {
                role: CreateRoleOption {
                    display_name: name,
                    role_type: "AX".into(),
                    description: None,
                    policy,
                },
            };
            let r = api.api_result("POST /v3.0/OS-ROLE/roles", c.create_role(&req).await)?;
            let p = r.body.role;
            done(
                out,
                serde_json::to_value(&p)?,
                format!("created policy {} ({})", p.display_name, p.id),
            );
        }
        Policies::List => {
            let r = api.api_result("GET /v3.0/OS-ROLE/roles", c.list_roles().await)?;
            if out.json {
                println!("{}", serde_json::to_string(&r.body)?);
            } else {
                out.table(
                    &["ID", "NAME", "TYPE"],
                    r.body
                        .roles
                        .iter()
                        .map(|r| vec![r.id.clone(), r.display_name.clone(), r.role_type.clone()])
                        .collect(),
                );
            }
        }
    }
    Ok(0)
}

pub async fn keys(api: &Api, cmd: Keys, out: &Out) -> anyhow::Result<u8> {
    let c = api.client();
    match cmd {
        Keys::Create { user } => {
            let u = user_id(api, &user).await?;
            let r = api.api_result(
                "POST /v3.0/OS-CREDENTIAL/credentials",
                c.create_credential(&u).await,
            )?;
            let k = r.body.credential;
            // The SK is shown once, on stdout only.
            if out.json {
                println!(
                    "{}",
                    json!({"access": k.access, "secret": k.secret.expose(), "user_id": k.user_id})
                );
            } else {
                println!("AK: {}\nSK: {}", k.access, k.secret.0.expose_secret());
            }
        }
        Keys::List => {
            let r = api.api_result(
                "GET /v3.0/OS-CREDENTIAL/credentials",
                c.list_credentials().await,
            )?;
            if out.json {
                println!("{}", serde_json::to_string(&r.body)?);
            } else {
                out.table(
                    &["AK", "USER", "STATUS", "CREATED"],
                    r.body
                        .credentials
                        .iter()
                        .map(|k| {
                            vec![
                                k.access.clone(),
                                k.user_id.clone(),
                                k.status.clone(),
                                k.create_time.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Keys::Disable { ak } => {
            let r = api.api_result(
                "PUT /v3.0/OS-CREDENTIAL/credentials/{ak}",
                c.set_credential_status(&ak, "inactive").await,
            )?;
            done(
                out,
                serde_json::to_value(&r.body.credential)?,
                format!("disabled {ak}"),
            );
        }
        Keys::Enable { ak } => {
            let r = api.api_result(
                "PUT /v3.0/OS-CREDENTIAL/credentials/{ak}",
                c.set_credential_status(&ak, "active").await,
            )?;
            done(
                out,
                serde_json::to_value(&r.body.credential)?,
                format!("enabled {ak}"),
            );
        }
        Keys::Delete { ak } => {
            api.api_result(
                "DELETE /v3.0/OS-CREDENTIAL/credentials/{ak}",
                c.delete_credential(&ak).await,
            )?;
            done(
                out,
                json!({"ak": ak, "deleted": true}),
                format!("deleted {ak}"),
            );
        }
    }
    Ok(0)
}
