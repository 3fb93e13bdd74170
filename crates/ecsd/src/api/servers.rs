//! Servers and power actions through the Huawei API: list, show, batch
//! start/stop/reboot, jobs.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{ApiError, current_request_id};
use crate::reset::CallContext;
use crate::state::{AppState, Caller, Source};
use crate::store::{ListFilter, Server};

fn huawei_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `ServerDetail` with every field Huawei's definition marks required, in
/// the types the SDKs expect; unknown values are "", 0, false, [] or {}.
pub fn server_detail(s: &Server, stale_secs: u64, now: DateTime<Utc>) -> Value {
    let fresh = s
        .agent_last_seen
        .is_some_and(|t| (now - t).num_seconds() <= stale_secs as i64);
    let (vm_state, power_state) = match s.status.as_str() {
        "SHUTOFF" => ("stopped", 4),
        "ERROR" => ("error", 0),
        _ => ("active", 1),
    };
    let addresses: Vec<Value> = s
        .addresses
        .iter()
        .map(|a| {
            json!({
                "version": if a.contains(':') { "6" } else { "4" },
                "addr": a,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": "",
                "OS-EXT-IPS:port_id": "",
            })
        })
        .collect();
    let addresses = if addresses.is_empty() {
        json!({})
    } else {
        json!({"agent": addresses})
    };
    json!({
        "id": s.id,
        "name": s.name,
        "description": "",
        "status": s.status,
        "tenant_id": s.project_id,
        "user_id": "",
        "created": huawei_time(s.created),
        "updated": huawei_time(s.updated),
        "hostId": "",
        "host_status": if fresh { "UP" } else { "UNKNOWN" },
        "locked": false,
        "tags": s.tags,
        "sys_tags": [],
        "enterprise_project_id": "0",
        "progress": 0,
        "config_drive": "",
        "accessIPv4": "",
        "accessIPv6": "",
        "auto_terminate_time": "",
        "key_name": "",
        "addresses": addresses,
        "flavor": {"id": "", "name": "", "disk": "0", "vcpus": "0", "ram": "0", "gpus": [], "asic_accelerators": []},
        "image": {"id": ""},
        "security_groups": [],
        "metadata": {"os_type": s.os_type.as_str(), "charging_mode": "0"},
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:task_state": s.task_state.clone().unwrap_or_default(),
        "OS-EXT-STS:power_state": power_state,
        "OS-EXT-AZ:availability_zone": "",
        "OS-SRV-USG:launched_at": s.created.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        "OS-SRV-USG:terminated_at": "",
        "os-extended-volumes:volumes_attached": [],
        "OS-EXT-SRV-ATTR:host": "",
        "OS-EXT-SRV-ATTR:hostname": s.hostname.clone().unwrap_or_default(),
        "OS-EXT-SRV-ATTR:hypervisor_hostname": "",
        "OS-EXT-SRV-ATTR:instance_name": s.name,
        "OS-EXT-SRV-ATTR:kernel_id": "",
        "OS-EXT-SRV-ATTR:ramdisk_id": "",
        "OS-EXT-SRV-ATTR:root_device_name": "",
        "OS-EXT-SRV-ATTR:launch_index": 0,
        "OS-EXT-SRV-ATTR:reservation_id": "",
        "OS-DCF:diskConfig": "",
        // Ours (ignored by the Huawei SDKs): the agent and the last reset.
        "x-ecsd": {
            "agent": {
                "enrolled": s.agent_public_key.is_some(),
                "version": s.agent_version,
                "last_seen": s.agent_last_seen.map(crate::store::fmt_time),
                "boot_id": s.boot_id,
            },
            "last_reset": s.last_reset.as_ref().map(|(id, st)| json!({"request_id": id, "state": st.as_str()})),
        },
    })
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
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let mut out: Vec<Value> = servers
        .iter()
        .map(|s| server_detail(s, state.config.agent_stale_secs, now))
        .collect();
    if let Some(ids) = server_ids {
        // Unknown ids come back with only id and fault (as Huawei does).
        for id in ids
            .iter()
            .filter(|id| !servers.iter().any(|s| &&s.id == id))
        {
            out.push(json!({"id": id, "fault": {"code": 404, "message": "Instance could not be found."}}));
        }
    }
    Ok(Json(json!({"count": count, "servers": out})))
}

/// `GET /v1/{project_id}/cloudservers/{server_id}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (_, id) = p
        .map(|Path(t)| t)
        .map_err(|_| ApiError::invalid("Invalid request: a path parameter is malformed."))?;
    let s = state
        .store
        .server(&caller.project_id, &id)
        .await
        .map_err(|e| ApiError::internal("looking up a server", e))?
        .ok_or_else(|| ApiError::server_not_found(&id))?;
    Ok(Json(
        json!({"server": server_detail(&s, state.config.agent_stale_secs, Utc::now())}),
    ))
}

/// `POST /v1/{project_id}/cloudservers/action`.
pub async fn action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    let job_id =
        crate::power::batch_action(&state, &ctx, super::resets::content_type(&headers), body)
            .await?;
    Ok(Json(json!({"job_id": job_id})))
}

/// `GET /v1/{project_id}/jobs/{job_id}`.
pub async fn job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let invalid = || ApiError::ecs(StatusCode::BAD_REQUEST, "Common.0011", "Invalid job ID.");
    let (_, job_id) = p.map(|Path(t)| t).map_err(|_| invalid())?;
    if uuid::Uuid::parse_str(&job_id).is_err() {
        return Err(invalid());
    }
    let job = state
        .store
        .job(&caller.project_id, &job_id)
        .await
        .map_err(|e| ApiError::internal("reading a job", e))?
        .ok_or_else(invalid)?;
    Ok(Json(crate::power::job_json(&job)))
}
