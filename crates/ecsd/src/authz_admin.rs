//! `ecsd admin group ...`, `ecsd admin policy ...`, `ecsd admin user-key-create`:
//! user groups, custom policies, attachments of system roles or custom
//! policies to a group in a project.

use anyhow::{Context, bail};
use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::authz::{Policy, SystemRole};
use crate::state::AppState;
use crate::store::Role;
use crate::store::authz::{Grant, Group, StoredPolicy};

/// The domain used when none is given.
pub const DEFAULT_DOMAIN: &str = "default";

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a user group: ecsd admin group create --name ops
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Add an IAM user (by id) to a group: ecsd admin group add-user --group ops --user USER_ID
    AddUser {
        /// The group's id or name.
        #[arg(long)]
        group: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Remove a user from a group.
    RemoveUser {
        #[arg(long)]
        group: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Attach a system role or a custom policy to a group in a project:
    /// ecsd admin group attach --group ops --project ID --role operator
    Attach {
        #[arg(long)]
        group: String,
        #[arg(long)]
        project: String,
        /// admin, operator or readonly.
        #[arg(long, conflicts_with = "policy", required_unless_present = "policy")]
        role: Option<String>,
        /// A custom policy's id or name.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Detach a system role or a custom policy.
    Detach {
        #[arg(long)]
        group: String,
        #[arg(long)]
        project: String,
        #[arg(long, conflicts_with = "policy", required_unless_present = "policy")]
        role: Option<String>,
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// List the groups of a domain.
    List {
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// A group with its members and attachments.
    Show {
        #[arg(long)]
        group: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Delete a group (its memberships and attachments go with it).
    Delete {
        #[arg(long)]
        group: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a custom policy from a Huawei IAM policy document (JSON):
    /// ecsd admin policy create --name staging-resets --file policy.json
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// List the custom policies of a domain and the system roles.
    List {
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// A custom policy's document.
    Show {
        #[arg(long)]
        policy: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
    /// Delete a custom policy (and every attachment of it).
    Delete {
        #[arg(long)]
        policy: String,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
}

fn group_json(g: &Group) -> Value {
    json!({"id": g.id, "name": g.name, "domain_id": g.domain_id, "description": g.description,
           "created": crate::store::fmt_time(g.created)})
}

fn policy_json(p: &StoredPolicy) -> Value {
    json!({"id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
           "policy": serde_json::from_str::<Value>(&p.document).unwrap_or(Value::Null),
           "created": crate::store::fmt_time(p.created)})
}

/// A group by id, or by name in the domain.
pub async fn find_group(state: &AppState, domain: &str, group: &str) -> anyhow::Result<Group> {
    if let Some(g) = state.authz_store.group(group).await? {
        return Ok(g);
    }
    state
        .authz_store
        .group_by_name(domain, group)
        .await?
        .with_context(|| format!("no group {group:?} in domain {domain:?}"))
}

/// A custom policy by id, or by name in the domain.
pub async fn find_policy(
    state: &AppState,
    domain: &str,
    policy: &str,
) -> anyhow::Result<StoredPolicy> {
    if let Some(p) = state.authz_store.policy(policy).await? {
        return Ok(p);
    }
    state
        .authz_store
        .policies(domain)
        .await?
        .into_iter()
        .find(|p| p.name == policy)
        .with_context(|| format!("no policy {policy:?} in domain {domain:?}"))
}

async fn grant(
    state: &AppState,
    domain: &str,
    role: Option<String>,
    policy: Option<String>,
) -> anyhow::Result<Grant> {
    match (role, policy) {
        (Some(r), None) => SystemRole::parse(&r)
            .map(Grant::system)
            .with_context(|| format!("--role must be admin, operator or readonly, not {r:?}")),
        (None, Some(p)) => Ok(Grant::Policy(find_policy(state, domain, &p).await?.id)),
        _ => bail!("give --role or --policy"),
    }
}

fn grant_json(project: &str, g: &Grant) -> Value {
    match g.role() {
        Some(r) => json!({"project_id": project, "role": r.as_str()}),
        None => {
            json!({"project_id": project, "policy_id": g.encode().trim_start_matches("policy:")})
        }
    }
}

/// Creates a custom policy after checking its document strictly.
pub async fn create_policy(
    state: &AppState,
    domain: &str,
    name: &str,
    description: &str,
    document: &str,
) -> anyhow::Result<StoredPolicy> {
    let parsed = Policy::parse(document)?;
    // Stored in its canonical form.
    let canonical = parsed.to_value().to_string();
    Ok(state
        .authz_store
        .create_policy(domain, name, description, &canonical)
        .await?)
}

/// Creates an access key that acts as an IAM user (its groups' policies
/// decide; its role is not used). A bridge until users sign in themselves.
pub async fn create_user_key(
    state: &AppState,
    project_id: &str,
    user_id: &str,
) -> anyhow::Result<(String, secrecy::SecretString)> {
    let (ak, sk) = crate::admin::create_access_key(state, project_id, Role::Admin).await?;
    state.authz_store.bind_access_key_user(&ak, user_id).await?;
    Ok((ak, sk))
}

pub async fn group(state: &AppState, cmd: GroupCommand) -> anyhow::Result<Value> {
    let s = &state.authz_store;
    Ok(match cmd {
        GroupCommand::Create {
            name,
            description,
            domain,
        } => group_json(&s.create_group(&domain, &name, &description).await?),
        GroupCommand::AddUser {
            group,
            user,
            domain,
        } => {
            let g = find_group(state, &domain, &group).await?;
            s.add_group_member(&g.id, &user).await?;
            json!({"group_id": g.id, "user_id": user})
        }
        GroupCommand::RemoveUser {
            group,
            user,
            domain,
        } => {
            let g = find_group(state, &domain, &group).await?;
            json!({"group_id": g.id, "user_id": user, "removed": s.remove_group_member(&g.id, &user).await?})
        }
        GroupCommand::Attach {
            group,
            project,
            role,
            policy,
            domain,
        } => {
            let g = find_group(state, &domain, &group).await?;
            let grant = grant(state, &domain, role, policy).await?;
            s.attach(&g.id, &project, &grant).await?;
            let mut out = grant_json(&project, &grant);
            out["group_id"] = g.id.into();
            out
        }
        GroupCommand::Detach {
            group,
            project,
            role,
            policy,
            domain,
        } => {
            let g = find_group(state, &domain, &group).await?;
            let grant = grant(state, &domain, role, policy).await?;
            let removed = s.detach(&g.id, &project, &grant).await?;
            let mut out = grant_json(&project, &grant);
            out["group_id"] = g.id.into();
            out["removed"] = removed.into();
            out
        }
        GroupCommand::List { domain } => {
            Value::Array(s.groups(&domain).await?.iter().map(group_json).collect())
        }
        GroupCommand::Show { group, domain } => {
            let g = find_group(state, &domain, &group).await?;
            let mut out = group_json(&g);
            out["users"] = s.group_members(&g.id).await?.into();
            out["attachments"] = Value::Array(
                s.attachments(&g.id)
                    .await?
                    .iter()
                    .map(|(p, gr)| grant_json(p, gr))
                    .collect(),
            );
            out
        }
        GroupCommand::Delete { group, domain } => {
            let g = find_group(state, &domain, &group).await?;
            json!({"group_id": g.id, "deleted": s.delete_group(&g.id).await?})
        }
    })
}

pub async fn policy(state: &AppState, cmd: PolicyCommand) -> anyhow::Result<Value> {
    let s = &state.authz_store;
    Ok(match cmd {
        PolicyCommand::Create {
            name,
            file,
            description,
            domain,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            policy_json(&create_policy(state, &domain, &name, &description, &text).await?)
        }
        PolicyCommand::List { domain } => {
            let mut out: Vec<Value> = SystemRole::ALL
                .iter()
                .map(|r| json!({"name": r.as_str(), "type": "system", "policy": serde_json::from_str::<Value>(r.document()).unwrap_or(Value::Null)}))
                .collect();
            out.extend(s.policies(&domain).await?.iter().map(policy_json));
            Value::Array(out)
        }
        PolicyCommand::Show { policy, domain } => {
            policy_json(&find_policy(state, &domain, &policy).await?)
        }
        PolicyCommand::Delete { policy, domain } => {
            let p = find_policy(state, &domain, &policy).await?;
            json!({"policy_id": p.id, "deleted": s.delete_policy(&p.id).await?})
        }
    })
}

/// `ecsd admin user-key-create`: the key as printed.
pub async fn user_key(state: &AppState, project: &str, user: &str) -> anyhow::Result<Value> {
    let (ak, sk) = create_user_key(state, project, user).await?;
    Ok(json!({"project_id": project, "ak": ak, "sk": sk.expose_secret(), "user_id": user}))
}
