//! Password escrow and rotation (issue 15), HTTP-agnostic: recipients,
//! audited retrieval, rotation policies, the drift report, and the
//! scheduler that housekeeping runs (one replica at a time).
//!
//! `ecsd` holds only recipients (age public keys): a generated password is
//! encrypted to them and sealed to the agent in `reset.rs`, then zeroized;
//! nothing here can open an escrowed version.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ecs_api::{PasswordStatus, PasswordStatusList};

use crate::batch::CallContext;
use crate::domain::Error;
use crate::domain::escrow::{ApplyMode, Period, RotationSpec, catch_up_due, drift, retrieval_due};
use crate::state::{AppState, Caller};
use crate::store::escrow::{EscrowVersion, Recipient, RotationPolicy};
use crate::store::{ListFilter, Role, Server, fmt_time};

/// Registers a recipient (validated as an age X25519 recipient); audited.
pub async fn add_recipient(
    state: &AppState,
    ctx: &CallContext<'_>,
    name: &str,
    recipient: &str,
) -> Result<Recipient, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "Invalid request body: name must be 1 to 64 printable characters.",
        ));
    }
    let recipient = ecs_escrow::parse_recipient(recipient).map_err(|_| {
        Error::invalid(
            "recipient",
            "Invalid request body: recipient must be an age X25519 recipient (age1...).",
        )
    })?;
    let r = Recipient {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
        project_id: ctx.caller.project_id.clone(),
        name: name.to_owned(),
        recipient,
        created: state.clock.now(),
    };
    if !state.escrow.add_recipient(r.clone()).await? {
        return Err(Error::Conflict(
            "This recipient is registered in the project already.".into(),
        ));
    }
    state
        .store
        .record_audit(ctx.audit(
            "create-escrow-recipient",
            vec![],
            false,
            format!("accepted {} ({})", r.id, r.name),
        ))
        .await?;
    Ok(r)
}

/// Removes a recipient; audited.
pub async fn remove_recipient(
    state: &AppState,
    ctx: &CallContext<'_>,
    id: &str,
) -> Result<(), Error> {
    if !state
        .escrow
        .remove_recipient(&ctx.caller.project_id, id)
        .await?
    {
        return Err(Error::NotFound {
            entity: crate::domain::Entity::Recipient,
            id: id.to_owned(),
        });
    }
    state
        .store
        .record_audit(ctx.audit(
            "delete-escrow-recipient",
            vec![],
            false,
            format!("accepted {id}"),
        ))
        .await?;
    Ok(())
}

/// A server's escrowed versions (all, or the one asked for), audited with
/// the versions handed out; the retrieval starts the rotate-after-retrieval
/// grace of the policies that select the server.
pub async fn retrieve(
    state: &AppState,
    ctx: &CallContext<'_>,
    server_id: &str,
    version: Option<i64>,
) -> Result<Vec<EscrowVersion>, Error> {
    let mut versions = state.escrow.versions(server_id).await?;
    if let Some(v) = version {
        versions.retain(|x| x.version == v);
        if versions.is_empty() {
            let err = Error::NotFound {
                entity: crate::domain::Entity::EscrowVersion,
                id: v.to_string(),
            };
            crate::batch::audit_rejection(
                state,
                ctx,
                crate::authz::Action::GetPassword.as_str(),
                vec![server_id.to_owned()],
                false,
                &err,
            )
            .await;
            return Err(err);
        }
    }
    let listed: Vec<String> = versions.iter().map(|v| v.version.to_string()).collect();
    state
        .store
        .record_audit(ctx.audit(
            crate::authz::Action::GetPassword.as_str(),
            vec![server_id.to_owned()],
            false,
            format!("retrieved versions [{}]", listed.join(", ")),
        ))
        .await?;
    if !versions.is_empty() {
        state
            .escrow
            .record_retrieval(&ctx.caller.project_id, server_id, state.clock.now())
            .await?;
    }
    Ok(versions)
}

