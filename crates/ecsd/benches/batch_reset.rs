//! Server-side cost of a 1000-server batch reset (parse, validate, look up,
//! seal 1000 times, one durable transaction), against the floor measured in
//! the same run: 1000 HPKE seals plus one transaction inserting 1000 rows.
//!
//! The same pair on PostgreSQL when it is reachable (a schema of its own,
//! dropped afterwards; `ECSD_TEST_POSTGRES` as the tests, `=skip` skips):
//! group `batch_reset_1000_postgres`, the floor's transaction going to
//! PostgreSQL too.
//!
//! Issue 13 item 1, "a floor that is the machine's" (run first, printed as
//! a table; the filter `machine_floor` runs only it): in one run, raw X25519
//! of each implementation at hand (x25519-dalek as the `hpke` crate uses it,
//! aws-lc-rs, libcrux), HKDF-SHA256 and ChaCha20-Poly1305 of a 20-byte
//! password, a full HPKE seal per candidate (`hpke` crate, `hpke-rs` on
//! libcrux, ecs-seal's RFC 9180 composed from aws-lc-rs), the machine floor
//! `1000 × (2 X25519 + HKDF + AEAD) / cores + one durable transaction of 1000
//! rows`, ecsd's batch as a ratio to it, and the batch end to end over HTTPS
//! from a client whose calls are 1 s apart (`BENCH_SPACED_CALLS`, default 20).
//!
//! `cargo bench -p ecsd --bench batch_reset`
//! `cargo bench -p ecsd --bench batch_reset -- machine_floor`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
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
            generate: None,
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

// ---- Issue 13 item 1: the machine's floor --------------------------------

/// Per-call median over `samples` timed runs of `iters` calls each (after
/// one untimed run), in microseconds.
fn per_call_us(iters: usize, samples: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters {
        f();
    }
    let mut v: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Raw X25519: one DH on one thread (the peer's key parsed per call, as a
/// seal does).
/// One TLS 1.3 handshake in memory, both sides on this thread (what every
/// agent restart costs ecsd and the agent together), for each rustls crypto
/// provider at hand: the dev CA and server certificate (ECDSA P-256, the
/// chain verified against the CA as agents do), X25519 key exchange.
fn tls_handshake_us() -> Vec<(&'static str, f64)> {
    use rustls::crypto::CryptoProvider;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let pki = ecsd::tls::dev_pki(dir.path()).unwrap();
    let chain = ecs_trust::tls::certs_from_file(&pki.cert).unwrap();
    let key = ecs_trust::tls::key_from_file(&pki.key).unwrap();
    let ca = ecs_trust::tls::certs_from_file(&pki.ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let providers: [(&'static str, CryptoProvider); 2] = [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ];
    providers
        .into_iter()
        .map(|(name, provider)| {
            let provider = Arc::new(provider);
            let server = Arc::new(
                rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key.clone_key())
                    .unwrap(),
            );
            let client = Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            );
            let us = per_call_us(50, 21, || {
                let mut c =
                    rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap())
                        .unwrap();
                let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut buf = Vec::new();
                while c.is_handshaking() || s.is_handshaking() {
                    buf.clear();
                    c.write_tls(&mut buf).unwrap();
                    s.read_tls(&mut buf.as_slice()).unwrap();
                    s.process_new_packets().unwrap();
                    buf.clear();
                    s.write_tls(&mut buf).unwrap();
                    c.read_tls(&mut buf.as_slice()).unwrap();
                    c.process_new_packets().unwrap();
                }
                black_box((c, s));
            });
            (name, us)
        })
        .collect()
}

fn x25519_us() -> Vec<(&'static str, f64)> {
    let (a, b) = ([0x11u8; 32], [0x22u8; 32]);
    let dalek_a = x25519_dalek::StaticSecret::from(a);
    let dalek_pb = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(b));
    let pb_bytes = *dalek_pb.as_bytes();
    let dalek = per_call_us(2000, 21, || {
        let pk = x25519_dalek::PublicKey::from(black_box(pb_bytes));
        black_box(dalek_a.diffie_hellman(&pk));
    });
    let lc = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, &a)
        .unwrap();
    let aws = per_call_us(2000, 21, || {
        aws_lc_rs::agreement::agree(
            &lc,
            aws_lc_rs::agreement::UnparsedPublicKey::new(
                &aws_lc_rs::agreement::X25519,
                black_box(&pb_bytes),
            ),
            (),
            |dh| Ok(black_box(dh[0])),
        )
        .unwrap();
    });
    let aws_keygen = per_call_us(2000, 21, || {
        let k = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::X25519).unwrap();
        black_box(k.compute_public_key().unwrap());
    });
    let crux = per_call_us(2000, 21, || {
        black_box(
            libcrux_ecdh::derive(libcrux_ecdh::Algorithm::X25519, black_box(&pb_bytes), a).unwrap(),
        );
    });
    vec![
        ("x25519-dalek 2 (the hpke crate's)", dalek),
        ("aws-lc-rs agreement::X25519", aws),
        ("libcrux-ecdh", crux),
        (
            "aws-lc-rs: ephemeral key pair (generate + public key)",
            aws_keygen,
        ),
    ]
}

