//! Batch start, stop and reboot (`POST /v1/{project_id}/cloudservers/action`)
//! and the jobs that track them. The actions run on the servers through their
//! agents; a stopped server can be started only where something can power it
//! on (the simulator's virtual BMC) — real machines would need an out-of-band
//! power driver that ecsd does not have, and such sub-jobs fail at once.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use ecs_api::{JobEntities, JobStatus, ShowJobResponse, SubJob, SubJobEntities};
use serde_json::Value;

use crate::error::{ApiError, InternalError, display_id};
use crate::reset::{CallContext, ServerRef, audit_rejection, batch_failure, validate_ids};
use crate::state::AppState;
use crate::store::{Job, NewJob, PowerKind, Server, StoreError, fmt_time};

/// Reason given when `os-start` targets a server nothing can power on.
pub const NO_POWER_DRIVER: &str = "no out-of-band power driver: ecsd cannot power on a stopped machine; \
start it by hand (or through its BMC) and its agent reports it ACTIVE";

struct Action {
    kind: PowerKind,
    hard: bool,
    ids: Vec<String>,
}

fn parse_action(content_type: Option<&str>, body: &Bytes) -> Result<Action, ApiError> {
    let v: Value = crate::reset::parse_json(content_type, body)?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("Invalid request body: expected a JSON object."))?;
    if obj.len() != 1 {
        return Err(ApiError::invalid(
            "Invalid request body: exactly one of os-start, os-stop or reboot is required.",
        ));
    }
    let (key, inner) = obj.iter().next().expect("one key");
    let kind = match key.as_str() {
        "os-start" => PowerKind::Start,
        "os-stop" => PowerKind::Stop,
        "reboot" => PowerKind::Reboot,
        other => {
            return Err(ApiError::invalid(format!(
                "Invalid request body: unknown action {}.",
                display_id(other)
            )));
        }
    };
    let inner = inner.as_object().ok_or_else(|| {
        ApiError::invalid(format!("Invalid request body: {key} must be an object."))
    })?;
    let hard = match (kind, inner.get("type")) {
        (PowerKind::Start, None) => false,
        (PowerKind::Start, Some(_)) => {
            return Err(ApiError::invalid(
                "Invalid request body: os-start takes no type.",
            ));
        }
        (PowerKind::Stop, None) => false,
        (PowerKind::Reboot, None) => {
            return Err(ApiError::invalid(
                "Invalid request body: reboot.type is required (SOFT or HARD).",
            ));
        }
        (_, Some(t)) => match t.as_str() {
            Some("SOFT") => false,
            Some("HARD") => true,
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid request body: {key}.type must be SOFT or HARD."
                )));
            }
        },
    };
    let servers: Option<Vec<ServerRef>> = match inner.get("servers") {
        None => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
            ApiError::invalid(format!(
                "Invalid request body: {key}.servers must be a list of {{\"id\": string}}."
            ))
        })?),
    };
    let ids = validate_ids(servers, &format!("{key}.servers"))?;
    Ok(Action { kind, hard, ids })
}

fn state_allows(kind: PowerKind, status: &str) -> bool {
    match kind {
        PowerKind::Start => status == "SHUTOFF",
        PowerKind::Stop | PowerKind::Reboot => status == "ACTIVE",
    }
}

