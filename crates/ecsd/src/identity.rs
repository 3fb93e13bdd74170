//! Identity (issue #10): IAM users in domains, password login to a project
//! token (`POST /v3/auth/tokens`), `X-Auth-Token` on the public API, and
//! temporary AK/SK bound to a security token.
//!
//! The rules are plain functions at the top (unit-tested below); the
//! services under them read and write through [`IdentityStore`]. Secrets
//! never leave a `SecretString` except to be hashed (argon2id for passwords,
//! SHA-256 for the 256-bit random tokens) or sealed (the temporary SK).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash::rand_core::OsRng};
use axum::http::HeaderMap;
use chrono::{DateTime, Duration, Utc};
use ecs_api::iam::{
    CreateTokenRequest, IAM_TIME_FORMAT, IdName, SecurityTokenRequest, SecurityTokenResponse,
    TemporaryCredential as WireCredential, TokenProject, TokenResponse, TokenResult, TokenUser,
};
use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;
use crate::secrets::{bearer_hash, new_access_key, new_bearer, new_secret_key};
use crate::state::{AppState, Caller, UserRef};
use crate::store::identity::{StoredToken, TemporaryCredential, User, UserRole};
use crate::store::{AccessKey, Role, StoreError};

// ---------------------------------------------------------------- rules --

/// What is wrong with a token, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Expired,
    Revoked,
}

/// A token is good until its expiry, unless revoked.
pub fn token_state(t: &StoredToken, now: DateTime<Utc>) -> TokenState {
    if t.revoked {
        TokenState::Revoked
    } else if now >= t.expires {
        TokenState::Expired
    } else {
        TokenState::Valid
    }
}

/// The lifetime of temporary credentials: `duration_seconds` from 900 to
/// 86400 (Huawei's range), 900 when absent.
pub fn security_token_duration(requested: Option<i64>) -> Result<i64, String> {
    match requested {
        None => Ok(900),
        Some(d) if (900..=86400).contains(&d) => Ok(d),
        Some(_) => Err("duration_seconds must be from 900 to 86400".into()),
    }
}

/// A user's password when it is set: 8 to 128 characters, no control
/// characters (ecsd's rule; the message never repeats the password).
pub fn check_new_password(pw: &str) -> Result<(), &'static str> {
    let n = pw.chars().count();
    if !(8..=128).contains(&n) {
        return Err("the password must have 8 to 128 characters");
    }
    if pw.chars().any(char::is_control) {
        return Err("the password must not contain control characters");
    }
    Ok(())
}

/// A user name: 1 to 64 characters of letters, digits, `-_.@`.
pub fn check_user_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err("a user name has 1 to 64 letters, digits or -_.@")
    }
}