/// HKDF-SHA256 (extract + expand of 32 bytes) and ChaCha20-Poly1305 (key
/// setup + seal of a 20-byte password), aws-lc-rs.
fn hkdf_aead_us() -> (f64, f64) {
    use aws_lc_rs::{aead, hkdf};
    let hkdf = per_call_us(5000, 21, || {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"salt").extract(black_box(&[7u8; 32]));
        let mut out = [0u8; 32];
        prk.expand(&[b"info"], hkdf::HKDF_SHA256)
            .unwrap()
            .fill(&mut out)
            .unwrap();
        black_box(out);
    });
    let aead = per_call_us(5000, 21, || {
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, black_box(&[9u8; 32])).unwrap(),
        );
        let mut buf = b"Gx7!pLq2vR-Gx7!pLq2v".to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([1; 12]),
            aead::Aad::empty(),
            &mut buf,
        )
        .unwrap();
        black_box(buf);
    });
    (hkdf, aead)
}

/// Signing one work envelope (what every delivery of a reset or power
/// action costs ecsd): `ed25519-dalek` (portable Rust, what `WorkSigner`
/// used before session 10) against `WorkSigner` itself (aws-lc).
fn envelope_sign_us() -> Vec<(&'static str, f64)> {
    let signer = ecs_trust::WorkSigner::generate();
    let dalek = ed25519_dalek::SigningKey::from_bytes(&signer.to_bytes());
    let env = ecs_agent_proto::Envelope {
        server_id: "srv-0123456789abcdef".into(),
        id: "0123456789abcdef0123456789abcdef".into(),
        seq: 42,
        kind: ecs_agent_proto::WorkKind::Reset,
        apply: ecs_agent_proto::ApplyMode::Boot,
        hard: false,
        sealed_sha256: Some(ecs_trust::work::sealed_hash(b"sealed")),
        issued_at: "2026-11-28T00:00:00Z".into(),
    };
    let mut msg = ecs_trust::work::ENVELOPE_CONTEXT.to_vec();
    msg.extend_from_slice(&serde_json::to_vec(&env).unwrap());
    let dalek_us = per_call_us(500, 9, || {
        black_box(ed25519_dalek::Signer::sign(&dalek, black_box(&msg)));
    });
    let ours = per_call_us(500, 9, || {
        black_box(signer.sign(black_box(&env)));
    });
    vec![
        ("ed25519-dalek 2, the signature alone", dalek_us),
        (
            "WorkSigner (aws-lc): serialize, sign, base64 — the whole envelope",
            ours,
        ),
    ]
}

