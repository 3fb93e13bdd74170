//! Console sessions: a signed-in IAM user's browser session.
//!
//! A session is an IAM token row (`tokens`, hashed, with its expiry) whose
//! public id starts with [`SESSION_ID_PREFIX`], so every replica sharing
//! the database knows it and `X-Auth-Token` never accepts it. Its secret
//! travels only in the `__Host-ecsd-session` cookie (`HttpOnly`, `Secure`,
//! `SameSite=Strict`, `Path=/`). A request carrying the cookie is
//! authenticated only together with `X-CSRF-Token`: a value derived from
//! the session secret (so bound to the session, never stored) that the
//! signed-in page holds and a cross-site form cannot send.
//!
//! Expiry: the absolute end is `issued + console_session_secs`; the stored
//! expiry is the idle end, moved forward on use (at most once a minute,
//! never past the absolute end).

use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::identity::{LoginSubject, TokenState, token_state};
use crate::secrets::{bearer_hash, new_bearer};
use crate::state::{AppState, Caller, UserRef};
use crate::store::identity::{StoredToken, User};

/// The public id of every console session starts with this.
pub const SESSION_ID_PREFIX: &str = "ses-";
/// The cookie holding the session secret.
pub const COOKIE: &str = "__Host-ecsd-session";
/// The header that must carry the session's CSRF token on every API call.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The stored idle expiry is moved at most this often (one write a minute
/// per busy session, not one per request), or every half idle period when
/// that is shorter.
const SLIDE_STEP_SECS: i64 = 60;

// ---------------------------------------------------------------- rules --

/// The CSRF token of a session secret: SHA-256 over a label and the
/// secret, hex. Not the stored hash (a database reader cannot make it).
pub fn csrf_token(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"ecsd console csrf v1\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Compares two strings in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The expiries of a session: the absolute end and the idle end as of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub idle_secs: i64,
    pub absolute_secs: i64,
}

impl Lifetime {
    pub fn of(config: &crate::config::Config) -> Self {
        Lifetime {
            idle_secs: config.console_idle_secs as i64,
            absolute_secs: config.console_session_secs as i64,
        }
    }

    /// The absolute end of a session issued at `issued`.
    pub fn absolute_end(&self, issued: DateTime<Utc>) -> DateTime<Utc> {
        issued + Duration::seconds(self.absolute_secs)
    }

    /// The idle end after a request at `now`, never past the absolute end.
    pub fn idle_end(&self, issued: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + Duration::seconds(self.idle_secs)).min(self.absolute_end(issued))
    }

    /// The new stored expiry after a request at `now`, when it should move
    /// (a minute or more later than the stored one).
    pub fn slide(
        &self,
        issued: DateTime<Utc>,
        stored: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let next = self.idle_end(issued, now);
        let step = SLIDE_STEP_SECS.min(self.idle_secs / 2).max(1);
        (next - stored >= Duration::seconds(step)).then_some(next)
    }
}

/// The session secret from the request's `Cookie` headers, if any.
pub fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new session (lives at most its absolute lifetime).
pub fn set_cookie(secret: &SecretString, max_age_secs: i64) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}",
        secret.expose_secret()
    ))
    .expect("hex is a valid header value");
    v.set_sensitive(true);
    v
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .expect("ASCII")
}

// ------------------------------------------------------------- services --

/// A valid session: its row, its user and its CSRF token.
pub struct Session {
    pub token: StoredToken,
    pub user: User,
    pub csrf: String,
}

impl Session {
    pub fn caller(&self, role: crate::store::Role) -> Caller {
        Caller {
            access_key: self.token.id.clone(),
            project_id: self.token.project_id.clone(),
            role,
            user: Some(UserRef {
                id: self.user.id.clone(),
                name: self.user.name.clone(),
            }),
        }
    }
}

fn storage(e: crate::store::StoreError) -> ApiError {
    ApiError::store("console sessions", e)
}

fn refuse(reason: &str) -> ApiError {
    tracing::warn!(reason, "console session refused");
    ApiError::unauthenticated(reason)
}

