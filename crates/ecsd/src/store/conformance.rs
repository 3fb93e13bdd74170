//! The store conformance suite: checks written only against the [`Store`]
//! trait, so every backend runs the same ones unchanged. A backend's tests
//! call [`crate::store_conformance_tests!`] with a constructor (one fresh,
//! empty store per check), or [`run_all`] on one fresh store.

use chrono::{DateTime, Duration, Utc};
use ecs_api::{JobStatus, ResetState, ServerStatus};
use ecs_policy::OsType;

use super::*;
use crate::domain::{Entity, Error, reasons};

/// Every check, in order, on one fresh (empty) store.
pub async fn run_all(store: &dyn Store) {
    work_keys(store).await;
    projects_and_access_keys(store).await;
    servers_register_lookup_and_list(store).await;
    the_name_filter_is_a_literal_substring_match(store).await;
    offset_pages_are_the_listings_slices_as_it_changes(store).await;
    resets_supersede_deliver_and_ack(store).await;
    a_failed_reset_changes_nothing(store).await;
    power_jobs_busy_take_ack(store).await;
    a_poll_takes_power_before_a_reset(store).await;
    power_jobs_expire(store).await;
    heartbeats_bring_servers_back(store).await;
    enrollment_tokens(store).await;
    duplicate_machine_ids(store).await;
    rekey_tokens_and_challenges(store).await;
}

/// One `#[tokio::test]` per check; `$make` is a function returning
/// `(guard, store)`, or `Option` of it (`None` skips; see [`Made`]) (the guard, e.g. a temporary directory, lives as long as
/// the test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@each $make;
            work_keys,
            projects_and_access_keys,
            servers_register_lookup_and_list,
            the_name_filter_is_a_literal_substring_match,
            offset_pages_are_the_listings_slices_as_it_changes,
            resets_supersede_deliver_and_ack,
            a_failed_reset_changes_nothing,
            power_jobs_busy_take_ack,
            a_poll_takes_power_before_a_reset,
            power_jobs_expire,
            heartbeats_bring_servers_back,
            enrollment_tokens,
            duplicate_machine_ids,
            rekey_tokens_and_challenges
        );
    };
    (@each $make:path; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_guard, store)) = $crate::store::conformance::made($make()) else {
                    return; // this backend is skipped here
                };
                $crate::store::conformance::$name(&store).await;
            }
        )+
    };
}

/// What a backend's constructor returns: `(guard, store)`, or an `Option`
/// of it where the backend may be unavailable on purpose (`None` skips).
pub trait Made<G, S> {
    fn made(self) -> Option<(G, S)>;
}

impl<G, S> Made<G, S> for (G, S) {
    fn made(self) -> Option<(G, S)> {
        Some(self)
    }
}

impl<G, S> Made<G, S> for Option<(G, S)> {
    fn made(self) -> Option<(G, S)> {
        self
    }
}

/// Used by the conformance macros: the constructor's store, if any.
pub fn made<G, S>(m: impl Made<G, S>) -> Option<(G, S)> {
    m.made()
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn t0() -> DateTime<Utc> {
    // Whole milliseconds: what the store keeps.
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now")
}

fn audit(project: &str, action: &str) -> AuditEntry {
    AuditEntry {
        at: Utc::now(),
        request_id: uid(),
        project_id: project.to_owned(),
        actor: "conformance".into(),
        action: action.into(),
        servers: vec![],
        dry_run: false,
        outcome: "accepted".into(),
        source: "test".into(),
        user_id: None,
        user_name: None,
        error_code: None,
        http_status: None,
    }
}

/// `name` filters by substring, the pattern taken literally (`%`, `_`,
/// quotes), at any length (one or two characters too), beyond ASCII, and
/// agrees with a plain scan of the names (SQLite answers from a trigram
/// index from three characters on).
/// `offset` pages read one after another, read again and reached by a jump
/// are exactly the slices of the whole listing at the time of each read,
/// also right after servers were added in front of them (SQLite serves such
/// pages from remembered starts, page_starts.rs: a stale start would show
/// here as a shifted page).
pub async fn offset_pages_are_the_listings_slices_as_it_changes(store: &dyn Store) {
    let p = project(store).await;
    for i in 0..23 {
        server(store, &p.id, &format!("node-{i:02}"), false).await;
    }
    let pid = p.id.as_str();
    let ids = |f: ListFilter, limit: u32, page: u32| async move {
        let (v, _) = store.list_servers(pid, f, limit, page, None).await.unwrap();
        v.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };
    let slice = |all: &[String], page: u32| {
        let from = ((page - 1) * 5) as usize;
        all[from.min(all.len())..(from + 5).min(all.len())].to_vec()
    };
    let filters = [
        ListFilter::default(),
        ListFilter {
            name: Some("node-1".into()),
            ..Default::default()
        },
    ];
    for (round, f) in filters.iter().cycle().take(6).enumerate() {
        let all = ids(f.clone(), 1000, 1).await;
        assert!(all.len() >= 10, "{f:?}: {} servers", all.len());
        for page in 1..=6 {
            assert_eq!(
                ids(f.clone(), 5, page).await,
                slice(&all, page),
                "{f:?} page {page}"
            );
        }
        for page in [3, 3, 5, 2, 6, 1] {
            assert_eq!(
                ids(f.clone(), 5, page).await,
                slice(&all, page),
                "{f:?} again, page {page}"
            );
        }
        // A new server comes first and shifts every page by one.
        server(store, &p.id, &format!("node-1{round}x"), false).await;
        let all = ids(f.clone(), 1000, 1).await;
        for page in [4, 3, 5, 2] {
            assert_eq!(
                ids(f.clone(), 5, page).await,
                slice(&all, page),
                "{f:?} after a change, page {page}"
            );
        }
    }
}

pub async fn the_name_filter_is_a_literal_substring_match(store: &dyn Store) {
    let p = project(store).await;
    let names = [
        "web-01",
        "web-02",
        "db-web-9",
        "app_%x",
        "app-x",
        r#"quote"d-node"#,
        "ÄÖÜ-node",
        "日本サーバー1",
        "ab",
        "a-b-c-d",
    ];
    let mut by_name = std::collections::HashMap::new();
    for n in names {
        by_name.insert(server(store, &p.id, n, false).await.id, n);
    }
    let other = project(store).await;
    server(store, &other.id, "web-01", false).await;
    for pattern in [
        "web-0",
        "web",
        "eb-",
        "-0",
        "_%",
        "p_%x",
        "%",
        "_",
        r#"e"d"#,
        "ÖÜ-",
        "本サ",
        "ab",
        "b",
        "-c-d",
        "a-b-c-d-e",
        "node",
        "1",
    ] {
        let (found, total) = store
            .list_servers(
                &p.id,
                ListFilter {
                    name: Some(pattern.into()),
                    ..Default::default()
                },
                100,
                1,
                None,
            )
            .await
            .unwrap();
        let mut got: Vec<&str> = found.iter().map(|s| by_name[&s.id]).collect();
        got.sort();
        let mut want: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.contains(pattern))
            .collect();
        want.sort();
        assert_eq!(got, want, "name contains {pattern:?}");
        assert_eq!(total as usize, want.len(), "{pattern:?}");
    }
}