fn spec_of(api: &ecs_api::RotationPolicySpec) -> Result<RotationSpec, Error> {
    let apply = match api.apply.as_deref() {
        None | Some("next_restart") => ApplyMode::NextRestart,
        Some("now") => ApplyMode::Now,
        Some("now_restart") => ApplyMode::NowRestart,
        Some(_) => {
            return Err(Error::invalid(
                "apply",
                "Invalid request body: apply must be next_restart, now or now_restart.",
            ));
        }
    };
    let s = &api.schedule;
    Ok(RotationSpec {
        schedule: crate::domain::escrow::Schedule {
            every_minutes: s.every_minutes,
            every_days: s.every_days,
            window_start: s.window_start.clone(),
            window_minutes: s.window_minutes,
            utc_offset: s.utc_offset.clone(),
            time_zone: s.time_zone.clone(),
        },
        selector: crate::domain::escrow::Selector {
            tags: api.selector.tags.clone(),
            name: api.selector.name.clone(),
            os: api.selector.os.clone(),
        },
        apply,
        rotate_after_retrieval_minutes: api.rotate_after_retrieval_minutes,
        length: api.length,
    })
}

/// The API view of a stored policy.
pub fn policy_view(p: RotationPolicy) -> Result<ecs_api::RotationPolicy, Error> {
    let spec: RotationSpec = serde_json::from_str(&p.spec)
        .map_err(|e| Error::internal("a stored rotation policy", e))?;
    Ok(ecs_api::RotationPolicy {
        id: p.id,
        spec: ecs_api::RotationPolicySpec {
            name: p.name,
            schedule: ecs_api::RotationSchedule {
                every_minutes: spec.schedule.every_minutes,
                every_days: spec.schedule.every_days,
                window_start: spec.schedule.window_start,
                window_minutes: spec.schedule.window_minutes,
                utc_offset: spec.schedule.utc_offset,
                time_zone: spec.schedule.time_zone,
            },
            selector: ecs_api::RotationSelector {
                tags: spec.selector.tags,
                name: spec.selector.name,
                os: spec.selector.os,
            },
            apply: Some(
                match spec.apply {
                    ApplyMode::NextRestart => "next_restart",
                    ApplyMode::Now => "now",
                    ApplyMode::NowRestart => "now_restart",
                }
                .to_owned(),
            ),
            rotate_after_retrieval_minutes: spec.rotate_after_retrieval_minutes,
            length: spec.length,
        },
        created: fmt_time(p.created),
        last_run: p.last_run.map(fmt_time),
    })
}

/// Creates a policy (validated by the domain rules); audited. A project
/// without recipients is refused: its rotations could never be read.
pub async fn add_policy(
    state: &AppState,
    ctx: &CallContext<'_>,
    api: ecs_api::RotationPolicySpec,
) -> Result<ecs_api::RotationPolicy, Error> {
    let name = api.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "Invalid request body: name must be 1 to 64 printable characters.",
        ));
    }
    let spec = spec_of(&api)?;
    spec.validate()
        .map_err(|e| Error::invalid(e.field, format!("Invalid request body: {e}.")))?;
    if state
        .escrow
        .recipients(&ctx.caller.project_id)
        .await?
        .is_empty()
    {
        return Err(Error::invalid(
            "generate",
            "Invalid request body: rotation needs an escrow recipient in this project \
             (register one with `ecsctl escrow init`).",
        ));
    }
    let p = RotationPolicy {
        id: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
        project_id: ctx.caller.project_id.clone(),
        name,
        spec: serde_json::to_string(&spec).map_err(|e| Error::internal("a rotation policy", e))?,
        created: state.clock.now(),
        last_run: None,
    };
    if !state.escrow.add_rotation_policy(p.clone()).await? {
        return Err(Error::Conflict(
            "A rotation policy of this name exists in the project.".into(),
        ));
    }
    state
        .store
        .record_audit(ctx.audit(
            "create-rotation-policy",
            vec![],
            false,
            format!("accepted {} ({})", p.id, p.name),
        ))
        .await?;
    policy_view(p)
}

