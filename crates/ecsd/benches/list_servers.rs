//! Listing a project of 100,000 servers page by page, at the server: the
//! store query (filters, total count, page) plus building and serializing the
//! `ServerDetail` JSON — what `GET /v1/{project_id}/cloudservers/detail` does.
//!
//! The same on PostgreSQL when it is reachable (group `list_100k_postgres`,
//! a schema of its own dropped afterwards; `ECSD_TEST_POSTGRES` as the
//! tests, `=skip` skips).
//!
//! `cargo bench -p ecsd --bench list_servers`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ecsd::config::Config;
use ecsd::secrets::MasterKey;
use ecsd::state::AppState;
use ecsd::store::postgres::PgStore;
use ecsd::store::{ListFilter, SqliteStore};

mod support;

const N: usize = 100_000;

/// Server `i` of the fixture: (name, os type, status, created_at, addresses).
fn row(i: usize, base: chrono::DateTime<chrono::Utc>) -> [String; 5] {
    [
        format!("node-{i:06}"),
        if i.is_multiple_of(10) {
            "Windows"
        } else {
            "Linux"
        }
        .to_owned(),
        if i.is_multiple_of(7) {
            "SHUTOFF"
        } else {
            "ACTIVE"
        }
        .to_owned(),
        ecsd::store::fmt_time(base + chrono::Duration::seconds(i as i64)),
        format!("[\"10.{}.{}.{}\"]", i / 65536, (i / 256) % 256, i % 256),
    ]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let (_dir, state, project) = sqlite_fixture(&rt);
        let db = state.config.database_path();
        let bump = || {
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute("UPDATE projects SET list_gen = list_gen + 1", [])
                .unwrap();
        };
        measure(c, &rt, "list_100k", &state, &project, &bump);
    }
    if let Some(schema) = support::pg_schema() {
        let (state, project) = pg_fixture(&rt, &schema.url);
        // Freshly inserted and analyzed: the visibility map is still empty
        // (as for rows updated since the last vacuum: heartbeats update them).
        let bump = || schema.execute("UPDATE projects SET list_gen = list_gen + 1");
        measure(c, &rt, "list_100k_postgres", &state, &project, &bump);
        // After a VACUUM (what autovacuum does to rows left alone), index-only
        // scans need not visit the table.
        schema.execute("VACUUM ANALYZE servers");
        measure(
            c,
            &rt,
            "list_100k_postgres_vacuumed",
            &state,
            &project,
            &bump,
        );
        drop(state);
        drop(schema);
    }
}

/// 100,000 servers in a fresh PostgreSQL store (one statement; the
/// trigger-maintained count follows), then ANALYZE.
fn pg_fixture(rt: &tokio::runtime::Runtime, url: &str) -> (AppState, String) {
    let config = Config {
        database: Some(url.to_owned()),
        ..Config::default()
    };
    let store = PgStore::open(url, config.database_pool_size).unwrap();
    let state = AppState::new(
        Arc::new(store),
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap(),
        config,
    );
    let project = rt
        .block_on(ecsd::admin::create_project(&state, "big"))
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let base = chrono::Utc::now() - chrono::Duration::days(30);
        let mut cols: [Vec<String>; 6] = Default::default();
        for i in 0..N {
            cols[0].push(uuid::Uuid::new_v4().to_string());
            for (c, v) in cols[1..].iter_mut().zip(row(i, base)) {
                c.push(v);
            }
        }
        // 1000 rows a statement: the 100,000 in one statement took 206 s on
        // the bench machine (the likely cause: the per-row trigger keeping
        // the project's server count updates that one row 100,000 times in
        // one transaction, each update walking the versions left before it).
        let started = std::time::Instant::now();
        for chunk in 0..N.div_ceil(1000) {
            let r = chunk * 1000..((chunk + 1) * 1000).min(N);
            let c: Vec<&[String]> = cols.iter().map(|c| &c[r.clone()]).collect();
            client
                .execute(
                    "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, created_at, updated_at, addresses) \
                     SELECT t.id, $1, t.name, t.os, t.status, $2, t.created, t.created, t.addresses \
                     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
                         AS t(id, name, os, status, created, addresses)",
                    &[
                        &project.id,
                        &vec![7u8; 32],
                        &c[0],
                        &c[1],
                        &c[2],
                        &c[3],
                        &c[4],
                        &c[5],
                    ],
                )
                .await
                .unwrap();
        }
        client.batch_execute("ANALYZE").await.unwrap();
        eprintln!(
            "PostgreSQL fixture: {N} servers inserted (1000 a statement) and analyzed in {:?}",
            started.elapsed()
        );
        drop(client);
        let _ = task.await;
    });
    (state, project.id)
}

fn sqlite_fixture(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, AppState, String) {
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
                let [name, os, status, created, addresses] = row(i, base);
                st.execute(rusqlite::params![
                    uuid::Uuid::new_v4().to_string(),
                    project.id,
                    name,
                    os,
                    status,
                    vec![7u8; 32],
                    created,
                    addresses,
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        conn.execute_batch("ANALYZE").unwrap();
    }
    (dir, state, project.id)
}

/// The pages of one store (`group`: criterion's group name; `bump`
/// changes the project's listing generation, as any change of a server a
/// listing shows does, so that no remembered page start is used).
fn measure(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    state: &AppState,
    project: &str,
    bump: &dyn Fn(),
) {
    let page = |filter: ListFilter, limit: u32, page: u32, marker: Option<String>| {
        let (servers, count) = rt
            .block_on(
                state
                    .store
                    .list_servers(project, filter, limit, page, marker),
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

    let mut g = c.benchmark_group(group);
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
    // The page's start not known (the listing changed since it was read):
    // the OFFSET walks 49,900 rows, as every offset page did before.
    g.bench_function(
        "offset page 500, the listing changed since, limit 100",
        |b| {
            b.iter_batched(
                bump,
                |()| page(ListFilter::default(), 100, 500, None),
                criterion::BatchSize::PerIteration,
            )
        },
    );
    // What a client paging with `offset` does: pages 1, 2, 3, ... in turn
    // (each iteration reads the next page; 1,000 pages of 100).
    g.bench_function("offset pages 1, 2, 3, ... in turn (each), limit 100", |b| {
        let mut next = 0u32;
        b.iter(|| {
            next = next % 1000 + 1;
            page(ListFilter::default(), 100, next, None)
        })
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
