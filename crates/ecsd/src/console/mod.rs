//! The web console (issue #14), served by ecsd itself under `/console/`.
//!
//! Server-rendered page shells plus one small script and one stylesheet,
//! all embedded in the binary ([`assets`]). The pages call the same public
//! API routes as `ecsctl` and the SDKs, authenticated by the session cookie
//! together with the session's CSRF header (`session::api_caller` in
//! `auth.rs`), so every action is authorized and audited as that API call.
//! What is here: sign-in and sign-out, the page shells, the assets, and the
//! security headers of every console response (a strict CSP without inline
//! scripts or styles, no framing, no caching of pages).

pub mod assets;
mod pages;
pub mod session;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::{AppState, Source};

/// The Content-Security-Policy of every console response: only this
/// origin's scripts, styles and connections; no inline code, no plugins,
/// no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// Where the console starts (printed by `serve --dev`). `Redirect::to`
/// answers 303 See Other: after a form POST the browser GETs the target.
pub const PATH: &str = "/console/";

/// The console's routes (merged into the application router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/servers") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/servers") }),
        )
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/{name}", get(asset))
        .route("/console/{page}", get(page))
        .layer(from_fn(security_headers))
}

async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Not no-referrer: with it, browsers send `Origin: null` on the
        // console's own form posts, which the origin check refuses.
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::no_such_api().into_response(),
    }
}

/// A signed-in page, or the sign-in page when there is no valid session.
async fn page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(page) = pages::Page::named(&name) else {
        return ApiError::no_such_api().into_response();
    };
    match session::current(&state, &headers).await {
        Ok(Some(s)) => pages::html(StatusCode::OK, pages::shell(page, &s)),
        Ok(None) | Err(_) => Redirect::to("/console/login").into_response(),
    }
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = session::current(&state, &headers).await {
        return Redirect::to("/console/servers").into_response();
    }
    pages::html(StatusCode::OK, pages::login(None, &LoginFields::default()))
}

/// What the sign-in form sends (the password never echoed back).
#[derive(Deserialize, Default)]
pub struct LoginForm {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    project: String,
}

/// The form's fields shown again after a failure (never the password).
#[derive(Default)]
pub struct LoginFields {
    pub domain: String,
    pub user: String,
    pub project: String,
}

/// A POST must come from this origin: a browser says where a request
/// comes from in `Sec-Fetch-Site` (current browsers) and always sends
/// `Origin` on a form POST; another site's is a cross-site request (login
/// CSRF). Clients that send neither are not browsers.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

