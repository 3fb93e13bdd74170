//! Conformance checks of [`IdentityStore`], written against the traits
//! only (`Store` makes the projects), so every backend runs the same ones.

use chrono::{Duration, Utc};

use super::identity::*;
use super::{Store, StoreError};

/// One `#[tokio::test]` per check; `$make` returns `(guard, store)` where the
/// store implements both `Store` and `IdentityStore`.
#[macro_export]
macro_rules! identity_conformance_tests {
    ($make:path) => {
        $crate::identity_conformance_tests!(@each $make;
            domains_hold_projects,
            users_are_unique_per_domain_and_can_be_disabled,
            roles_are_per_project_and_replaced,
            tokens_are_found_by_hash_and_revoked,
            token_expiry_moves_until_revoked,
            deleting_a_user_removes_its_credentials,
            temporary_credentials_round_trip
        );
    };
    (@each $make:path; $($name:ident),+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some((_guard, store)) = $crate::store::conformance::made($make()) else {
                    return; // this backend is skipped here
                };
                $crate::store::identity_conformance::$name(&store, &store).await;
            }
        )+
    };
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn user(domain_id: &str, name: &str) -> User {
    User {
        id: uid(),
        domain_id: domain_id.to_owned(),
        name: name.to_owned(),
        password_hash: "$argon2id$fake".into(),
        enabled: true,
        created: Utc::now(),
    }
}

fn token(user_id: &str, project_id: &str, hash: &str) -> StoredToken {
    let now = Utc::now();
    StoredToken {
        id: uid()[..16].to_owned(),
        token_hash: hash.to_owned(),
        user_id: user_id.to_owned(),
        project_id: project_id.to_owned(),
        issued: now,
        expires: now + Duration::hours(24),
        revoked: false,
    }
}

