//! Audit traces you can read (issue #10): how a stored audit record becomes
//! a CTS-shaped trace, the names of the operations a denied call asked for,
//! and recording denied calls (401/403). Never a password, token or SK:
//! records hold ids, codes and outcomes only.

use axum::http::Method;
use chrono::Utc;

use crate::state::{AppState, UserRef};
use crate::store::AuditEntry;
use crate::store::lifecycle::{AuditRecord, TraceRating};

/// The name of the public operation a request asks for (the trace name of
/// a denied call), from its method and path.
pub fn action_of(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let m = method.as_str();
    let name = match (m, segs.as_slice()) {
        ("PUT", ["v1", _, "cloudservers", "os-reset-passwords"]) => "batch-reset-password",
        ("GET", ["v1", _, "cloudservers", "os-reset-passwords", _]) => "show-reset-outcome",
        ("GET", ["v1", _, "cloudservers", "os-reset-passwords", _, "events"]) => {
            "stream-reset-outcome"
        }
        ("GET", ["v1", _, "jobs", _, "events"]) => "stream-job",
        ("PUT", ["v1", _, "cloudservers", _, "os-reset-password"]) => "reset-password",
        ("GET", ["v1", _, "cloudservers", _, "os-resetpwd-flag"]) => "show-resetpwd-flag",
        ("GET", ["v1", _, "cloudservers", "detail"]) => "list-servers",
        ("POST", ["v1", _, "cloudservers", "action"]) => "server-action",
        ("GET", ["v1", _, "cloudservers", _]) => "show-server",
        ("GET", ["v1", _, "jobs", _]) => "show-job",
        ("POST", ["v1", _, "enroll-tokens"]) => "create-enroll-token",
        ("GET", ["v3", _, "traces"]) => "list-traces",
        ("POST", ["console", "login"]) => "console-sign-in",
        ("GET", ["v1", _, "cloudservers", _, "escrowed-passwords"]) => "get-escrowed-password",
        ("POST", ["v1", _, "escrow", "recipients"]) => "create-escrow-recipient",
        ("GET", ["v1", _, "escrow", "recipients"]) => "list-escrow-recipients",
        ("DELETE", ["v1", _, "escrow", "recipients", _]) => "delete-escrow-recipient",
        ("POST", ["v1", _, "escrow", "rotation-policies"]) => "create-rotation-policy",
        ("GET", ["v1", _, "escrow", "rotation-policies"]) => "list-rotation-policies",
        ("DELETE", ["v1", _, "escrow", "rotation-policies", _]) => "delete-rotation-policy",
        ("GET", ["v1", _, "escrow", "password-status"]) => "show-password-status",
        _ => return format!("{m} {}", crate::error::display_id(path)),
    };
    name.to_owned()
}

/// The server id a request's path names, if any.
pub fn resource_of(path: &str) -> Vec<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", _, "cloudservers", id, ..]
            if !matches!(*id, "detail" | "action" | "os-reset-passwords") =>
        {
            vec![crate::error::display_id(id)]
        }
        _ => vec![],
    }
}

/// A call refused before any handler ran: who it claimed to be, what it
/// asked for, and why it was refused.
pub struct Denied<'a> {
    pub project_id: &'a str,
    /// The credential's id (AK), or `anonymous`.
    pub actor: &'a str,
    pub user: Option<&'a UserRef>,
    pub method: &'a Method,
    pub path: &'a str,
    pub source: &'a str,
    pub error_code: &'static str,
    pub http_status: u16,
    pub reason: &'a str,
}

/// Records a denied call (a 401 or 403). A failure to write is logged, not
/// answered: the caller is refused either way.
pub async fn record_denied(state: &AppState, d: Denied<'_>) {
    let entry = AuditEntry {
        at: Utc::now(),
        request_id: crate::error::current_request_id(),
        project_id: crate::error::display_id(d.project_id),
        actor: crate::error::display_id(d.actor),
        action: action_of(d.method, d.path),
        servers: resource_of(d.path),
        dry_run: false,
        outcome: format!("denied: {}", d.reason),
        source: d.source.to_owned(),
        user_id: d.user.map(|u| u.id.clone()),
        user_name: d.user.map(|u| u.name.clone()),
        error_code: Some(d.error_code.to_owned()),
        http_status: Some(d.http_status),
    };
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e.chain(), "writing the audit record of a denied call failed");
    }
}

