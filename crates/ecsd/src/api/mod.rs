//! The HTTP surface: the Huawei-compatible public API under `/v1`, our agent
//! API under `/agent/v1`, and the layers every request passes through.

mod agent;
mod escrow;
mod events;
pub mod iam;
mod iam_admin;
pub mod metrics;
/// Kept for callers of the old path; the service is `crate::enroll`.
pub use crate::enroll::{issue_enroll_token, issue_rekey_token};
pub use servers::server_detail;
pub mod openapi;
mod resets;
pub mod servers;
mod tags;
mod traces;
mod wait;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use crate::error::{ApiError, ErrorCode, REQUEST_ID, new_request_id};
use crate::state::{AppState, Source};

/// The request's `Content-Type`, if it is text (the body parser checks it).
pub(crate) fn content_type(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// A path extractor's value, or 400 `Ecs.0005` naming no value.
pub(crate) fn path<T>(
    p: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<T, ApiError> {
    p.map(|axum::extract::Path(t)| t)
        .map_err(|_| ApiError::invalid("Invalid request: a path parameter is malformed."))
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route(
            "/v1/{project_id}/cloudservers/os-reset-passwords",
            put(resets::batch_reset),
        )
        .route(
            "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}",
            get(resets::reset_outcome),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}/os-reset-password",
            put(resets::single_reset),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}/os-resetpwd-flag",
            get(resets::resetpwd_flag),
        )
        .route("/v1/{project_id}/cloudservers/detail", get(servers::list))
        .route(
            "/v1/{project_id}/cloudservers/action",
            post(servers::action),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}",
            get(servers::show),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}/tags/action",
            post(tags::tags_action),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}/tags",
            get(tags::show_tags),
        )
        .route("/v1/{project_id}/jobs/{job_id}", get(servers::job))
        .route(
            "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}/events",
            get(events::reset_events),
        )
        .route(
            "/v1/{project_id}/jobs/{job_id}/events",
            get(events::job_events),
        )
        .route(
            "/v1/{project_id}/enroll-tokens",
            post(agent::create_enroll_token),
        )
        .route("/v3/{project_id}/traces", get(traces::list))
        .route(
            "/v1/{project_id}/escrow/recipients",
            post(escrow::create_recipient).get(escrow::list_recipients),
        )
        .route(
            "/v1/{project_id}/escrow/recipients/{recipient_id}",
            delete(escrow::delete_recipient),
        )
        .route(
            "/v1/{project_id}/cloudservers/{server_id}/escrowed-passwords",
            get(escrow::escrowed_passwords),
        )
        .route(
            "/v1/{project_id}/escrow/rotation-policies",
            post(escrow::create_policy).get(escrow::list_policies),
        )
        .route(
            "/v1/{project_id}/escrow/rotation-policies/{policy}",
            delete(escrow::delete_policy),
        )
        .route(
            "/v1/{project_id}/escrow/password-status",
            get(escrow::password_status),
        )
        .route_layer(from_fn_with_state(state.clone(), crate::auth::authenticate));
    // IAM administration: signed like /v1, in the credential's project and domain.
    let iam_admin = Router::new()
        .route("/v3.0/OS-USER/users", post(iam_admin::create_user))
        .route("/v3/users", get(iam_admin::list_users))
        .route("/v3.0/OS-USER/users/{user_id}", put(iam_admin::update_user))
        .route("/v3/users/{user_id}", delete(iam_admin::delete_user))
        .route(
            "/v3/groups",
            post(iam_admin::create_group).get(iam_admin::list_groups),
        )
        .route(
            "/v3/groups/{group_id}/users/{user_id}",
            put(iam_admin::add_user_to_group).delete(iam_admin::remove_user_from_group),
        )
        .route(
            "/v3.0/OS-ROLE/roles",
            post(iam_admin::create_role).get(iam_admin::list_roles),
        )
        .route(
            "/v3/projects/{project_id}/groups/{group_id}/roles/{role_id}",
            put(iam_admin::grant_role).delete(iam_admin::revoke_role),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/credentials",
            post(iam_admin::create_credential).get(iam_admin::list_credentials),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/credentials/{access_key}",
            put(iam_admin::update_credential).delete(iam_admin::delete_credential),
        )
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::auth::authenticate_iam,
        ));
    let agents = Router::new()
        .route("/agent/v1/enroll", post(agent::enroll))
        .route("/agent/v1/rekey-challenge", post(agent::rekey_challenge))
        .merge(
            Router::new()
                .route("/agent/v1/heartbeat", post(agent::heartbeat))
                .route("/agent/v1/work", get(agent::work))
                .route("/agent/v1/ack", post(agent::ack))
                .route("/agent/v1/power-ack", post(agent::power_ack)),
        );
    // IAM (identity): each handler checks its own token.
    let iam = Router::new()
        .route(
            "/v3/auth/tokens",
            post(iam::create_token)
                .get(iam::validate_token)
                .delete(iam::revoke_token),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/securitytokens",
            post(iam::create_security_token),
        );
    let app = Router::new()
        .merge(public)
        .merge(iam_admin)
        .merge(agents)
        .merge(iam)
        .merge(crate::console::router())
        .route("/health", get(openapi::health))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::on_api_listener))
        .fallback(no_such_api)
        .method_not_allowed_fallback(no_such_api)
        .layer(crate::deadline::limit_body(
            state.config.request_timeout_secs,
        ))
        .with_state(state);
    with_common_layers(app)
}