/// Deletes a policy by id or name; audited.
pub async fn remove_policy(
    state: &AppState,
    ctx: &CallContext<'_>,
    id_or_name: &str,
) -> Result<(), Error> {
    if !state
        .escrow
        .delete_rotation_policy(&ctx.caller.project_id, id_or_name)
        .await?
    {
        return Err(Error::NotFound {
            entity: crate::domain::Entity::RotationPolicy,
            id: id_or_name.to_owned(),
        });
    }
    state
        .store
        .record_audit(ctx.audit(
            "delete-rotation-policy",
            vec![],
            false,
            format!("accepted {id_or_name}"),
        ))
        .await?;
    Ok(())
}

/// Every server of a project (paged through the listing).
async fn all_servers(state: &AppState, project_id: &str) -> Result<Vec<Server>, Error> {
    const PAGE: u32 = 1000;
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let (page, _) = state
            .store
            .list_servers(project_id, ListFilter::default(), PAGE, 0, marker)
            .await?;
        let n = page.len();
        marker = page.last().map(|s| s.id.clone());
        out.extend(page);
        if n < PAGE as usize {
            return Ok(out);
        }
    }
}

/// A project's policies, parsed, with their periods.
async fn policies_of(
    state: &AppState,
    project_id: Option<&str>,
) -> Result<Vec<(RotationPolicy, RotationSpec, Period)>, Error> {
    let mut out = Vec::new();
    for p in state.escrow.rotation_policies(project_id).await? {
        let spec: RotationSpec = serde_json::from_str(&p.spec)
            .map_err(|e| Error::internal("a stored rotation policy", e))?;
        let period = spec
            .validate()
            .map_err(|e| Error::internal("a stored rotation policy", e))?;
        out.push((p, spec, period));
    }
    Ok(out)
}

/// The drift report of a project.
pub async fn password_status(
    state: &AppState,
    project_id: &str,
) -> Result<PasswordStatusList, Error> {
    let servers = all_servers(state, project_id).await?;
    let newest: HashMap<String, EscrowVersion> = state
        .escrow
        .newest_versions(project_id)
        .await?
        .into_iter()
        .map(|v| (v.server_id.clone(), v))
        .collect();
    let policies = policies_of(state, Some(project_id)).await?;
    let now = state.clock.now();
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        let v = newest.get(&s.id);
        // The shortest period of a policy selecting the server.
        let period = policies
            .iter()
            .filter(|(_, spec, _)| spec.selector.matches(&s.name, s.os_type, &s.tags))
            .map(|(_, _, p)| p.every)
            .min();
        let status = drift(v.map(|v| (v.created, v.state)), period, now);
        out.push(PasswordStatus {
            server_id: s.id.clone(),
            name: s.name.clone(),
            version: v.map(|v| v.version),
            created: v.map(|v| fmt_time(v.created)),
            state: v.and_then(|v| v.state),
            status: status.as_str().to_owned(),
        });
    }
    Ok(PasswordStatusList { servers: out })
}

/// The caller a rotation runs as: ecsd itself, for the policy's project.
fn system_caller(project_id: &str, policy_id: &str) -> Caller {
    Caller {
        access_key: format!("rotation:{policy_id}"),
        project_id: project_id.to_owned(),
        role: Role::Admin,
        user: None,
    }
}

