//! Remote IAM administration (issue #10, "ecsctl: users/groups/policies/keys
//! commands for admins") against a real ecsd: users, groups, custom
//! policies, grants and access keys through the API, their refusals, and
//! their effect on logins and keys at once.

mod common;

use common::*;
use ecs_api::iam_admin::{
    CreateCredentialResponse, CredentialResponse, GroupResponse, ListCredentialsResponse,
    ListRolesResponse, ListUsersResponse, RoleResponse, UserResponse,
};
use ecs_client::{ProjectScope, Trust};
use ecsd::store::identity::UserRole;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

const PW: &str = "Correct-Horse-9";

const STAGING_RESETS: &str = r#"{"Version": "1.1", "Statement": [{"Effect": "Allow",
    "Action": ["ecs:cloudServers:resetServerPwd"],
    "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]}}}]}"#;

async fn login(t: &TestServer, name: &str) -> Result<SecretString, ecs_client::Error> {
    ecs_client::login(
        &t.base,
        Trust::System,
        "default",
        name,
        &secret(PW),
        ProjectScope::Id(t.project.clone()),
    )
    .await
    .map(|l| l.token)
}

/// A call with an IAM user's token (checked against the document).
async fn as_token(
    t: &TestServer,
    token: &SecretString,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Resp {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), t.url(path))
        .header("x-auth-token", token.expose_secret());
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    t.raw(req).await
}

fn list_path(t: &TestServer) -> String {
    format!("/v1/{}/cloudservers/detail", t.project)
}