/// The layers every route has: a request id and access log (outermost), and
/// a panic in a handler answered as a JSON 500 `Common.0001` instead of a
/// dropped connection (the panic's message goes to no one).
pub fn with_common_layers(app: Router) -> Router {
    app.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_payload: Box<dyn std::any::Any + Send>| {
            ApiError::internal("a request handler panicked", "see the panic message above")
                .into_response()
        },
    ))
    .layer(from_fn(request_context))
}

/// Headers that must appear at most once: which of two `Authorization`s was
/// signed, or which `Content-Type` the body is, would be a guess. The
/// credential headers are refused as the gateway refuses a bad credential
/// (401 `APIGW.0301`), a repeated `Content-Type` as a malformed request
/// (400 `Ecs.0005`).
fn repeated_header(headers: &axum::http::HeaderMap) -> Option<ApiError> {
    use axum::http::header;
    let repeated = |name: &HeaderName| headers.get_all(name).iter().nth(1).is_some();
    for name in [
        header::AUTHORIZATION,
        header::HOST,
        HeaderName::from_static("x-sdk-date"),
        HeaderName::from_static("x-auth-token"),
        HeaderName::from_static("x-security-token"),
    ] {
        if repeated(&name) {
            tracing::warn!(header = %name, "a credential header is repeated");
            return Some(ApiError::unauthenticated(format!(
                "the {name} header is repeated"
            )));
        }
    }
    if repeated(&header::CONTENT_TYPE) {
        return Some(ApiError::invalid(
            "Invalid request: the Content-Type header is repeated.",
        ));
    }
    None
}

/// What a connection over `max_connections_per_source` is served: 429
/// `APIGW.0308` with a request id (and the access-log line) for its one
/// request; the connection is then closed.
pub fn too_many_connections_router() -> Router {
    with_common_layers(Router::new().fallback(|| async {
        let mut resp = ApiError::too_many_connections().into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
        resp
    }))
}

async fn no_such_api() -> ApiError {
    ApiError::no_such_api()
}

/// Gives every request an id (the `X-Request-Id` header and the gateway error
/// bodies), records the peer address, and writes one access-log line.
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    req.extensions_mut().insert(Source(source));
    // The route's template, not the path: ids must not become label values.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            match repeated_header(req.headers()) {
                Some(e) => e.into_response(),
                None => next.run(req).await,
            }
        })
        .await;
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&id).expect("hex is a valid header value"),
    );
    if resp.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
        // The rest of the body may still come: the connection cannot be reused.
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let m = &crate::metrics::METRICS;
    m.http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            method: method.to_string(),
            route: route.clone(),
            status,
        })
        .inc();
    m.http_seconds
        .get_or_create(&crate::metrics::RouteLabels {
            method: method.to_string(),
            route,
        })
        .observe(elapsed.as_secs_f64());
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    // The agent protocol's routine traffic (long polls, heartbeats) and
    // scrapes at DEBUG, so the operator's own calls stand out at INFO;
    // their errors stay at INFO.
    if status < 400 && (path.starts_with("/agent/v1/") || path == "/metrics") {
        tracing::debug!(request_id = %id, %method, path = %path, status, code, elapsed_ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, path = %path, status, code, elapsed_ms, "request");
    }
    resp
}
