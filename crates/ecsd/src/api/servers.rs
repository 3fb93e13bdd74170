//! Servers and power actions through the Huawei API: list, show, batch
//! start/stop/reboot, jobs.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ecs_api::server::{CapacityReservationSpecification, EnclaveOptions};
use ecs_api::{
    AgentInfo, EcsdServerExtension, HostStatus, JobResult, LastReset, ListServersResponse,
    ListedServer, ServerAddress, ServerDetail, ServerFault, ServerFlavor, ServerImage,
    ServerStatus, ShowJobResponse, ShowServerResponse,
};

use crate::authorize::{self, authorize};
use crate::authz::Action;
use crate::error::{ApiError, current_request_id};
use crate::reset::CallContext;
use crate::state::{AppState, Caller, Source};
use crate::store::{ListFilter, Server};

fn huawei_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `ServerDetail` with every field Huawei's definition marks required, in
/// the types the SDKs expect; unknown values are "", 0, false, [] or {}.
pub fn server_detail(s: &Server, stale_secs: u64, now: DateTime<Utc>) -> ServerDetail {
    let fresh = s
        .agent_last_seen
        .is_some_and(|t| (now - t).num_seconds() <= stale_secs as i64);
    let status = s.status;
    let (vm_state, power_state) = match status {
        ServerStatus::Shutoff => ("stopped", 4),
        ServerStatus::Error => ("error", 0),
        _ => ("active", 1),
    };
    let mut addresses = BTreeMap::new();
    if !s.addresses.is_empty() {
        let list = s
            .addresses
            .iter()
            .map(|a| ServerAddress {
                version: if a.contains(':') { "6" } else { "4" }.into(),
                addr: a.clone(),
                ip_type: "fixed".into(),
                mac_addr: String::new(),
                port_id: String::new(),
            })
            .collect();
        addresses.insert("agent".to_owned(), list);
    }
    let metadata = BTreeMap::from([
        ("os_type".to_owned(), s.os_type.as_str().to_owned()),
        ("charging_mode".to_owned(), "0".to_owned()),
    ]);
    ServerDetail {
        id: s.id.clone(),
        name: s.name.clone(),
        description: String::new(),
        status,
        tenant_id: s.project_id.clone(),
        user_id: String::new(),
        created: huawei_time(s.created),
        updated: huawei_time(s.updated),
        host_id: String::new(),
        host_status: if fresh {
            HostStatus::Up
        } else {
            HostStatus::Unknown
        },
        locked: false,
        tags: s.tags.clone(),
        sys_tags: Vec::new(),
        enterprise_project_id: "0".into(),
        progress: 0,
        config_drive: String::new(),
        access_ipv4: String::new(),
        access_ipv6: String::new(),
        auto_terminate_time: String::new(),
        key_name: String::new(),
        addresses,
        flavor: ServerFlavor {
            id: String::new(),
            name: String::new(),
            disk: "0".into(),
            vcpus: "0".into(),
            ram: "0".into(),
            gpus: Vec::new(),
            asic_accelerators: Vec::new(),
        },
        image: ServerImage { id: String::new() },
        security_groups: Vec::new(),
        metadata,
        enclave_options: EnclaveOptions::default(),
        spod_id: String::new(),
        capacity_reservation_specification: CapacityReservationSpecification::default(),
        capacity_reservation_id: String::new(),
        vm_state: vm_state.into(),
        task_state: s.task_state.clone().unwrap_or_default(),
        power_state,
        availability_zone: String::new(),
        launched_at: s.created.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        terminated_at: String::new(),
        volumes_attached: Vec::new(),
        host: String::new(),
        hostname: s.hostname.clone().unwrap_or_default(),
        hypervisor_hostname: String::new(),
        instance_name: s.name.clone(),
        kernel_id: String::new(),
        ramdisk_id: String::new(),
        root_device_name: String::new(),
        launch_index: 0,
        reservation_id: String::new(),
        disk_config: String::new(),
        ecsd: EcsdServerExtension {
            agent: AgentInfo {
                enrolled: s.agent_public_key.is_some(),
                version: s.agent_version.clone(),
                last_seen: s.agent_last_seen.map(crate::store::fmt_time),
                boot_id: s.boot_id.clone(),
            },
            last_reset: s.last_reset.as_ref().map(|(id, st)| LastReset {
                request_id: id.clone(),
                state: *st,
            }),
        },
    }
}

fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::invalid(format!(
                    "Invalid query parameter {name}: an integer is required."
                ))
            })
        })
        .transpose()
}

/// `GET /v1/{project_id}/cloudservers/detail`.
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/detail",
    operation_id = "ListServersDetails", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 25)."),
        ("offset" = Option<i64>, Query, description = "Page number, from 1 (0 means 1)."),
        ("marker" = Option<String>, Query, description = "The id of the last server of the previous page."),
        ("name" = Option<String>, Query, description = "Substring of the name."),
        ("status" = Option<String>, Query, description = "ACTIVE, SHUTOFF, REBOOT, HARD_REBOOT, ..."),
        ("ip" = Option<String>, Query, description = "Substring of an address."),
        ("ip_eq" = Option<String>, Query, description = "An exact address."),
        ("tags" = Option<String>, Query, description = "Servers with this tag."),
        ("not-tags" = Option<String>, Query, description = "Servers without this tag."),
        ("os_type" = Option<String>, Query, description = "Ours: Linux or Windows servers only (another value matches none)."),
        ("server_id" = Option<String>, Query, description = "Comma-separated ids (at most 100); overrides the other filters; unknown ids come back with a fault."),
    ),
    responses(
        (status = 200, description = "One page, newest first, and the total count.", body = ListServersResponse),
        (status = 400, description = "An invalid query parameter (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): listing needs ecs:cloudServers:list allowed for the whole project (a tag-conditioned Allow does not list).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ListServersResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::List, true).await?;
    let Query(q) = query.map_err(|_| ApiError::invalid("Invalid query string."))?;
    let limit = int_param(&q, "limit")?.unwrap_or(25);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "Invalid query parameter limit: it must be 1 to 1000.",
        ));
    }
    let offset = int_param(&q, "offset")?.unwrap_or(1);
    if offset < 0 || offset > i64::from(u32::MAX) {
        return Err(ApiError::invalid(
            "Invalid query parameter offset: it must be 0 or more.",
        ));
    }
    let server_ids = q.get("server_id").map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    if server_ids.as_ref().is_some_and(|ids| ids.len() > 100) {
        return Err(ApiError::invalid(
            "Invalid query parameter server_id: at most 100 ids.",
        ));
    }
    let filter = ListFilter {
        name: q.get("name").cloned(),
        status: q.get("status").cloned(),
        ip: q.get("ip").cloned(),
        ip_eq: q.get("ip_eq").cloned(),
        tags: q.get("tags").cloned(),
        not_tags: q.get("not-tags").cloned(),
        os_type: q.get("os_type").cloned(),
        server_ids: server_ids.clone(),
    };
    let (servers, count) = state
        .store
        .list_servers(
            &caller.project_id,
            filter,
            limit as u32,
            offset.max(1) as u32,
            q.get("marker").cloned(),
        )
        .await?;
    let now = Utc::now();
    let mut out: Vec<ListedServer> = servers
        .iter()
        .map(|s| {
            ListedServer::Detail(Box::new(server_detail(
                s,
                state.config.agent_stale_secs,
                now,
            )))
        })
        .collect();
    if let Some(ids) = server_ids {
        // Unknown ids come back with only id and fault (as Huawei does).
        for id in ids
            .iter()
            .filter(|id| !servers.iter().any(|s| &&s.id == id))
        {
            out.push(ListedServer::Missing {
                id: id.clone(),
                fault: ServerFault {
                    code: 404,
                    message: "Instance could not be found.".into(),
                },
            });
        }
    }
    Ok(Json(ListServersResponse {
        count,
        servers: out,
    }))
}

