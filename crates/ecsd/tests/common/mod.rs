//! Test helpers: a real ecsd on port 0 with a fresh SQLite database, and a
//! client that signs like the Huawei SDKs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ecs_agent::simulate::{Fleet, FleetSpec};
use ecs_api::{
    BatchResetRequest, EcsErrorBody, GatewayErrorBody, HostStatus, JobStatus, ListServersResponse,
    ResetOutcome, ServerDetail, ServerRef, ShowJobResponse, ShowServerResponse,
};
use ecs_policy::OsType;
use ecsd::config::Config;
use ecsd::server::Server;
use ecsd::state::AppState;
use ecsd::store::Role;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

pub mod contract;

pub struct TestServer {
    pub base: String,
    pub host: String,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    pub project: String,
    pub ak: String,
    pub sk: String,
    /// The `metrics_listen` listener's address, when configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// With `ECSD_TEST_STORE=postgres`: this server's PostgreSQL schema
    /// (dropped last, after the server stopped).
    pub pg_schema: Option<ecsd::store::postgres::testing::TestSchema>,
}

/// An answer as the test saw it; read its body with [`Resp::json`].
pub struct Resp {
    pub status: u16,
    pub request_id: Option<String>,
    pub text: String,
}

impl Resp {
    /// The body as `T` (an `ecs-api` or agent protocol type); panics with
    /// the body when it is not one.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: the body is not a {}: {e}\nbody: {}",
                self.status,
                std::any::type_name::<T>(),
                self.text
            )
        })
    }

    /// The body as untyped JSON, for checks against JSON Schemas (the
    /// OpenAPI document, Huawei's definitions) only; read answers with
    /// [`Resp::json`].
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// Which of the two error shapes' top-level keys the body has (none if
    /// the body is not a JSON object).
    pub fn shape_keys(&self) -> ShapeKeys {
        serde_json::from_str(&self.text).unwrap_or_default()
    }
}