/// A full single-shot HPKE seal (the same suite, info, 20-byte password) per
/// candidate, one thread.
fn seal_us(keys: &[(String, ecs_seal::PublicKey)]) -> Vec<(&'static str, f64)> {
    use hpke::Serializable as _;
    let pw = "Gx7!pLq2vR-Gx7!pLq2v";
    let info = b"ecs-reset-password/v1\0\0\0\0\x05srv-0\0\0\0\0\x05req-1";
    let raw: Vec<Vec<u8>> = keys.iter().take(64).map(|(_, k)| k.to_bytes()).collect();
    let old: Vec<_> = raw
        .iter()
        .map(|b| <<hpke::kem::X25519HkdfSha256 as hpke::Kem>::PublicKey as hpke::Deserializable>::from_bytes(b).unwrap())
        .collect();
    let mut i = 0;
    let hpke_crate = per_call_us(500, 21, || {
        i = (i + 1) % old.len();
        let (enc, ct) = hpke::single_shot_seal::<
            hpke::aead::ChaCha20Poly1305,
            hpke::kdf::HkdfSha256,
            hpke::kem::X25519HkdfSha256,
            _,
        >(
            &hpke::OpModeS::Base,
            &old[i],
            info,
            pw.as_bytes(),
            b"",
            &mut rand::rng(),
        )
        .unwrap();
        black_box((enc.to_bytes(), ct));
    });
    let mut rs = hpke_rs::Hpke::<hpke_rs_libcrux::HpkeLibcrux>::new(
        hpke_rs::Mode::Base,
        hpke_rs_crypto::types::KemAlgorithm::DhKem25519,
        hpke_rs_crypto::types::KdfAlgorithm::HkdfSha256,
        hpke_rs_crypto::types::AeadAlgorithm::ChaCha20Poly1305,
    );
    let rs_keys: Vec<hpke_rs::HpkePublicKey> = raw.iter().map(|b| b.as_slice().into()).collect();
    let libcrux = per_call_us(500, 21, || {
        i = (i + 1) % rs_keys.len();
        black_box(
            rs.seal(&rs_keys[i], info, b"", pw.as_bytes(), None, None, None)
                .unwrap(),
        );
    });
    let password = SecretString::from(pw.to_owned());
    let aws = per_call_us(500, 21, || {
        i = (i + 1) % raw.len();
        black_box(ecs_seal::seal(&keys[i].1, "srv-0", "req-1", &password).unwrap());
    });
    vec![
        ("hpke 0.13 (x25519-dalek, RustCrypto)", hpke_crate),
        ("hpke-rs 0.8 + hpke-rs-libcrux", libcrux),
        ("ecs-seal: RFC 9180 on aws-lc-rs", aws),
    ]
}

/// One durable transaction inserting 1000 sealed rows (the floor's share
/// that is not sealing), in milliseconds.
fn tx_ms(floor: &mut rusqlite::Connection, keys: &[(String, ecs_seal::PublicKey)]) -> f64 {
    let sealed = seal_all(keys, "x", &SecretString::from("Gx7!pLq2vR".to_owned())).unwrap();
    per_call_us(1, 15, || {
        let rid = uuid::Uuid::new_v4().simple().to_string();
        let tx = floor.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5)")
                .unwrap();
            let now = chrono::Utc::now().to_rfc3339();
            for (i, ((id, _), s)) in keys.iter().zip(&sealed).enumerate() {
                st.execute(rusqlite::params![rid, id, i as i64, s, now])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }) / 1e3
}