/// `POST /v1/{project_id}/cloudservers/action`: validates all servers, then
/// stores one job with a sub-job per server; agents pick them up.
pub async fn batch_action(
    state: &AppState,
    ctx: &CallContext<'_>,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<String, ApiError> {
    let action = parse_action(content_type, &body)?;
    let found = state
        .store
        .servers_by_ids(&action.ids)
        .await
        .map_err(|e| ApiError::internal("looking up servers", e))?;
    let by_id: HashMap<&str, &Server> = found
        .iter()
        .filter(|s| s.project_id == ctx.caller.project_id)
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mut failures = Vec::new();
    for id in &action.ids {
        let entry = |code: &'static str, msg: String| InternalError {
            id: id.clone(),
            error_code: code,
            error_message: msg,
        };
        match by_id.get(id.as_str()) {
            None => failures.push(entry(
                "Ecs.0114",
                format!("Instance[{}] could not be found.", display_id(id)),
            )),
            Some(s) if s.agent_public_key.is_none() => failures.push(entry(
                "Ecs.0100",
                "The agent (plug-in) is not installed on this server.".into(),
            )),
            Some(s) if !state_allows(action.kind, &s.status) => failures.push(entry(
                "Ecs.0100",
                format!(
                    "The server status {} does not allow {}.",
                    s.status,
                    action.kind.as_str()
                ),
            )),
            Some(_) => {}
        }
    }
    let action_name = format!("{}-servers", action.kind.as_str());
    if !failures.is_empty() {
        let code = failures[0].error_code;
        let err = batch_failure(failures, action.ids.len(), code);
        audit_rejection(state, ctx, &action_name, action.ids.clone(), false, &err).await;
        return Err(err);
    }
    let job_id = uuid::Uuid::new_v4().to_string();
    let subs = action
        .ids
        .iter()
        .map(|id| {
            let fail = (action.kind == PowerKind::Start && !by_id[id.as_str()].power_driver)
                .then(|| NO_POWER_DRIVER.to_owned());
            (uuid::Uuid::new_v4().to_string(), id.clone(), fail)
        })
        .collect();
    let job = NewJob {
        job_id: job_id.clone(),
        project_id: ctx.caller.project_id.clone(),
        kind: action.kind,
        hard: action.hard,
        created: Utc::now(),
        subs,
        audit: ctx.audit(
            &action_name,
            action.ids.clone(),
            false,
            format!("accepted job {job_id}"),
        ),
    };
    match state.store.create_job(job).await {
        Ok(()) => {}
        Err(StoreError::Conflict(busy)) => {
            let failures = busy
                .split(',')
                .map(|id| InternalError {
                    id: id.to_owned(),
                    error_code: "Ecs.0603",
                    error_message:
                        "Another operation is in progress on this server; retry when it ends."
                            .into(),
                })
                .collect();
            let err = batch_failure(failures, action.ids.len(), "Ecs.0603");
            audit_rejection(state, ctx, &action_name, action.ids.clone(), false, &err).await;
            return Err(err);
        }
        Err(e) => return Err(ApiError::internal("storing a job", e)),
    }
    state.wakers.wake(action.ids.iter().map(String::as_str));
    tracing::info!(job_id = %job_id, action = action.kind.as_str(), servers = action.ids.len(), "power job accepted");
    Ok(job_id)
}

/// The Huawei `ShowJob` body of a job.
pub fn show_job(job: &Job) -> ShowJobResponse {
    let status_of = |s: &str| s.parse::<JobStatus>().unwrap_or(JobStatus::Fail);
    let open = job
        .subs
        .iter()
        .filter(|s| !status_of(s.status.as_str()).is_final())
        .count();
    let failed: Vec<_> = job
        .subs
        .iter()
        .filter(|s| status_of(s.status.as_str()) == JobStatus::Fail)
        .collect();
    let status = if open > 0 {
        if job
            .subs
            .iter()
            .all(|s| status_of(s.status.as_str()) == JobStatus::Init)
        {
            JobStatus::Init
        } else {
            JobStatus::Running
        }
    } else if failed.is_empty() {
        JobStatus::Success
    } else {
        JobStatus::Fail
    };
    let end = (open == 0)
        .then(|| job.subs.iter().filter_map(|s| s.end).max())
        .flatten()
        .map(fmt_time)
        .unwrap_or_default();
    let (error_code, fail_reason) = match failed.first() {
        Some(first) if status == JobStatus::Fail => (
            first.error_code.clone(),
            Some(format!(
                "{} of {} servers failed; first: {}: {}",
                failed.len(),
                job.subs.len(),
                first.server_id,
                first.fail_reason.as_deref().unwrap_or("failed")
            )),
        ),
        _ => (None, None),
    };
    let sub_jobs = job
        .subs
        .iter()
        .map(|s| SubJob {
            status: status_of(s.status.as_str()),
            job_id: s.sub_job_id.clone(),
            job_type: job.kind.sub_job_type().into(),
            begin_time: fmt_time(s.begin),
            end_time: s.end.map(fmt_time).unwrap_or_default(),
            error_code: s.error_code.clone(),
            fail_reason: s.fail_reason.clone(),
            entities: SubJobEntities {
                server_id: s.server_id.clone(),
            },
        })
        .collect();
    ShowJobResponse {
        status,
        job_id: job.job_id.clone(),
        job_type: job.kind.job_type().into(),
        begin_time: fmt_time(job.begin),
        end_time: end,
        error_code,
        fail_reason,
        entities: JobEntities {
            sub_jobs_total: job.subs.len() as u32,
            sub_jobs,
        },
    }
}