async fn login(
    State(state): State<AppState>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        tracing::warn!("a console sign-in from another origin");
        return ApiError::forbidden("a cross-site sign-in is refused").into_response();
    }
    let Ok(Form(form)) = form else {
        return ApiError::invalid("Invalid sign-in form.").into_response();
    };
    let fields = LoginFields {
        domain: form.domain.trim().to_owned(),
        user: form.user.trim().to_owned(),
        project: form.project.trim().to_owned(),
    };
    let ip = source
        .0
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| source.0.clone());
    let throttle_key = format!("ip:{ip}");
    if !state
        .auth_failures
        .allows(&throttle_key, std::time::Instant::now())
    {
        tracing::warn!(source = %ip, "console sign-ins throttled");
        return pages::html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(
                Some("Too many failed sign-ins from this address: wait a minute and try again."),
                &fields,
            ),
        );
    }
    let Some(password) = form.password.filter(|p| {
        use secrecy::ExposeSecret;
        !p.expose_secret().is_empty()
    }) else {
        return pages::html(
            StatusCode::BAD_REQUEST,
            pages::login(Some("Enter the password."), &fields),
        );
    };
    // A project id (32 hex digits, or a UUID) or else a name in the domain.
    let project_is_id = (fields.project.len() == 32
        && fields.project.bytes().all(|b| b.is_ascii_hexdigit()))
        || uuid::Uuid::parse_str(&fields.project).is_ok();
    let checked = crate::identity::check_login(
        &state,
        &fields.domain,
        &fields.user,
        &password,
        project_is_id.then_some(fields.project.as_str()),
        (!project_is_id).then_some(fields.project.as_str()),
    )
    .await;
    drop(password);
    let who = match checked {
        Ok(w) => w,
        Err(e) if e.status().is_server_error() => return e.into_response(),
        Err(e) => {
            state
                .auth_failures
                .fail(&throttle_key, std::time::Instant::now());
            crate::metrics::auth_failure("console");
            // Recorded in the project the form named, when it exists.
            let project_id = audit_project(&state, &fields).await;
            crate::audit::record_denied(
                &state,
                crate::audit::Denied {
                    project_id: &project_id,
                    actor: "console",
                    user: None,
                    method: &axum::http::Method::POST,
                    path: "/console/login",
                    source: &source.0,
                    error_code: e.code(),
                    http_status: e.status().as_u16(),
                    reason: "console sign-in failed",
                },
            )
            .await;
            return pages::html(
                StatusCode::UNAUTHORIZED,
                pages::login(
                    Some("The domain, user name, password or project is wrong."),
                    &fields,
                ),
            );
        }
    };
    let (secret, stored) = match session::create(&state, &who).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::identity::audit(
        &state,
        &who.project.id,
        &stored.id,
        &who.user.id,
        "console-sign-in",
        &source.0,
    )
    .await
    {
        return e.into_response();
    }
    let mut resp = Redirect::to("/console/servers").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&secret, state.config.console_session_secs as i64),
    );
    resp
}

/// The id of the project a sign-in form named (by id, or by name in its
/// domain), or what it said when there is none.
async fn audit_project(state: &AppState, f: &LoginFields) -> String {
    if let Ok(Some(p)) = state.store.project(&f.project).await {
        return p.id;
    }
    if let Ok(Some(d)) = state.identity.domain_by_name(&f.domain).await
        && let Ok(Some(p)) = state.identity.project_in_domain(&d.id, &f.project).await
    {
        return p.id;
    }
    f.project.clone()
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Sign-out: a form POST carrying the session's CSRF token; the session is
/// revoked (on every replica: it is the stored row) and the cookie cleared.
async fn logout(
    State(state): State<AppState>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let session = match session::current(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            let mut resp = Redirect::to("/console/login").into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, session::clear_cookie());
            return resp;
        }
    };
    let sent = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !same_origin(&headers) || !session::same(sent.trim(), &session.csrf) {
        tracing::warn!(session = %session.token.id, "a sign-out without its CSRF token");
        return ApiError::forbidden(
            "the sign-out lacks its CSRF token (cross-site request refused)",
        )
        .into_response();
    }
    if let Err(e) = session::end(&state, &headers).await {
        return e.into_response();
    }
    tracing::info!(session = %session.token.id, user = %session.user.id, "console session ended");
    if let Err(e) = crate::identity::audit(
        &state,
        &session.token.project_id,
        &session.token.id,
        &session.user.id,
        "console-sign-out",
        &source.0,
    )
    .await
    {
        return e.into_response();
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_post_is_same_origin_by_sec_fetch_site_else_by_origin() {
        assert!(same_origin(&headers(&[("host", "ecsd:8443")])));
        assert!(same_origin(&headers(&[
            ("host", "ecsd:8443"),
            ("origin", "https://ecsd:8443")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "ecsd:8443"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "ecsd:8443"),
            ("origin", "null")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "ecsd:8443"),
            ("sec-fetch-site", "same-origin")
        ])));
        for site in ["cross-site", "same-site", "none"] {
            let mut h = headers(&[("host", "ecsd:8443"), ("origin", "https://ecsd:8443")]);
            h.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert!(!same_origin(&h), "{site}");
        }
    }
}