async fn project(store: &dyn Store) -> Project {
    store
        .create_project(&format!("p-{}", uid()))
        .await
        .expect("project")
}

async fn server(store: &dyn Store, project: &str, name: &str, key: bool) -> Server {
    store
        .register_server(NewServer {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.to_owned(),
            name: name.to_owned(),
            os_type: OsType::Linux,
            agent_public_key: key.then(|| vec![7; 32]),
        })
        .await
        .expect("register")
}

async fn get(store: &dyn Store, s: &Server) -> Server {
    store
        .server(&s.project_id, &s.id)
        .await
        .expect("server")
        .expect("exists")
}

async fn beat(store: &dyn Store, id: &str, boot: &str, at: DateTime<Utc>) {
    store
        .heartbeat(
            id,
            Heartbeat {
                agent_version: "1.2.3".into(),
                boot_id: boot.into(),
                uptime_secs: 5,
                address: Some("10.0.0.7".into()),
                power_driver: true,
            },
            at,
        )
        .await
        .expect("heartbeat");
}

fn enrollment(machine: &str, credential_hash: &str) -> Enrollment {
    Enrollment {
        machine_id: machine.into(),
        hostname: format!("host-{machine}"),
        os_type: OsType::Linux,
        public_key: vec![9; 32],
        agent_version: "1.0".into(),
        credential_hash: credential_hash.into(),
    }
}

fn enrolled(r: EnrollResult) -> Enrolled {
    match r {
        EnrollResult::Enrolled(e) => e,
        other => panic!("not enrolled: {other:?}"),
    }
}

pub async fn work_keys(store: &dyn Store) {
    assert!(store.work_keys().await.unwrap().is_empty());
    let key = |p: &str| StoredWorkKey {
        public_key: p.into(),
        secret_sealed: vec![1, 2, 3],
        endorsed_by: None,
        signature: None,
        created: t0(),
    };
    assert!(store.add_work_key(key("k1"), true).await.unwrap());
    assert!(
        !store.add_work_key(key("k2"), true).await.unwrap(),
        "only one first key"
    );
    let mut k2 = key("k2");
    k2.endorsed_by = Some("k1".into());
    k2.signature = Some("sig".into());
    assert!(store.add_work_key(k2, false).await.unwrap());
    let keys = store.work_keys().await.unwrap();
    let names: Vec<_> = keys.iter().map(|k| k.public_key.as_str()).collect();
    assert_eq!(names, ["k1", "k2"], "oldest first");
    assert_eq!(keys[1].endorsed_by.as_deref(), Some("k1"));
    assert_eq!(keys[1].signature.as_deref(), Some("sig"));
    assert_eq!(keys[0].secret_sealed, [1, 2, 3]);
}

pub async fn projects_and_access_keys(store: &dyn Store) {
    let name = format!("p-{}", uid());
    let p = store.create_project(&name).await.unwrap();
    assert_eq!(p.name, name);
    let by_name = store.project_by_name(&name).await.unwrap().unwrap();
    assert_eq!(by_name.id, p.id);
    assert_eq!(store.project(&p.id).await.unwrap().unwrap().name, name);
    assert!(store.project("nope").await.unwrap().is_none());
    assert!(store.project_by_name("nope").await.unwrap().is_none());
    assert!(matches!(
        store.create_project(&name).await,
        Err(Error::Conflict(_))
    ));
    let ak = format!("AK{}", uid());
    store
        .create_access_key(AccessKey {
            ak: ak.clone(),
            project_id: p.id.clone(),
            sk_sealed: vec![4, 5, 6],
            role: Role::ReadOnly,
        })
        .await
        .unwrap();
    let k = store.access_key(&ak).await.unwrap().unwrap();
    assert_eq!(
        (k.project_id.as_str(), k.sk_sealed.as_slice(), k.role),
        (p.id.as_str(), &[4u8, 5, 6][..], Role::ReadOnly)
    );
    assert!(store.access_key("AKnope").await.unwrap().is_none());
}

