//! `ecsctl audit`: the audit trail (`GET /v3/{project_id}/traces`), with
//! CTS's filters, newest first, following the paging marker.

use anyhow::Context;
use clap::{Args, ValueEnum};
use ecs_api::Trace;

use crate::api::Api;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    Success,
    Fail,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Traces at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or ms since the epoch.
    #[arg(long)]
    from: Option<String>,
    /// Traces at or before this time: RFC 3339 or ms since the epoch.
    #[arg(long)]
    to: Option<String>,
    /// A user name or id, or an AK.
    #[arg(long)]
    user: Option<String>,
    /// The action (trace name), e.g. batch-reset-password.
    #[arg(long)]
    action: Option<String>,
    /// Traces naming this server.
    #[arg(long)]
    resource_id: Option<String>,
    /// success or fail.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Most traces to show.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// ms since the epoch from `ms` or RFC 3339.
fn millis(flag: &str, v: &str) -> anyhow::Result<String> {
    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        return Ok(v.to_owned());
    }
    let t = chrono::DateTime::parse_from_rfc3339(v)
        .with_context(|| format!("--{flag}: an RFC 3339 time or milliseconds since the epoch"))?;
    Ok(t.timestamp_millis().to_string())
}

/// The traces the filters select, newest first, at most `limit`.
pub async fn fetch(api: &Api, a: &AuditArgs) -> anyhow::Result<Vec<Trace>> {
    let mut q: Vec<(&str, String)> = vec![("trace_type", "system".into())];
    if let Some(v) = &a.from {
        q.push(("from", millis("from", v)?));
    }
    if let Some(v) = &a.to {
        q.push(("to", millis("to", v)?));
    }
    for (name, v) in [
        ("user", &a.user),
        ("trace_name", &a.action),
        ("resource_id", &a.resource_id),
    ] {
        if let Some(v) = v {
            q.push((name, v.clone()));
        }
    }
    if let Some(s) = a.status {
        q.push((
            "trace_status",
            match s {
                Status::Success => "success",
                Status::Fail => "fail",
            }
            .into(),
        ));
    }
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    while out.len() < a.limit {
        let page = (a.limit - out.len()).min(200).to_string();
        let mut query: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        query.push(("limit", &page));
        if let Some(n) = &next {
            query.push(("next", n));
        }
        let r = api.api_result("GET /traces", api.client().list_traces(&query).await)?;
        out.extend(r.body.traces);
        match r.body.meta_data.marker {
            Some(m) => next = Some(m),
            None => break,
        }
    }
    Ok(out)
}

/// A table row: time, action, rating, who, resources, code, source, request id.
pub fn row(t: &Trace) -> Vec<String> {
    let time = chrono::DateTime::from_timestamp_millis(t.time)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let rating = serde_json::to_value(t.trace_rating)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    vec![
        time,
        t.trace_name.clone(),
        rating,
        t.user.name.clone(),
        t.resource_id.clone().unwrap_or_else(|| "-".into()),
        t.error_code.clone().unwrap_or_else(|| "-".into()),
        t.source_ip.clone(),
        t.request_id.clone(),
    ]
}

pub const HEADERS: &[&str] = &[
    "TIME",
    "ACTION",
    "RATING",
    "WHO",
    "SERVERS",
    "ERROR",
    "SOURCE",
    "REQUEST ID",
];

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_ms_or_rfc3339() {
        assert_eq!(
            super::millis("from", "1700000000000").unwrap(),
            "1700000000000"
        );
        assert_eq!(
            super::millis("from", "2023-11-14T22:13:20Z").unwrap(),
            "1700000000000"
        );
        assert!(super::millis("from", "yesterday").is_err());
        assert!(super::millis("from", "").is_err());
    }
}