/// The public id of a token (logs, audit, `Caller::access_key`).
pub fn token_public_id() -> String {
    format!("tok-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

pub fn iam_time(t: DateTime<Utc>) -> String {
    t.format(IAM_TIME_FORMAT).to_string()
}

/// argon2id with the crate's defaults (19 MiB, 2 passes), PHC string.
pub fn hash_password(pw: &SecretString) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(pw.expose_secret().as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC string; a malformed hash never matches.
pub fn verify_password(phc: &str, pw: &SecretString) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(pw.expose_secret().as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, verified when the user does not exist so
/// that a wrong name costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        hash_password(&SecretString::from(uuid::Uuid::new_v4().to_string()))
            .expect("argon2 with default parameters")
    })
}

// ------------------------------------------------------------- services --

/// Records an IAM call in the audit table (contract §3.5): the actor is the
/// token's or temporary AK's public id, never a secret.
pub async fn audit(
    state: &AppState,
    project_id: &str,
    actor: &str,
    user_id: &str,
    action: &str,
    source: &str,
) -> Result<(), ApiError> {
    state
        .store
        .record_audit(crate::store::AuditEntry {
            at: Utc::now(),
            request_id: crate::error::current_request_id(),
            project_id: project_id.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            servers: Vec::new(),
            dry_run: false,
            outcome: "ok".into(),
            source: source.to_owned(),
            user_id: Some(user_id.to_owned()),
            user_name: None,
            error_code: None,
            http_status: None,
        })
        .await
        .map_err(storage)
}

fn storage(e: StoreError) -> ApiError {
    ApiError::store("identity store", e)
}

/// The one place that says which [`Role`] a user has in a project (the
/// authz part replaces it with policies and groups).
pub async fn role_of(
    state: &AppState,
    user_id: &str,
    project_id: &str,
) -> Result<Option<Role>, StoreError> {
    Ok(project_access(state, user_id, project_id)
        .await?
        .map(|direct| direct.map_or(Role::ReadOnly, UserRole::caller_role)))
}

/// Whether a user may work in a project at all: `Some(Some(role))` with a
/// role of its own there, `Some(None)` when only its groups have grants there
/// (authorization then decides every call from those), `None` otherwise.
/// The `Role` a group-only user's caller carries is never consulted for
/// users (auth.rs leaves IAM users to authorization).
pub async fn project_access(
    state: &AppState,
    user_id: &str,
    project_id: &str,
) -> Result<Option<Option<UserRole>>, StoreError> {
    if let Some(role) = state.identity.user_role(user_id, project_id).await? {
        return Ok(Some(Some(role)));
    }
    let grants = state
        .authz_store
        .caller_grants(project_id, "", Some(user_id))
        .await?
        .unwrap_or_default();
    Ok((!grants.is_empty()).then_some(None))
}

const BAD_LOGIN: &str = "The username or password is wrong.";

fn login_fail(reason: &str) -> ApiError {
    // The log says why; the answer never says which of name or password.
    tracing::warn!(reason, "login failed");
    ApiError::unauthenticated(BAD_LOGIN)
}

/// Verifies a password on the blocking pool (argon2 takes tens of ms).
async fn password_matches(phc: String, pw: SecretString) -> bool {
    tokio::task::spawn_blocking(move || verify_password(&phc, &pw))
        .await
        .unwrap_or(false)
}

/// Who a password login names, once its password, user and project checked
/// out: the console's sign-in and `POST /v3/auth/tokens` share it.
pub struct LoginSubject {
    pub user: User,
    pub domain: crate::store::identity::Domain,
    pub project: crate::store::Project,
    pub role: Option<UserRole>,
}

/// Checks a password login: the domain and user exist, the password
/// matches (argon2id; a dummy hash is verified for an unknown user so a
/// wrong name costs as long), the user is enabled, and the project (by id
/// or name) is in the user's domain with a role or grant there. Every
/// failure is 401 `APIGW.0301` without saying which part was wrong.
pub async fn check_login(
    state: &AppState,
    domain_name: &str,
    user_name: &str,
    password: &SecretString,
    project_id: Option<&str>,
    project_name: Option<&str>,
) -> Result<LoginSubject, ApiError> {
    let domain = state
        .identity
        .domain_by_name(domain_name)
        .await
        .map_err(storage)?;
    let user = match &domain {
        Some(d) => state
            .identity
            .user_by_name(&d.id, user_name)
            .await
            .map_err(storage)?,
        None => None,
    };
    let phc = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let matches = password_matches(phc, password.clone()).await;
    let (Some(domain), Some(user)) = (domain, user) else {
        return Err(login_fail("unknown domain or user"));
    };
    if !matches {
        return Err(login_fail("wrong password"));
    }
    if !user.enabled {
        return Err(login_fail("the user is disabled"));
    }
    let project = match (project_id, project_name) {
        (Some(id), _) => state.store.project(id).await.map_err(storage)?,
        (None, Some(name)) => state
            .identity
            .project_in_domain(&domain.id, name)
            .await
            .map_err(storage)?,
        (None, None) => None,
    };
    let in_domain = match &project {
        Some(p) => state
            .identity
            .project_domain(&p.id)
            .await
            .map_err(storage)?
            .is_some_and(|d| d.id == domain.id),
        None => false,
    };
    let (Some(project), true) = (project, in_domain) else {
        tracing::warn!(user = %user.id, "login to a project not in the user's domain");
        return Err(ApiError::unauthenticated(
            "the project is not in the user's domain",
        ));
    };
    let Some(role) = project_access(state, &user.id, &project.id)
        .await
        .map_err(storage)?
    else {
        tracing::warn!(user = %user.id, project = %project.id, "login without a role");
        return Err(ApiError::unauthenticated(
            "the user has no role in the project",
        ));
    };
    Ok(LoginSubject {
        user,
        domain,
        project,
        role,
    })
}

/// `POST /v3/auth/tokens` with the `password` method: the new token and
/// the answer's body.
pub async fn login(
    state: &AppState,
    req: CreateTokenRequest,
    source: &str,
) -> Result<(SecretString, TokenResponse), ApiError> {
    let identity = req.auth.identity;
    if !identity.methods.iter().any(|m| m == "password") {
        return Err(ApiError::invalid(
            "auth.identity.methods must contain \"password\".",
        ));
    }
    let pw = identity
        .password
        .ok_or_else(|| ApiError::invalid("auth.identity.password is required."))?;
    let scope = req
        .auth
        .scope
        .and_then(|s| s.project)
        .filter(|p| p.id.is_some() || p.name.is_some())
        .ok_or_else(|| {
            ApiError::invalid(
                "auth.scope.project (id or name) is required: tokens are project-scoped.",
            )
        })?;
    let u = pw.user;
    let LoginSubject {
        user,
        domain,
        project,
        role,
    } = check_login(
        state,
        &u.domain.name,
        &u.name,
        &u.password.0,
        scope.id.as_deref(),
        scope.name.as_deref(),
    )
    .await?;
    let token = new_bearer("MII");
    let now = Utc::now();
    let stored = StoredToken {
        id: token_public_id(),
        token_hash: bearer_hash(token.expose_secret()),
        user_id: user.id.clone(),
        project_id: project.id.clone(),
        issued: now,
        expires: now + Duration::seconds(state.config.token_ttl_secs as i64),
        revoked: false,
    };
    state
        .identity
        .create_token(stored.clone())
        .await
        .map_err(storage)?;
    tracing::info!(user = %user.id, token = %stored.id, project = %project.id, "token issued");
    audit(
        state,
        &project.id,
        &stored.id,
        &stored.user_id,
        "create-token",
        source,
    )
    .await?;
    let body = token_body(&stored, &user, &domain, &project, role);
    Ok((token, body))
}

fn token_body(
    t: &StoredToken,
    user: &User,
    domain: &crate::store::identity::Domain,
    project: &crate::store::Project,
    role: Option<UserRole>,
) -> TokenResponse {
    let domain = IdName {
        id: domain.id.clone(),
        name: domain.name.clone(),
    };
    TokenResponse {
        token: TokenResult {
            expires_at: iam_time(t.expires),
            issued_at: iam_time(t.issued),
            methods: vec!["password".into()],
            project: TokenProject {
                id: project.id.clone(),
                name: project.name.clone(),
                domain: domain.clone(),
            },
            user: TokenUser {
                id: user.id.clone(),
                name: user.name.clone(),
                domain,
                password_expires_at: String::new(),
            },
            roles: role
                .into_iter()
                .map(|r| IdName {
                    id: r.as_str().into(),
                    name: r.as_str().into(),
                })
                .collect(),
            catalog: Vec::new(),
        },
    }
}

/// A valid token and its enabled user.
pub struct ValidToken {
    pub token: StoredToken,
    pub user: User,
}

/// Checks a token presented in `header` (`X-Auth-Token` or
/// `X-Subject-Token`): 401 `APIGW.0301` with Huawei's message tails.
pub async fn check_token(
    state: &AppState,
    header: &str,
    value: Option<&axum::http::HeaderValue>,
) -> Result<ValidToken, ApiError> {
    let fail = |tail: String| {
        tracing::warn!(header, reason = %tail, "token authentication failed");
        ApiError::unauthenticated(tail)
    };
    let raw = value
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| fail(format!("{header} not found")))?;
    let token = state
        .identity
        .token_by_hash(&bearer_hash(raw))
        .await
        .map_err(storage)?
        .ok_or_else(|| fail("decrypt token fail".into()))?;
    // A console session (crate::console::session) is no API token: it is
    // good only as the HttpOnly cookie beside its CSRF header.
    if token
        .id
        .starts_with(crate::console::session::SESSION_ID_PREFIX)
    {
        return Err(fail("decrypt token fail".into()));
    }
    match token_state(&token, Utc::now()) {
        TokenState::Valid => {}
        TokenState::Expired => {
            return Err(fail(format!(
                "token expires, expires_at: {}",
                iam_time(token.expires)
            )));
        }
        TokenState::Revoked => return Err(fail("decrypt token fail".into())),
    }
    let user = state
        .identity
        .user(&token.user_id)
        .await
        .map_err(storage)?
        .filter(|u| u.enabled)
        .ok_or_else(|| fail("decrypt token fail".into()))?;
    Ok(ValidToken { token, user })
}

