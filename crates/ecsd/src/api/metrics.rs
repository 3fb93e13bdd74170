//! `GET /metrics` (issue #12): Prometheus metrics, unauthenticated, on the
//! API listener for loopback clients only, or on `metrics_listen` for anyone
//! who can reach that address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// What Prometheus and OpenMetrics scrapers read.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics on the API listener.
#[utoipa::path(get, path = "/metrics", operation_id = "Metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus metrics in the OpenMetrics text format: requests by route and status and their latency, resets and reset targets by event, time from acceptance to APPLIED, power sub-jobs, seal and store latency, authentication failures, agents by version and status.", content_type = "application/openmetrics-text"),
        (status = 403, description = "Not a loopback client (APIGW.0302): on the API listener the metrics are served to loopback clients only; set `metrics_listen` to serve them on an address of your choice.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "`metrics_listen` is set: the metrics are served there, not here (APIGW.0101).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn on_api_listener(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    if state.config.metrics_listen.is_some() {
        return Err(ApiError::no_such_api());
    }
    if !peer.ip().to_canonical().is_loopback() {
        return Err(ApiError::forbidden(
            "metrics are served to loopback clients only (set metrics_listen to serve them on another address)",
        ));
    }
    Ok(scrape(&state).await)
}

/// The metrics on `metrics_listen`.
pub async fn on_metrics_listener(State(state): State<AppState>) -> Response {
    scrape(&state).await
}

async fn scrape(state: &AppState) -> Response {
    let stale = chrono::Duration::seconds(state.config.agent_stale_secs as i64);
    match state.store.agent_census(chrono::Utc::now() - stale).await {
        Ok(census) => crate::metrics::set_agents(&census),
        // The rest still helps most when the store is in trouble.
        Err(e) => tracing::warn!(error = %e.chain(), "metrics: counting agents failed"),
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}

/// The router of the `metrics_listen` listener: `/metrics` and nothing else.
pub fn router(state: AppState) -> axum::Router {
    super::with_common_layers(
        axum::Router::new()
            .route("/metrics", axum::routing::get(on_metrics_listener))
            .fallback(|| async { ApiError::no_such_api() })
            .with_state(state),
    )
}
