//! Authentication of the public API (contract §2.10): AK/SK
//! (`SDK-HMAC-SHA256`, permanent keys and temporary ones with a signed
//! `X-Security-Token`) or `X-Auth-Token` (a token from `POST /v3/auth/tokens`,
//! see `crate::identity`), or the web console's session cookie with its
//! `X-CSRF-Token` (see `crate::console::session`).
//!
//! Order (sdk-wire.md): size limit, parse `Authorization`, look up the AK,
//! check the date window, rebuild the canonical request over exactly the
//! listed headers and compare in constant time; only then throttle, check the
//! role and the project.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::error::{ApiError, display_id};
use crate::state::{AppState, Caller};
use crate::store::Role;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(e) if let Some(secs) = crate::deadline::timed_out(&*e) => {
            tracing::warn!("the request body did not arrive in time");
            Err(ApiError::request_timeout(secs))
        }
        Err(_) => Err(ApiError::invalid("The request body could not be read.")),
    }
}

/// Middleware: authenticates the request and adds a [`Caller`] extension.
/// The project in the URL (`/v1/{project_id}/...`) must be the credential's.
pub async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authenticate_with(state, req, next, true).await
}

/// Middleware of the IAM administration routes (`/v3/users`, ...): their
/// URL names no project first; the caller acts in its credential's project
/// and that project's domain (an `X-Project-Id`, when sent, must match; a
/// project in the path is checked by the handler).
pub async fn authenticate_iam(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authenticate_with(state, req, next, false).await
}

async fn authenticate_with(
    state: AppState,
    req: Request,
    next: Next,
    url_project: bool,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, state.config.max_body_bytes).await?;
    // Lifecycle: throttles, disabled and locked keys before any expensive
    // work; failures counted and recorded after.
    let source = parts
        .extensions
        .get::<crate::state::Source>()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut attempt = crate::lifecycle::Attempt::new(&parts.method, &path, &source, &parts.headers);
    crate::lifecycle::before_verify(&state, &mut attempt).await?;
    let caller = match verify(&state, &parts.method, &parts.uri, &parts.headers, &body).await {
        Ok(c) => c,
        Err(e) => return Err(crate::lifecycle::verify_failed(&state, &attempt, e).await),
    };
    crate::lifecycle::verify_succeeded(&state, &attempt).await;

    if state.limiter.check_key(&caller.access_key).is_err() {
        return Err(ApiError::throttled());
    }
    // The project named in the URL (and in X-Project-Id) must be the credential's.
    let in_url = parts.uri.path().split('/').nth(2).unwrap_or_default();
    let header_project = parts
        .headers
        .get("x-project-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if (url_project && in_url != caller.project_id)
        || header_project.is_some_and(|p| p != caller.project_id)
    {
        return Err(ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0023",
            "The project ID in the request does not match the project of the credential.",
        ));
    }
    // A read-only project access key is refused here; an IAM user's calls are
    // decided by authorization (its role is one grant among its groups').
    if caller.user.is_none()
        && caller.role == Role::ReadOnly
        && parts.method != Method::GET
        && parts.method != Method::HEAD
    {
        let reason = "the access key is read-only";
        let e = ApiError::forbidden(reason);
        return Err(
            crate::lifecycle::forbidden(&state, &attempt, caller.user.as_ref(), e, reason).await,
        );
    }
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, Body::from(body))).await)
}

/// The configured clock-skew window in words: "15 minutes", "1 minute", "90 seconds".
fn skew_window(secs: u64) -> String {
    match (secs / 60, secs % 60) {
        (1, 0) => "1 minute".to_owned(),
        (m, 0) if m > 0 => format!("{m} minutes"),
        _ if secs == 1 => "1 second".to_owned(),
        _ => format!("{secs} seconds"),
    }
}

fn auth_fail(reason: &str, ak: Option<&str>) -> ApiError {
    tracing::warn!(access_key = ak, reason, "authentication failed");
    ApiError::unauthenticated(reason)
}

