//! The cost of authorization with 1,000 custom policies attached to the
//! caller in a project:
//! - the decision alone (compiled set, one server's tags);
//! - resolving the caller's policies (one store read of its grants, the
//!   compiled set from the cache) plus the decision: what every call adds;
//! - compiling 1,000 policies (first call after a change of grants);
//! - end to end, the p50 of a signed single reset (204) over HTTP on
//!   loopback, as a project access key (no policies) and as a user whose
//!   groups carry the 1,000 policies.
//!
//! `cargo bench -p ecsd --bench authz`

use criterion::{Criterion, criterion_group, criterion_main};
use ecs_policy::OsType;
use ecsd::authz::{Action, Policy, PolicySet};
use ecsd::config::Config;
use ecsd::server::Server;
use ecsd::state::{AppState, Caller};
use ecsd::store::Role;
use ecsd::store::authz::{Grant, TagChange};
use secrecy::ExposeSecret;

mod support;
use support::Api;

const POLICIES: usize = 1000;

/// Policy `i`: resets on servers tagged `env=team<i>` (policy 999: `env=staging`),
/// and every tenth a Deny of reboots on `env=prod-<i>`.
fn document(i: usize) -> String {
    let env = if i == POLICIES - 1 {
        "staging".to_owned()
    } else {
        format!("team{i}")
    };
    let mut statements = vec![serde_json::json!({
        "Effect": "Allow",
        "Action": ["ecs:cloudServers:resetServerPwd", "ecs:cloudServers:get"],
        "Condition": {"StringEquals": {"ecs:ResourceTag/env": [env]}}
    })];
    if i.is_multiple_of(10) {
        statements.push(serde_json::json!({
            "Effect": "Deny",
            "Action": ["ecs:cloudServers:reboot"],
            "Condition": {"StringLike": {"ecs:ResourceTag/env": [format!("prod-{i}*")]}}
        }));
    }
    serde_json::json!({"Version": "1.1", "Statement": statements}).to_string()
}

fn tags() -> Vec<String> {
    let mut t: Vec<String> = (0..9).map(|i| format!("k{i}=v{i}")).collect();
    t.push("env=staging".into());
    t
}

struct Fixture {
    state: AppState,
    user_caller: Caller,
    grants: Vec<Grant>,
    api_key: Api,
    api_user: Api,
    server_id: String,
}

fn fixture(dir: &std::path::Path) -> Fixture {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let config = Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir,
                master_key: Some(ecsd::secrets::MasterKey::generate_base64()),
                rate_limit_per_sec: 1_000_000,
                insecure_http: true,
                ..Config::default()
            };
            let state = ecsd::server::open_state(config).unwrap();
            let project = ecsd::admin::create_project(&state, "authz").await.unwrap();
            let (ak, sk) = ecsd::admin::create_access_key(&state, &project.id, Role::Admin)
                .await
                .unwrap();
            let (uak, usk) = ecsd::authz_admin::create_user_key(&state, &project.id, "user-1")
                .await
                .unwrap();
            let group = state
                .authz_store
                .create_group("default", "bench", "")
                .await
                .unwrap();
            state
                .authz_store
                .add_group_member(&group.id, "user-1")
                .await
                .unwrap();
            for i in 0..POLICIES {
                let p = ecsd::authz_admin::create_policy(
                    &state,
                    "default",
                    &format!("p{i}"),
                    "",
                    &document(i),
                )
                .await
                .unwrap();
                state
                    .authz_store
                    .attach(&group.id, &project.id, &Grant::Policy(p.id))
                    .await
                    .unwrap();
            }
            let (_k, pk) = ecs_seal::generate_keypair();
            let s = ecsd::admin::register_server(
                &state,
                &project.id,
                "s",
                OsType::Linux,
                Some(&pk.to_base64()),
            )
            .await
            .unwrap();
            let new_tags = tags()
                .iter()
                .map(|t| {
                    let (k, v) = t.split_once('=').unwrap();
                    (k.to_owned(), Some(v.to_owned()))
                })
                .collect();
            state
                .authz_store
                .change_server_tags(&project.id, &s.id, TagChange::Create(new_tags))
                .await
                .unwrap();
            let grants = state
                .authz_store
                .caller_grants(&project.id, &uak, None)
                .await
                .unwrap()
                .unwrap();
            let server = Server::bind(state.clone()).await.unwrap();
            let addr = server.local_addr();
            let api =
                |ak: &str, sk: &str| Api::new(&format!("http://{addr}"), &project.id, ak, sk, None);
            tx.send(Fixture {
                user_caller: Caller {
                    access_key: uak.clone(),
                    project_id: project.id.clone(),
                    role: Role::Admin,
                    user: None,
                },
                grants,
                api_key: api(&ak, sk.expose_secret()),
                api_user: api(&uak, usk.expose_secret()),
                server_id: s.id,
                state,
            })
            .unwrap();
            let _ = server.run(std::future::pending::<()>()).await;
        });
    });
    rx.recv().unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policies: Vec<Policy> = (0..POLICIES)
        .map(|i| Policy::parse(&document(i)).unwrap())
        .collect();
    let set = PolicySet::compile(&policies);
    let staging = tags();
    assert!(set.decide(Action::ResetServerPwd, Some(&staging)).allowed());

    let mut g = c.benchmark_group("authz");
    g.bench_function("decision, 1000 policies", |b| {
        b.iter(|| set.decide(Action::ResetServerPwd, Some(std::hint::black_box(&staging))))
    });
    g.bench_function(
        "resolve (store read, cached set) + decision, 1000 policies",
        |b| {
            b.iter(|| {
                let set = rt
                    .block_on(f.state.authorizer.policy_set(
                        &*f.state.authz_store,
                        &f.user_caller,
                        None,
                    ))
                    .unwrap();
                assert!(set.decide(Action::ResetServerPwd, Some(&staging)).allowed());
            })
        },
    );
    g.sample_size(20);
    g.bench_function("compile 1000 policies (cold)", |b| {
        b.iter(|| {
            let a = ecsd::authorize::Authorizer::default();
            rt.block_on(a.compile(&*f.state.authz_store, f.grants.clone()))
                .unwrap()
        })
    });
    g.sample_size(100);
    let body = serde_json::to_vec(&serde_json::json!({
        "reset-password": {"new_password": "Bench-Pass-123"}
    }))
    .unwrap();
    let path = format!(
        "/v1/{}/cloudservers/{}/os-reset-password",
        f.api_key.project, f.server_id
    );
    for (name, api) in [
        ("signed single reset, project key (no policies)", &f.api_key),
        ("signed single reset, user with 1000 policies", &f.api_user),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = ecs_client::Request::new(reqwest::Method::PUT, path.as_str())
                    .body(ecs_client::JSON, body.clone());
                let r = rt.block_on(api.send(req));
                assert_eq!(r.status, 204, "{}", r.text());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
