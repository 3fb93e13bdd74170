//! Batch start, stop and reboot (`POST /v1/{project_id}/cloudservers/action`)
//! and the jobs that track them. The actions run on the servers through their
//! agents; a stopped server can be started only where something can power it
//! on (the simulator's virtual BMC) — real machines would need an out-of-band
//! power driver that ecsd does not have, and such sub-jobs fail at once.

use std::collections::HashMap;

use bytes::Bytes;
use ecs_api::{JobEntities, ShowJobResponse, SubJob, SubJobEntities};
use serde_json::Value;

use crate::batch::{
    CallContext, ServerRef, audit_rejection, enrolled, parse_json, reject, validate_ids,
};
use crate::domain::error::display_id;
use crate::domain::{Error, Problem, ServerFailure, job as job_rules, server as server_rules};
use crate::state::AppState;
use crate::store::{Job, NewJob, PowerKind, Server, fmt_time};

/// Reason given when `os-start` targets a server nothing can power on.
pub use crate::domain::reasons::NO_POWER_DRIVER;

struct Action {
    kind: PowerKind,
    hard: bool,
    ids: Vec<String>,
}

fn parse_action(content_type: Option<&str>, body: &Bytes) -> Result<Action, Error> {
    let v: Value = parse_json(content_type, body)?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("", "Invalid request body: expected a JSON object."))?;
    if obj.len() != 1 {
        return Err(Error::invalid(
            "",
            "Invalid request body: exactly one of os-start, os-stop or reboot is required.",
        ));
    }
    let (key, inner) = obj.iter().next().expect("one key");
    let kind = match key.as_str() {
        "os-start" => PowerKind::Start,
        "os-stop" => PowerKind::Stop,
        "reboot" => PowerKind::Reboot,
        other => {
            return Err(Error::invalid(
                "",
                format!(
                    "Invalid request body: unknown action {}.",
                    display_id(other)
                ),
            ));
        }
    };
    let inner = inner.as_object().ok_or_else(|| {
        Error::invalid(
            key.as_str(),
            format!("Invalid request body: {key} must be an object."),
        )
    })?;
    let hard = match (kind, inner.get("type")) {
        (PowerKind::Start, None) => false,
        (PowerKind::Start, Some(_)) => {
            return Err(Error::invalid(
                "os-start.type",
                "Invalid request body: os-start takes no type.",
            ));
        }
        (PowerKind::Stop, None) => false,
        (PowerKind::Reboot, None) => {
            return Err(Error::invalid(
                "reboot.type",
                "Invalid request body: reboot.type is required (SOFT or HARD).",
            ));
        }
        (_, Some(t)) => match t.as_str() {
            Some("SOFT") => false,
            Some("HARD") => true,
            _ => {
                return Err(Error::invalid(
                    format!("{key}.type"),
                    format!("Invalid request body: {key}.type must be SOFT or HARD."),
                ));
            }
        },
    };
    let servers: Option<Vec<ServerRef>> = match inner.get("servers") {
        None => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
            Error::invalid(
                format!("{key}.servers"),
                format!(
                    "Invalid request body: {key}.servers must be a list of {{\"id\": string}}."
                ),
            )
        })?),
    };
    let ids = validate_ids(servers, &format!("{key}.servers"))?;
    Ok(Action { kind, hard, ids })
}

/// `POST .../cloudservers/action`'s parser for the fuzz targets (`fuzz/`,
/// feature `fuzzing`), as a comparable summary.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_parse_action(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
    let a = parse_action(content_type, body)?;
    Ok(format!(
        "{} hard={} ids={:?}",
        a.kind.as_str(),
        a.hard,
        a.ids
    ))
}