#[tokio::test]
async fn an_admin_manages_users_groups_policies_grants_and_keys_remotely() {
    let t = TestServer::start().await;
    // Users: created without a role, refused with a field path, never echoing the password.
    // (Logging in needs a role in the project: readonly, the groups add the rest.)
    let body = json!({"user": {"name": "alice", "password": PW, "role": "readonly"}}).to_string();
    let r = t.call("POST", "/v3.0/OS-USER/users", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains(PW));
    let alice = r.json::<UserResponse>().user;
    assert!(alice.enabled);
    let r = t.call("POST", "/v3.0/OS-USER/users", Some(&body)).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = t
        .call(
            "POST",
            "/v3.0/OS-USER/users",
            Some(&json!({"user": {"name": "bob", "password": "short-1"}}).to_string()),
        )
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(e.error.message.contains("user.password"), "{}", r.text);
    assert!(!r.text.contains("short-1"));
    let r = t.call("GET", "/v3/users", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json::<ListUsersResponse>()
            .users
            .iter()
            .any(|u| u.id == alice.id)
    );

    // Policies: a malformed one names the field.
    let bad = json!({"role": {"display_name": "bad", "type": "AX", "policy":
        {"Version": "1.1", "Statement": [{"Effect": "Perhaps", "Action": ["ecs:*:*"]}]}}});
    let r = t
        .call("POST", "/v3.0/OS-ROLE/roles", Some(&bad.to_string()))
        .await;
    let e = assert_ecs(&r, 400, "Ecs.0005");
    assert!(
        e.error.message.contains("role.policy.Statement[0].Effect"),
        "{}",
        r.text
    );
    let good = json!({"role": {"display_name": "staging-resets", "type": "AX",
        "policy": serde_json::from_str::<serde_json::Value>(STAGING_RESETS).unwrap()}});
    let r = t
        .call("POST", "/v3.0/OS-ROLE/roles", Some(&good.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let policy = r.json::<RoleResponse>().role;
    let r = t.call("GET", "/v3.0/OS-ROLE/roles", None).await;
    let roles = r.json::<ListRolesResponse>().roles;
    assert!(
        roles
            .iter()
            .any(|r| r.id == "admin" && r.role_type == "system")
    );
    assert!(
        roles
            .iter()
            .any(|r| r.id == policy.id && r.display_name == "staging-resets")
    );

    // Groups and grants.
    let r = t
        .call(
            "POST",
            "/v3/groups",
            Some(r#"{"group": {"name": "staging-ops"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let group = r.json::<GroupResponse>().group;
    let member = format!("/v3/groups/{}/users/{}", group.id, alice.id);
    assert_eq!(t.call("PUT", &member, None).await.status, 204);
    let grant = |role: &str| {
        format!(
            "/v3/projects/{}/groups/{}/roles/{role}",
            t.project, group.id
        )
    };
    assert_eq!(t.call("PUT", &grant(&policy.id), None).await.status, 204);
    assert_eq!(t.call("PUT", &grant("readonly"), None).await.status, 204);
    let r = t.call("PUT", &grant("no-such-role"), None).await;
    assert_ecs(&r, 404, "Ecs.0005");
    let r = t
        .call(
            "PUT",
            &format!("/v3/projects/other/groups/{}/roles/admin", group.id),
            None,
        )
        .await;
    assert_ecs(&r, 400, "Ecs.0023");

    // Alice logs in; reading is granted, administration is not.
    let token = login(&t, "alice").await.unwrap();
    assert_eq!(
        as_token(&t, &token, "GET", &list_path(&t), None)
            .await
            .status,
        200
    );
    let r = as_token(&t, &token, "GET", "/v3/users", None).await;
    assert_gateway(&r, 403, "APIGW.0302");

    // Disabled: no login, and the token stops at once; enabled again: logs in.
    let r = t
        .call(
            "PUT",
            &format!("/v3.0/OS-USER/users/{}", alice.id),
            Some(r#"{"user": {"enabled": false}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.json::<UserResponse>().user.enabled);
    assert!(login(&t, "alice").await.is_err());
    let r = as_token(&t, &token, "GET", &list_path(&t), None).await;
    assert_gateway(&r, 401, "APIGW.0301");
    let r = t
        .call(
            "PUT",
            &format!("/v3.0/OS-USER/users/{}", alice.id),
            Some(r#"{"user": {"enabled": true}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    login(&t, "alice").await.unwrap();

    // A key for alice works at once, is listed without its SK, stops when
    // disabled or deleted.
    let r = t
        .call(
            "POST",
            "/v3.0/OS-CREDENTIAL/credentials",
            Some(&json!({"credential": {"user_id": alice.id}}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.json::<CreateCredentialResponse>().credential;
    let (ak, sk) = (key.access.clone(), key.secret.expose().to_owned());
    let as_key = |path: String| {
        let (ak, sk) = (ak.clone(), sk.clone());
        let t = &t;
        async move { t.call_as(&ak, &sk, "GET", &path, None, &[]).await }
    };
    assert_eq!(as_key(list_path(&t)).await.status, 200);
    let r = t
        .call(
            "GET",
            &format!("/v3.0/OS-CREDENTIAL/credentials?user_id={}", alice.id),
            None,
        )
        .await;
    assert!(!r.text.contains(&sk));
    let listed = r.json::<ListCredentialsResponse>().credentials;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].access.as_str(), listed[0].status.as_str()),
        (ak.as_str(), "active")
    );
    let key_path = format!("/v3.0/OS-CREDENTIAL/credentials/{ak}");
    let r = t
        .call(
            "PUT",
            &key_path,
            Some(r#"{"credential": {"status": "inactive"}}"#),
        )
        .await;
    assert_eq!(r.json::<CredentialResponse>().credential.status, "inactive");
    assert_gateway(&as_key(list_path(&t)).await, 401, "APIGW.0301");
    let r = t
        .call(
            "PUT",
            &key_path,
            Some(r#"{"credential": {"status": "active"}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(as_key(list_path(&t)).await.status, 200);
    assert_eq!(t.call("DELETE", &key_path, None).await.status, 204);
    assert_gateway(&as_key(list_path(&t)).await, 401, "APIGW.0301");
    assert_ecs(&t.call("DELETE", &key_path, None).await, 404, "Ecs.0005");

    // Revoke, remove, delete; every change is in the audit trail.
    assert_eq!(t.call("DELETE", &grant("readonly"), None).await.status, 204);
    assert_eq!(t.call("DELETE", &member, None).await.status, 204);
    let r = t
        .call("DELETE", &format!("/v3/users/{}", alice.id), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(login(&t, "alice").await.is_err());
    let r = t
        .call("GET", &format!("/v3/{}/traces?limit=50", t.project), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for name in [
        "create-user",
        "disable-user",
        "enable-user",
        "create-policy",
        "create-group",
        "add-user-to-group",
        "grant-role",
        "create-access-key",
        "disable-access-key",
        "delete-access-key",
        "revoke-role",
        "remove-user-from-group",
        "delete-user",
    ] {
        assert!(
            r.text.contains(&format!("\"{name}\"")),
            "{name} not in {}",
            r.text
        );
    }
    assert!(!r.text.contains(PW) && !r.text.contains(&sk));
}

#[tokio::test]
async fn operators_and_readers_may_not_administer_iam() {
    let t = TestServer::start().await;
    for (name, role) in [("olga", UserRole::Operator), ("rita", UserRole::ReadOnly)] {
        ecsd::admin::create_user(
            &t.state,
            "default",
            name,
            &secret(PW),
            Some(role),
            Some(&t.project),
        )
        .await
        .unwrap();
        let token = login(&t, name).await.unwrap();
        let create = json!({"user": {"name": format!("{name}-made"), "password": PW}}).to_string();
        for (method, path, body) in [
            (
                "POST",
                "/v3.0/OS-USER/users".to_owned(),
                Some(create.as_str()),
            ),
            ("GET", "/v3/users".to_owned(), None),
            ("GET", "/v3/groups".to_owned(), None),
            ("GET", "/v3.0/OS-ROLE/roles".to_owned(), None),
            ("GET", "/v3.0/OS-CREDENTIAL/credentials".to_owned(), None),
        ] {
            let r = as_token(&t, &token, method, &path, body).await;
            assert_gateway(&r, 403, "APIGW.0302");
        }
        // Both may read the audit trail.
        let r = as_token(
            &t,
            &token,
            "GET",
            &format!("/v3/{}/traces", t.project),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = t.call("GET", "/v3/users", None).await;
    let users = r.json::<ListUsersResponse>().users;
    assert!(users.iter().all(|u| !u.name.ends_with("-made")));
}
