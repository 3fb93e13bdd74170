//! The escrow conformance suite: checks written against [`EscrowStore`]
//! (and [`Store`] to set the scene), so every backend runs the same ones. A
//! backend's tests call [`crate::escrow_conformance_tests!`] with a
//! constructor.

use chrono::{DateTime, Duration, Utc};
use ecs_api::ResetState;
use ecs_policy::OsType;

use super::escrow::*;
use super::*;

/// One `#[tokio::test]` per check; `$make` returns `(guard, store)`.
#[macro_export]
macro_rules! escrow_conformance_tests {
    ($make:path) => {
        $crate::escrow_conformance_tests!(@each $make;
            recipients_are_added_once_listed_and_removed,
            versions_are_numbered_per_server_and_show_their_reset_state,
            retention_keeps_the_newest_and_the_applied_version,
            discarded_versions_are_gone,
            retrievals_wait_for_the_next_version,
            rotation_policies_are_named_listed_deleted_and_claimed_once
        );
    };
    (@each $make:path; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_guard, store)) = $crate::store::conformance::made($make()) else {
                    return; // this backend is skipped here
                };
                $crate::store::escrow_conformance::$name(&store).await;
            }
        )+
    };
}

/// What the checks need: both sides of one backend.
pub trait Both: Store + EscrowStore {}
impl<T: Store + EscrowStore> Both for T {}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now")
}

async fn project(store: &dyn Both) -> Project {
    store
        .create_project(&format!("p-{}", uid()))
        .await
        .expect("project")
}

async fn server(store: &dyn Both, project: &str) -> Server {
    store
        .register_server(NewServer {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.to_owned(),
            name: format!("s-{}", uid()),
            os_type: OsType::Linux,
            agent_public_key: Some(vec![7; 32]),
        })
        .await
        .expect("register")
}

fn audit(project: &str) -> AuditEntry {
    AuditEntry {
        at: Utc::now(),
        request_id: uid(),
        project_id: project.to_owned(),
        actor: "conformance".into(),
        action: "batch-reset-password".into(),
        servers: vec![],
        dry_run: false,
        outcome: "accepted".into(),
        source: "127.0.0.1".into(),
        user_id: None,
        user_name: None,
        error_code: None,
        http_status: None,
    }
}

/// Escrows a version for `s` and stores its reset; returns the request id.
async fn rotate(store: &dyn Both, s: &Server, at: DateTime<Utc>, keep: usize) -> String {
    let request_id = uid();
    store
        .add_versions(
            vec![NewVersion {
                server_id: s.id.clone(),
                project_id: s.project_id.clone(),
                request_id: request_id.clone(),
                created: at,
                blob: format!("age-{request_id}").into_bytes(),
            }],
            keep,
        )
        .await
        .unwrap();
    store
        .create_reset(NewReset {
            request_id: request_id.clone(),
            project_id: s.project_id.clone(),
            apply_now: false,
            created: at,
            targets: vec![(s.id.clone(), vec![1, 2, 3])],
            audit: audit(&s.project_id),
        })
        .await
        .unwrap();
    request_id
}

async fn apply(store: &dyn Both, s: &Server, request_id: &str, at: DateTime<Utc>) {
    let work = store.take_work(&s.id, at).await.unwrap().expect("work");
    assert_eq!(work.request_id, request_id);
    assert!(store.ack(&s.id, request_id, true, None, at).await.unwrap());
}

pub async fn recipients_are_added_once_listed_and_removed(store: &dyn Both) {
    let (p, q) = (project(store).await, project(store).await);
    let now = t0();
    let r = |project: &str, id: &str, key: &str| Recipient {
        id: id.into(),
        project_id: project.into(),
        name: format!("name-{id}"),
        recipient: key.into(),
        created: now,
    };
    assert!(store.add_recipient(r(&p.id, "a", "age1a")).await.unwrap());
    assert!(store.add_recipient(r(&p.id, "b", "age1b")).await.unwrap());
    // The same key twice in one project: once.
    assert!(!store.add_recipient(r(&p.id, "c", "age1a")).await.unwrap());
    // Another project may register it too.
    assert!(store.add_recipient(r(&q.id, "a", "age1a")).await.unwrap());
    let listed = store.recipients(&p.id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| r.recipient.as_str())
            .collect::<Vec<_>>(),
        ["age1a", "age1b"]
    );
    assert_eq!(listed[0], r(&p.id, "a", "age1a"));
    assert!(store.remove_recipient(&p.id, "a").await.unwrap());
    assert!(!store.remove_recipient(&p.id, "a").await.unwrap());
    assert_eq!(store.recipients(&p.id).await.unwrap().len(), 1);
    assert_eq!(store.recipients(&q.id).await.unwrap().len(), 1);
}

pub async fn versions_are_numbered_per_server_and_show_their_reset_state(store: &dyn Both) {
    let p = project(store).await;
    let (a, b) = (server(store, &p.id).await, server(store, &p.id).await);
    let now = t0();
    let r1 = rotate(store, &a, now, 10).await;
    apply(store, &a, &r1, now).await;
    let r2 = rotate(store, &a, now + Duration::seconds(1), 10).await;
    let rb = rotate(store, &b, now, 10).await;
    let va = store.versions(&a.id).await.unwrap();
    assert_eq!(
        va.iter()
            .map(|v| (v.version, v.request_id.as_str(), v.state))
            .collect::<Vec<_>>(),
        [
            (2, r2.as_str(), Some(ResetState::Pending)),
            (1, r1.as_str(), Some(ResetState::Applied)),
        ]
    );
    assert_eq!(va[0].blob, format!("age-{r2}").into_bytes());
    assert_eq!(va[1].created, now);
    let vb = store.versions(&b.id).await.unwrap();
    assert_eq!((vb[0].version, vb[0].request_id.as_str()), (1, rb.as_str()));
    let newest = store.newest_versions(&p.id).await.unwrap();
    let mut got: Vec<(String, i64)> = newest
        .iter()
        .map(|v| (v.server_id.clone(), v.version))
        .collect();
    got.sort();
    let mut want = vec![(a.id.clone(), 2), (b.id.clone(), 1)];
    want.sort();
    assert_eq!(got, want);
    assert!(store.versions("no-such-server").await.unwrap().is_empty());
}

