//! A client of ecsd's public API that signs like the Huawei SDKs
//! (SDK-HMAC-SHA256 over Host, X-Project-Id, X-Sdk-Date and the body) and
//! speaks TLS with rustls. Typed calls return `ecs-api` types; [`Client::send`]
//! is the raw form the tests use to send what no well-behaved client would.
//!
//! Besides AK/SK it authenticates as the IAM APIs allow: with a token
//! (`X-Auth-Token`, from [`login`]) instead of a signature, or with
//! temporary AK/SK whose security token is sent, signed, as
//! `X-Security-Token`.
//!
//! Plain `http://` is refused unless the host is a loopback address; the
//! secret key lives in a `SecretString` and request bodies (which may hold a
//! password) are zeroized once sent.

use std::time::Duration;

use bytes::Bytes;
use ecs_api::iam::{
    AuthScope, AuthScopeProject, CreateTokenRequest, IdentityToken, NameRef, PwdAuth, PwdIdentity,
    PwdPassword, PwdPasswordUser, SecurityTokenRequest, SecurityTokenResponse, TokenAuth,
    TokenAuthIdentity, TokenResponse,
};
use ecs_api::{
    BatchResetRequest, BatchResetResponse, EnrollTokenRequest, EnrollTokenResponse, ErrorBody,
    JobResult, ListServersResponse, ResetOutcome, ResetPwdFlagResponse, ServerAction, ServerDetail,
    ShowJobResponse, ShowServerResponse, SingleResetRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// The content type the Huawei SDKs send.
pub const JSON: &str = "application/json;charset=UTF-8";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing plain HTTP to {0}: passwords would cross the network in the clear (use https://)"
    )]
    PlainHttp(String),
    #[error("invalid endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] ecs_trust::tls::TlsError),
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("signing the request: {0}")]
    Sign(String),
    #[error("calling {endpoint}")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("encoding the request body")]
    Encode(#[source] serde_json::Error),
    /// ecsd answered with one of its two error bodies.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// A 2xx answer that is not the documented body.
    #[error("unexpected answer to {what} (HTTP {status}, request {request_id}): {source}")]
    Decode {
        what: String,
        status: u16,
        request_id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An error answered by ecsd.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub request_id: String,
    /// The error body; `None` if the answer was not one of the two shapes.
    pub body: Option<ErrorBody>,
    /// The first 300 characters of an answer that was not an error body.
    pub text: String,
}

impl ApiError {
    pub fn code(&self) -> String {
        match &self.body {
            Some(b) => b.code().to_owned(),
            None => format!("HTTP {}", self.status),
        }
    }
    pub fn message(&self) -> &str {
        match &self.body {
            Some(b) => b.message(),
            None => &self.text,
        }
    }
    pub fn internal(&self) -> &[ecs_api::InternalError] {
        self.body.as_ref().map(ErrorBody::internal).unwrap_or(&[])
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (HTTP {}, request {})",
            self.code(),
            self.message(),
            self.status,
            self.request_id
        )
    }
}

impl std::error::Error for ApiError {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An access key and its secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// How the server's certificate is verified.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The system's roots only.
    #[default]
    System,
    /// The system's roots plus the certificates in this PEM (a private CA).
    SystemAnd(Vec<u8>),
}

/// Called after every answer with (method, path, status, request id): a
/// CLI's `-v`.
pub type Observer = std::sync::Arc<dyn Fn(&str, &str, u16, &str) + Send + Sync>;

