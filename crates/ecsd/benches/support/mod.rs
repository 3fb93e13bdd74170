//! Shared by the bench binaries: signed requests like the Huawei SDKs send,
//! through `ecs_client` (the client ecsctl and the tests use), and request
//! bodies from the `ecs-api` types.
#![allow(dead_code)]

pub mod process;

/// Registers `n` Linux servers named `s0`, `s1`, … in a project, each with
/// an agent key of its own (the private half dropped: no agent opens them);
/// their ids in order.
pub async fn register_servers(
    state: &ecsd::state::AppState,
    project: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (_k, pk) = ecs_seal::generate_keypair();
        let s = ecsd::admin::register_server(
            state,
            project,
            &format!("s{i}"),
            ecs_policy::OsType::Linux,
            Some(&pk.to_base64()),
        )
        .await
        .unwrap();
        ids.push(s.id);
    }
    ids
}

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
            generate: None,
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

/// A fresh PostgreSQL schema for a bench (dropped with everything in it
/// when the value is dropped), or `None` — with a line saying why — when
/// `ECSD_TEST_POSTGRES=skip` or when PostgreSQL cannot be reached
/// (`ECSD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`,
/// as the tests).
pub fn pg_schema() -> Option<ecsd::store::postgres::testing::TestSchema> {
    let Some(base) = ecsd::store::postgres::testing::base_url() else {
        eprintln!("ECSD_TEST_POSTGRES=skip: the PostgreSQL variant is skipped");
        return None;
    };
    let probe = base.clone();
    let reachable = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    tokio_postgres::connect(&probe, tokio_postgres::NoTls),
                )
                .await
                {
                    Ok(Ok((client, conn))) => {
                        drop(client);
                        let _ = conn.await;
                        Ok(())
                    }
                    // The server answered (say, no `test` database yet:
                    // TestSchema::create makes it).
                    Ok(Err(e)) if e.code().is_some() => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                }
            })
    })
    .join()
    .unwrap();
    match reachable {
        Ok(()) => ecsd::store::postgres::testing::TestSchema::create(),
        Err(e) => {
            eprintln!(
                "PostgreSQL not reachable ({e}): the PostgreSQL variant is skipped \
                 (ECSD_TEST_POSTGRES=URL to point elsewhere, =skip to silence)"
            );
            None
        }
    }
}