pub async fn servers_register_lookup_and_list(store: &dyn Store) {
    let p = project(store).await;
    let other = project(store).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let s = server(store, &p.id, &format!("web-{i}"), i % 2 == 0).await;
        assert_eq!(s.status, ServerStatus::Active);
        assert_eq!(s.agent_public_key.is_some(), i % 2 == 0);
        assert_eq!(s.last_reset, None);
        assert_eq!(s.task_state, None);
        ids.push(s.id);
    }
    let db = server(store, &p.id, "db_1", true).await;
    let theirs = server(store, &other.id, "web-x", true).await;

    // Lookups: by project, and by id across projects.
    assert!(store.server(&p.id, &theirs.id).await.unwrap().is_none());
    assert!(store.server(&p.id, "nope").await.unwrap().is_none());
    let mut both = store
        .servers_by_ids(&[ids[0].clone(), theirs.id.clone(), "nope".into()])
        .await
        .unwrap();
    both.sort_by(|a, b| a.id.cmp(&b.id));
    let mut want = vec![ids[0].clone(), theirs.id.clone()];
    want.sort();
    assert_eq!(both.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), want);

    // The whole list: newest first, only this project's.
    let (all, count) = store
        .list_servers(&p.id, ListFilter::default(), 100, 1, None)
        .await
        .unwrap();
    assert_eq!(count, 6);
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|s| s.project_id == p.id));
    assert!(
        all.windows(2)
            .all(|w| (w[0].created, &w[0].id) > (w[1].created, &w[1].id))
    );
    let order: Vec<String> = all.iter().map(|s| s.id.clone()).collect();

    // Pages and the marker.
    let (page2, count) = store
        .list_servers(&p.id, ListFilter::default(), 2, 2, None)
        .await
        .unwrap();
    assert_eq!(count, 6);
    assert_eq!(
        page2.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        order[2..4]
    );
    let (after, _) = store
        .list_servers(&p.id, ListFilter::default(), 3, 1, Some(order[1].clone()))
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        order[2..5]
    );
    let bad = store
        .list_servers(&p.id, ListFilter::default(), 3, 1, Some(theirs.id.clone()))
        .await;
    assert!(matches!(
        bad,
        Err(Error::NotFound {
            entity: Entity::Marker,
            ..
        })
    ));

    // Filters.
    let pid = p.id.as_str();
    let list = |f: ListFilter| async move {
        let (v, n) = store.list_servers(pid, f, 100, 1, None).await.unwrap();
        let mut ids: Vec<String> = v.into_iter().map(|s| s.id).collect();
        ids.sort();
        (ids, n)
    };
    let (named, n) = list(ListFilter {
        name: Some("web-".into()),
        ..Default::default()
    })
    .await;
    assert_eq!((named.len(), n), (5, 5));
    let (underscore, _) = list(ListFilter {
        name: Some("_".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        underscore,
        std::slice::from_ref(&db.id),
        "LIKE wildcards are literal"
    );
    let (active, n) = list(ListFilter {
        status: Some("ACTIVE".into()),
        ..Default::default()
    })
    .await;
    assert_eq!((active.len(), n), (6, 6));
    for status in ["SHUTOFF", "active", "NO_SUCH_STATUS"] {
        let (none, n) = list(ListFilter {
            status: Some(status.into()),
            ..Default::default()
        })
        .await;
        assert_eq!((none.len(), n), (0, 0), "{status}");
    }
    beat(store, &ids[1], "b1", t0()).await;
    let (by_ip, _) = list(ListFilter {
        ip: Some("10.0.0".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_ip, [ids[1].clone()]);
    let (exact, _) = list(ListFilter {
        ip_eq: Some("10.0.0".into()),
        ..Default::default()
    })
    .await;
    assert!(exact.is_empty(), "ip_eq is exact");
    let (exact, _) = list(ListFilter {
        ip_eq: Some("10.0.0.7".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(exact, [ids[1].clone()]);
    let (picked, n) = list(ListFilter {
        name: Some("nothing matches this".into()),
        server_ids: Some(vec![ids[3].clone(), theirs.id.clone()]),
        ..Default::default()
    })
    .await;
    assert_eq!((picked, n), (vec![ids[3].clone()], 1), "server_ids wins");
    // os_type (ours): every server here is Linux.
    for (os, want) in [("Linux", 6), ("linux", 6), ("Windows", 0), ("BeOS", 0)] {
        let (v, n) = list(ListFilter {
            os_type: Some(os.into()),
            ..Default::default()
        })
        .await;
        assert_eq!((v.len(), n), (want, want as u64), "{os}");
    }
}

async fn target(store: &dyn Store, project: &str, request: &str, server: &str) -> TargetState {
    store
        .reset_outcome(project, request)
        .await
        .unwrap()
        .expect("reset")
        .targets
        .into_iter()
        .find(|t| t.server_id == server)
        .expect("target")
}

fn new_reset(project: &str, servers: &[&Server], created: DateTime<Utc>) -> NewReset {
    NewReset {
        request_id: uid(),
        project_id: project.to_owned(),
        apply_now: false,
        created,
        targets: servers
            .iter()
            .map(|s| (s.id.clone(), format!("sealed-{}", s.id).into_bytes()))
            .collect(),
        audit: audit(project, "batch-reset-password"),
    }
}

/// A batch reset is all or nothing: one that cannot be stored whole (a
/// target that does not exist) leaves no request, supersedes nothing and
/// uses no sequence number.
pub async fn a_failed_reset_changes_nothing(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let now = t0();
    let r1 = new_reset(&p.id, &[&a], now);
    store.create_reset(r1.clone()).await.unwrap();
    let before = store.take_work(&a.id, now).await.unwrap().expect("work");
    let ghost = Server {
        id: uuid::Uuid::new_v4().to_string(),
        ..a.clone()
    };
    let r2 = new_reset(&p.id, &[&a, &ghost], now + Duration::seconds(1));
    assert!(store.create_reset(r2.clone()).await.is_err());
    assert!(
        store
            .reset_outcome(&p.id, &r2.request_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.latest_reset_id(&p.id).await.unwrap(),
        Some(r1.request_id.clone())
    );
    assert_eq!(
        target(store, &p.id, &r1.request_id, &a.id).await.state,
        ResetState::Delivered,
        "not superseded"
    );
    let after = store.take_work(&a.id, now).await.unwrap().expect("work");
    assert_eq!(
        (after.request_id, after.seq),
        (r1.request_id.clone(), before.seq)
    );
    assert_eq!(
        get(store, &a).await.last_reset,
        Some((r1.request_id, ResetState::Delivered))
    );
    // The next stored item takes the next number.
    let r3 = new_reset(&p.id, &[&a], now + Duration::seconds(2));
    store.create_reset(r3).await.unwrap();
    let next = store.take_work(&a.id, now).await.unwrap().expect("work");
    assert_eq!(next.seq, before.seq + 1);
}

pub async fn resets_supersede_deliver_and_ack(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let b = server(store, &p.id, "b", true).await;
    let now = t0();
    assert!(store.latest_reset_id(&p.id).await.unwrap().is_none());
    let r1 = new_reset(&p.id, &[&a, &b], now);
    store.create_reset(r1.clone()).await.unwrap();
    let out = store
        .reset_outcome(&p.id, &r1.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.created, now);
    assert!(!out.apply_now);
    let order: Vec<_> = out.targets.iter().map(|t| t.server_id.clone()).collect();
    assert_eq!(order, [a.id.clone(), b.id.clone()], "request order");
    assert!(out.targets.iter().all(|t| t.state == ResetState::Pending));
    assert!(
        store
            .reset_outcome("other", &r1.request_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        get(store, &a).await.last_reset,
        Some((r1.request_id.clone(), ResetState::Pending))
    );

    // The agent fetches it: DELIVERED, and again the same while open.
    let w1 = store.take_work(&a.id, now).await.unwrap().expect("work");
    assert_eq!(w1.request_id, r1.request_id);
    assert_eq!(w1.sealed, format!("sealed-{}", a.id).into_bytes());
    assert_eq!(
        target(store, &p.id, &r1.request_id, &a.id).await.state,
        ResetState::Delivered
    );
    let again = store
        .take_work(&a.id, now)
        .await
        .unwrap()
        .expect("still open");
    assert_eq!(
        (again.request_id, again.seq),
        (r1.request_id.clone(), w1.seq)
    );

    // A newer request supersedes the open one of the same server only.
    let r2 = new_reset(&p.id, &[&a], now + Duration::seconds(1));
    store.create_reset(r2.clone()).await.unwrap();
    assert_eq!(
        store.latest_reset_id(&p.id).await.unwrap(),
        Some(r2.request_id.clone())
    );
    let old = target(store, &p.id, &r1.request_id, &a.id).await;
    assert_eq!(old.state, ResetState::Superseded);
    assert_eq!(old.reason.as_deref(), Some(reasons::SUPERSEDED));
    assert_eq!(
        target(store, &p.id, &r1.request_id, &b.id).await.state,
        ResetState::Pending
    );
    let w2 = store.take_work(&a.id, now).await.unwrap().expect("work");
    assert_eq!(w2.request_id, r2.request_id);
    assert!(w2.seq > w1.seq, "the work sequence grows");
    assert_eq!(
        store.reset_accepted_at(&r2.request_id).await.unwrap(),
        Some(now + Duration::seconds(1))
    );
    assert_eq!(
        store.reset_accepted_at("no-such-request").await.unwrap(),
        None
    );

    // Acknowledgements: only for the open request of that server, once.
    let at = now + Duration::seconds(2);
    assert!(
        !store
            .ack(&a.id, &r1.request_id, true, None, at)
            .await
            .unwrap()
    );
    assert!(
        !store
            .ack(&b.id, &r2.request_id, true, None, at)
            .await
            .unwrap()
    );
    assert!(
        store
            .ack(&a.id, &r2.request_id, true, None, at)
            .await
            .unwrap()
    );
    assert!(
        !store
            .ack(&a.id, &r2.request_id, false, None, at)
            .await
            .unwrap()
    );
    let done = target(store, &p.id, &r2.request_id, &a.id).await;
    assert_eq!((done.state, done.updated), (ResetState::Applied, at));
    assert!(
        store
            .ack(&b.id, &r1.request_id, false, Some("no shadow"), at)
            .await
            .unwrap()
    );
    let failed = target(store, &p.id, &r1.request_id, &b.id).await;
    assert_eq!(
        (failed.state, failed.reason.as_deref()),
        (ResetState::Failed, Some("no shadow"))
    );
    assert!(store.take_work(&a.id, at).await.unwrap().is_none());
    assert!(store.take_work(&b.id, at).await.unwrap().is_none());
    assert_eq!(
        get(store, &a).await.last_reset,
        Some((r2.request_id.clone(), ResetState::Applied))
    );
}

fn new_job(
    project: &str,
    kind: PowerKind,
    hard: bool,
    servers: &[(&Server, Option<&str>)],
) -> NewJob {
    NewJob {
        job_id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_owned(),
        kind,
        hard,
        created: t0(),
        subs: servers
            .iter()
            .map(|(s, f)| {
                (
                    uuid::Uuid::new_v4().to_string(),
                    s.id.clone(),
                    f.map(str::to_owned),
                )
            })
            .collect(),
        audit: audit(project, "reboot-servers"),
    }
}

async fn sub_of(store: &dyn Store, project: &str, job: &NewJob, server: &Server) -> SubJob {
    store
        .job(project, &job.job_id)
        .await
        .unwrap()
        .expect("job")
        .subs
        .into_iter()
        .find(|s| s.server_id == server.id)
        .expect("sub-job")
}

/// What an agent's poll takes (`take_next`): nothing when nothing is
/// open; a power action before a reset, each power action once; with
/// `power_only`, never a reset; a reset DELIVERED, and the same reset
/// again for an agent that asks again (after a restart).
pub async fn a_poll_takes_power_before_a_reset(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let now = t0();
    beat(store, &a.id, "boot-1", now).await;
    assert!(store.take_next(&a.id, now, false).await.unwrap().is_none());
    let reset = new_reset(&p.id, &[&a], now);
    store.create_reset(reset.clone()).await.unwrap();
    let job = new_job(&p.id, PowerKind::Reboot, false, &[(&a, None)]);
    store.create_job(job.clone()).await.unwrap();
    match store.take_next(&a.id, now, false).await.unwrap() {
        Some(NextWork::Power(w)) => assert_eq!((w.kind, w.hard), (PowerKind::Reboot, false)),
        other => panic!("not the power action first: {other:?}"),
    }
    assert_eq!(
        sub_of(store, &p.id, &job, &a).await.status,
        JobStatus::Running
    );
    assert!(
        store.take_next(&a.id, now, true).await.unwrap().is_none(),
        "power only: the power action was taken, the reset is not asked for"
    );
    let rid = &reset.request_id;
    assert_eq!(
        target(store, &p.id, rid, &a.id).await.state,
        ResetState::Pending
    );
    for _ in 0..2 {
        match store.take_next(&a.id, now, false).await.unwrap() {
            Some(NextWork::Reset(w)) => assert_eq!(&w.request_id, rid),
            other => panic!("not the reset: {other:?}"),
        }
        assert_eq!(
            target(store, &p.id, rid, &a.id).await.state,
            ResetState::Delivered
        );
    }
    assert!(store.ack(&a.id, rid, true, None, now).await.unwrap());
    assert!(store.take_next(&a.id, now, false).await.unwrap().is_none());
    // The reboot completes with the new boot (nothing is left running).
    beat(store, &a.id, "boot-2", now).await;
    assert_eq!(
        sub_of(store, &p.id, &job, &a).await.status,
        JobStatus::Success
    );
}

pub async fn power_jobs_busy_take_ack(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let b = server(store, &p.id, "b", true).await;
    let c = server(store, &p.id, "c", true).await;
    let now = t0();
    for s in [&a, &b, &c] {
        beat(store, &s.id, "boot-1", now).await;
    }
    let job = new_job(&p.id, PowerKind::Reboot, false, &[(&a, None), (&b, None)]);
    store.create_job(job.clone()).await.unwrap();
    let stored = store.job(&p.id, &job.job_id).await.unwrap().unwrap();
    assert_eq!(stored.kind, PowerKind::Reboot);
    assert!(
        stored
            .subs
            .iter()
            .all(|s| s.status == JobStatus::Init && s.end.is_none())
    );
    assert!(store.job("other", &job.job_id).await.unwrap().is_none());

    // One open sub-job per server: the busy ones are named, nothing is stored.
    let second = new_job(
        &p.id,
        PowerKind::Stop,
        false,
        &[(&c, None), (&b, None), (&a, None)],
    );
    match store.create_job(second.clone()).await {
        Err(Error::Busy { ids }) => assert_eq!(ids, [b.id.clone(), a.id.clone()]),
        other => panic!("not busy: {other:?}"),
    }
    assert!(store.job(&p.id, &second.job_id).await.unwrap().is_none());
    assert!(store.take_power(&c.id, now).await.unwrap().is_none());

    // A soft reboot taken: RUNNING, REBOOT, rebooting; done on a new boot.
    let w = store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    assert_eq!((w.kind, w.hard), (PowerKind::Reboot, false));
    assert_eq!(
        sub_of(store, &p.id, &job, &a).await.status,
        JobStatus::Running
    );
    let s = get(store, &a).await;
    assert_eq!(
        (s.status, s.task_state.as_deref()),
        (ServerStatus::Reboot, Some("rebooting"))
    );
    assert!(
        store.take_power(&a.id, now).await.unwrap().is_none(),
        "taken once"
    );
    beat(store, &a.id, "boot-1", now).await;
    assert_eq!(
        get(store, &a).await.status,
        ServerStatus::Reboot,
        "same boot"
    );
    let later = now + Duration::seconds(3);
    beat(store, &a.id, "boot-2", later).await;
    let s = get(store, &a).await;
    assert_eq!((s.status, s.task_state), (ServerStatus::Active, None));
    let sa = sub_of(store, &p.id, &job, &a).await;
    assert_eq!((sa.status, sa.end), (JobStatus::Success, Some(later)));
    assert!(
        !store
            .power_ack(&a.id, &sa.sub_job_id, true, None, later)
            .await
            .unwrap(),
        "no longer running"
    );

    // A refusal: FAIL with the reboot code, the server back to ACTIVE.
    store
        .take_power(&b.id, now)
        .await
        .unwrap()
        .expect("power work");
    let sb = sub_of(store, &p.id, &job, &b).await;
    assert!(
        !store
            .power_ack(&a.id, &sb.sub_job_id, false, None, later)
            .await
            .unwrap(),
        "another server's"
    );
    assert!(
        store
            .power_ack(&b.id, &sb.sub_job_id, false, None, later)
            .await
            .unwrap()
    );
    let sb = sub_of(store, &p.id, &job, &b).await;
    assert_eq!(
        (
            sb.status,
            sb.error_code.as_deref(),
            sb.fail_reason.as_deref()
        ),
        (
            JobStatus::Fail,
            Some("Ecs.0227"),
            Some(reasons::AGENT_REFUSED)
        )
    );
    let s = get(store, &b).await;
    assert_eq!((s.status, s.task_state), (ServerStatus::Active, None));
    let summary =
        crate::domain::job::summarize(&store.job(&p.id, &job.job_id).await.unwrap().unwrap().subs);
    assert_eq!(summary.status, JobStatus::Fail);

    // A hard reboot shows HARD_REBOOT.
    let hard = new_job(&p.id, PowerKind::Reboot, true, &[(&c, None)]);
    store.create_job(hard.clone()).await.unwrap();
    let w = store
        .take_power(&c.id, now)
        .await
        .unwrap()
        .expect("power work");
    assert!(w.hard);
    let s = get(store, &c).await;
    assert_eq!(
        (s.status, s.task_state.as_deref()),
        (ServerStatus::HardReboot, Some("rebooting_hard"))
    );
    beat(store, &c.id, "boot-2", later).await;
    assert_eq!(
        sub_of(store, &p.id, &hard, &c).await.status,
        JobStatus::Success
    );

    // A stop succeeds at its acknowledgement: SHUTOFF; a heartbeat starts it.
    let stop = new_job(&p.id, PowerKind::Stop, false, &[(&a, None)]);
    store.create_job(stop.clone()).await.unwrap();
    let w = store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    assert!(w.seq > 0);
    assert_eq!(
        get(store, &a).await.task_state.as_deref(),
        Some("powering-off")
    );
    let sub = sub_of(store, &p.id, &stop, &a).await;
    assert!(
        store
            .power_ack(&a.id, &sub.sub_job_id, true, None, later)
            .await
            .unwrap()
    );
    assert_eq!(
        sub_of(store, &p.id, &stop, &a).await.status,
        JobStatus::Success
    );
    let s = get(store, &a).await;
    assert_eq!((s.status, s.task_state), (ServerStatus::Shutoff, None));

    // A start nothing can carry out fails at once with the start code.
    let start = new_job(
        &p.id,
        PowerKind::Start,
        false,
        &[(&a, Some(reasons::NO_POWER_DRIVER))],
    );
    store.create_job(start.clone()).await.unwrap();
    let sub = sub_of(store, &p.id, &start, &a).await;
    assert_eq!(
        (
            sub.status,
            sub.error_code.as_deref(),
            sub.fail_reason.as_deref()
        ),
        (
            JobStatus::Fail,
            Some("Ecs.0226"),
            Some(reasons::NO_POWER_DRIVER)
        )
    );
    assert!(sub.end.is_some());
    assert!(
        store.take_power(&a.id, now).await.unwrap().is_none(),
        "nothing to take"
    );
}

pub async fn power_jobs_expire(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let b = server(store, &p.id, "b", true).await;
    let now = t0();
    let job = new_job(&p.id, PowerKind::Reboot, false, &[(&a, None), (&b, None)]);
    store.create_job(job.clone()).await.unwrap();
    store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    assert_eq!(get(store, &a).await.status, ServerStatus::Reboot);
    let later = now + Duration::seconds(10);
    assert_eq!(
        store.expire_sub_jobs(job.created, later).await.unwrap(),
        0,
        "not older"
    );
    assert_eq!(
        store
            .expire_sub_jobs(job.created + Duration::seconds(1), later)
            .await
            .unwrap(),
        2,
        "RUNNING and INIT"
    );
    for s in [&a, &b] {
        let sub = sub_of(store, &p.id, &job, s).await;
        assert_eq!(
            (
                sub.status,
                sub.error_code.as_deref(),
                sub.fail_reason.as_deref(),
                sub.end
            ),
            (
                JobStatus::Fail,
                Some("Ecs.0227"),
                Some(reasons::TIMED_OUT),
                Some(later)
            )
        );
        let srv = get(store, s).await;
        assert_eq!((srv.status, srv.task_state), (ServerStatus::Active, None));
    }
    assert_eq!(
        store.expire_sub_jobs(later, later).await.unwrap(),
        0,
        "already final"
    );
    // A stop that timed out fails with the stop code.
    let stop = new_job(&p.id, PowerKind::Stop, false, &[(&a, None)]);
    store.create_job(stop.clone()).await.unwrap();
    store
        .expire_sub_jobs(stop.created + Duration::seconds(1), later)
        .await
        .unwrap();
    assert_eq!(
        sub_of(store, &p.id, &stop, &a).await.error_code.as_deref(),
        Some("Ecs.0611")
    );
}

pub async fn heartbeats_bring_servers_back(store: &dyn Store) {
    let p = project(store).await;
    let a = server(store, &p.id, "a", true).await;
    let now = t0();
    // The census counts every server with an agent in the store (other
    // checks may share it), so this one reports a version of its own. Before
    // any heartbeat: an agent (it has a key) of unknown version, stale.
    let unknown = |c: &[AgentCount]| {
        c.iter()
            .find(|c| c.version == "unknown")
            .map_or((0, 0), |c| (c.up, c.stale))
    };
    let census = store.agent_census(now).await.unwrap();
    assert!(unknown(&census).1 >= 1, "{census:?}");
    let hb = |version: &str| Heartbeat {
        agent_version: version.into(),
        boot_id: "boot-1".into(),
        uptime_secs: 5,
        address: None,
        power_driver: true,
    };
    store.heartbeat(&a.id, hb("census-9"), now).await.unwrap();
    let after = store.agent_census(now).await.unwrap();
    let v = after
        .iter()
        .find(|c| c.version == "census-9")
        .expect("census-9");
    assert_eq!((v.up, v.stale), (1, 0), "{after:?}");
    assert_eq!(unknown(&after).1, unknown(&census).1 - 1, "{after:?}");
    let later = store
        .agent_census(now + Duration::seconds(1))
        .await
        .unwrap();
    let v = later
        .iter()
        .find(|c| c.version == "census-9")
        .expect("census-9");
    assert_eq!(
        (v.up, v.stale),
        (0, 1),
        "heard from before the cutoff: {later:?}"
    );
    assert!(
        later.windows(2).all(|w| w[0].version < w[1].version),
        "ordered by version: {later:?}"
    );
    beat(store, &a.id, "boot-1", now).await;
    let s = get(store, &a).await;
    assert_eq!(s.boot_id.as_deref(), Some("boot-1"));
    assert_eq!(s.agent_version.as_deref(), Some("1.2.3"));
    assert_eq!(s.agent_last_seen, Some(now));
    assert_eq!(s.addresses, ["10.0.0.7"]);
    assert!(s.power_driver);
    assert_eq!(s.status, ServerStatus::Active);
    // Stopped, then any heartbeat (even the same boot) means it runs again.
    let stop = new_job(&p.id, PowerKind::Stop, false, &[(&a, None)]);
    store.create_job(stop.clone()).await.unwrap();
    store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    let sub = sub_of(store, &p.id, &stop, &a).await;
    store
        .power_ack(&a.id, &sub.sub_job_id, true, None, now)
        .await
        .unwrap();
    assert_eq!(get(store, &a).await.status, ServerStatus::Shutoff);
    let later = now + Duration::seconds(1);
    beat(store, &a.id, "boot-1", later).await;
    let s = get(store, &a).await;
    assert_eq!(
        (s.status, s.task_state, s.updated),
        (ServerStatus::Active, None, later)
    );
    // A start taken while off completes on the next boot.
    let stop = new_job(&p.id, PowerKind::Stop, false, &[(&a, None)]);
    store.create_job(stop.clone()).await.unwrap();
    store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    let sub = sub_of(store, &p.id, &stop, &a).await;
    store
        .power_ack(&a.id, &sub.sub_job_id, true, None, now)
        .await
        .unwrap();
    let start = new_job(&p.id, PowerKind::Start, false, &[(&a, None)]);
    store.create_job(start.clone()).await.unwrap();
    store
        .take_power(&a.id, now)
        .await
        .unwrap()
        .expect("power work");
    let s = get(store, &a).await;
    assert_eq!(
        (s.status, s.task_state.as_deref()),
        (ServerStatus::Shutoff, Some("powering-on"))
    );
    beat(store, &a.id, "boot-2", later).await;
    assert_eq!(get(store, &a).await.status, ServerStatus::Active);
    assert_eq!(
        sub_of(store, &p.id, &start, &a).await.status,
        JobStatus::Success
    );
}

pub async fn enrollment_tokens(store: &dyn Store) {
    let p = project(store).await;
    let now = t0();
    let expires = now + Duration::seconds(60);
    let token = uid();
    store
        .create_enroll_token(&p.id, &token, expires, 2)
        .await
        .unwrap();
    let refuse = DuplicateMachineId::Refuse;
    let e1 = enrolled(
        store
            .enroll(&token, enrollment("m1", "cred-1"), now, refuse)
            .await
            .unwrap(),
    );
    assert_eq!(
        (e1.project_id.as_str(), e1.re_enrolled),
        (p.id.as_str(), false)
    );
    let id = store
        .agent_server_id("cred-1")
        .await
        .unwrap()
        .expect("the agent's server");
    assert_eq!(id, e1.server_id);
    let s = store.server(&p.id, &id).await.unwrap().expect("listed");
    assert_eq!(
        (s.name.as_str(), s.hostname.as_deref()),
        ("host-m1", Some("host-m1"))
    );
    assert_eq!(s.agent_public_key.as_deref(), Some(&[9u8; 32][..]));
    assert_eq!(s.status, ServerStatus::Active);
    let e2 = enrolled(
        store
            .enroll(&token, enrollment("m2", "cred-2"), now, refuse)
            .await
            .unwrap(),
    );
    assert_ne!(e2.server_id, e1.server_id);
    assert!(
        matches!(
            store
                .enroll(&token, enrollment("m3", "cred-3"), now, refuse)
                .await
                .unwrap(),
            EnrollResult::BadToken
        ),
        "used up"
    );
    assert!(store.agent_server_id("cred-3").await.unwrap().is_none());
    assert!(matches!(
        store
            .enroll("unknown", enrollment("m3", "cred-3"), now, refuse)
            .await
            .unwrap(),
        EnrollResult::BadToken
    ));
    let old = uid();
    store
        .create_enroll_token(&p.id, &old, now - Duration::seconds(1), 5)
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .enroll(&old, enrollment("m3", "cred-3"), now, refuse)
                .await
                .unwrap(),
            EnrollResult::BadToken
        ),
        "expired"
    );
}

pub async fn duplicate_machine_ids(store: &dyn Store) {
    let p = project(store).await;
    let now = t0();
    let token = uid();
    store
        .create_enroll_token(&p.id, &token, now + Duration::seconds(60), 3)
        .await
        .unwrap();
    let first = enrolled(
        store
            .enroll(
                &token,
                enrollment("m1", "c1"),
                now,
                DuplicateMachineId::Refuse,
            )
            .await
            .unwrap(),
    );
    // Refused: nothing is written, the token keeps its use.
    match store
        .enroll(
            &token,
            enrollment("m1", "c2"),
            now,
            DuplicateMachineId::Refuse,
        )
        .await
        .unwrap()
    {
        EnrollResult::DuplicateMachine { server_id } => assert_eq!(server_id, first.server_id),
        other => panic!("not refused: {other:?}"),
    }
    assert!(store.agent_server_id("c2").await.unwrap().is_none());
    // Allowed: a clone becomes a new server.
    let clone = enrolled(
        store
            .enroll(
                &token,
                enrollment("m1", "c3"),
                now,
                DuplicateMachineId::NewServer,
            )
            .await
            .unwrap(),
    );
    assert_ne!(clone.server_id, first.server_id);
    assert!(!clone.re_enrolled);
    assert_eq!(
        store.agent_server_id("c1").await.unwrap(),
        Some(first.server_id.clone())
    );
    enrolled(
        store
            .enroll(
                &token,
                enrollment("m2", "c4"),
                now,
                DuplicateMachineId::Refuse,
            )
            .await
            .unwrap(),
    );
    assert!(
        matches!(
            store
                .enroll(
                    &token,
                    enrollment("m3", "c5"),
                    now,
                    DuplicateMachineId::Refuse
                )
                .await
                .unwrap(),
            EnrollResult::BadToken
        ),
        "three uses, the refused one not counted"
    );
}

pub async fn rekey_tokens_and_challenges(store: &dyn Store) {
    let p = project(store).await;
    let now = t0();
    let token = uid();
    store
        .create_enroll_token(&p.id, &token, now + Duration::seconds(60), 1)
        .await
        .unwrap();
    let e = enrolled(
        store
            .enroll(
                &token,
                enrollment("m1", "old-cred"),
                now,
                DuplicateMachineId::Refuse,
            )
            .await
            .unwrap(),
    );
    let id = store.agent_server_id("old-cred").await.unwrap().unwrap();
    let s = store.server(&p.id, &id).await.unwrap().unwrap();
    let reset = new_reset(&p.id, &[&s], now);
    store.create_reset(reset.clone()).await.unwrap();

    // A re-key token: one use, for this one server; open resets fail.
    assert!(
        store
            .create_rekey_token("nope", &uid(), now + Duration::seconds(60))
            .await
            .unwrap()
            .is_none()
    );
    let rk = uid();
    assert_eq!(
        store
            .create_rekey_token(&e.server_id, &rk, now + Duration::seconds(60))
            .await
            .unwrap(),
        Some(p.id.clone())
    );
    let mut again = enrollment("m1", "new-cred");
    again.public_key = vec![3; 32];
    let r = enrolled(
        store
            .enroll(&rk, again, now, DuplicateMachineId::Refuse)
            .await
            .unwrap(),
    );
    assert_eq!(
        r,
        Enrolled {
            server_id: e.server_id.clone(),
            project_id: p.id.clone(),
            re_enrolled: true
        }
    );
    assert!(store.agent_server_id("old-cred").await.unwrap().is_none());
    assert_eq!(
        store.agent_server_id("new-cred").await.unwrap(),
        Some(e.server_id.clone())
    );
    let s = store.server(&p.id, &e.server_id).await.unwrap().unwrap();
    assert_eq!(
        (s.id.as_str(), s.agent_public_key.as_deref()),
        (e.server_id.as_str(), Some(&[3u8; 32][..]))
    );
    let t = target(store, &p.id, &reset.request_id, &e.server_id).await;
    assert_eq!(
        (t.state, t.reason.as_deref()),
        (ResetState::Failed, Some(reasons::REKEYED))
    );
    assert!(store.take_work(&e.server_id, now).await.unwrap().is_none());
    assert!(
        matches!(
            store
                .enroll(&rk, enrollment("m1", "x"), now, DuplicateMachineId::Refuse)
                .await
                .unwrap(),
            EnrollResult::BadToken
        ),
        "one use"
    );

    // Challenges: taken once, and only before they expire.
    let cid = uid();
    store
        .create_rekey_challenge(
            &cid,
            &e.server_id,
            "answer-hash",
            now + Duration::seconds(60),
        )
        .await
        .unwrap();
    assert_eq!(
        store.take_rekey_challenge(&cid, now).await.unwrap(),
        Some((e.server_id.clone(), "answer-hash".to_owned()))
    );
    assert!(
        store
            .take_rekey_challenge(&cid, now)
            .await
            .unwrap()
            .is_none(),
        "taken once"
    );
    let old = uid();
    store
        .create_rekey_challenge(&old, &e.server_id, "h", now + Duration::seconds(1))
        .await
        .unwrap();
    assert!(
        store
            .take_rekey_challenge(&old, now + Duration::seconds(2))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );

    // Re-key on proof of the old key.
    let r = store
        .rekey(&e.server_id, enrollment("m1", "third-cred"), now)
        .await
        .unwrap();
    assert_eq!(r.map(|r| r.re_enrolled), Some(true));
    assert_eq!(
        store.agent_server_id("third-cred").await.unwrap(),
        Some(e.server_id.clone())
    );
    assert!(store.agent_server_id("new-cred").await.unwrap().is_none());
    assert!(
        store
            .rekey("nope", enrollment("m9", "c9"), now)
            .await
            .unwrap()
            .is_none()
    );
}