/// `GET /v1/{project_id}/cloudservers/{server_id}`.
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/{server_id}",
    operation_id = "ShowServer", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "The server.", body = ShowServerResponse),
        (status = 400, description = "Malformed path (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action (on this server, with its tags).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ShowServerResponse>, ApiError> {
    let (_, id) = super::path(p)?;
    let permit = authorize(&state, &caller, &source.0, Action::Get, false).await?;
    let s = state
        .store
        .server(&caller.project_id, &id)
        .await
        .map_err(|e| ApiError::store("looking up a server", e))?
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    if !permit.allows(&s) {
        authorize::audit_denial(&state, &caller, &source.0, permit.action, vec![id.clone()]).await;
        return Err(permit.refuse(&id).into());
    }
    Ok(Json(ShowServerResponse {
        server: server_detail(&s, state.config.agent_stale_secs, Utc::now()),
    }))
}

/// `POST /v1/{project_id}/cloudservers/action`.
/// Huawei `BatchStartServers`, `BatchStopServers`, `BatchRebootServers`.
#[utoipa::path(post, path = "/v1/{project_id}/cloudservers/action",
    operation_id = "BatchServerAction", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    request_body(content = ecs_api::ServerAction, content_type = "application/json"),
    responses(
        (status = 200, description = "A job with one sub-job per server.", body = JobResult),
        (status = 400, description = "Nothing was done: an invalid body (Ecs.0005, Common.0002), or servers that cannot take it — unknown or another project's (Ecs.0114), no plug-in or a state that forbids it (Ecs.0100), another operation in progress (Ecs.0603); internalError lists each failing server.", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action at all (gateway body), or not on some servers of the batch (nothing done; the batch body with internalError naming each such server).", body = ecs_api::ErrorBody),
    ))]
pub async fn action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<JobResult>, ApiError> {
    let permits = authorize::permits(&state, &caller).await?;
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    let job_id =
        crate::power::batch_action(&state, &ctx, &permits, super::content_type(&headers), body)
            .await?;
    Ok(Json(JobResult { job_id }))
}

/// `GET /v1/{project_id}/jobs/{job_id}`.
#[utoipa::path(get, path = "/v1/{project_id}/jobs/{job_id}",
    operation_id = "ShowJob", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("job_id" = String, Path, description = "A job id (UUID)."),
        ("wait" = Option<u64>, Query, description = "Ours: seconds (0 to 50) to wait for a change: the answer comes at once when the job is finished, 0.1 s after the job or a sub-job changes (so that changes arriving together are answered together), else after this long.")),
    responses(
        (status = 200, description = "The job and its sub-jobs.", body = ShowJobResponse),
        (status = 400, description = "Invalid or unknown job id (Common.0011); a bad `wait` (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ShowJobResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::GetJob, true).await?;
    let invalid = || ApiError::ecs(StatusCode::BAD_REQUEST, "Common.0011", "Invalid job ID.");
    let (_, job_id) = p.map(|Path(t)| t).map_err(|_| invalid())?;
    if uuid::Uuid::parse_str(&job_id).is_err() {
        return Err(invalid());
    }
    let wait = super::wait::wait_param(query)?;
    let read = || async {
        let job = state
            .store
            .job(&caller.project_id, &job_id)
            .await
            .map_err(|e| ApiError::store("reading a job", e))?
            .ok_or_else(invalid)?;
        Ok(crate::power::show_job(&job))
    };
    let done = |j: &ShowJobResponse| {
        matches!(
            j.status,
            ecs_api::JobStatus::Success | ecs_api::JobStatus::Fail
        )
    };
    Ok(Json(
        super::wait::until_changed(&state, wait, read, done).await?,
    ))
}
