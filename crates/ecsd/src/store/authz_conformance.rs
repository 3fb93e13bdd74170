//! The conformance suite of [`AuthzStore`]: checks written only against the
//! traits, so every backend runs them unchanged. A backend's tests call
//! [`crate::authz_store_conformance_tests!`] with a constructor of a fresh,
//! empty store.

use ecs_policy::OsType;

use super::authz::{AuthzStore, Grant, TagChange};
use super::*;
use crate::authz::SystemRole;
use crate::domain::{Entity, Error};

/// One `#[tokio::test]` per check; `$make` returns `(guard, store)`.
#[macro_export]
macro_rules! authz_store_conformance_tests {
    ($make:path) => {
        $crate::authz_store_conformance_tests!(@each $make;
            groups_members_and_names,
            policies_and_attachments,
            caller_grants_follow_groups_projects_and_key_bindings,
            every_change_bumps_the_version,
            server_tags_change_and_match_the_list_filters
        );
    };
    (@each $make:path; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_guard, store)) = $crate::store::conformance::made($make()) else {
                    return; // this backend is skipped here
                };
                $crate::store::authz_conformance::$name(&store).await;
            }
        )+
    };
}

const POLICY: &str = r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["ecs:*:*"]}]}"#;

async fn project<S: Store>(s: &S, name: &str) -> String {
    s.create_project(name).await.unwrap().id
}

pub async fn groups_members_and_names<S: Store + AuthzStore>(s: &S) {
    let g = s.create_group("d1", "ops", "operators").await.unwrap();
    assert_eq!((g.name.as_str(), g.domain_id.as_str()), ("ops", "d1"));
    assert!(matches!(
        s.create_group("d1", "ops", "").await,
        Err(Error::Conflict(_))
    ));
    // The same name in another domain is another group.
    let other = s.create_group("d2", "ops", "").await.unwrap();
    assert_ne!(other.id, g.id);
    assert_eq!(s.group(&g.id).await.unwrap(), Some(g.clone()));
    assert_eq!(s.group_by_name("d1", "ops").await.unwrap(), Some(g.clone()));
    assert_eq!(s.group_by_name("d1", "nope").await.unwrap(), None);
    assert_eq!(s.groups("d1").await.unwrap(), vec![g.clone()]);

    s.add_group_member(&g.id, "u1").await.unwrap();
    s.add_group_member(&g.id, "u1").await.unwrap(); // idempotent
    s.add_group_member(&g.id, "u2").await.unwrap();
    assert_eq!(s.group_members(&g.id).await.unwrap(), ["u1", "u2"]);
    assert!(matches!(
        s.add_group_member("missing", "u1").await,
        Err(Error::NotFound {
            entity: Entity::Group,
            ..
        })
    ));
    assert!(s.remove_group_member(&g.id, "u1").await.unwrap());
    assert!(!s.remove_group_member(&g.id, "u1").await.unwrap());
    assert_eq!(s.group_members(&g.id).await.unwrap(), ["u2"]);

    // Deleting a group takes its members and grants with it.
    let p = project(s, "groups").await;
    s.attach(&g.id, &p, &Grant::system(SystemRole::Admin))
        .await
        .unwrap();
    assert!(s.delete_group(&g.id).await.unwrap());
    assert!(!s.delete_group(&g.id).await.unwrap());
    assert_eq!(s.group(&g.id).await.unwrap(), None);
    assert!(s.group_members(&g.id).await.unwrap().is_empty());
    assert!(s.attachments(&g.id).await.unwrap().is_empty());
    assert_eq!(
        s.caller_grants(&p, "ak", Some("u2")).await.unwrap(),
        Some(vec![])
    );
}