pub async fn retention_keeps_the_newest_and_the_applied_version(store: &dyn Both) {
    let p = project(store).await;
    let a = server(store, &p.id).await;
    let now = t0();
    let first = rotate(store, &a, now, 3).await;
    apply(store, &a, &first, now).await;
    // Four more that the (offline) server never applies.
    for i in 1..=4 {
        rotate(store, &a, now + Duration::seconds(i), 3).await;
    }
    let kept: Vec<i64> = store
        .versions(&a.id)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    // The newest three, and version 1: what the server runs.
    assert_eq!(kept, [5, 4, 3, 1]);
}

pub async fn discarded_versions_are_gone(store: &dyn Both) {
    let p = project(store).await;
    let a = server(store, &p.id).await;
    let request_id = uid();
    store
        .add_versions(
            vec![NewVersion {
                server_id: a.id.clone(),
                project_id: p.id.clone(),
                request_id: request_id.clone(),
                created: t0(),
                blob: b"x".to_vec(),
            }],
            10,
        )
        .await
        .unwrap();
    let v = store.versions(&a.id).await.unwrap();
    assert_eq!(v.len(), 1);
    // No reset was stored for it: no state.
    assert_eq!(v[0].state, None);
    store.discard_versions(&request_id).await.unwrap();
    assert!(store.versions(&a.id).await.unwrap().is_empty());
}

pub async fn retrievals_wait_for_the_next_version(store: &dyn Both) {
    let p = project(store).await;
    let (a, b) = (server(store, &p.id).await, server(store, &p.id).await);
    let now = t0();
    rotate(store, &a, now, 10).await;
    store.record_retrieval(&p.id, &a.id, now).await.unwrap();
    // A second retrieval does not move the first one's time.
    store
        .record_retrieval(&p.id, &a.id, now + Duration::minutes(5))
        .await
        .unwrap();
    store.record_retrieval(&p.id, &b.id, now).await.unwrap();
    let mine = |all: Vec<PendingRetrieval>| {
        all.into_iter()
            .filter(|(project, _, _)| *project == p.id)
            .map(|(_, s, t)| (s, t))
            .collect::<Vec<_>>()
    };
    let pending = mine(store.pending_retrievals().await.unwrap());
    assert_eq!(pending.len(), 2);
    assert!(pending.contains(&(a.id.clone(), now)));
    rotate(store, &a, now + Duration::minutes(10), 10).await;
    assert_eq!(
        mine(store.pending_retrievals().await.unwrap()),
        [(b.id.clone(), now)]
    );
}

pub async fn rotation_policies_are_named_listed_deleted_and_claimed_once(store: &dyn Both) {
    let (p, q) = (project(store).await, project(store).await);
    let now = t0();
    let policy = |project: &str, name: &str| RotationPolicy {
        id: uid(),
        project_id: project.into(),
        name: name.into(),
        spec: r#"{"schedule":{"every_days":1}}"#.into(),
        created: now,
        last_run: None,
    };
    let daily = policy(&p.id, "daily");
    assert!(store.add_rotation_policy(daily.clone()).await.unwrap());
    assert!(
        !store
            .add_rotation_policy(policy(&p.id, "daily"))
            .await
            .unwrap()
    );
    assert!(
        store
            .add_rotation_policy(policy(&q.id, "daily"))
            .await
            .unwrap()
    );
    let weekly = RotationPolicy {
        created: now + Duration::seconds(1),
        ..policy(&p.id, "weekly")
    };
    assert!(store.add_rotation_policy(weekly).await.unwrap());
    assert_eq!(
        store.rotation_policies(Some(&p.id)).await.unwrap()[0],
        daily
    );
    assert!(store.rotation_policies(None).await.unwrap().len() >= 3);

    // Two replicas that saw the same last run: one claims it.
    assert!(store.claim_rotation(&daily.id, None, now).await.unwrap());
    assert!(!store.claim_rotation(&daily.id, None, now).await.unwrap());
    let later = now + Duration::minutes(1);
    assert!(!store.claim_rotation(&daily.id, None, later).await.unwrap());
    assert!(
        store
            .claim_rotation(&daily.id, Some(now), later)
            .await
            .unwrap()
    );
    assert_eq!(
        store.rotation_policies(Some(&p.id)).await.unwrap()[0].last_run,
        Some(later)
    );
    assert!(!store.claim_rotation("no-such", None, now).await.unwrap());

    assert!(store.delete_rotation_policy(&p.id, "weekly").await.unwrap());
    assert!(
        store
            .delete_rotation_policy(&p.id, &daily.id)
            .await
            .unwrap()
    );
    assert!(!store.delete_rotation_policy(&p.id, "daily").await.unwrap());
    assert_eq!(store.rotation_policies(Some(&q.id)).await.unwrap().len(), 1);
}