async fn verify(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, ApiError> {
    // A token, when present, is the credential (a signature beside it is ignored).
    if headers.contains_key("x-auth-token") {
        return crate::identity::token_caller(state, headers).await;
    }
    // The console's session cookie, valid only with its CSRF header
    // (crate::console::session); a signature, when sent, wins.
    if !headers.contains_key(header::AUTHORIZATION)
        && crate::console::session::cookie_secret(headers).is_some()
    {
        return crate::console::session::api_caller(state, headers).await;
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(auth_fail("Authorization header not found", None));
    };
    let auth = auth
        .to_str()
        .ok()
        .and_then(|v| ecs_sign::Authorization::parse(v).ok())
        .ok_or_else(|| {
            auth_fail(
                "verify aksk signature fail: malformed Authorization header",
                None,
            )
        })?;
    let ak = auth.access_key.as_str();
    if !auth.signed_headers.iter().any(|h| h == "x-sdk-date") {
        return Err(auth_fail(
            "verify aksk signature fail: x-sdk-date must be signed",
            Some(ak),
        ));
    }
    let permanent = state
        .store
        .access_key(ak)
        .await
        .map_err(|e| ApiError::store("looking up an access key", e))?;
    let (key, user) = match permanent {
        Some(k) => (k, None),
        // A temporary AK (identity): only with its signed X-Security-Token.
        None => {
            match crate::identity::temporary_key(state, ak, headers, &auth.signed_headers).await? {
                Some((k, u)) => (k, Some(u)),
                None => {
                    return Err(auth_fail(
                        &format!(
                            "Get secretKey failed,ak:{},err:ak not exist",
                            display_id(ak)
                        ),
                        Some(ak),
                    ));
                }
            }
        }
    };
    let date_value = headers
        .get("x-sdk-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| auth_fail("verify aksk signature fail: X-Sdk-Date missing", Some(ak)))?;
    let date = ecs_sign::parse_date(date_value)
        .ok_or_else(|| auth_fail("verify aksk signature fail: X-Sdk-Date malformed", Some(ak)))?;
    let skew = (state.clock.now() - date).num_seconds().unsigned_abs();
    if skew > state.config.clock_skew_secs {
        return Err(auth_fail(
            &format!(
                "verify aksk signature fail: the request time differs from the server time by more than {}",
                skew_window(state.config.clock_skew_secs)
            ),
            Some(ak),
        ));
    }
    let payload_hash = if body.is_empty() {
        ecs_sign::EMPTY_SHA256.to_owned()
    } else {
        let actual = ecs_sign::sha256_hex(body);
        if let Some(claimed) = headers.get("x-sdk-content-sha256") {
            // UNSIGNED-PAYLOAD would leave the JSON body unprotected.
            if claimed.as_bytes() != actual.as_bytes() {
                return Err(auth_fail(
                    "verify aksk signature fail: the payload must be signed",
                    Some(ak),
                ));
            }
        }
        actual
    };
    let host = uri.authority().map(|a| a.as_str().as_bytes());
    let canonical = ecs_sign::canonical_request(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        &auth.signed_headers,
        |name| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => Some(v.as_bytes()),
                (None, _) if name == "host" => host,
                _ => None,
            }
        },
        &payload_hash,
    )
    .ok_or_else(|| {
        auth_fail(
            "verify aksk signature fail: a signed header is missing or repeated",
            Some(ak),
        )
    })?;
    let sts = ecs_sign::string_to_sign(date_value, &canonical);
    let sk = state
        .master
        .decrypt(&key.ak, &key.sk_sealed)
        .map_err(|e| ApiError::internal("decrypting a secret key", e))?;
    if !ecs_sign::verify(&sk, &sts, &auth.signature) {
        return Err(auth_fail("verify aksk signature fail", Some(ak)));
    }
    Ok(Caller {
        access_key: key.ak,
        project_id: key.project_id,
        role: key.role,
        user,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_skew_window_is_said_in_the_largest_whole_unit() {
        assert_eq!(super::skew_window(15 * 60), "15 minutes");
        assert_eq!(super::skew_window(60), "1 minute");
        assert_eq!(super::skew_window(90), "90 seconds");
        assert_eq!(super::skew_window(1), "1 second");
        assert_eq!(super::skew_window(0), "0 seconds");
    }
}