/// The distinguishing top-level keys of the two error bodies: `error` (ECS)
/// and `error_code` (gateway).
#[derive(Debug, Default, serde::Deserialize)]
pub struct ShapeKeys {
    pub error: Option<serde::de::IgnoredAny>,
    pub error_code: Option<serde::de::IgnoredAny>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            master_key: Some(ecsd::secrets::MasterKey::generate_base64()),
            // Plain HTTP on loopback; tests/trust.rs serves HTTPS.
            insecure_http: true,
            ..Config::default()
        };
        // Every test on PostgreSQL instead of SQLite, a schema each
        // (`ECSD_TEST_STORE=postgres`; tests that open the SQLite file
        // themselves do not apply).
        let pg_schema = match std::env::var("ECSD_TEST_STORE").as_deref() {
            Ok("postgres") => ecsd::store::postgres::testing::TestSchema::create(),
            _ => None,
        };
        if let Some(s) = &pg_schema {
            config.database = Some(s.url.clone());
        }
        f(&mut config);
        let state = ecsd::server::open_state(config).unwrap();
        let server = Server::bind(state.clone()).await.unwrap();
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = rx.await;
                })
                .await;
        });
        let project = ecsd::admin::create_project(&state, "test").await.unwrap();
        let (ak, sk) = ecsd::admin::create_access_key(&state, &project.id, Role::Admin)
            .await
            .unwrap();
        TestServer {
            base: format!("http://{addr}"),
            host: addr.to_string(),
            state,
            dir,
            project: project.id,
            ak,
            sk: sk.expose_secret().to_owned(),
            metrics_addr,
            stop: Some(tx),
            task: Some(task),
            pg_schema,
        }
    }

    /// Shuts ecsd down and waits until it has stopped (its data stays).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("the old ecsd did not stop")
                .unwrap();
        }
    }

    /// Restarts ecsd: shuts this one down (and waits until it has stopped),
    /// then serves the same data directory and master key again, with `f`
    /// applied to the configuration, on a new port.
    pub async fn restart_with(&mut self, f: impl FnOnce(&mut Config)) {
        self.stop().await;
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..(*self.state.config).clone()
        };
        f(&mut config);
        self.state = ecsd::server::open_state(config).unwrap();
        let server = Server::bind(self.state.clone()).await.unwrap();
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.task = Some(tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = rx.await;
                })
                .await;
        }));
        self.stop = Some(tx);
        self.base = format!("http://{addr}");
        self.host = addr.to_string();
    }

    pub fn db_path(&self) -> PathBuf {
        self.state.config.database_path()
    }

    /// Registers a server; with `enrolled`, it gets an agent key pair.
    pub async fn server(
        &self,
        project: &str,
        name: &str,
        os: OsType,
        enrolled: bool,
    ) -> (String, Option<ecs_seal::PrivateKey>) {
        let (sk, pk) = ecs_seal::generate_keypair();
        let pk64 = pk.to_base64();
        let s = ecsd::admin::register_server(
            &self.state,
            project,
            name,
            os,
            enrolled.then_some(pk64.as_str()),
        )
        .await
        .unwrap();
        (s.id, enrolled.then_some(sk))
    }

    /// Sets a server's status directly in the database.
    pub fn set_status(&self, id: &str, status: &str) {
        if let Some(pg) = &self.pg_schema {
            let quote = |s: &str| s.replace('\'', "''");
            return pg.execute(&format!(
                "UPDATE servers SET status = '{}' WHERE id = '{}'",
                quote(status),
                quote(id)
            ));
        }
        let c = rusqlite::Connection::open(self.db_path()).unwrap();
        c.execute("UPDATE servers SET status = ?1 WHERE id = ?2", [status, id])
            .unwrap();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let (ak, sk) = (self.ak.clone(), self.sk.clone());
        self.call_as(
            &ak,
            &sk,
            method,
            path,
            body.map(|b| ("application/json;charset=UTF-8", b.as_bytes().to_vec())),
            &[],
        )
        .await
    }

    /// A signed call. `extra` headers are sent (and signed) too.
    pub async fn call_as(
        &self,
        ak: &str,
        sk: &str,
        method: &str,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
        self.call_signed_at(ak, sk, &date, method, path_and_query, body, extra)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn call_signed_at(
        &self,
        ak: &str,
        sk: &str,
        date: &str,
        method: &str,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut req = ecs_client::Request::new(method.parse().unwrap(), path_and_query)
            .date(date)
            .signed_as(ecs_client::Credentials {
                access_key: ak.to_owned(),
                secret_key: secret(sk),
            });
        if let Some((ct, bytes)) = body {
            req = req.body(ct, bytes);
        }
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let r = self.client().send(req).await.unwrap();
        let text = r.text();
        contract::check(
            method,
            path_and_query.split('?').next().unwrap(),
            r.status,
            &text,
        );
        Resp {
            status: r.status,
            request_id: (!r.request_id.is_empty()).then_some(r.request_id),
            text,
        }
    }

    /// `GET .../os-reset-passwords/{rid}`, answered 200.
    pub async fn outcome(&self, rid: &str) -> ResetOutcome {
        let r = self
            .call("GET", &format!("{}/{rid}", self.batch_path()), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    /// `GET .../cloudservers/{id}`, answered 200.
    pub async fn show(&self, id: &str) -> ServerDetail {
        let r = self
            .call(
                "GET",
                &format!("/v1/{}/cloudservers/{id}", self.project),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json::<ShowServerResponse>().server
    }

    /// `GET .../os-resetpwd-flag` of `id`.
    pub async fn flag(&self, id: &str) -> Resp {
        self.call(
            "GET",
            &format!("/v1/{}/cloudservers/{id}/os-resetpwd-flag", self.project),
            None,
        )
        .await
    }

    /// The signed, typed client of this server's project.
    pub fn client(&self) -> ecs_client::Client {
        ecs_client::Client::new(ecs_client::Config::new(
            &self.base,
            &self.project,
            &self.ak,
            secret(&self.sk),
        ))
        .unwrap()
    }

    pub async fn raw(&self, req: reqwest::RequestBuilder) -> Resp {
        send(req).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn batch_path(&self) -> String {
        format!("/v1/{}/cloudservers/os-reset-passwords", self.project)
    }

    /// A batch reset of `ids` to `password` that must be accepted (200):
    /// its request id.
    pub async fn reset_ids(&self, password: &str, ids: &[&str]) -> String {
        let r = self
            .call(
                "PUT",
                &self.batch_path(),
                Some(&ids_body(Some(password), None, ids)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.request_id.expect("an accepted reset's request id")
    }

    pub fn action_path(&self) -> String {
        format!("/v1/{}/cloudservers/action", self.project)
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let (client, req) = req.build_split();
    let req = req.unwrap();
    let (method, path) = (req.method().to_string(), req.url().path().to_owned());
    let resp = client.execute(req).await.unwrap();
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    contract::check(&method, &path, status, &text);
    Resp {
        status,
        request_id,
        text,
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A batch reset of `ids`.
pub fn reset_request(
    password: Option<&str>,
    dry_run: Option<bool>,
    ids: &[&str],
) -> BatchResetRequest {
    BatchResetRequest {
        generate: None,
        new_password: password.map(|p| secret(p).into()),
        dry_run,
        servers: refs(ids),
        apply: None,
    }
}

/// [`reset_request`] as the JSON body sent.
pub fn ids_body(password: Option<&str>, dry_run: Option<bool>, ids: &[&str]) -> String {
    body(&reset_request(password, dry_run, ids))
}

pub fn refs(ids: &[&str]) -> Vec<ServerRef> {
    ids.iter().map(|i| ServerRef::new(*i)).collect()
}

/// A typed request as the JSON body sent.
pub fn body(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap()
}

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// Asserts the ECS error shape with this status and code; returns the body.
#[track_caller]
pub fn assert_ecs(r: &Resp, status: u16, code: &str) -> EcsErrorBody {
    assert_eq!(r.status, status, "body: {}", r.text);
    let e: EcsErrorBody = r.json();
    assert_eq!(e.error.code, code, "body: {}", r.text);
    assert!(!e.error.message.is_empty(), "body: {}", r.text);
    assert!(r.shape_keys().error_code.is_none(), "body: {}", r.text);
    let rid = r.request_id.as_deref().expect("X-Request-Id");
    assert!(
        rid.len() == 32
            && rid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    e
}

/// Asserts the gateway error shape with this status and code; returns the body.
#[track_caller]
pub fn assert_gateway(r: &Resp, status: u16, code: &str) -> GatewayErrorBody {
    assert_eq!(r.status, status, "body: {}", r.text);
    let e: GatewayErrorBody = r.json();
    assert_eq!(e.error_code, code, "body: {}", r.text);
    assert!(!e.error_msg.is_empty(), "body: {}", r.text);
    assert_eq!(
        Some(e.request_id.as_str()),
        r.request_id.as_deref(),
        "body: {}",
        r.text
    );
    assert!(r.shape_keys().error.is_none(), "body: {}", r.text);
    e
}

/// Enrolls an agent state directory over plain loopback HTTP.
pub async fn enroll(
    base: &str,
    token: &str,
    state_dir: &std::path::Path,
    machine_id: &str,
    hostname: &str,
    os_type: &str,
) -> anyhow::Result<ecs_agent_proto::EnrollResponse> {
    ecs_agent::agent::enroll(ecs_agent::agent::EnrollParams {
        endpoint: base,
        token: &SecretString::from(token.to_owned()),
        trust: ecs_agent::agent::EnrollTrust::PlainLoopback,
        state_dir,
        machine_id,
        hostname,
        os_type,
    })
    .await
}

/// `GET /agent/v1/work?wait=0` as the agent holding `credential` sees it.
pub async fn raw_work(t: &TestServer, credential: &str) -> ecs_agent_proto::Poll {
    let r = reqwest::Client::new()
        .get(t.url("/agent/v1/work?wait=0"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: not a Poll: {e}\nbody: {text}"))
}

/// A stand-in for ecsd's agent API (what an attacker on the path, or a
/// compromised proxy, would run): hands out queued polls in order, then
/// nothing, and records every acknowledgement.
#[derive(Clone, Default)]
pub struct StandIn {
    pub work: Arc<std::sync::Mutex<std::collections::VecDeque<ecs_agent_proto::Poll>>>,
    pub acks: Arc<std::sync::Mutex<Vec<ecs_agent_proto::AckRequest>>>,
    pub power_acks: Arc<std::sync::Mutex<Vec<ecs_agent_proto::PowerAck>>>,
}

impl StandIn {
    pub fn push(&self, poll: &ecs_agent_proto::Poll) {
        self.work.lock().unwrap().push_back(poll.clone());
    }

    pub fn acks_so_far(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// The acknowledgement number `i` (waits up to 30 s, then fails).
    pub async fn ack(&self, i: usize) -> ecs_agent_proto::AckRequest {
        for _ in 0..600 {
            if let Some(a) = self.acks.lock().unwrap().get(i) {
                return a.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no acknowledgement number {i} within 30 s");
    }

    /// The first acknowledgement of `rid` after the first `seen` ones (a
    /// killed agent may acknowledge its previous outcome again when it
    /// starts: that one is skipped). Waits up to 30 s, then fails.
    pub async fn next_ack(&self, seen: usize, rid: &str) -> ecs_agent_proto::AckRequest {
        for _ in 0..600 {
            if let Some(a) = self.acks.lock().unwrap()[seen..]
                .iter()
                .find(|a| a.request_id == rid)
            {
                return a.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent did not acknowledge {rid} within 30 s");
    }
}

pub async fn stand_in_agent_api() -> (String, StandIn) {
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let f = StandIn::default();
    let (w, a, p) = (f.work.clone(), f.acks.clone(), f.power_acks.clone());
    let prefix = ecs_agent_proto::PREFIX;
    let app = axum::Router::new()
        .route(
            &format!("{prefix}/heartbeat"),
            post(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route(
            &format!("{prefix}/work"),
            get(move || {
                let next = w.lock().unwrap().pop_front();
                async move {
                    match next {
                        Some(poll) => axum::Json(poll).into_response(),
                        None => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            axum::http::StatusCode::NO_CONTENT.into_response()
                        }
                    }
                }
            }),
        )
        .route(
            &format!("{prefix}/ack"),
            post(
                move |axum::Json(ack): axum::Json<ecs_agent_proto::AckRequest>| {
                    a.lock().unwrap().push(ack);
                    // As an ecsd from before `then_poll` answers (no
                    // `work`): the agent then polls on its own.
                    async {
                        axum::Json(ecs_agent_proto::AckResponse {
                            recorded: true,
                            work: None,
                        })
                    }
                },
            ),
        )
        .route(
            &format!("{prefix}/power-ack"),
            post(
                move |axum::Json(ack): axum::Json<ecs_agent_proto::PowerAck>| {
                    p.lock().unwrap().push(ack);
                    async {
                        axum::Json(ecs_agent_proto::AckResponse {
                            recorded: true,
                            work: None,
                        })
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, f)
}

/// The hash in the first line (root's) of `<root>/etc/shadow`.
/// Whether a crypt(3) SHA-crypt hash (what the agent writes) is of `password`.
pub fn verifies(hash: &str, password: &str) -> bool {
    use yescrypt::PasswordVerifier;
    sha_crypt::ShaCrypt::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

pub fn root_hash(root: &std::path::Path) -> String {
    let text = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    text.lines()
        .next()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_owned()
}

/// An HTTP client for plain loopback HTTP.
pub fn http() -> reqwest::Client {
    ecs_agent::client::Client::http(None).unwrap()
}

/// A one-time enrollment token for the test project.
pub async fn token(t: &TestServer, uses: u32) -> String {
    ecsd::api::issue_enroll_token(&t.state, &t.project, uses, 600)
        .await
        .unwrap()
        .token
}

/// `n` simulated Linux servers enrolled in the test project, running the real
/// agent code; returns once every agent has reported in.
pub async fn fleet(t: &TestServer, n: usize) -> Arc<Fleet> {
    let f = Fleet::start(FleetSpec {
        endpoint: t.base.clone(),
        token: Some(SecretString::from(token(t, n as u32).await)),
        trust: ecs_agent::agent::EnrollTrust::PlainLoopback,
        root_base: t.dir.path().join("fleet"),
        linux: n,
        windows: 0,
        prefix: "sim-".into(),
        poll: Duration::from_secs(5),
        heartbeat: Duration::from_secs(30),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = t
            .call(
                "GET",
                &format!("/v1/{}/cloudservers/detail?limit=1000", t.project),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let servers = r.json::<ListServersResponse>().servers;
        if servers.len() == n
            && servers
                .iter()
                .all(|s| s.detail().is_some_and(|d| d.host_status == HostStatus::Up))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet never reported in: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f
}

/// `GET .../jobs/{job}`, answered 200.
pub async fn job(t: &TestServer, job: &str) -> ShowJobResponse {
    let r = t
        .call("GET", &format!("/v1/{}/jobs/{job}", t.project), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// Polls a job until it is SUCCESS or FAIL; returns its body.
pub async fn wait_job(t: &TestServer, id: &str) -> ShowJobResponse {
    for _ in 0..400 {
        let j = job(t, id).await;
        if matches!(j.status, JobStatus::Success | JobStatus::Fail) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never finished");
}