/// The caller of a public call made with `X-Auth-Token`.
pub async fn token_caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let v = check_token(state, "x-auth-token", headers.get("x-auth-token")).await?;
    let role = role_of(state, &v.user.id, &v.token.project_id)
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError::forbidden("the user has no role in the project"))?;
    Ok(Caller {
        access_key: v.token.id,
        project_id: v.token.project_id,
        role,
        user: Some(UserRef {
            id: v.user.id,
            name: v.user.name,
        }),
    })
}

/// `GET`/`DELETE /v3/auth/tokens`: the subject token, which the caller
/// (`X-Auth-Token`) may inspect if it is its own user's or the caller is
/// an admin of the subject token's project.
pub async fn subject_token(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(ValidToken, TokenResponse), ApiError> {
    let caller = check_token(state, "x-auth-token", headers.get("x-auth-token")).await?;
    let subject = check_token(state, "x-subject-token", headers.get("x-subject-token")).await?;
    if caller.user.id != subject.user.id
        && state
            .identity
            .user_role(&caller.user.id, &subject.token.project_id)
            .await
            .map_err(storage)?
            != Some(UserRole::Admin)
    {
        return Err(ApiError::forbidden(
            "only the token's user or an admin of its project may see or revoke it",
        ));
    }
    let project = state
        .store
        .project(&subject.token.project_id)
        .await
        .map_err(storage)?;
    let domain = state
        .identity
        .domain(&subject.user.domain_id)
        .await
        .map_err(storage)?;
    let role = project_access(state, &subject.user.id, &subject.token.project_id)
        .await
        .map_err(storage)?;
    let (Some(project), Some(domain), Some(role)) = (project, domain, role) else {
        return Err(ApiError::unauthenticated(
            "x-subject-token: decrypt token fail",
        ));
    };
    let body = token_body(&subject.token, &subject.user, &domain, &project, role);
    Ok((subject, body))
}

/// `POST /v3.0/OS-CREDENTIAL/securitytokens`: a temporary AK/SK for the
/// caller's token's user and project.
pub async fn issue_security_token(
    state: &AppState,
    headers: &HeaderMap,
    req: SecurityTokenRequest,
    source: &str,
) -> Result<SecurityTokenResponse, ApiError> {
    let v = check_token(state, "x-auth-token", headers.get("x-auth-token")).await?;
    let identity = req.auth.identity;
    if !identity.methods.iter().any(|m| m == "token") {
        return Err(ApiError::invalid(
            "auth.identity.methods must contain \"token\".",
        ));
    }
    let secs = security_token_duration(identity.token.and_then(|t| t.duration_seconds))
        .map_err(|m| ApiError::invalid(format!("auth.identity.token.{m}.")))?;
    let ak = new_access_key();
    let sk = new_secret_key();
    let security_token = new_bearer("ST");
    let expires = Utc::now() + Duration::seconds(secs);
    state
        .identity
        .create_temporary_credential(TemporaryCredential {
            ak: ak.clone(),
            sk_sealed: state.master.encrypt(&ak, sk.expose_secret().as_bytes()),
            security_token_hash: bearer_hash(security_token.expose_secret()),
            user_id: v.user.id.clone(),
            project_id: v.token.project_id.clone(),
            expires,
        })
        .await
        .map_err(storage)?;
    tracing::info!(user = %v.user.id, token = %v.token.id, access_key = %ak, "temporary credentials issued");
    audit(
        state,
        &v.token.project_id,
        &v.token.id,
        &v.user.id,
        &format!("create-temporary-credentials {ak}"),
        source,
    )
    .await?;
    Ok(SecurityTokenResponse {
        credential: WireCredential {
            access: ak,
            secret: sk.into(),
            securitytoken: security_token.into(),
            expires_at: iam_time(expires),
        },
    })
}

/// A temporary AK as an [`AccessKey`] plus its user, if `ak` is one and it
/// is usable: unexpired, its user enabled with a role in the project, and
/// the request carries its security token in a signed `X-Security-Token`.
pub async fn temporary_key(
    state: &AppState,
    ak: &str,
    headers: &HeaderMap,
    signed_headers: &[String],
) -> Result<Option<(AccessKey, UserRef)>, ApiError> {
    let Some(cred) = state
        .identity
        .temporary_credential(ak)
        .await
        .map_err(storage)?
    else {
        return Ok(None);
    };
    let fail = |tail: &str| {
        tracing::warn!(
            access_key = ak,
            reason = tail,
            "temporary credential refused"
        );
        ApiError::unauthenticated(tail)
    };
    if Utc::now() >= cred.expires {
        return Err(fail(&format!(
            "token expires, expires_at: {}",
            iam_time(cred.expires)
        )));
    }
    let presented = headers
        .get("x-security-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail("x-security-token not found"))?;
    if !signed_headers.iter().any(|h| h == "x-security-token") {
        return Err(fail(
            "verify aksk signature fail: x-security-token must be signed",
        ));
    }
    // Comparing SHA-256 digests: a timing difference says nothing useful
    // about the security token itself.
    if bearer_hash(presented.trim()) != cred.security_token_hash {
        return Err(fail("decrypt token fail"));
    }
    let user = state
        .identity
        .user(&cred.user_id)
        .await
        .map_err(storage)?
        .filter(|u| u.enabled)
        .ok_or_else(|| fail("decrypt token fail"))?;
    let role = role_of(state, &user.id, &cred.project_id)
        .await
        .map_err(storage)?
        .ok_or_else(|| ApiError::forbidden("the user has no role in the project"))?;
    Ok(Some((
        AccessKey {
            ak: cred.ak,
            project_id: cred.project_id,
            sk_sealed: cred.sk_sealed,
            role,
        },
        UserRef {
            id: user.id,
            name: user.name,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_in: i64, revoked: bool) -> StoredToken {
        let now = Utc::now();
        StoredToken {
            id: token_public_id(),
            token_hash: "h".into(),
            user_id: "u".into(),
            project_id: "p".into(),
            issued: now,
            expires: now + Duration::seconds(expires_in),
            revoked,
        }
    }

    #[test]
    fn a_token_is_valid_until_it_expires_or_is_revoked() {
        let now = Utc::now();
        assert_eq!(token_state(&token(60, false), now), TokenState::Valid);
        assert_eq!(token_state(&token(-1, false), now), TokenState::Expired);
        assert_eq!(token_state(&token(60, true), now), TokenState::Revoked);
        // Revoked wins over expired.
        assert_eq!(token_state(&token(-1, true), now), TokenState::Revoked);
        // The expiry instant itself is expired.
        let t = token(0, false);
        assert_eq!(token_state(&t, t.expires), TokenState::Expired);
    }

    #[test]
    fn security_token_durations_are_huaweis_range() {
        assert_eq!(security_token_duration(None), Ok(900));
        assert_eq!(security_token_duration(Some(900)), Ok(900));
        assert_eq!(security_token_duration(Some(86400)), Ok(86400));
        assert!(security_token_duration(Some(899)).is_err());
        assert!(security_token_duration(Some(86401)).is_err());
        assert!(security_token_duration(Some(-5)).is_err());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let pw = SecretString::from("correct horse battery");
        let h = hash_password(&pw).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify_password(&h, &pw));
        assert!(!verify_password(
            &h,
            &SecretString::from("correct horse battery!")
        ));
        assert!(!verify_password("not a hash", &pw));
        // The same password hashes differently (salt).
        assert_ne!(hash_password(&pw).unwrap(), h);
        assert!(!verify_password(dummy_hash(), &pw));
    }

    #[test]
    fn new_passwords_and_names_follow_the_rules() {
        assert!(check_new_password("12345678").is_ok());
        assert!(check_new_password("1234567").is_err());
        assert!(check_new_password(&"x".repeat(129)).is_err());
        assert!(check_new_password("abcdefgh\n").is_err());
        assert!(check_user_name("dev-admin").is_ok());
        assert!(check_user_name("a.b@c_d").is_ok());
        assert!(check_user_name("").is_err());
        assert!(check_user_name("a b").is_err());
        assert!(check_user_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn iam_times_have_microseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iam_time(t), "2026-01-02T03:04:05.123000Z");
    }

    #[test]
    fn operators_act_as_admins_and_readonly_stays_readonly() {
        assert_eq!(UserRole::Admin.caller_role(), Role::Admin);
        assert_eq!(UserRole::Operator.caller_role(), Role::Admin);
        assert_eq!(UserRole::ReadOnly.caller_role(), Role::ReadOnly);
        for r in [UserRole::Admin, UserRole::Operator, UserRole::ReadOnly] {
            assert_eq!(UserRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(UserRole::parse("root"), None);
    }
}