/// Rotates `servers` (those that can take a reset now; the others are
/// caught up later) for one policy: one reset request, audited as
/// `rotate-password`.
async fn rotate(
    state: &AppState,
    policy: &RotationPolicy,
    spec: &RotationSpec,
    servers: Vec<&Server>,
    why: &str,
) -> Result<usize, Error> {
    let ready: Vec<&Server> = servers
        .into_iter()
        .filter(|s| s.agent_public_key.is_some() && crate::domain::server::allows_reset(s.status))
        .collect();
    if ready.is_empty() {
        return Ok(0);
    }
    let caller = system_caller(&policy.project_id, &policy.id);
    let request_id = crate::error::new_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: "ecsd",
    };
    let ids: Vec<String> = ready.iter().map(|s| s.id.clone()).collect();
    let length = spec.length.unwrap_or(ecs_escrow::DEFAULT_LENGTH);
    crate::reset::rotate(
        state,
        &ctx,
        &ids,
        &ready,
        length,
        spec.apply == ApplyMode::Now,
    )
    .await?;
    if spec.apply == ApplyMode::NowRestart {
        crate::power::reboot(state, &ctx, &ids).await?;
    }
    tracing::info!(
        request_id = %request_id,
        policy = %policy.name,
        servers = ids.len(),
        why,
        "rotation stored"
    );
    Ok(ids.len())
}

/// One round of the scheduler at `now`: each due policy is claimed (once,
/// whichever replica asks first) and rotates its selected servers; servers
/// of a policy that ran (at least
/// [`crate::domain::escrow::CATCH_UP_SETTLE`] ago) but had no
/// version made since (no agent key, or a state that took no reset then)
/// are caught up; servers whose password was
/// retrieved are rotated after the grace. Returns how many servers were
/// rotated.
pub async fn run_rotations(state: &AppState, now: DateTime<Utc>) -> Result<usize, Error> {
    let policies = policies_of(state, None).await?;
    let mut rotated = 0;
    let mut by_project: HashMap<String, Vec<Server>> = HashMap::new();
    for (policy, spec, period) in &policies {
        if !by_project.contains_key(&policy.project_id) {
            let servers = all_servers(state, &policy.project_id).await?;
            by_project.insert(policy.project_id.clone(), servers);
        }
        let servers = &by_project[&policy.project_id];
        let selected: Vec<&Server> = servers
            .iter()
            .filter(|s| spec.selector.matches(&s.name, s.os_type, &s.tags))
            .collect();
        if period.due(policy.last_run, now) {
            if !state
                .escrow
                .claim_rotation(&policy.id, policy.last_run, now)
                .await?
            {
                continue; // another replica took this run
            }
            rotated += rotate(state, policy, spec, selected, "scheduled").await?;
        } else if let Some(last) = policy.last_run.filter(|l| catch_up_due(*l, now)) {
            // Catch-up: selected servers with no version since the last run.
            let newest: HashMap<String, DateTime<Utc>> = state
                .escrow
                .newest_versions(&policy.project_id)
                .await?
                .into_iter()
                .map(|v| (v.server_id, v.created))
                .collect();
            let behind: Vec<&Server> = selected
                .into_iter()
                .filter(|s| newest.get(&s.id).is_none_or(|t| *t < last))
                .collect();
            rotated += rotate(state, policy, spec, behind, "catch-up").await?;
        }
    }
    // Rotate after retrieval: the shortest grace of the policies that
    // select the server and ask for it.
    let pending = state.escrow.pending_retrievals().await?;
    for (project_id, server_id, at) in pending {
        let Some(servers) = by_project.get(&project_id) else {
            continue;
        };
        let Some(server) = servers.iter().find(|s| s.id == server_id) else {
            continue;
        };
        let policy = policies
            .iter()
            .filter(|(p, spec, _)| {
                p.project_id == project_id
                    && spec.rotate_after_retrieval_minutes.is_some()
                    && spec
                        .selector
                        .matches(&server.name, server.os_type, &server.tags)
            })
            .min_by_key(|(_, spec, _)| spec.rotate_after_retrieval_minutes);
        let Some((policy, spec, _)) = policy else {
            continue;
        };
        let grace = spec.rotate_after_retrieval_minutes.unwrap_or(0);
        if retrieval_due(at, grace, now) {
            rotated += rotate(state, policy, spec, vec![server], "after retrieval").await?;
        }
    }
    Ok(rotated)
}