fn rating(r: TraceRating) -> ecs_api::TraceRating {
    match r {
        TraceRating::Normal => ecs_api::TraceRating::Normal,
        TraceRating::Warning => ecs_api::TraceRating::Warning,
        TraceRating::Incident => ecs_api::TraceRating::Incident,
    }
}

/// The IP address of a recorded source (`ip:port`, or as recorded).
fn source_ip(source: &str) -> String {
    source
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| source.to_owned())
}

/// A stored record as a CTS trace.
pub fn to_trace(r: &AuditRecord) -> ecs_api::Trace {
    let e = &r.entry;
    let ms = e.at.timestamp_millis();
    ecs_api::Trace {
        trace_id: r.trace_id.to_string(),
        trace_name: e.action.clone(),
        trace_rating: rating(r.rating),
        trace_type: "ApiCall".into(),
        service_type: "ECS".into(),
        resource_type: "ecs".into(),
        resource_id: (!e.servers.is_empty()).then(|| e.servers.join(",")),
        source_ip: source_ip(&e.source),
        time: ms,
        record_time: ms,
        request_id: e.request_id.clone(),
        code: e.http_status.map(|s| s.to_string()),
        message: e.outcome.clone(),
        request: None,
        response: None,
        user: ecs_api::TraceUser {
            id: e.user_id.clone(),
            name: e.user_name.clone().unwrap_or_else(|| e.actor.clone()),
            user_name: e.user_name.clone(),
            access_key_id: e.actor.clone(),
        },
        project_id: e.project_id.clone(),
        resource_ids: e.servers.clone(),
        dry_run: e.dry_run,
        error_code: e.error_code.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_calls_are_named_by_operation() {
        let p = "/v1/p1/cloudservers/os-reset-passwords";
        assert_eq!(action_of(&Method::PUT, p), "batch-reset-password");
        assert_eq!(
            action_of(&Method::PUT, "/v1/p1/cloudservers/s1/os-reset-password"),
            "reset-password"
        );
        assert_eq!(
            action_of(&Method::GET, "/v1/p1/cloudservers/s1"),
            "show-server"
        );
        assert_eq!(
            action_of(&Method::GET, "/v1/p1/cloudservers/detail"),
            "list-servers"
        );
        assert_eq!(action_of(&Method::GET, "/v3/p1/traces"), "list-traces");
        assert_eq!(action_of(&Method::DELETE, "/v1/p1/x"), "DELETE /v1/p1/x");
        assert_eq!(
            resource_of("/v1/p1/cloudservers/s1/os-reset-password"),
            vec!["s1"]
        );
        assert!(resource_of("/v1/p1/cloudservers/detail").is_empty());
        assert!(resource_of(p).is_empty());
    }

    #[test]
    fn a_trace_never_carries_the_request_or_response() {
        let r = AuditRecord {
            trace_id: 7,
            rating: TraceRating::Warning,
            entry: AuditEntry {
                at: Utc::now(),
                request_id: "r".into(),
                project_id: "p".into(),
                actor: "AK1".into(),
                action: "reset-password".into(),
                servers: vec!["s1".into(), "s2".into()],
                dry_run: true,
                outcome: "rejected Ecs.0011".into(),
                source: "192.0.2.7:4711".into(),
                user_id: Some("u1".into()),
                user_name: Some("alice".into()),
                error_code: Some("Ecs.0011".into()),
                http_status: None,
            },
        };
        let t = to_trace(&r);
        assert_eq!((t.request, t.response), (None, None));
        assert_eq!(t.source_ip, "192.0.2.7");
        assert_eq!(t.resource_id.as_deref(), Some("s1,s2"));
        assert_eq!(t.user.name, "alice");
        assert_eq!(t.user.access_key_id, "AK1");
        assert_eq!(t.trace_id, "7");
        assert_eq!(t.trace_rating, ecs_api::TraceRating::Warning);
    }
}