pub async fn domains_hold_projects(store: &dyn Store, id: &dyn IdentityStore) {
    // A project made without a domain is in the default domain.
    let p = store.create_project("p1").await.unwrap();
    let d = id.project_domain(&p.id).await.unwrap().expect("a domain");
    assert_eq!(d.name, DEFAULT_DOMAIN);
    assert_eq!(
        id.project_in_domain(&d.id, "p1").await.unwrap().unwrap().id,
        p.id
    );
    // ensure_domain creates once, then finds.
    let acme = id.ensure_domain("acme").await.unwrap();
    assert_eq!(id.ensure_domain("acme").await.unwrap(), acme);
    assert_eq!(id.domain_by_name("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(id.domain(&acme.id).await.unwrap(), Some(acme.clone()));
    assert_eq!(id.domain_by_name("nope").await.unwrap(), None);
    let names = |ps: Vec<super::Project>| ps.into_iter().map(|p| p.name).collect::<Vec<_>>();
    store.create_project("p0").await.unwrap();
    assert_eq!(
        names(id.domain_projects(&d.id).await.unwrap()),
        ["p0", "p1"]
    );
    assert!(id.domain_projects(&acme.id).await.unwrap().is_empty());
    id.set_project_domain(&p.id, &acme.id).await.unwrap();
    assert_eq!(names(id.domain_projects(&acme.id).await.unwrap()), ["p1"]);
    assert_eq!(id.project_domain(&p.id).await.unwrap(), Some(acme.clone()));
    assert!(id.project_in_domain(&d.id, "p1").await.unwrap().is_none());
    assert!(
        id.project_in_domain(&acme.id, "p1")
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn users_are_unique_per_domain_and_can_be_disabled(
    _store: &dyn Store,
    id: &dyn IdentityStore,
) {
    let a = id.ensure_domain("a").await.unwrap();
    let b = id.ensure_domain("b").await.unwrap();
    let alice = user(&a.id, "alice");
    id.create_user(alice.clone()).await.unwrap();
    // The same name in another domain is another user.
    id.create_user(user(&b.id, "alice")).await.unwrap();
    let dup = id.create_user(user(&a.id, "alice")).await.unwrap_err();
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup:?}");

    let found = id.user_by_name(&a.id, "alice").await.unwrap().unwrap();
    assert_eq!(found.id, alice.id);
    assert_eq!(found.password_hash, alice.password_hash);
    assert!(found.enabled);
    assert_eq!(id.user(&alice.id).await.unwrap().unwrap().name, "alice");
    id.create_user(user(&a.id, "bob")).await.unwrap();
    let names: Vec<String> = id
        .list_users(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    assert!(id.set_user_enabled(&alice.id, false).await.unwrap());
    assert!(!id.user(&alice.id).await.unwrap().unwrap().enabled);
    assert!(id.set_user_enabled(&alice.id, true).await.unwrap());
    assert!(id.user(&alice.id).await.unwrap().unwrap().enabled);
    assert!(!id.set_user_enabled("nobody", false).await.unwrap());
}

pub async fn roles_are_per_project_and_replaced(store: &dyn Store, id: &dyn IdentityStore) {
    let p1 = store.create_project("r1").await.unwrap();
    let p2 = store.create_project("r2").await.unwrap();
    let d = id.project_domain(&p1.id).await.unwrap().unwrap();
    let u = user(&d.id, "carol");
    id.create_user(u.clone()).await.unwrap();
    assert_eq!(id.user_role(&u.id, &p1.id).await.unwrap(), None);
    id.assign_role(&u.id, &p1.id, UserRole::ReadOnly)
        .await
        .unwrap();
    assert_eq!(
        id.user_role(&u.id, &p1.id).await.unwrap(),
        Some(UserRole::ReadOnly)
    );
    assert_eq!(id.user_role(&u.id, &p2.id).await.unwrap(), None);
    id.assign_role(&u.id, &p1.id, UserRole::Operator)
        .await
        .unwrap();
    assert_eq!(
        id.user_role(&u.id, &p1.id).await.unwrap(),
        Some(UserRole::Operator)
    );
}

pub async fn tokens_are_found_by_hash_and_revoked(store: &dyn Store, id: &dyn IdentityStore) {
    let p = store.create_project("t1").await.unwrap();
    let d = id.project_domain(&p.id).await.unwrap().unwrap();
    let u = user(&d.id, "dave");
    id.create_user(u.clone()).await.unwrap();
    let t = token(&u.id, &p.id, "hash-1");
    id.create_token(t.clone()).await.unwrap();
    let found = id.token_by_hash("hash-1").await.unwrap().unwrap();
    assert_eq!(found.id, t.id);
    assert_eq!(found.user_id, u.id);
    assert_eq!(found.project_id, p.id);
    assert!(!found.revoked);
    assert!((found.expires - t.expires).num_milliseconds().abs() <= 1);
    assert!(id.token_by_hash("hash-2").await.unwrap().is_none());
    assert!(id.revoke_token("hash-1").await.unwrap());
    assert!(id.token_by_hash("hash-1").await.unwrap().unwrap().revoked);
    assert!(!id.revoke_token("hash-2").await.unwrap());
}

pub async fn token_expiry_moves_until_revoked(store: &dyn Store, id: &dyn IdentityStore) {
    let p = store.create_project("slide").await.unwrap();
    let d = id.project_domain(&p.id).await.unwrap().unwrap();
    let u = user(&d.id, "sam");
    id.create_user(u.clone()).await.unwrap();
    let t = token(&u.id, &p.id, "hash-s");
    id.create_token(t.clone()).await.unwrap();
    let later = t.expires + Duration::seconds(600);
    assert!(id.extend_token("hash-s", later).await.unwrap());
    let found = id.token_by_hash("hash-s").await.unwrap().unwrap();
    assert!((found.expires - later).num_milliseconds().abs() <= 1);
    assert!(!id.extend_token("hash-unknown", later).await.unwrap());
    assert!(id.revoke_token("hash-s").await.unwrap());
    let again = later + Duration::seconds(600);
    assert!(!id.extend_token("hash-s", again).await.unwrap());
    let found = id.token_by_hash("hash-s").await.unwrap().unwrap();
    assert!((found.expires - later).num_milliseconds().abs() <= 1);
}

pub async fn deleting_a_user_removes_its_credentials(store: &dyn Store, id: &dyn IdentityStore) {
    let p = store.create_project("del").await.unwrap();
    let d = id.project_domain(&p.id).await.unwrap().unwrap();
    let u = user(&d.id, "erin");
    id.create_user(u.clone()).await.unwrap();
    id.assign_role(&u.id, &p.id, UserRole::Admin).await.unwrap();
    id.create_token(token(&u.id, &p.id, "h-erin"))
        .await
        .unwrap();
    id.create_temporary_credential(TemporaryCredential {
        ak: "TMPAK1".into(),
        sk_sealed: vec![1, 2, 3],
        security_token_hash: "st".into(),
        user_id: u.id.clone(),
        project_id: p.id.clone(),
        expires: Utc::now() + Duration::minutes(15),
    })
    .await
    .unwrap();
    assert!(id.delete_user(&u.id).await.unwrap());
    assert!(id.user(&u.id).await.unwrap().is_none());
    assert!(id.token_by_hash("h-erin").await.unwrap().is_none());
    assert!(id.temporary_credential("TMPAK1").await.unwrap().is_none());
    assert_eq!(id.user_role(&u.id, &p.id).await.unwrap(), None);
    assert!(!id.delete_user(&u.id).await.unwrap());
    // The name is free again.
    id.create_user(user(&d.id, "erin")).await.unwrap();
}

pub async fn temporary_credentials_round_trip(store: &dyn Store, id: &dyn IdentityStore) {
    let p = store.create_project("tmp").await.unwrap();
    let d = id.project_domain(&p.id).await.unwrap().unwrap();
    let u = user(&d.id, "frank");
    id.create_user(u.clone()).await.unwrap();
    let c = TemporaryCredential {
        ak: "TMPAK2".into(),
        sk_sealed: vec![9; 40],
        security_token_hash: "sthash".into(),
        user_id: u.id.clone(),
        project_id: p.id.clone(),
        expires: Utc::now() + Duration::minutes(15),
    };
    id.create_temporary_credential(c.clone()).await.unwrap();
    let got = id.temporary_credential("TMPAK2").await.unwrap().unwrap();
    assert_eq!(got.sk_sealed, c.sk_sealed);
    assert_eq!(got.security_token_hash, "sthash");
    assert_eq!(got.user_id, u.id);
    assert_eq!(got.project_id, p.id);
    assert!(id.temporary_credential("TMPAK3").await.unwrap().is_none());
}
