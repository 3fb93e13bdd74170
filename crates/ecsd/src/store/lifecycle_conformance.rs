//! The lifecycle conformance suite: checks written against
//! [`LifecycleStore`] (and [`Store`] to set the scene), so every backend
//! runs the same ones. A backend's tests call
//! [`crate::lifecycle_conformance_tests!`] with a constructor.

use chrono::{DateTime, Duration, Utc};
use ecs_policy::OsType;

use super::lifecycle::*;
use super::*;

/// One `#[tokio::test]` per check; `$make` returns `(guard, store)`.
#[macro_export]
macro_rules! lifecycle_conformance_tests {
    ($make:path) => {
        $crate::lifecycle_conformance_tests!(@each $make;
            access_keys_list_disable_enable_delete,
            lockout_counts_locks_and_unlocks,
            agents_are_revoked_and_servers_deregistered,
            enroll_tokens_are_listed_by_id_and_revoked,
            reseal_all_is_all_or_nothing,
            audit_filters_and_pages,
            audit_is_pruned_in_batches,
            finished_old_resets_are_pruned_in_batches,
            finished_old_jobs_are_pruned_in_batches
        );
    };
    (@each $make:path; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_guard, store)) = $crate::store::conformance::made($make()) else {
                    return; // this backend is skipped here
                };
                $crate::store::lifecycle_conformance::$name(&store).await;
            }
        )+
    };
}

/// What the checks need: both sides of one backend.
pub trait Both: Store + LifecycleStore {}
impl<T: Store + LifecycleStore> Both for T {}

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

async fn key(store: &dyn Both, project: &str) -> String {
    let ak = uid()[..20].to_uppercase();
    store
        .create_access_key(AccessKey {
            ak: ak.clone(),
            project_id: project.to_owned(),
            sk_sealed: vec![1, 2, 3],
            role: Role::Admin,
        })
        .await
        .unwrap();
    ak
}

pub async fn access_keys_list_disable_enable_delete(store: &dyn Both) {
    let (p, q) = (project(store).await, project(store).await);
    let a = key(store, &p.id).await;
    let b = key(store, &p.id).await;
    let c = key(store, &q.id).await;
    let listed: Vec<String> = store
        .list_access_keys(Some(&p.id))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.ak)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&a) && listed.contains(&b));
    assert_eq!(store.list_access_keys(None).await.unwrap().len(), 3);
    let info = &store.list_access_keys(Some(&q.id)).await.unwrap()[0];
    assert_eq!(
        (info.ak.as_str(), info.enabled, info.role, info.failures),
        (c.as_str(), true, Role::Admin, 0)
    );

    assert!(store.set_access_key_enabled(&a, false).await.unwrap());
    assert!(!store.key_gate(&a).await.unwrap().unwrap().enabled);
    assert!(store.key_gate(&b).await.unwrap().unwrap().enabled);
    assert!(store.set_access_key_enabled(&a, true).await.unwrap());
    assert!(store.key_gate(&a).await.unwrap().unwrap().enabled);
    assert!(
        !store
            .set_access_key_enabled("NOSUCHKEY", false)
            .await
            .unwrap()
    );

    assert!(store.delete_access_key(&a).await.unwrap());
    assert!(store.access_key(&a).await.unwrap().is_none());
    assert!(store.key_gate(&a).await.unwrap().is_none());
    assert!(!store.delete_access_key(&a).await.unwrap());
    assert!(store.access_key(&b).await.unwrap().is_some());
}