/// What to build a [`Client`] from.
#[derive(Clone)]
pub struct Config {
    /// `https://host:port` (no path).
    pub endpoint: String,
    pub project_id: String,
    pub credentials: Credentials,
    pub trust: Trust,
    /// Whole-call limit (default 60 s).
    pub timeout: Duration,
    pub user_agent: String,
    pub observer: Option<Observer>,
    /// Send `X-Auth-Token` with this token instead of signing.
    pub token: Option<SecretString>,
    /// The security token of temporary AK/SK: sent (and signed) as
    /// `X-Security-Token`.
    pub security_token: Option<SecretString>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("project_id", &self.project_id)
            .field("credentials", &self.credentials)
            .field("trust", &self.trust)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Config {
    pub fn new(
        endpoint: impl Into<String>,
        project_id: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: SecretString,
    ) -> Self {
        Config {
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            project_id: project_id.into(),
            credentials: Credentials {
                access_key: access_key.into(),
                secret_key,
            },
            trust: Trust::System,
            timeout: Duration::from_secs(60),
            user_agent: format!("ecs-client/{}", env!("CARGO_PKG_VERSION")),
            observer: None,
            token: None,
            security_token: None,
        }
    }

    /// A configuration that authenticates with a token (`X-Auth-Token`).
    pub fn with_token(
        endpoint: impl Into<String>,
        project_id: impl Into<String>,
        token: SecretString,
    ) -> Self {
        let mut c = Config::new(endpoint, project_id, "", SecretString::from(""));
        c.token = Some(token);
        c
    }

    /// Temporary AK/SK: requests are signed and carry `X-Security-Token`.
    pub fn with_security_token(mut self, security_token: SecretString) -> Self {
        self.security_token = Some(security_token);
        self
    }
}

/// One request as it will be signed and sent. Build with [`Request::new`].
#[derive(Debug)]
pub struct Request {
    pub method: reqwest::Method,
    /// Absolute path with an optional `?query`, e.g. `/v1/p/cloudservers/detail?limit=5`.
    pub path_and_query: String,
    pub body: Option<(String, Zeroizing<Vec<u8>>)>,
    /// Sent and signed; replaces a default header of the same name.
    pub headers: Vec<(String, String)>,
    /// Overrides the `X-Sdk-Date` (default: now).
    pub date: Option<String>,
    /// Signs as someone else (default: the client's credentials).
    pub credentials: Option<Credentials>,
    /// Sends no `Authorization` header at all.
    pub unsigned: bool,
}

impl Request {
    pub fn new(method: reqwest::Method, path_and_query: impl Into<String>) -> Self {
        Request {
            method,
            path_and_query: path_and_query.into(),
            body: None,
            headers: Vec::new(),
            date: None,
            credentials: None,
            unsigned: false,
        }
    }
    /// A body with its content type, sent as is.
    pub fn body(mut self, content_type: &str, bytes: Vec<u8>) -> Self {
        self.body = Some((content_type.to_owned(), Zeroizing::new(bytes)));
        self
    }
    /// A JSON body, as the SDKs send it.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(Error::Encode)?;
        Ok(self.body(JSON, bytes))
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn date(mut self, date: impl Into<String>) -> Self {
        self.date = Some(date.into());
        self
    }
    pub fn signed_as(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
    pub fn unsigned(mut self) -> Self {
        self.unsigned = true;
        self
    }
}

/// What ecsd answered, before interpretation.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `X-Request-Id` ("" if absent).
    pub request_id: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `X-Subject-Token` (the token of `POST /v3/auth/tokens`).
    pub subject_token: Option<SecretString>,
}

impl Response {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The typed body of a 2xx answer, or the API error.
    pub fn into_result<T: DeserializeOwned>(self, what: &str) -> Result<Reply<T>> {
        if !(200..300).contains(&self.status) {
            return Err(Error::Api(Box::new(ApiError {
                status: self.status,
                request_id: self.request_id,
                body: serde_json::from_slice(&self.body).ok(),
                text: String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(300)
                    .collect(),
            })));
        }
        let body = if self.body.is_empty() {
            serde_json::from_slice(b"null")
        } else {
            serde_json::from_slice(&self.body)
        }
        .map_err(|source| Error::Decode {
            what: what.to_owned(),
            status: self.status,
            request_id: self.request_id.clone(),
            source,
        })?;
        Ok(Reply {
            request_id: self.request_id,
            body,
        })
    }
}

/// A typed answer and its request id.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub request_id: String,
    pub body: T,
}