pub async fn policies_and_attachments<S: Store + AuthzStore>(s: &S) {
    let p = project(s, "policies").await;
    let pol = s
        .create_policy("d", "all", "everything", POLICY)
        .await
        .unwrap();
    assert_eq!(pol.document, POLICY);
    assert!(matches!(
        s.create_policy("d", "all", "", POLICY).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.policy(&pol.id).await.unwrap(), Some(pol.clone()));
    assert_eq!(s.policies("d").await.unwrap(), vec![pol.clone()]);
    assert!(s.policies("other").await.unwrap().is_empty());
    let ids = vec![pol.id.clone(), "missing".to_owned()];
    assert_eq!(s.policies_by_ids(&ids).await.unwrap(), vec![pol.clone()]);

    let g = s.create_group("d", "g", "").await.unwrap();
    let custom = Grant::Policy(pol.id.clone());
    let role = Grant::system(SystemRole::Operator);
    s.attach(&g.id, &p, &custom).await.unwrap();
    s.attach(&g.id, &p, &custom).await.unwrap(); // idempotent
    s.attach(&g.id, &p, &role).await.unwrap();
    let mut expected = vec![(p.clone(), custom.clone()), (p.clone(), role.clone())];
    expected.sort_by_key(|(p, g)| (p.clone(), g.encode()));
    assert_eq!(s.attachments(&g.id).await.unwrap(), expected);
    for (bad, entity) in [
        (s.attach("missing", &p, &role).await, Entity::Group),
        (s.attach(&g.id, "missing", &role).await, Entity::Project),
        (
            s.attach(&g.id, &p, &Grant::Policy("missing".into())).await,
            Entity::Policy,
        ),
    ] {
        match bad {
            Err(Error::NotFound { entity: e, .. }) => assert_eq!(e, entity),
            other => panic!("{entity:?}: {other:?}"),
        }
    }
    assert!(s.detach(&g.id, &p, &role).await.unwrap());
    assert!(!s.detach(&g.id, &p, &role).await.unwrap());
    // Deleting a policy detaches it everywhere.
    assert!(s.delete_policy(&pol.id).await.unwrap());
    assert!(!s.delete_policy(&pol.id).await.unwrap());
    assert!(s.attachments(&g.id).await.unwrap().is_empty());
    assert_eq!(s.policy(&pol.id).await.unwrap(), None);
}

pub async fn caller_grants_follow_groups_projects_and_key_bindings<S: Store + AuthzStore>(s: &S) {
    let a = project(s, "a").await;
    let b = project(s, "b").await;
    let pol = s.create_policy("d", "p", "", POLICY).await.unwrap();
    let g1 = s.create_group("d", "g1", "").await.unwrap();
    let g2 = s.create_group("d", "g2", "").await.unwrap();
    s.add_group_member(&g1.id, "alice").await.unwrap();
    s.add_group_member(&g2.id, "alice").await.unwrap();
    s.add_group_member(&g2.id, "bob").await.unwrap();
    let custom = Grant::Policy(pol.id.clone());
    let ro = Grant::system(SystemRole::ReadOnly);
    s.attach(&g1.id, &a, &custom).await.unwrap();
    s.attach(&g2.id, &a, &custom).await.unwrap();
    s.attach(&g2.id, &a, &ro).await.unwrap();
    s.attach(&g2.id, &b, &Grant::system(SystemRole::Admin))
        .await
        .unwrap();
    let mut both = vec![custom.clone(), ro.clone()];
    both.sort();
    // Union over the user's groups, in this project only, each once, sorted.
    assert_eq!(
        s.caller_grants(&a, "k", Some("alice")).await.unwrap(),
        Some(both.clone())
    );
    assert_eq!(
        s.caller_grants(&b, "k", Some("alice")).await.unwrap(),
        Some(vec![Grant::system(SystemRole::Admin)])
    );
    assert_eq!(
        s.caller_grants(&a, "k", Some("carol")).await.unwrap(),
        Some(vec![])
    );
    // A key without a user: no grants at all (it keeps its role).
    for (ak, project) in [("AKBOUND", &a), ("AKPLAIN", &a)] {
        s.create_access_key(AccessKey {
            ak: ak.into(),
            project_id: project.clone(),
            sk_sealed: vec![1, 2, 3],
            role: Role::Admin,
        })
        .await
        .unwrap();
    }
    assert_eq!(s.caller_grants(&a, "AKPLAIN", None).await.unwrap(), None);
    s.bind_access_key_user("AKBOUND", "alice").await.unwrap();
    assert_eq!(
        s.caller_grants(&a, "AKBOUND", None).await.unwrap(),
        Some(both)
    );
    // Rebinding moves the key to another user.
    s.bind_access_key_user("AKBOUND", "bob").await.unwrap();
    let mut bobs = vec![custom, ro];
    bobs.sort();
    assert_eq!(
        s.caller_grants(&a, "AKBOUND", None).await.unwrap(),
        Some(bobs)
    );
    assert!(matches!(
        s.bind_access_key_user("NOSUCHKEY", "alice").await,
        Err(Error::Conflict(_))
    ));
}

pub async fn every_change_bumps_the_version<S: Store + AuthzStore>(s: &S) {
    let p = project(s, "version").await;
    s.create_access_key(AccessKey {
        ak: "AK1".into(),
        project_id: p.clone(),
        sk_sealed: vec![0],
        role: Role::Admin,
    })
    .await
    .unwrap();
    let mut last = s.authz_version("AK1").await.unwrap();
    assert_eq!(last.1, None);
    let mut bumped = async |what: &str| {
        let now = s.authz_version("AK1").await.unwrap();
        assert!(now.0 > last.0, "{what} did not bump the version");
        last = now;
        last.clone()
    };
    let g = s.create_group("d", "g", "").await.unwrap();
    bumped("create group").await;
    s.add_group_member(&g.id, "u").await.unwrap();
    bumped("add member").await;
    let pol = s.create_policy("d", "p", "", POLICY).await.unwrap();
    bumped("create policy").await;
    s.attach(&g.id, &p, &Grant::Policy(pol.id.clone()))
        .await
        .unwrap();
    bumped("attach").await;
    s.bind_access_key_user("AK1", "u").await.unwrap();
    assert_eq!(bumped("bind key").await.1.as_deref(), Some("u"));
    s.detach(&g.id, &p, &Grant::Policy(pol.id.clone()))
        .await
        .unwrap();
    bumped("detach").await;
    s.remove_group_member(&g.id, "u").await.unwrap();
    bumped("remove member").await;
    s.delete_policy(&pol.id).await.unwrap();
    bumped("delete policy").await;
    s.delete_group(&g.id).await.unwrap();
    bumped("delete group").await;
}

fn t(k: &str, v: Option<&str>) -> (String, Option<String>) {
    (k.into(), v.map(Into::into))
}

async fn list<S: Store>(s: &S, p: &str, tags: Option<&str>, not: Option<&str>) -> Vec<String> {
    let f = ListFilter {
        tags: tags.map(Into::into),
        not_tags: not.map(Into::into),
        ..Default::default()
    };
    let (servers, count) = s.list_servers(p, f, 100, 1, None).await.unwrap();
    assert_eq!(count as usize, servers.len());
    servers.into_iter().map(|s| s.name).collect()
}

pub async fn server_tags_change_and_match_the_list_filters<S: Store + AuthzStore>(s: &S) {
    let p = project(s, "tags").await;
    let other = project(s, "other").await;
    let mut ids = Vec::new();
    for name in ["staging-1", "prod-1"] {
        let srv = s
            .register_server(NewServer {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: p.clone(),
                name: name.into(),
                os_type: OsType::Linux,
                agent_public_key: None,
            })
            .await
            .unwrap();
        ids.push(srv.id);
    }
    assert_eq!(s.server_tags(&p, &ids[0]).await.unwrap(), Some(vec![]));
    assert_eq!(s.server_tags(&other, &ids[0]).await.unwrap(), None);
    assert_eq!(
        s.change_server_tags(
            &other,
            &ids[0],
            TagChange::Create(vec![t("env", Some("x"))])
        )
        .await
        .unwrap(),
        None
    );
    let after = s
        .change_server_tags(
            &p,
            &ids[0],
            TagChange::Create(vec![t("env", Some("staging")), t("team", None)]),
        )
        .await
        .unwrap();
    assert_eq!(after, Some(vec!["env=staging".into(), "team=".into()]));
    s.change_server_tags(
        &p,
        &ids[1],
        TagChange::Create(vec![t("env", Some("production"))]),
    )
    .await
    .unwrap();
    // What the tags API writes is what the server shows and the filters match.
    assert_eq!(
        s.server(&p, &ids[0]).await.unwrap().unwrap().tags,
        ["env=staging", "team="]
    );
    assert_eq!(list(s, &p, Some("env=staging"), None).await, ["staging-1"]);
    assert_eq!(list(s, &p, None, Some("env=staging")).await, ["prod-1"]);
    assert!(list(s, &p, Some("env=stag"), None).await.is_empty());
    // Delete by key, or by key and value.
    let after = s
        .change_server_tags(
            &p,
            &ids[0],
            TagChange::Delete(vec![t("env", Some("other"))]),
        )
        .await
        .unwrap();
    assert_eq!(after, Some(vec!["env=staging".into(), "team=".into()]));
    let after = s
        .change_server_tags(&p, &ids[0], TagChange::Delete(vec![t("env", None)]))
        .await
        .unwrap();
    assert_eq!(after, Some(vec!["team=".into()]));
    // At most ten tags: the change is refused whole.
    let many: Vec<_> = (0..10).map(|i| t(&format!("k{i}"), None)).collect();
    assert!(matches!(
        s.change_server_tags(&p, &ids[0], TagChange::Create(many))
            .await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        s.server_tags(&p, &ids[0]).await.unwrap(),
        Some(vec!["team=".into()])
    );
}