/// `POST /v1/{project_id}/cloudservers/action`: validates all servers, then
/// stores one job with a sub-job per server; agents pick them up.
pub async fn batch_action(
    state: &AppState,
    ctx: &CallContext<'_>,
    permits: &crate::authorize::Permits,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<String, Error> {
    let action = parse_action(content_type, &body)?;
    let found = state.store.servers_by_ids(&action.ids).await?;
    let by_id: HashMap<&str, &Server> = found
        .iter()
        .filter(|s| s.project_id == ctx.caller.project_id)
        .map(|s| (s.id.as_str(), s))
        .collect();
    let action_name = format!("{}-servers", action.kind.as_str());
    // The action is known once the body names it; a caller who may not do
    // it on any server is refused for every server of the batch.
    let permit = permits.permit(crate::authorize::power_action(action.kind));
    let refused = permit.refused(&action.ids, |id| by_id.get(id).copied());
    if !refused.is_empty() {
        let err = reject(refused, action.ids.len());
        audit_rejection(state, ctx, &action_name, action.ids.clone(), false, &err).await;
        return Err(err);
    }
    let mut failures = Vec::new();
    for id in &action.ids {
        let checked = enrolled(
            by_id.get(id.as_str()).copied(),
            ctx.caller,
            Problem::NoAgent,
        )
        .and_then(|s| {
            if server_rules::allows_power(action.kind, s.status) {
                Ok(s)
            } else {
                Err(Problem::PowerNotAllowed(s.status, action.kind))
            }
        });
        if let Err(problem) = checked {
            failures.push(ServerFailure::new(id.clone(), problem));
        }
    }
    if !failures.is_empty() {
        let err = reject(failures, action.ids.len());
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
        created: state.clock.now(),
        subs,
        audit: ctx.audit(
            &action_name,
            action.ids.clone(),
            false,
            format!("accepted job {job_id}"),
        ),
    };
    let subs = job.subs.len() as u64;
    match state.store.create_job(job).await {
        Ok(()) => crate::metrics::sub_jobs("accepted", subs),
        Err(Error::Busy { ids }) => {
            let failures = ids
                .into_iter()
                .map(|id| ServerFailure::new(id, Problem::Busy))
                .collect();
            let err = reject(failures, action.ids.len());
            audit_rejection(state, ctx, &action_name, action.ids.clone(), false, &err).await;
            return Err(err);
        }
        Err(e) => return Err(e),
    }
    state.wakers.wake(action.ids.iter().map(String::as_str));
    state.changes.bump();
    tracing::info!(job_id = %job_id, action = action.kind.as_str(), servers = action.ids.len(), "power job accepted");
    Ok(job_id)
}

/// A soft reboot of `ids` on behalf of ecsd itself (a rotation applied
/// "now + restart"): the same validation and job as the API's; a batch
/// that cannot be stored whole is logged and skipped (its passwords apply
/// at the servers' next restart anyway).
pub async fn reboot(state: &AppState, ctx: &CallContext<'_>, ids: &[String]) -> Result<(), Error> {
    let servers: Vec<ecs_api::ServerRef> = ids.iter().map(ecs_api::ServerRef::new).collect();
    let body = serde_json::json!({"reboot": {"type": "SOFT", "servers": servers}});
    let body =
        Bytes::from(serde_json::to_vec(&body).map_err(|e| Error::internal("reboot body", e))?);
    match batch_action(
        state,
        ctx,
        &crate::authorize::Permits::all(),
        Some("application/json"),
        body,
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e @ (Error::Rejected { .. } | Error::Busy { .. })) => {
            tracing::warn!(error = %e, "the restart after a rotation was not stored");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The Huawei `ShowJob` body of a job.
pub fn show_job(job: &Job) -> ShowJobResponse {
    let summary = job_rules::summarize(&job.subs);
    let sub_jobs = job
        .subs
        .iter()
        .map(|s| SubJob {
            status: s.status,
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
        status: summary.status,
        job_id: job.job_id.clone(),
        job_type: job.kind.job_type().into(),
        begin_time: fmt_time(job.begin),
        end_time: summary.end.map(fmt_time).unwrap_or_default(),
        error_code: summary.error_code,
        fail_reason: summary.fail_reason,
        entities: JobEntities {
            sub_jobs_total: job.subs.len() as u32,
            sub_jobs,
        },
    }
}