/// Starts a session for a checked login: the secret for the cookie.
pub async fn create(
    state: &AppState,
    who: &LoginSubject,
) -> Result<(SecretString, StoredToken), ApiError> {
    let secret = new_bearer("SES");
    let now = Utc::now();
    let life = Lifetime::of(&state.config);
    let stored = StoredToken {
        id: format!(
            "{SESSION_ID_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
        token_hash: bearer_hash(secret.expose_secret()),
        user_id: who.user.id.clone(),
        project_id: who.project.id.clone(),
        issued: now,
        expires: life.idle_end(now, now),
        revoked: false,
    };
    state
        .identity
        .create_token(stored.clone())
        .await
        .map_err(storage)?;
    tracing::info!(user = %who.user.id, session = %stored.id, project = %who.project.id, "console session started");
    Ok((secret, stored))
}

/// The session the cookie names, if it is valid now (unexpired, unrevoked,
/// its user enabled); moves its idle expiry. `None` when there is no
/// cookie; 401 when there is one that is no longer good.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(secret) = cookie_secret(headers) else {
        return Ok(None);
    };
    let hash = bearer_hash(secret);
    let token = state
        .identity
        .token_by_hash(&hash)
        .await
        .map_err(storage)?
        .filter(|t| t.id.starts_with(SESSION_ID_PREFIX))
        .ok_or_else(|| refuse("the console session is unknown or has ended"))?;
    let now = Utc::now();
    let life = Lifetime::of(&state.config);
    match token_state(&token, now) {
        TokenState::Valid if now < life.absolute_end(token.issued) => {}
        TokenState::Revoked => return Err(refuse("the console session has ended")),
        _ => return Err(refuse("the console session has expired")),
    }
    let user = state
        .identity
        .user(&token.user_id)
        .await
        .map_err(storage)?
        .filter(|u| u.enabled)
        .ok_or_else(|| refuse("the console session has ended"))?;
    if let Some(next) = life.slide(token.issued, token.expires, now) {
        state
            .identity
            .extend_token(&hash, next)
            .await
            .map_err(storage)?;
    }
    Ok(Some(Session {
        csrf: csrf_token(secret),
        token,
        user,
    }))
}

/// The caller of a public API call made with the session cookie: only
/// with the session's CSRF token in `X-CSRF-Token` (every method), so a
/// cross-site request (which cannot set the header) is refused.
pub async fn api_caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(session) = current(state, headers).await? else {
        return Err(refuse("the console session cookie is missing"));
    };
    let mut sent = headers.get_all(CSRF_HEADER).iter();
    let ok = match (sent.next(), sent.next()) {
        (Some(v), None) => v.to_str().is_ok_and(|v| same(v.trim(), &session.csrf)),
        _ => false,
    };
    if !ok {
        tracing::warn!(session = %session.token.id, "a console call without its CSRF token");
        return Err(ApiError::forbidden(
            "the console call lacks its X-CSRF-Token (cross-site request refused)",
        ));
    }
    let role = crate::identity::role_of(state, &session.user.id, &session.token.project_id)
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError::forbidden("the user has no role in the project"))?;
    Ok(session.caller(role))
}

/// Ends the session the cookie names (sign-out); true if there was one.
pub async fn end(state: &AppState, headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(secret) = cookie_secret(headers) else {
        return Ok(false);
    };
    let hash = bearer_hash(secret);
    let is_session = state
        .identity
        .token_by_hash(&hash)
        .await
        .map_err(storage)?
        .is_some_and(|t| t.id.starts_with(SESSION_ID_PREFIX));
    if !is_session {
        return Ok(false);
    }
    state.identity.revoke_token(&hash).await.map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_idle_end_slides_but_never_past_the_absolute_end() {
        let life = Lifetime {
            idle_secs: 600,
            absolute_secs: 3600,
        };
        let issued = t("2026-01-01T00:00:00Z");
        assert_eq!(life.idle_end(issued, issued), t("2026-01-01T00:10:00Z"));
        assert_eq!(
            life.idle_end(issued, t("2026-01-01T00:55:00Z")),
            t("2026-01-01T01:00:00Z")
        );
        // Moved only when a minute or more would be gained.
        let stored = t("2026-01-01T00:10:00Z");
        assert_eq!(life.slide(issued, stored, t("2026-01-01T00:00:30Z")), None);
        assert_eq!(
            life.slide(issued, stored, t("2026-01-01T00:05:00Z")),
            Some(t("2026-01-01T00:15:00Z"))
        );
        assert_eq!(
            life.slide(issued, t("2026-01-01T01:00:00Z"), t("2026-01-01T00:59:00Z")),
            None
        );
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_secret_and_is_not_its_stored_hash() {
        let a = csrf_token("SESabc");
        assert_eq!(a.len(), 64);
        assert_eq!(a, csrf_token("SESabc"));
        assert_ne!(a, csrf_token("SESabd"));
        assert_ne!(a, bearer_hash("SESabc"));
        assert!(same(&a, &csrf_token("SESabc")));
        assert!(!same(&a, &csrf_token("SESabd")));
        assert!(!same(&a, &a[..63]));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_has_its_attributes() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(cookie_secret(&h), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("x=y; __Host-ecsd-session=SES42 ; z=1"),
        );
        assert_eq!(cookie_secret(&h), Some("SES42"));
        let set = set_cookie(&SecretString::from("SES42"), 100);
        let set = set.to_str().unwrap();
        for attr in [
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=100",
        ] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Domain"));
    }
}