/// ecsd over HTTPS on loopback (its own runtime and thread), 1000 servers
/// with keys: the endpoint, the CA and the server ids.
fn https_ecsd(dir: &std::path::Path) -> (support::Api, Vec<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pki = ecsd::tls::dev_pki(&dir).unwrap();
            let ca_pem = std::fs::read(&pki.ca).unwrap();
            let config = Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir,
                master_key: Some(MasterKey::generate_base64()),
                rate_limit_per_sec: 1_000_000,
                tls_cert: Some(pki.cert),
                tls_key: Some(pki.key),
                ..Config::default()
            };
            let state = ecsd::server::open_state(config).unwrap();
            let project = ecsd::admin::create_project(&state, "spaced").await.unwrap();
            let (ak, sk) = ecsd::admin::create_access_key(&state, &project.id, Role::Admin)
                .await
                .unwrap();
            let ids = support::register_servers(&state, &project.id, N).await;
            let server = ecsd::server::Server::bind(state).await.unwrap();
            let api = support::Api::new(
                &format!("{}://{}", server.scheme(), server.local_addr()),
                &project.id,
                &ak,
                secrecy::ExposeSecret::expose_secret(&sk),
                Some(ca_pem),
            );
            tx.send((api, ids)).unwrap();
            server.run(std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The 1000-server batch end to end over HTTPS, `calls` calls 1 s apart
/// from one client (keep-alive): sorted latencies.
fn spaced_https(calls: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let (api, ids) = https_ecsd(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut lat = rt.block_on(async {
        // One call first: the connection and TLS session, not measured.
        assert_eq!(api.send(api.reset(&ids, "Gx7!pLq2vR")).await.status, 200);
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = Instant::now();
            let r = api.send(api.reset(&ids, "Gx7!pLq2vR")).await;
            lat.push(t.elapsed());
            assert_eq!(r.status, 200);
        }
        lat
    });
    lat.sort();
    lat
}

fn machine_floor() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = sqlite_fixture(&rt);
    let floor_dir = tempfile::tempdir().unwrap();
    let mut floor = floor_db(floor_dir.path());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let password = SecretString::from("Gx7!pLq2vR".to_owned());

    let x = x25519_us();
    let (hkdf, aead) = hkdf_aead_us();
    let seals = seal_us(&f.keys);
    let tx = tx_ms(&mut floor, &f.keys);
    let handshakes = tls_handshake_us();
    let signs = envelope_sign_us();
    let fastest = x
        .iter()
        .take(3)
        .map(|(_, us)| *us)
        .fold(f64::INFINITY, f64::min);
    let floor_ms = N as f64 * (2.0 * fastest + hkdf + aead) / cores as f64 / 1e3 + tx;
    let seal_all_ms = per_call_us(1, 15, || {
        black_box(seal_all(&f.keys, "r", &password).unwrap());
    }) / 1e3;
    let ecsd_ms = per_call_us(1, 21, || ecsd_batch(&rt, &f)) / 1e3;
    let calls = std::env::var("BENCH_SPACED_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let spaced = spaced_https(calls);

    println!("\n## machine_floor (issue 13 item 1), {cores} cores");
    println!("| what | median |");
    println!("|---|---|");
    for (name, us) in &x {
        println!("| X25519, one thread: {name} | {us:.1} µs |");
    }
    println!("| HKDF-SHA256 extract + expand 32 B (aws-lc-rs) | {hkdf:.2} µs |");
    println!("| ChaCha20-Poly1305 key + seal of 20 B (aws-lc-rs) | {aead:.2} µs |");
    for (name, us) in &seals {
        println!("| HPKE seal, one thread: {name} | {us:.1} µs |");
    }
    for (name, us) in &handshakes {
        println!("| TLS 1.3 handshake in memory, client + server, rustls on {name} | {us:.1} µs |");
    }
    for (name, us) in &signs {
        println!("| Ed25519 work envelope, one thread: {name} | {us:.1} µs |");
    }
    println!("| one durable SQLite transaction of 1000 rows | {tx:.2} ms |");
    println!(
        "| floor: 1000 × (2 × {fastest:.1} + {hkdf:.2} + {aead:.2}) µs / {cores} + {tx:.2} ms | {floor_ms:.2} ms |"
    );
    println!(
        "| seal_all: 1000 ecs-seal seals on {cores} cores | {seal_all_ms:.2} ms ({:.2}× the sealing floor) |",
        seal_all_ms / (floor_ms - tx)
    );
    println!(
        "| ecsd batch_reset, 1000 servers (in process) | {ecsd_ms:.2} ms ({:.2}× floor) |",
        ecsd_ms / floor_ms
    );
    let p50 = support::quantile_ms(&spaced, 0.5);
    println!(
        "| HTTPS end to end, {calls} calls 1 s apart: median (min, p90) | {p50:.2} ms ({:.2}, {:.2}) ({:.2}× floor) |",
        support::quantile_ms(&spaced, 0.0),
        support::quantile_ms(&spaced, 0.9),
        p50 / floor_ms
    );
    println!();
}

criterion_group!(benches, bench);

/// `machine_floor` runs unless a bench filter is given that it does not
/// match (criterion's filters are substrings of the bench id); the criterion
/// groups run unless the only filters are `machine_floor`'s.
fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let floor = filters.iter().all(|f| "machine_floor".contains(f.as_str()));
    if floor {
        machine_floor();
    }
    if filters.is_empty() || !floor {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