/// A signed client of one project.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: std::sync::Arc<Config>,
    host: String,
}

impl Client {
    /// Verifies the server per `cfg.trust`; plain HTTP only to loopback.
    pub fn new(cfg: Config) -> Result<Self> {
        let url = reqwest::Url::parse(&cfg.endpoint).map_err(|e| Error::Endpoint {
            endpoint: cfg.endpoint.clone(),
            reason: e.to_string(),
        })?;
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(cfg.user_agent.clone());
        match url.scheme() {
            "https" => {
                let extra = match &cfg.trust {
                    Trust::System => Vec::new(),
                    Trust::SystemAnd(pem) => ecs_trust::tls::certs_from_pem(pem, "the CA file")?,
                };
                let tls = ecs_trust::tls::client_config(&ecs_trust::tls::Roots::SystemAnd(extra))?;
                builder = builder.use_preconfigured_tls(tls);
            }
            "http" if ecs_trust::tls::is_loopback_http(&cfg.endpoint) => {}
            "http" => return Err(Error::PlainHttp(cfg.endpoint.clone())),
            other => {
                return Err(Error::Endpoint {
                    endpoint: cfg.endpoint.clone(),
                    reason: format!("unsupported scheme {other}"),
                });
            }
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => {
                return Err(Error::Endpoint {
                    endpoint: cfg.endpoint.clone(),
                    reason: "no host".into(),
                });
            }
        };
        Ok(Client {
            http: builder.build().map_err(Error::Build)?,
            cfg: std::sync::Arc::new(cfg),
            host,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `/v1/{project_id}` + `rest`.
    pub fn project_path(&self, rest: &str) -> String {
        format!("/v1/{}{}", self.cfg.project_id, rest)
    }

    /// Signs and sends one request; any HTTP answer is `Ok`.
    pub async fn send(&self, req: Request) -> Result<Response> {
        let (path, query) = req
            .path_and_query
            .split_once('?')
            .unwrap_or((req.path_and_query.as_str(), ""));
        let date = req
            .date
            .clone()
            .unwrap_or_else(|| chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string());
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), self.host.clone()),
            ("X-Sdk-Date".into(), date),
        ];
        if !self.cfg.project_id.is_empty() {
            headers.push(("X-Project-Id".into(), self.cfg.project_id.clone()));
        }
        // A token replaces the signature unless the request is signed as
        // someone else; a security token is signed with the temporary AK/SK.
        let token = self
            .cfg
            .token
            .as_ref()
            .filter(|_| req.credentials.is_none());
        if req.credentials.is_none()
            && let Some(st) = &self.cfg.security_token
        {
            headers.push(("X-Security-Token".into(), st.expose_secret().to_owned()));
        }
        if let Some((ct, _)) = &req.body {
            headers.push(("Content-Type".into(), ct.clone()));
        }
        for (k, v) in &req.headers {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.clone()));
        }
        let empty = Zeroizing::new(Vec::new());
        let bytes = req.body.as_ref().map(|b| &b.1).unwrap_or(&empty);
        let url = format!("{}{}", self.cfg.endpoint, req.path_and_query);
        let mut out = self.http.request(req.method.clone(), &url);
        for (k, v) in &headers {
            if !k.eq_ignore_ascii_case("host") {
                out = out.header(k, v);
            }
        }
        if let Some(t) = token
            && !req.unsigned
        {
            let mut v = reqwest::header::HeaderValue::from_str(t.expose_secret())
                .map_err(|_| Error::Sign("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            out = out.header("X-Auth-Token", v);
        } else if !req.unsigned {
            let creds = req.credentials.as_ref().unwrap_or(&self.cfg.credentials);
            let auth = ecs_sign::sign(
                &creds.access_key,
                creds.secret_key.expose_secret().as_bytes(),
                req.method.as_str(),
                path,
                query,
                &headers,
                bytes,
            )
            .ok_or_else(|| Error::Sign("the request has no valid X-Sdk-Date".into()))?;
            out = out.header("Authorization", auth);
        }
        if req.body.is_some() {
            out = out.body(bytes.to_vec());
        }
        let resp = out.send().await.map_err(|source| Error::Transport {
            endpoint: self.cfg.endpoint.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("x-request-id").unwrap_or_default();
        let subject_token = header("x-subject-token").map(SecretString::from);
        if let Some(observe) = &self.cfg.observer {
            observe(req.method.as_str(), path, status, &request_id);
        }
        let content_type = header("content-type");
        let body = resp.bytes().await.map_err(|source| Error::Transport {
            endpoint: self.cfg.endpoint.clone(),
            source,
        })?;
        Ok(Response {
            status,
            request_id,
            content_type,
            body,
            subject_token,
        })
    }

    /// A signed call to `/v1/{project_id}` + `rest` with an optional JSON
    /// body, answered with `T` or an API error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        rest: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Reply<T>> {
        let what = format!("{method} {rest}");
        let mut req = Request::new(method, self.project_path(rest));
        if let Some(b) = body {
            req = req.json(b)?;
        }
        self.send(req).await?.into_result(&what)
    }

    /// A signed call to an absolute path (IAM administration: `/v3/...`,
    /// `/v3.0/...`), answered with `T` or an API error.
    pub async fn call_path<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Reply<T>> {
        let what = format!("{method} {path}");
        let mut req = Request::new(method, path.to_owned());
        if let Some(b) = body {
            req = req.json(b)?;
        }
        self.send(req).await?.into_result(&what)
    }

    /// IAM `CreateUser` (201).
    pub async fn create_user(
        &self,
        req: &ecs_api::iam_admin::CreateUserRequest,
    ) -> Result<Reply<ecs_api::iam_admin::UserResponse>> {
        self.call_path(reqwest::Method::POST, "/v3.0/OS-USER/users", Some(req))
            .await
    }

    /// IAM `KeystoneListUsers`: the users of the caller's domain.
    pub async fn list_users(&self) -> Result<Reply<ecs_api::iam_admin::ListUsersResponse>> {
        self.call_path(reqwest::Method::GET, "/v3/users", None::<&()>)
            .await
    }

    /// IAM `UpdateUser`: enables or disables.
    pub async fn set_user_enabled(
        &self,
        user_id: &str,
        enabled: bool,
    ) -> Result<Reply<ecs_api::iam_admin::UserResponse>> {
        let body = ecs_api::iam_admin::UpdateUserRequest {
            user: ecs_api::iam_admin::UpdateUserOption { enabled },
        };
        self.call_path(
            reqwest::Method::PUT,
            &format!("/v3.0/OS-USER/users/{}", encode(user_id)),
            Some(&body),
        )
        .await
    }

    /// IAM `KeystoneDeleteUser` (204).
    pub async fn delete_user(&self, user_id: &str) -> Result<Reply<()>> {
        self.call_path(
            reqwest::Method::DELETE,
            &format!("/v3/users/{}", encode(user_id)),
            None::<&()>,
        )
        .await
    }

    /// IAM `KeystoneCreateGroup` (201).
    pub async fn create_group(
        &self,
        name: &str,
    ) -> Result<Reply<ecs_api::iam_admin::GroupResponse>> {
        let body = ecs_api::iam_admin::CreateGroupRequest {
            group: ecs_api::iam_admin::CreateGroupOption {
                name: name.to_owned(),
                description: None,
                domain_id: None,
            },
        };
        self.call_path(reqwest::Method::POST, "/v3/groups", Some(&body))
            .await
    }

    /// IAM `KeystoneListGroups`.
    pub async fn list_groups(&self) -> Result<Reply<ecs_api::iam_admin::ListGroupsResponse>> {
        self.call_path(reqwest::Method::GET, "/v3/groups", None::<&()>)
            .await
    }

    /// IAM `KeystoneAddUserToGroup` / `KeystoneRemoveUserFromGroup` (204).
    pub async fn group_member(
        &self,
        group_id: &str,
        user_id: &str,
        add: bool,
    ) -> Result<Reply<()>> {
        let method = if add {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        self.call_path(
            method,
            &format!("/v3/groups/{}/users/{}", encode(group_id), encode(user_id)),
            None::<&()>,
        )
        .await
    }

    /// IAM `CreateCloudServiceCustomPolicy` (201).
    pub async fn create_role(
        &self,
        req: &ecs_api::iam_admin::CreateRoleRequest,
    ) -> Result<Reply<ecs_api::iam_admin::RoleResponse>> {
        self.call_path(reqwest::Method::POST, "/v3.0/OS-ROLE/roles", Some(req))
            .await
    }

    /// IAM `ListCustomPolicies`: system roles and custom policies.
    pub async fn list_roles(&self) -> Result<Reply<ecs_api::iam_admin::ListRolesResponse>> {
        self.call_path(reqwest::Method::GET, "/v3.0/OS-ROLE/roles", None::<&()>)
            .await
    }

    /// IAM `KeystoneAssociateGroupWithProjectPermission` / `DeleteProjectPermission`
    /// in the client's project (204); `role_id` is a policy id or a system role name.
    pub async fn grant_role(
        &self,
        group_id: &str,
        role_id: &str,
        grant: bool,
    ) -> Result<Reply<()>> {
        let method = if grant {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        self.call_path(
            method,
            &format!(
                "/v3/projects/{}/groups/{}/roles/{}",
                encode(&self.config().project_id),
                encode(group_id),
                encode(role_id)
            ),
            None::<&()>,
        )
        .await
    }

    /// IAM `CreatePermanentAccessKey` (201): the SK is in the answer only.
    pub async fn create_credential(
        &self,
        user_id: &str,
    ) -> Result<Reply<ecs_api::iam_admin::CreateCredentialResponse>> {
        let body = ecs_api::iam_admin::CreateCredentialRequest {
            credential: ecs_api::iam_admin::CreateCredentialOption {
                user_id: user_id.to_owned(),
                description: None,
            },
        };
        self.call_path(
            reqwest::Method::POST,
            "/v3.0/OS-CREDENTIAL/credentials",
            Some(&body),
        )
        .await
    }

    /// IAM `ListPermanentAccessKeys` (never an SK).
    pub async fn list_credentials(
        &self,
    ) -> Result<Reply<ecs_api::iam_admin::ListCredentialsResponse>> {
        self.call_path(
            reqwest::Method::GET,
            "/v3.0/OS-CREDENTIAL/credentials",
            None::<&()>,
        )
        .await
    }

    /// IAM `UpdatePermanentAccessKey`: `active` or `inactive`.
    pub async fn set_credential_status(
        &self,
        ak: &str,
        status: &str,
    ) -> Result<Reply<ecs_api::iam_admin::CredentialResponse>> {
        let body = ecs_api::iam_admin::UpdateCredentialRequest {
            credential: ecs_api::iam_admin::UpdateCredentialOption {
                status: status.to_owned(),
            },
        };
        self.call_path(
            reqwest::Method::PUT,
            &format!("/v3.0/OS-CREDENTIAL/credentials/{}", encode(ak)),
            Some(&body),
        )
        .await
    }

    /// IAM `DeletePermanentAccessKey` (204).
    pub async fn delete_credential(&self, ak: &str) -> Result<Reply<()>> {
        self.call_path(
            reqwest::Method::DELETE,
            &format!("/v3.0/OS-CREDENTIAL/credentials/{}", encode(ak)),
            None::<&()>,
        )
        .await
    }

    /// One page of `ListServersDetails`; `query` as `(name, value)` pairs.
    pub async fn list_servers(&self, query: &[(&str, &str)]) -> Result<Reply<ListServersResponse>> {
        let q: String = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let rest = if q.is_empty() {
            "/cloudservers/detail".to_owned()
        } else {
            format!("/cloudservers/detail?{q}")
        };
        self.call(reqwest::Method::GET, &rest, None::<&()>).await
    }

    /// One page of the audit trail (`GET /v3/{project_id}/traces`, CTS
    /// `ListTraces`); `query` as `(name, value)` pairs.
    pub async fn list_traces(
        &self,
        query: &[(&str, &str)],
    ) -> Result<Reply<ecs_api::ListTracesResponse>> {
        let q: String = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut path = format!("/v3/{}/traces", self.cfg.project_id);
        if !q.is_empty() {
            path = format!("{path}?{q}");
        }
        self.send(Request::new(reqwest::Method::GET, path))
            .await?
            .into_result("GET /traces")
    }

    /// Every server of the project (pages of 1000, following `marker`).
    pub async fn all_servers(&self) -> Result<Vec<ServerDetail>> {
        let mut out: Vec<ServerDetail> = Vec::new();
        loop {
            let marker = out.last().map(|s| s.id.clone());
            let mut q = vec![("limit", "1000")];
            if let Some(m) = &marker {
                q.push(("marker", m));
            }
            let page = self.list_servers(&q).await?.body;
            let n = page.servers.len();
            out.extend(page.servers.into_iter().filter_map(|s| s.detail().cloned()));
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    pub async fn show_server(&self, id: &str) -> Result<Reply<ShowServerResponse>> {
        self.call(
            reqwest::Method::GET,
            &format!("/cloudservers/{}", encode(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn batch_reset(&self, req: &BatchResetRequest) -> Result<Reply<BatchResetResponse>> {
        self.call(
            reqwest::Method::PUT,
            "/cloudservers/os-reset-passwords",
            Some(req),
        )
        .await
    }

    pub async fn single_reset(&self, id: &str, req: &SingleResetRequest) -> Result<Reply<()>> {
        self.call(
            reqwest::Method::PUT,
            &format!("/cloudservers/{}/os-reset-password", encode(id)),
            Some(req),
        )
        .await
    }

    /// Huawei `ShowServerTags`.
    pub async fn server_tags(&self, id: &str) -> Result<Reply<ecs_api::ServerTagsResponse>> {
        self.call(
            reqwest::Method::GET,
            &format!("/cloudservers/{}/tags", encode(id)),
            None::<&()>,
        )
        .await
    }

    /// Huawei `BatchCreateServerTags` / `BatchDeleteServerTags` (204).
    pub async fn server_tags_action(
        &self,
        id: &str,
        req: &ecs_api::ServerTagsAction,
    ) -> Result<Reply<()>> {
        self.call(
            reqwest::Method::POST,
            &format!("/cloudservers/{}/tags/action", encode(id)),
            Some(req),
        )
        .await
    }

    pub async fn reset_flag(&self, id: &str) -> Result<Reply<ResetPwdFlagResponse>> {
        self.call(
            reqwest::Method::GET,
            &format!("/cloudservers/{}/os-resetpwd-flag", encode(id)),
            None::<&()>,
        )
        .await
    }

    /// A reset request's outcome; `latest` for the project's newest.
    pub async fn reset_outcome(&self, request_id: &str) -> Result<Reply<ResetOutcome>> {
        self.reset_outcome_within(request_id, None).await
    }

    /// [`Client::reset_outcome`], answered as soon as any server's state
    /// changes or the request is complete, else after `wait` (at most 50 s;
    /// our extension).
    pub async fn reset_outcome_wait(
        &self,
        request_id: &str,
        wait: Duration,
    ) -> Result<Reply<ResetOutcome>> {
        self.reset_outcome_within(request_id, Some(wait)).await
    }

    async fn reset_outcome_within(
        &self,
        request_id: &str,
        wait: Option<Duration>,
    ) -> Result<Reply<ResetOutcome>> {
        let path = format!("/cloudservers/os-reset-passwords/{}", encode(request_id));
        self.call(reqwest::Method::GET, &with_wait(path, wait), None::<&()>)
            .await
    }

    pub async fn action(&self, action: &ServerAction) -> Result<Reply<JobResult>> {
        self.call(reqwest::Method::POST, "/cloudservers/action", Some(action))
            .await
    }

    pub async fn job(&self, job_id: &str) -> Result<Reply<ShowJobResponse>> {
        self.job_within(job_id, None).await
    }

    /// [`Client::job`], answered as soon as the job changes or is
    /// finished, else after `wait` (at most 50 s; our extension).
    pub async fn job_wait(&self, job_id: &str, wait: Duration) -> Result<Reply<ShowJobResponse>> {
        self.job_within(job_id, Some(wait)).await
    }

    async fn job_within(
        &self,
        job_id: &str,
        wait: Option<Duration>,
    ) -> Result<Reply<ShowJobResponse>> {
        let path = format!("/jobs/{}", encode(job_id));
        self.call(reqwest::Method::GET, &with_wait(path, wait), None::<&()>)
            .await
    }

    pub async fn create_enroll_token(
        &self,
        req: &EnrollTokenRequest,
    ) -> Result<Reply<EnrollTokenResponse>> {
        self.call(reqwest::Method::POST, "/enroll-tokens", Some(req))
            .await
    }

    /// `DELETE /v3/auth/tokens` of this client's own token (logout).
    pub async fn revoke_token(&self) -> Result<Reply<()>> {
        let token = self.cfg.token.as_ref().ok_or_else(|| {
            Error::Sign("revoking a token needs a client made with a token".into())
        })?;
        let req = Request::new(reqwest::Method::DELETE, "/v3/auth/tokens")
            .header("X-Subject-Token", token.expose_secret());
        self.send(req).await?.into_result("DELETE /v3/auth/tokens")
    }

    /// `GET /v3/auth/tokens` of this client's own token.
    pub async fn validate_token(&self) -> Result<Reply<TokenResponse>> {
        let token = self.cfg.token.as_ref().ok_or_else(|| {
            Error::Sign("validating a token needs a client made with a token".into())
        })?;
        let req = Request::new(reqwest::Method::GET, "/v3/auth/tokens")
            .header("X-Subject-Token", token.expose_secret());
        self.send(req).await?.into_result("GET /v3/auth/tokens")
    }

    /// `POST /v3.0/OS-CREDENTIAL/securitytokens`: temporary AK/SK for this
    /// client's token (`duration_seconds` 900..86400, default 900).
    pub async fn security_token(
        &self,
        duration_seconds: Option<i64>,
    ) -> Result<Reply<SecurityTokenResponse>> {
        let body = SecurityTokenRequest {
            auth: TokenAuth {
                identity: TokenAuthIdentity {
                    methods: vec!["token".into()],
                    token: Some(IdentityToken {
                        id: None,
                        duration_seconds,
                    }),
                },
            },
        };
        let req = Request::new(reqwest::Method::POST, "/v3.0/OS-CREDENTIAL/securitytokens")
            .json(&body)?;
        self.send(req)
            .await?
            .into_result("POST /v3.0/OS-CREDENTIAL/securitytokens")
    }
}

/// The project a token is for: by id, or by name within the user's domain.
#[derive(Debug, Clone)]
pub enum ProjectScope {
    Id(String),
    Name(String),
}

/// What [`login`] got: the token (for `X-Auth-Token`) and IAM's answer.
#[derive(Debug, Clone)]
pub struct Login {
    pub token: SecretString,
    pub body: TokenResponse,
    pub request_id: String,
}

/// `POST /v3/auth/tokens` with a user's password: a project-scoped token.
pub async fn login(
    endpoint: &str,
    trust: Trust,
    domain: &str,
    user: &str,
    password: &SecretString,
    project: ProjectScope,
) -> Result<Login> {
    let mut cfg = Config::new(endpoint, "", "", SecretString::from(""));
    cfg.trust = trust;
    let client = Client::new(cfg)?;
    let (id, name) = match project {
        ProjectScope::Id(id) => (Some(id), None),
        ProjectScope::Name(n) => (None, Some(n)),
    };
    let body = CreateTokenRequest {
        auth: PwdAuth {
            identity: PwdIdentity {
                methods: vec!["password".into()],
                password: Some(PwdPassword {
                    user: PwdPasswordUser {
                        domain: NameRef {
                            name: domain.to_owned(),
                        },
                        name: user.to_owned(),
                        password: password.clone().into(),
                    },
                }),
            },
            scope: Some(AuthScope {
                project: Some(AuthScopeProject { id, name }),
            }),
        },
    };
    let req = Request::new(reqwest::Method::POST, "/v3/auth/tokens")
        .json(&body)?
        .unsigned();
    let resp = client.send(req).await?;
    let token = resp.subject_token.clone();
    let reply: Reply<TokenResponse> = resp.into_result("POST /v3/auth/tokens")?;
    let token = token.ok_or_else(|| Error::Decode {
        what: "POST /v3/auth/tokens".into(),
        status: 201,
        request_id: reply.request_id.clone(),
        source: serde::de::Error::custom("no X-Subject-Token header"),
    })?;
    Ok(Login {
        token,
        body: reply.body,
        request_id: reply.request_id,
    })
}

/// `path` with the long-poll parameter `?wait=SECONDS`, if any.
fn with_wait(path: String, wait: Option<Duration>) -> String {
    match wait {
        Some(w) => format!("{path}?wait={}", w.as_secs()),
        None => path,
    }
}

/// Percent-encodes a path segment or query value as the SDKs do (everything
/// but `A-Z a-z 0-9 - _ . ~`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> Config {
        Config::new(endpoint, "p", "AK", SecretString::from("SK"))
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        assert!(matches!(
            Client::new(cfg("http://10.0.0.1:8443")),
            Err(Error::PlainHttp(_))
        ));
        assert!(matches!(
            Client::new(cfg("http://example.com")),
            Err(Error::PlainHttp(_))
        ));
        assert!(Client::new(cfg("http://127.0.0.1:8443")).is_ok());
        assert!(Client::new(cfg("https://example.com")).is_ok());
        assert!(matches!(
            Client::new(cfg("ftp://example.com")),
            Err(Error::Endpoint { .. })
        ));
    }

    #[test]
    fn the_secret_key_is_never_printed() {
        let c = cfg("https://example.com");
        let printed = format!("{c:?}");
        assert!(!printed.contains("\"SK\""), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("a b/c?d=é~"), "a%20b%2Fc%3Fd%3D%C3%A9~");
    }

    #[test]
    fn an_error_answer_becomes_an_api_error_with_its_code() {
        let r = Response {
            status: 404,
            request_id: "r1".into(),
            content_type: Some("application/json".into()),
            subject_token: None,
            body: Bytes::from_static(
                br#"{"error":{"code":"Ecs.0114","message":"Instance[x] could not be found."}}"#,
            ),
        };
        let Err(Error::Api(e)) = r.into_result::<ShowServerResponse>("GET") else {
            panic!("not an API error")
        };
        assert_eq!(e.code(), "Ecs.0114");
        assert_eq!(
            e.to_string(),
            "Ecs.0114: Instance[x] could not be found. (HTTP 404, request r1)"
        );
        let r = Response {
            status: 502,
            request_id: String::new(),
            content_type: None,
            subject_token: None,
            body: Bytes::from_static(b"<html>bad gateway</html>"),
        };
        let Err(Error::Api(e)) = r.into_result::<ShowServerResponse>("GET") else {
            panic!("not an API error")
        };
        assert_eq!(e.code(), "HTTP 502");
        assert!(e.message().contains("bad gateway"));
    }

    #[test]
    fn a_2xx_answer_that_is_not_the_documented_body_is_an_error() {
        let r = Response {
            status: 200,
            request_id: "r".into(),
            content_type: None,
            subject_token: None,
            body: Bytes::from_static(br#"{"job":"x"}"#),
        };
        assert!(matches!(
            r.into_result::<JobResult>("POST"),
            Err(Error::Decode { .. })
        ));
    }
}