pub async fn lockout_counts_locks_and_unlocks(store: &dyn Both) {
    let p = project(store).await;
    let a = key(store, &p.id).await;
    let policy = LockPolicy::default();
    let now = t0();
    for i in 1..=4 {
        assert_eq!(
            store.record_auth_failure(&a, now, policy).await.unwrap(),
            None
        );
        assert_eq!(store.key_gate(&a).await.unwrap().unwrap().failures, i);
    }
    // A success starts the count again.
    store.reset_auth_failures(&a).await.unwrap();
    assert_eq!(store.key_gate(&a).await.unwrap().unwrap().failures, 0);
    for _ in 1..=4 {
        assert_eq!(
            store.record_auth_failure(&a, now, policy).await.unwrap(),
            None
        );
    }
    let until = now + policy.lock;
    assert_eq!(
        store.record_auth_failure(&a, now, policy).await.unwrap(),
        Some(until)
    );
    let gate = store.key_gate(&a).await.unwrap().unwrap();
    assert!(gate.locked(now) && !gate.locked(until));
    // While locked, failures report the lock and do not extend it.
    let later = now + Duration::seconds(10);
    assert_eq!(
        store.record_auth_failure(&a, later, policy).await.unwrap(),
        Some(until)
    );
    assert!(store.unlock_access_key(&a).await.unwrap());
    let gate = store.key_gate(&a).await.unwrap().unwrap();
    assert_eq!((gate.locked_until, gate.failures), (None, 0));
    assert!(!store.unlock_access_key("NOSUCHKEY").await.unwrap());
    assert_eq!(
        store
            .record_auth_failure("NOSUCHKEY", now, policy)
            .await
            .unwrap(),
        None
    );
}

fn enrollment(machine: &str, cred: &str) -> Enrollment {
    Enrollment {
        machine_id: machine.into(),
        hostname: format!("host-{machine}"),
        os_type: OsType::Linux,
        public_key: vec![9; 32],
        agent_version: "1.0.0".into(),
        credential_hash: cred.into(),
    }
}

async fn enroll(store: &dyn Both, project: &str, machine: &str, cred: &str) -> String {
    let token = uid();
    let now = t0();
    store
        .create_enroll_token(project, &token, now + Duration::seconds(60), 1)
        .await
        .unwrap();
    match store
        .enroll(
            &token,
            enrollment(machine, cred),
            now,
            DuplicateMachineId::NewServer,
        )
        .await
        .unwrap()
    {
        EnrollResult::Enrolled(e) => e.server_id,
        other => panic!("not enrolled: {other:?}"),
    }
}

