//! Listing a project of 100,000 servers page by page, at the server: the
//! store query (filters, total count, page) plus building and serializing the
//! `ServerDetail` JSON — what `GET /v1/{project_id}/cloudservers/detail` does.
//!
//! `cargo bench -p ecsd --bench list_servers`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ecsd::config::Config;
use ecsd::secrets::MasterKey;
use ecsd::state::AppState;
use ecsd::store::{ListFilter, SqliteStore};

const N: usize = 100_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let db = config.database_path();
    let store = SqliteStore::open(&db).unwrap();
    let state = AppState::new(
        Arc::new(store),
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap(),
        config,
    );
    let project = rt
        .block_on(ecsd::admin::create_project(&state, "big"))
        .unwrap();
    {
        // Fixture: 100k servers in one transaction (the API path is not what is measured).
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, created_at, updated_at, addresses) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                )
                .unwrap();
            let base = chrono::Utc::now() - chrono::Duration::days(30);
            for i in 0..N {
                let created = ecsd::store::fmt_time(base + chrono::Duration::seconds(i as i64));
                st.execute(rusqlite::params![
                    uuid::Uuid::new_v4().to_string(),
                    project.id,
                    format!("node-{i:06}"),
                    if i % 10 == 0 { "Windows" } else { "Linux" },
                    if i % 7 == 0 { "SHUTOFF" } else { "ACTIVE" },
                    vec![7u8; 32],
                    created,
                    format!("[\"10.{}.{}.{}\"]", i / 65536, (i / 256) % 256, i % 256),
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        conn.execute_batch("ANALYZE").unwrap();
    }
    let page = |filter: ListFilter, limit: u32, page: u32, marker: Option<String>| {
        let (servers, count) = rt
            .block_on(
                state
                    .store
                    .list_servers(&project.id, filter, limit, page, marker),
            )
            .unwrap();
        let now = chrono::Utc::now();
        // What the handler answers (unknown `server_id`s aside).
        let body = ecs_api::ListServersResponse {
            count,
            servers: servers
                .iter()
                .map(|s| {
                    ecs_api::ListedServer::Detail(Box::new(ecsd::api::server_detail(s, 120, now)))
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        (servers.last().map(|s| s.id.clone()), count, bytes.len())
    };
    let (mid_marker, total, _) = page(ListFilter::default(), 1000, 50, None);
    assert_eq!(total, N as u64);

    let mut g = c.benchmark_group("list_100k");
    g.sample_size(50);
    g.bench_function("first page, limit 100", |b| {
        b.iter(|| page(ListFilter::default(), 100, 1, None))
    });
    g.bench_function("page after a marker (row 50,000), limit 100", |b| {
        b.iter(|| page(ListFilter::default(), 100, 1, mid_marker.clone()))
    });
    g.bench_function("offset page 500 (rows 49,901-50,000), limit 100", |b| {
        b.iter(|| page(ListFilter::default(), 100, 500, None))
    });
    g.bench_function("status=SHUTOFF, first page, limit 100", |b| {
        let f = ListFilter {
            status: Some("SHUTOFF".into()),
            ..Default::default()
        };
        b.iter(|| page(f.clone(), 100, 1, None))
    });
    g.bench_function("name contains '4242', limit 100", |b| {
        let f = ListFilter {
            name: Some("4242".into()),
            ..Default::default()
        };
        b.iter(|| page(f.clone(), 100, 1, None))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
