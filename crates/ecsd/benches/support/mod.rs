//! Shared by the bench binaries: signed requests like the Huawei SDKs send,
//! through `ecs_client` (the client ecsctl and the tests use), and request
//! bodies from the `ecs-api` types.
#![allow(dead_code)]

pub mod process;

/// The `q` quantile (0..=1) of sorted durations, in milliseconds (NaN when
/// there are none).
pub fn quantile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

use ecs_api::{BatchResetRequest, ServerRef};
use ecs_client::{Client, Config, Request, Response, Trust};
use secrecy::SecretString;

/// Where and as whom to call: one signed client of one project. Cloning it
/// is cheap and shares its connection pool (tasks each hold a clone).
#[derive(Clone)]
pub struct Api {
    pub client: Client,
    pub project: String,
}

impl Api {
    /// `ca_pem`: the CA to trust for an `https://` endpoint (plain HTTP only
    /// to loopback).
    pub fn new(endpoint: &str, project: &str, ak: &str, sk: &str, ca_pem: Option<Vec<u8>>) -> Api {
        let mut cfg = Config::new(endpoint, project, ak, SecretString::from(sk.to_owned()));
        if let Some(pem) = ca_pem {
            cfg.trust = Trust::SystemAnd(pem);
        }
        Api {
            client: Client::new(cfg).unwrap(),
            project: project.to_owned(),
        }
    }

    /// Signs and sends a prepared request; any HTTP answer is returned.
    pub async fn send(&self, req: Request) -> Response {
        self.client.send(req).await.unwrap()
    }

    /// `/v1/{project_id}` + `rest`.
    pub fn path(&self, rest: &str) -> String {
        self.client.project_path(rest)
    }

    /// A batch reset of `ids` (`PUT .../os-reset-passwords`), ready to send.
    pub fn reset(&self, ids: &[String], password: &str) -> Request {
        let body = BatchResetRequest {
            new_password: Some(SecretString::from(password.to_owned()).into()),
            dry_run: None,
            servers: ids.iter().map(ServerRef::new).collect(),
            apply: None,
        };
        Request::new(
            reqwest::Method::PUT,
            self.path("/cloudservers/os-reset-passwords"),
        )
        .json(&body)
        .unwrap()
    }
}