pub async fn agents_are_revoked_and_servers_deregistered(store: &dyn Both) {
    let p = project(store).await;
    let (c1, c2) = (uid(), uid());
    let s1 = enroll(store, &p.id, "m1", &c1).await;
    let s2 = enroll(store, &p.id, "m2", &c2).await;

    assert!(store.revoke_agent(&s1).await.unwrap());
    assert!(store.agent_server_id(&c1).await.unwrap().is_none());
    let kept = store
        .server(&p.id, &s1)
        .await
        .unwrap()
        .expect("still there");
    assert!(kept.agent_public_key.is_some());
    assert_eq!(store.agent_server_id(&c2).await.unwrap(), Some(s2.clone()));
    assert!(!store.revoke_agent("no-such-server").await.unwrap());

    // A server with open work, a re-key token and a challenge still goes.
    let now = t0();
    store
        .create_reset(NewReset {
            request_id: uid(),
            project_id: p.id.clone(),
            apply_now: false,
            created: now,
            targets: vec![(s2.clone(), vec![7; 40]), (s1.clone(), vec![8; 40])],
            audit: AuditEntry {
                at: now,
                request_id: uid(),
                project_id: p.id.clone(),
                actor: "conformance".into(),
                action: "batch-reset-password".into(),
                servers: vec![s2.clone(), s1.clone()],
                dry_run: false,
                outcome: "accepted".into(),
                source: "test".into(),
                user_id: None,
                user_name: None,
                error_code: None,
                http_status: None,
            },
        })
        .await
        .unwrap();
    store
        .create_rekey_token(&s2, &uid(), now + Duration::seconds(60))
        .await
        .unwrap();
    store
        .create_rekey_challenge(&uid(), &s2, "answer", now + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(
        store.deregister_server(&s2).await.unwrap().as_deref(),
        Some(p.id.as_str())
    );
    assert!(store.server(&p.id, &s2).await.unwrap().is_none());
    assert!(store.agent_server_id(&c2).await.unwrap().is_none());
    let (listed, total) = store
        .list_servers(&p.id, ListFilter::default(), 100, 1, None)
        .await
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!(listed[0].id, s1);
    // The other server's work is untouched.
    assert!(store.take_work(&s1, now).await.unwrap().is_some());
    assert_eq!(store.deregister_server(&s2).await.unwrap(), None);
}

pub async fn enroll_tokens_are_listed_by_id_and_revoked(store: &dyn Both) {
    let (p, q) = (project(store).await, project(store).await);
    let now = t0();
    let soon = now + Duration::seconds(600);
    let h1 = format!("aaaa1111{}", &uid()[..24]);
    let h2 = format!("aaaa2222{}", &uid()[..24]);
    let h3 = format!("bbbb3333{}", &uid()[..24]);
    let expired = format!("cccc4444{}", &uid()[..24]);
    store
        .create_enroll_token(&p.id, &h1, soon, 3)
        .await
        .unwrap();
    store
        .create_enroll_token(&p.id, &h2, soon, 1)
        .await
        .unwrap();
    store
        .create_enroll_token(&q.id, &h3, soon, 1)
        .await
        .unwrap();
    store
        .create_enroll_token(&p.id, &expired, now - Duration::seconds(1), 1)
        .await
        .unwrap();
    let listed = store.list_enroll_tokens(Some(&p.id), now).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&&h1[..TOKEN_ID_LEN]) && ids.contains(&&h2[..TOKEN_ID_LEN]));
    let t1 = listed.iter().find(|t| h1.starts_with(&t.id)).unwrap();
    assert_eq!((t1.uses_left, t1.expires), (3, soon));
    assert_eq!(store.list_enroll_tokens(None, now).await.unwrap().len(), 3);

    assert_eq!(
        store.revoke_enroll_token("aaaa").await.unwrap(),
        Revoked::Ambiguous(2)
    );
    assert_eq!(
        store.revoke_enroll_token("AAAA1111").await.unwrap(),
        Revoked::One(h1[..TOKEN_ID_LEN].to_owned())
    );
    assert_eq!(
        store.revoke_enroll_token("aaaa1111").await.unwrap(),
        Revoked::None
    );
    assert_eq!(store.revoke_enroll_token("").await.unwrap(), Revoked::None);
    assert_eq!(
        store.revoke_enroll_token("a%").await.unwrap(),
        Revoked::None
    );
    // A revoked token no longer enrolls.
    let r = store
        .enroll(
            &h1,
            enrollment("m9", &uid()),
            now,
            DuplicateMachineId::NewServer,
        )
        .await
        .unwrap();
    assert!(matches!(r, EnrollResult::BadToken), "{r:?}");
    assert_eq!(
        store
            .list_enroll_tokens(Some(&p.id), now)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn reseal_all_is_all_or_nothing(store: &dyn Both) {
    let p = project(store).await;
    let a = key(store, &p.id).await;
    store
        .add_work_key(
            StoredWorkKey {
                public_key: "pub-1".into(),
                secret_sealed: vec![4, 5, 6],
                endorsed_by: None,
                signature: None,
                created: t0(),
            },
            true,
        )
        .await
        .unwrap();
    // A failure part-way changes nothing.
    let failing: Box<Reseal> = Box::new(|owner: &str, _: &[u8]| {
        if owner.starts_with("work-key:") {
            Err("no".into())
        } else {
            Ok(vec![0])
        }
    });
    assert!(store.reseal_all(failing).await.is_err());
    assert_eq!(
        store.access_key(&a).await.unwrap().unwrap().sk_sealed,
        vec![1, 2, 3]
    );
    assert_eq!(
        store.work_keys().await.unwrap()[0].secret_sealed,
        vec![4, 5, 6]
    );
    // Every sealed secret is given to the function with its owner.
    let ok: Box<Reseal> = Box::new(|owner: &str, blob: &[u8]| {
        let mut v = owner.as_bytes().to_vec();
        v.extend_from_slice(blob);
        Ok(v)
    });
    assert_eq!(store.reseal_all(ok).await.unwrap(), 2);
    let mut want = a.as_bytes().to_vec();
    want.extend_from_slice(&[1, 2, 3]);
    assert_eq!(store.access_key(&a).await.unwrap().unwrap().sk_sealed, want);
    assert_eq!(
        store.work_keys().await.unwrap()[0].secret_sealed,
        b"work-key:pub-1\x04\x05\x06".to_vec()
    );
}

fn entry(project: &str, at: DateTime<Utc>, action: &str, servers: &[&str]) -> AuditEntry {
    AuditEntry {
        at,
        request_id: uid(),
        project_id: project.to_owned(),
        actor: "AKAKAKAK".into(),
        action: action.into(),
        servers: servers.iter().map(|s| (*s).to_owned()).collect(),
        dry_run: false,
        outcome: "accepted".into(),
        source: "192.0.2.1:5000".into(),
        user_id: None,
        user_name: None,
        error_code: None,
        http_status: None,
    }
}

pub async fn audit_filters_and_pages(store: &dyn Both) {
    let (p, q) = (project(store).await, project(store).await);
    let now = t0();
    let t = |s: i64| now + Duration::seconds(s);
    store
        .record_audit(entry(&p.id, t(0), "a", &["s1", "s2"]))
        .await
        .unwrap();
    store
        .record_audit(AuditEntry {
            user_id: Some("u-1".into()),
            user_name: Some("alice".into()),
            error_code: Some("Ecs.0114".into()),
            http_status: Some(404),
            outcome: "rejected Ecs.0114".into(),
            ..entry(&p.id, t(10), "b", &["s2"])
        })
        .await
        .unwrap();
    store
        .record_audit(AuditEntry {
            error_code: Some("Common.0001".into()),
            http_status: Some(500),
            ..entry(&p.id, t(20), "a", &["s3"])
        })
        .await
        .unwrap();
    store
        .record_audit(entry(&q.id, t(5), "a", &["s1"]))
        .await
        .unwrap();
    let list = |q: AuditQuery| async move {
        store
            .list_audit(q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.entry.action, r.entry.at, r.rating))
            .collect::<Vec<_>>()
    };
    let base = AuditQuery {
        project_id: p.id.clone(),
        limit: 100,
        ..AuditQuery::default()
    };
    use TraceRating::*;
    assert_eq!(
        list(base.clone()).await,
        vec![
            ("a".into(), t(20), Incident),
            ("b".into(), t(10), Warning),
            ("a".into(), t(0), Normal)
        ]
    );
    let only = |q: AuditQuery| async { list(q).await.into_iter().map(|x| x.1).collect::<Vec<_>>() };
    assert_eq!(
        only(AuditQuery {
            from: Some(t(5)),
            to: Some(t(10)),
            ..base.clone()
        })
        .await,
        vec![t(10)]
    );
    assert_eq!(
        only(AuditQuery {
            user: Some("alice".into()),
            ..base.clone()
        })
        .await,
        vec![t(10)]
    );
    assert_eq!(
        only(AuditQuery {
            user: Some("u-1".into()),
            ..base.clone()
        })
        .await,
        vec![t(10)]
    );
    assert_eq!(
        only(AuditQuery {
            user: Some("AKAKAKAK".into()),
            ..base.clone()
        })
        .await
        .len(),
        3
    );
    assert_eq!(
        only(AuditQuery {
            action: Some("a".into()),
            ..base.clone()
        })
        .await,
        vec![t(20), t(0)]
    );
    assert_eq!(
        only(AuditQuery {
            resource_id: Some("s2".into()),
            ..base.clone()
        })
        .await,
        vec![t(10), t(0)]
    );
    assert_eq!(
        only(AuditQuery {
            ratings: Some(vec![Warning, Incident]),
            ..base.clone()
        })
        .await,
        vec![t(20), t(10)]
    );
    // Pages: two, then the rest after the last id seen.
    let first = store
        .list_audit(AuditQuery {
            limit: 2,
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let rest = store
        .list_audit(AuditQuery {
            before: Some(first[1].trace_id),
            limit: 2,
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].entry.at, t(0));
    assert_eq!(
        rest[0].entry.servers,
        vec!["s1".to_owned(), "s2".to_owned()]
    );
    let b = &first[1].entry;
    assert_eq!(
        (
            b.user_name.as_deref(),
            b.error_code.as_deref(),
            b.http_status
        ),
        (Some("alice"), Some("Ecs.0114"), Some(404))
    );
}

pub async fn audit_is_pruned_in_batches(store: &dyn Both) {
    let p = project(store).await;
    let now = t0();
    for i in 0..5 {
        store
            .record_audit(entry(
                &p.id,
                now - Duration::days(400) + Duration::seconds(i),
                "old",
                &[],
            ))
            .await
            .unwrap();
    }
    store
        .record_audit(entry(&p.id, now, "new", &[]))
        .await
        .unwrap();
    let cutoff = now - Duration::days(365);
    assert_eq!(store.prune_audit(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_audit(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_audit(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.prune_audit(cutoff, 2).await.unwrap(), 0);
    let left = store
        .list_audit(AuditQuery {
            project_id: p.id.clone(),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].entry.action, "new");
}

async fn server(store: &dyn Both, project: &str, name: &str) -> Server {
    store
        .register_server(NewServer {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.to_owned(),
            name: name.to_owned(),
            os_type: OsType::Linux,
            agent_public_key: Some(vec![7; 32]),
        })
        .await
        .expect("register")
}

/// Stores a reset of `servers` created at `created`; returns its id.
async fn reset(
    store: &dyn Both,
    project: &str,
    servers: &[&Server],
    created: DateTime<Utc>,
) -> String {
    let request_id = uid();
    store
        .create_reset(NewReset {
            request_id: request_id.clone(),
            project_id: project.to_owned(),
            apply_now: false,
            created,
            targets: servers
                .iter()
                .map(|s| (s.id.clone(), b"sealed".to_vec()))
                .collect(),
            audit: entry(project, created, "batch-reset-password", &[]),
        })
        .await
        .unwrap();
    request_id
}

async fn reset_exists(store: &dyn Both, project: &str, request_id: &str) -> bool {
    store
        .reset_outcome(project, request_id)
        .await
        .unwrap()
        .is_some()
}

pub async fn finished_old_resets_are_pruned_in_batches(store: &dyn Both) {
    let p = project(store).await;
    let (a, b, c) = (
        server(store, &p.id, "a").await,
        server(store, &p.id, "b").await,
        server(store, &p.id, "c").await,
    );
    let now = t0();
    let old = now - Duration::days(40);
    let cutoff = now - Duration::days(30);
    // Three old finished: two SUPERSEDED by the next, the last APPLIED.
    let mut finished = Vec::new();
    for i in 0..3 {
        finished.push(reset(store, &p.id, &[&a], old + Duration::seconds(i)).await);
    }
    assert!(
        store
            .ack(&a.id, &finished[2], true, None, now)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .server(&p.id, &a.id)
            .await
            .unwrap()
            .unwrap()
            .last_reset,
        Some((finished[2].clone(), ResetState::Applied))
    );
    // Old but open: one target FAILED, the other still PENDING.
    let open = reset(store, &p.id, &[&b, &c], old + Duration::seconds(3)).await;
    assert!(
        store
            .ack(&c.id, &open, false, Some("x"), now)
            .await
            .unwrap()
    );
    // Finished but young.
    let young = reset(store, &p.id, &[&c], now).await;
    assert!(store.ack(&c.id, &young, true, None, now).await.unwrap());

    assert_eq!(store.prune_resets(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_resets(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.prune_resets(cutoff, 2).await.unwrap(), 0);
    for id in &finished {
        assert!(!reset_exists(store, &p.id, id).await, "{id} kept");
    }
    assert!(reset_exists(store, &p.id, &open).await, "open work pruned");
    assert!(
        reset_exists(store, &p.id, &young).await,
        "young reset pruned"
    );
    // The server whose last reset is gone is still served, with none.
    let a_now = store.server(&p.id, &a.id).await.unwrap().expect("server a");
    assert_eq!(a_now.last_reset, None);
    let c_now = store.server(&p.id, &c.id).await.unwrap().expect("server c");
    assert_eq!(c_now.last_reset, Some((young.clone(), ResetState::Applied)));
    // It still takes new resets.
    let next = reset(store, &p.id, &[&a], now).await;
    assert!(reset_exists(store, &p.id, &next).await);

    // Once the open one finishes it goes too.
    assert!(store.ack(&b.id, &open, true, None, now).await.unwrap());
    assert_eq!(store.prune_resets(cutoff, 2).await.unwrap(), 1);
    assert!(!reset_exists(store, &p.id, &open).await);
    assert!(reset_exists(store, &p.id, &young).await);
}

/// Stores a job begun at `created`: one sub-job per (server, failed at
/// once?); returns its id and sub-job ids.
async fn job(
    store: &dyn Both,
    project: &str,
    subs: &[(&Server, bool)],
    created: DateTime<Utc>,
) -> String {
    let job_id = uuid::Uuid::new_v4().to_string();
    store
        .create_job(NewJob {
            job_id: job_id.clone(),
            project_id: project.to_owned(),
            kind: PowerKind::Reboot,
            hard: false,
            created,
            subs: subs
                .iter()
                .map(|(s, failed)| {
                    (
                        uuid::Uuid::new_v4().to_string(),
                        s.id.clone(),
                        failed.then(|| "offline".to_owned()),
                    )
                })
                .collect(),
            audit: entry(project, created, "reboot-servers", &[]),
        })
        .await
        .unwrap();
    job_id
}

async fn job_exists(store: &dyn Both, project: &str, job_id: &str) -> bool {
    store.job(project, job_id).await.unwrap().is_some()
}

pub async fn finished_old_jobs_are_pruned_in_batches(store: &dyn Both) {
    let p = project(store).await;
    let (a, b) = (
        server(store, &p.id, "a").await,
        server(store, &p.id, "b").await,
    );
    let now = t0();
    let old = now - Duration::days(40);
    let cutoff = now - Duration::days(30);
    let mut finished = Vec::new();
    for i in 0..3 {
        finished.push(
            job(
                store,
                &p.id,
                &[(&a, true), (&b, true)],
                old + Duration::seconds(i),
            )
            .await,
        );
    }
    // Old but open: b's sub-job failed at once, a's is still INIT.
    let open = job(
        store,
        &p.id,
        &[(&a, false), (&b, true)],
        old + Duration::seconds(3),
    )
    .await;
    let young = job(store, &p.id, &[(&b, true)], now).await;

    assert_eq!(store.prune_jobs(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_jobs(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.prune_jobs(cutoff, 2).await.unwrap(), 0);
    for id in &finished {
        assert!(!job_exists(store, &p.id, id).await, "{id} kept");
    }
    assert!(job_exists(store, &p.id, &open).await, "open work pruned");
    assert!(job_exists(store, &p.id, &young).await, "young job pruned");

    // Once its last sub-job fails (timed out) the old job goes too.
    assert_eq!(store.expire_sub_jobs(now, now).await.unwrap(), 1);
    assert_eq!(store.prune_jobs(cutoff, 2).await.unwrap(), 1);
    assert!(!job_exists(store, &p.id, &open).await);
    assert!(job_exists(store, &p.id, &young).await);
}
