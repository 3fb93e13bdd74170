//! `GET /v3/{project_id}/traces`: the audit trail in the shape of Huawei
//! Cloud Trace Service `ListTraces` (issue #10).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use chrono::{DateTime, Utc};
use ecs_api::{ListTracesResponse, TraceMetaData};

use crate::authz::Action;
use crate::error::ApiError;
use crate::state::{AppState, Caller, Source};
use crate::store::lifecycle::{AuditQuery, TraceRating};

/// Largest page.
const MAX_LIMIT: u32 = 200;

fn ms_param(q: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid query parameter {name}: milliseconds since 1970-01-01 UTC."
                    ))
                })
        })
        .transpose()
}

fn text_param(q: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match q.get(name) {
        Some(v) if v.is_empty() || v.len() > 256 => Err(ApiError::invalid(format!(
            "Invalid query parameter {name}: 1 to 256 characters."
        ))),
        v => Ok(v.cloned()),
    }
}

/// The query as the store takes it.
fn audit_query(project_id: &str, q: &HashMap<String, String>) -> Result<AuditQuery, ApiError> {
    if q.get("trace_type").is_some_and(|t| t != "system") {
        return Err(ApiError::invalid(
            "Invalid query parameter trace_type: only system traces are kept.",
        ));
    }
    let limit = match q.get("limit") {
        None => 10,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid query parameter limit: it must be 1 to {MAX_LIMIT}."
                ))
            })?,
    };
    let (from, to) = (ms_param(q, "from")?, ms_param(q, "to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::invalid(
            "Invalid query parameters from and to: from is after to.",
        ));
    }
    let before = q
        .get("next")
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid("Invalid query parameter next: not a marker."))
        })
        .transpose()?;
    let mut ratings = match q.get("trace_rating") {
        None => None,
        Some(r) => Some(vec![TraceRating::parse(r).ok_or_else(|| {
            ApiError::invalid("Invalid query parameter trace_rating: normal, warning or incident.")
        })?]),
    };
    if let Some(s) = q.get("trace_status") {
        let by_status = match s.as_str() {
            "success" => vec![TraceRating::Normal],
            "fail" => vec![TraceRating::Warning, TraceRating::Incident],
            _ => {
                return Err(ApiError::invalid(
                    "Invalid query parameter trace_status: success or fail.",
                ));
            }
        };
        ratings = Some(match ratings {
            None => by_status,
            Some(r) => r.into_iter().filter(|x| by_status.contains(x)).collect(),
        });
    }
    Ok(AuditQuery {
        project_id: project_id.to_owned(),
        from,
        to,
        user: text_param(q, "user")?,
        action: text_param(q, "trace_name")?,
        resource_id: text_param(q, "resource_id")?,
        ratings,
        before,
        limit,
    })
}

/// `GET /v3/{project_id}/traces`: the project's audit trail, newest first.
#[utoipa::path(get, path = "/v3/{project_id}/traces",
    operation_id = "ListTraces", tag = "audit",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."),
        ("trace_type" = Option<String>, Query, description = "`system` (the only kind kept)."),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 200 (default 10)."),
        ("from" = Option<i64>, Query, description = "Traces at or after this time, ms since the epoch."),
        ("to" = Option<i64>, Query, description = "Traces at or before this time, ms since the epoch."),
        ("next" = Option<String>, Query, description = "The previous page's `meta_data.marker`."),
        ("user" = Option<String>, Query, description = "A user name or id, or an AK."),
        ("trace_name" = Option<String>, Query, description = "The action, e.g. `batch-reset-password`."),
        ("resource_id" = Option<String>, Query, description = "Traces naming this server."),
        ("trace_rating" = Option<String>, Query, description = "`normal`, `warning` or `incident`."),
        ("trace_status" = Option<String>, Query, description = "ecsd: `success` (normal) or `fail` (warning or incident)."),
    ),
    responses(
        (status = 200, description = "One page of traces and the marker of the next.", body = ListTracesResponse),
        (status = 400, description = "An invalid query parameter (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): cts:traces:list (every system role has it).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ListTracesResponse>, ApiError> {
    crate::authorize::authorize(&state, &caller, &source.0, Action::ListTraces, true).await?;
    let Query(q) = query.map_err(|_| ApiError::invalid("Invalid query string."))?;
    let mut aq = audit_query(&caller.project_id, &q)?;
    let limit = aq.limit as usize;
    aq.limit += 1; // one more tells whether there is a next page
    let mut records = state
        .lifecycle
        .list_audit(aq)
        .await
        .map_err(|e| ApiError::store("listing audit traces", e))?;
    let more = records.len() > limit;
    records.truncate(limit);
    let traces: Vec<_> = records.iter().map(crate::audit::to_trace).collect();
    Ok(Json(ListTracesResponse {
        meta_data: TraceMetaData {
            count: traces.len() as u32,
            marker: more
                .then(|| traces.last().map(|t| t.trace_id.clone()))
                .flatten(),
        },
        traces,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn trace_status_and_rating_combine() {
        let a = audit_query("p", &q(&[("trace_status", "fail")])).unwrap();
        assert_eq!(
            a.ratings,
            Some(vec![TraceRating::Warning, TraceRating::Incident])
        );
        let a = audit_query(
            "p",
            &q(&[("trace_status", "fail"), ("trace_rating", "normal")]),
        )
        .unwrap();
        assert_eq!(a.ratings, Some(vec![]));
        assert_eq!(audit_query("p", &q(&[])).unwrap().limit, 10);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            ("limit", "0"),
            ("limit", "201"),
            ("from", "yesterday"),
            ("next", "abc"),
            ("trace_rating", "bad"),
            ("trace_status", "ok"),
            ("trace_type", "data"),
            ("user", ""),
        ] {
            assert!(audit_query("p", &q(&[bad])).is_err(), "{bad:?}");
        }
        assert!(audit_query("p", &q(&[("from", "2000"), ("to", "1000")])).is_err());
    }
}
