//! Server-side cost of a 1000-server batch reset (parse, validate, look up,
//! seal 1000 times, one durable transaction), against the floor measured in
//! the same run: 1000 HPKE seals plus one transaction inserting 1000 rows.
//!
//! The same pair on PostgreSQL when it is reachable (a schema of its own,
//! dropped afterwards; `ECSD_TEST_POSTGRES` as the tests, `=skip` skips):
//! group `batch_reset_1000_postgres`, the floor's transaction going to
//! PostgreSQL too.
//!
//! `cargo bench -p ecsd --bench batch_reset`

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ecs_policy::OsType;
use ecsd::config::Config;
use ecsd::reset::{CallContext, batch_reset, seal_all};
use ecsd::secrets::MasterKey;
use ecsd::state::{AppState, Caller};
use ecsd::store::postgres::PgStore;
use ecsd::store::{Role, SqliteStore};
use secrecy::SecretString;

mod support;

const N: usize = 1000;

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    state: AppState,
    caller: Caller,
    body: Bytes,
    keys: Vec<(String, ecs_seal::PublicKey)>,
}

fn sqlite_fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let store = SqliteStore::open(&config.database_path()).unwrap();
    let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
    fixture(
        rt,
        AppState::new(Arc::new(store), master, config),
        Some(dir),
    )
}

/// ecsd on the PostgreSQL store of `url` (a schema of its own), the pool
/// of the default size.
fn pg_fixture(rt: &tokio::runtime::Runtime, url: &str) -> Fixture {
    let config = Config {
        database: Some(url.to_owned()),
        ..Config::default()
    };
    let store = PgStore::open(url, config.database_pool_size).unwrap();
    let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
    fixture(rt, AppState::new(Arc::new(store), master, config), None)
}

fn fixture(
    rt: &tokio::runtime::Runtime,
    state: AppState,
    dir: Option<tempfile::TempDir>,
) -> Fixture {
    rt.block_on(async {
        let project = ecsd::admin::create_project(&state, "bench").await.unwrap();
        let mut keys = Vec::with_capacity(N);
        for i in 0..N {
            let (_sk, pk) = ecs_seal::generate_keypair();
            let s = ecsd::admin::register_server(
                &state,
                &project.id,
                &format!("srv-{i}"),
                OsType::Linux,
                Some(&pk.to_base64()),
            )
            .await
            .unwrap();
            keys.push((s.id, pk));
        }
        let body = ecs_api::BatchResetRequest {
            new_password: Some(SecretString::from("Gx7!pLq2vR").into()),
            dry_run: Some(false),
            servers: keys
                .iter()
                .map(|(id, _)| ecs_api::ServerRef::new(id))
                .collect(),
            apply: None,
        };
        Fixture {
            _dir: dir,
            caller: Caller {
                access_key: "BENCH".into(),
                project_id: project.id,
                role: Role::Admin,
                user: None,
            },
            state,
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            keys,
        }
    })
}

/// The floor's table: the same columns as `reset_targets`, no other work.
fn floor_db(dir: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("floor.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch(
        "CREATE TABLE t (request_id TEXT NOT NULL, server_id TEXT NOT NULL, position INTEGER NOT NULL,
         state TEXT NOT NULL, sealed BLOB, updated_at TEXT NOT NULL, PRIMARY KEY (request_id, server_id))",
    )
    .unwrap();
    c
}

/// The floor's table on PostgreSQL: the same columns as `reset_targets`.
const PG_FLOOR_TABLE: &str = "CREATE TABLE floor_t (request_id TEXT NOT NULL, server_id TEXT NOT NULL, \
     position BIGINT NOT NULL, state TEXT NOT NULL, sealed BYTEA, updated_at TEXT NOT NULL, \
     PRIMARY KEY (request_id, server_id))";

/// ecsd's `batch_reset` on `f`, asserting the 1000 answers.
fn ecsd_batch(rt: &tokio::runtime::Runtime, f: &Fixture) {
    let rid = uuid::Uuid::new_v4().simple().to_string();
    let ctx = CallContext {
        caller: &f.caller,
        request_id: &rid,
        source: "bench",
    };
    let r = rt.block_on(batch_reset(
        &f.state,
        &ctx,
        &ecsd::authorize::Permit::all(ecsd::authz::Action::ResetServerPwd),
        Some("application/json;charset=UTF-8"),
        f.body.clone(),
    ));
    assert_eq!(r.map(|r| r.response.len()).unwrap_or(0), N);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = sqlite_fixture(&rt);
    let password = SecretString::from("Gx7!pLq2vR".to_owned());
    let floor_dir = tempfile::tempdir().unwrap();
    let mut floor = floor_db(floor_dir.path());

    let mut g = c.benchmark_group("batch_reset_1000");
    g.sample_size(30);
    g.measurement_time(std::time::Duration::from_secs(15));

    g.bench_function("floor: 1000 seals + 1 tx of 1000 rows", |b| {
        b.iter(|| {
            let rid = uuid::Uuid::new_v4().simple().to_string();
            let sealed = seal_all(&f.keys, &rid, &password).unwrap();
            let tx = floor.transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO t VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5)")
                    .unwrap();
                let now = chrono::Utc::now().to_rfc3339();
                for (i, ((id, _), s)) in f.keys.iter().zip(sealed).enumerate() {
                    st.execute(rusqlite::params![rid, id, i as i64, s, now])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });

    g.bench_function("ecsd: parse + validate + seal + store", |b| {
        b.iter(|| ecsd_batch(&rt, &f))
    });

    g.bench_function("info: 1000 seals, one thread", |b| {
        b.iter(|| {
            let rid = uuid::Uuid::new_v4().simple().to_string();
            for (id, key) in &f.keys {
                ecs_seal::seal(key, id, &rid, &password).unwrap();
            }
        })
    });
    g.finish();
    drop(f);

    // The same two on PostgreSQL.
    let Some(schema) = support::pg_schema() else {
        return;
    };
    let f = pg_fixture(&rt, &schema.url);
    schema.execute(PG_FLOOR_TABLE);
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    });
    let mut client = client;
    let mut g = c.benchmark_group("batch_reset_1000_postgres");
    g.sample_size(30);
    g.measurement_time(std::time::Duration::from_secs(15));
    g.bench_function("floor: 1000 seals + 1 tx of 1000 rows", |b| {
        b.iter(|| {
            let rid = uuid::Uuid::new_v4().simple().to_string();
            let sealed = seal_all(&f.keys, &rid, &password).unwrap();
            rt.block_on(async {
                // One statement for the 1000 rows, as the store inserts them.
                let ids: Vec<&str> = f.keys.iter().map(|(id, _)| id.as_str()).collect();
                let positions: Vec<i64> = (0..N as i64).collect();
                let now = chrono::Utc::now().to_rfc3339();
                let tx = client.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO floor_t (request_id, server_id, position, state, sealed, updated_at) \
                     SELECT $1, t.server_id, t.position, 'PENDING', t.sealed, $2 \
                     FROM unnest($3::text[], $4::bigint[], $5::bytea[]) AS t(server_id, position, sealed)",
                    &[&rid, &now, &ids, &positions, &sealed],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            })
        })
    });
    g.bench_function("ecsd: parse + validate + seal + store", |b| {
        b.iter(|| ecsd_batch(&rt, &f))
    });
    g.finish();
    drop(client);
    drop(f);
    drop(schema);
}

criterion_group!(benches, bench);
criterion_main!(benches);
