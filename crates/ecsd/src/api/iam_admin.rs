//! Remote IAM administration (issue #10, "ecsctl: users/groups/policies/keys
//! commands for admins"): users, groups, custom policies, grants and access
//! keys of the caller's domain, in Huawei IAM's shapes. Authenticated like
//! `/v1` (`crate::auth::authenticate_iam`), authorized by the `iam:` actions
//! (system role `admin`), audited. The logic is that of `ecsd admin`
//! (`crate::admin`, `crate::authz_admin`, the stores); these handlers parse,
//! scope to the caller's project and domain, and answer.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use chrono::Utc;
use ecs_api::iam_admin::{
    CreateCredentialRequest, CreateCredentialResponse, CreateGroupRequest, CreateRoleRequest,
    CreateUserRequest, CreatedCredential, CredentialResponse, GroupResponse, IamCredential,
    IamGroup, IamRole, IamUser, ListCredentialsResponse, ListGroupsResponse, ListRolesResponse,
    ListUsersResponse, RoleResponse, UpdateCredentialRequest, UpdateUserRequest, UserResponse,
};
use std::collections::HashMap;

use super::{content_type, path};

use crate::authorize::authorize;
use crate::authz::{Action, PolicyError, SystemRole};
use crate::batch::{CallContext, parse_body};
use crate::domain::Error;
use crate::error::{ApiError, current_request_id, display_id};
use crate::state::{AppState, Caller, Source};
use crate::store::authz::{Grant, Group, StoredPolicy};
use crate::store::identity::{Domain, User, UserRole};

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::ecs(
        StatusCode::NOT_FOUND,
        "Ecs.0005",
        format!("{what} not found: {}", display_id(id)),
    )
}

/// An `ecsd admin` service's error as an answer: the domain's errors keep
/// their status and code, a policy error names its field under `role.policy`.
fn service(e: anyhow::Error) -> ApiError {
    let e = match e.downcast::<Error>() {
        Ok(d) => return d.into(),
        Err(e) => e,
    };
    match e.downcast::<PolicyError>() {
        Ok(p) => ApiError::invalid(format!(
            "Invalid request body at role.policy.{}: {}",
            p.field, p.message
        )),
        Err(e) => ApiError::internal("IAM administration", format!("{e:#}")),
    }
}

/// The caller's domain (its project's).
async fn domain(state: &AppState, caller: &Caller) -> Result<Domain, ApiError> {
    state
        .identity
        .project_domain(&caller.project_id)
        .await?
        .ok_or_else(|| ApiError::internal("IAM administration", "the project has no domain"))
}

/// A user of the caller's domain, by id.
async fn user_in(state: &AppState, d: &Domain, id: &str) -> Result<User, ApiError> {
    state
        .identity
        .user(id)
        .await?
        .filter(|u| u.domain_id == d.id)
        .ok_or_else(|| not_found("user", id))
}

/// A group of the caller's domain, by id (groups are kept by domain name).
async fn group_in(state: &AppState, d: &Domain, id: &str) -> Result<Group, ApiError> {
    state
        .authz_store
        .group(id)
        .await?
        .filter(|g| g.domain_id == d.name)
        .ok_or_else(|| not_found("group", id))
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    source: &Source,
    action: &str,
    target: &str,
) -> Result<(), ApiError> {
    let request_id = current_request_id();
    let ctx = CallContext {
        caller,
        request_id: &request_id,
        source: &source.0,
    };
    state
        .store
        .record_audit(ctx.audit(action, vec![target.to_owned()], false, "accepted".into()))
        .await?;
    Ok(())
}

fn iam_user(d: &Domain, u: &User) -> IamUser {
    IamUser {
        id: u.id.clone(),
        name: u.name.clone(),
        domain_id: d.id.clone(),
        enabled: u.enabled,
        create_time: crate::identity::iam_time(u.created),
    }
}

fn iam_group(d: &Domain, g: &Group) -> IamGroup {
    IamGroup {
        id: g.id.clone(),
        name: g.name.clone(),
        domain_id: d.id.clone(),
        description: g.description.clone(),
        create_time: crate::identity::iam_time(g.created),
    }
}

fn iam_role(d: &Domain, p: &StoredPolicy) -> IamRole {
    IamRole {
        id: p.id.clone(),
        name: "custom".into(),
        display_name: p.name.clone(),
        role_type: "AX".into(),
        description: p.description.clone(),
        domain_id: Some(d.id.clone()),
        policy: serde_json::from_str(&p.document).unwrap_or_default(),
    }
}

fn system_role(r: SystemRole) -> IamRole {
    IamRole {
        id: r.as_str().into(),
        name: "system".into(),
        display_name: r.as_str().into(),
        role_type: "system".into(),
        description: String::new(),
        domain_id: None,
        policy: serde_json::from_str(r.document()).unwrap_or_default(),
    }
}

// ------------------------------------------------------------------ users --

/// `POST /v3.0/OS-USER/users` (Huawei IAM `CreateUser`).
#[utoipa::path(post, path = "/v3.0/OS-USER/users", operation_id = "CreateUser", tag = "iam-admin",
    request_body(content = CreateUserRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = UserResponse),
        (status = 400, description = "Invalid body, name or password (Ecs.0005, naming the field; never the password); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:users:createUser.", body = ecs_api::GatewayErrorBody),
        (status = 409, description = "The name is taken in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateUser, true).await?;
    let req: CreateUserRequest = parse_body(content_type(&headers), &body)?;
    let u = req.user;
    crate::identity::check_user_name(&u.name)
        .map_err(|m| ApiError::invalid(format!("Invalid request body at user.name: {m}.")))?;
    crate::identity::check_new_password(u.password.expose())
        .map_err(|m| ApiError::invalid(format!("Invalid request body at user.password: {m}.")))?;
    let role = u
        .role
        .as_deref()
        .map(|r| {
            UserRole::parse(r).ok_or_else(|| {
                ApiError::invalid("Invalid request body at user.role: admin, operator or readonly.")
            })
        })
        .transpose()?;
    let d = domain(&state, &caller).await?;
    let info = crate::admin::create_user(
        &state,
        &d.name,
        &u.name,
        &u.password.0,
        role,
        Some(&caller.project_id),
    )
    .await
    .map_err(service)?;
    if u.enabled == Some(false) {
        state.identity.set_user_enabled(&info.id, false).await?;
    }
    let user = user_in(&state, &d, &info.id).await?;
    audit(&state, &caller, &source, "create-user", &user.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserResponse {
            user: iam_user(&d, &user),
        }),
    ))
}

/// `GET /v3/users` (Huawei IAM `KeystoneListUsers`): the users of the domain.
#[utoipa::path(get, path = "/v3/users", operation_id = "KeystoneListUsers", tag = "iam-admin",
    responses(
        (status = 200, description = "The domain's users, by name.", body = ListUsersResponse),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:users:listUsers.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<ListUsersResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::ListUsers, true).await?;
    let d = domain(&state, &caller).await?;
    let users = state.identity.list_users(&d.id).await?;
    Ok(Json(ListUsersResponse {
        users: users.iter().map(|u| iam_user(&d, u)).collect(),
    }))
}

/// `PUT /v3.0/OS-USER/users/{user_id}` (Huawei IAM `UpdateUser`): enables or
/// disables; a disabled user's tokens and temporary keys stop at once.
#[utoipa::path(put, path = "/v3.0/OS-USER/users/{user_id}", operation_id = "UpdateUser", tag = "iam-admin",
    params(("user_id" = String, Path, description = "The user's id.")),
    request_body(content = UpdateUserRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed.", body = UserResponse),
        (status = 400, description = "Invalid body (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:users:updateUser.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such user in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserResponse>, ApiError> {
    let id = path(p)?;
    authorize(&state, &caller, &source.0, Action::UpdateUser, true).await?;
    let req: UpdateUserRequest = parse_body(content_type(&headers), &body)?;
    let d = domain(&state, &caller).await?;
    let u = user_in(&state, &d, &id).await?;
    crate::admin::set_user_enabled(&state, &d.name, &u.name, req.user.enabled)
        .await
        .map_err(service)?;
    let name = if req.user.enabled {
        "enable-user"
    } else {
        "disable-user"
    };
    audit(&state, &caller, &source, name, &u.id).await?;
    let u = user_in(&state, &d, &id).await?;
    Ok(Json(UserResponse {
        user: iam_user(&d, &u),
    }))
}

/// `DELETE /v3/users/{user_id}` (Huawei IAM `KeystoneDeleteUser`): the user
/// with its roles, tokens, temporary keys, group memberships and the access
/// keys that act as it.
#[utoipa::path(delete, path = "/v3/users/{user_id}", operation_id = "KeystoneDeleteUser", tag = "iam-admin",
    params(("user_id" = String, Path, description = "The user's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:users:deleteUser.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such user in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path(p)?;
    authorize(&state, &caller, &source.0, Action::DeleteUser, true).await?;
    let d = domain(&state, &caller).await?;
    let u = user_in(&state, &d, &id).await?;
    for g in state.authz_store.groups(&d.name).await? {
        state.authz_store.remove_group_member(&g.id, &u.id).await?;
    }
    for k in state.lifecycle.list_access_keys(None).await? {
        if bound_user(&state, &k.ak).await?.as_deref() == Some(u.id.as_str()) {
            state.lifecycle.delete_access_key(&k.ak).await?;
        }
    }
    crate::admin::delete_user(&state, &d.name, &u.name)
        .await
        .map_err(service)?;
    audit(&state, &caller, &source, "delete-user", &u.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----------------------------------------------------------------- groups --

/// `POST /v3/groups` (Huawei IAM `KeystoneCreateGroup`).
#[utoipa::path(post, path = "/v3/groups", operation_id = "KeystoneCreateGroup", tag = "iam-admin",
    request_body(content = CreateGroupRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = GroupResponse),
        (status = 400, description = "Invalid body (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:groups:createGroup.", body = ecs_api::GatewayErrorBody),
        (status = 409, description = "The name is taken in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn create_group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<GroupResponse>), ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateGroup, true).await?;
    let req: CreateGroupRequest = parse_body(content_type(&headers), &body)?;
    let name = req.group.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::invalid(
            "Invalid request body at group.name: 1 to 64 characters.",
        ));
    }
    let d = domain(&state, &caller).await?;
    let g = state
        .authz_store
        .create_group(
            &d.name,
            name,
            req.group.description.as_deref().unwrap_or_default(),
        )
        .await?;
    audit(&state, &caller, &source, "create-group", &g.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(GroupResponse {
            group: iam_group(&d, &g),
        }),
    ))
}

/// `GET /v3/groups` (Huawei IAM `KeystoneListGroups`).
#[utoipa::path(get, path = "/v3/groups", operation_id = "KeystoneListGroups", tag = "iam-admin",
    responses(
        (status = 200, description = "The domain's groups.", body = ListGroupsResponse),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:groups:listGroups.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_groups(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<ListGroupsResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::ListGroups, true).await?;
    let d = domain(&state, &caller).await?;
    let groups = state.authz_store.groups(&d.name).await?;
    Ok(Json(ListGroupsResponse {
        groups: groups.iter().map(|g| iam_group(&d, g)).collect(),
    }))
}

async fn membership(
    state: AppState,
    caller: Caller,
    source: Source,
    p: Result<Path<(String, String)>, PathRejection>,
    add: bool,
) -> Result<StatusCode, ApiError> {
    let (group_id, user_id) = path(p)?;
    let action = if add {
        Action::AddUserToGroup
    } else {
        Action::RemoveUserFromGroup
    };
    authorize(&state, &caller, &source.0, action, true).await?;
    let d = domain(&state, &caller).await?;
    let g = group_in(&state, &d, &group_id).await?;
    let u = user_in(&state, &d, &user_id).await?;
    if add {
        state.authz_store.add_group_member(&g.id, &u.id).await?;
    } else if !state.authz_store.remove_group_member(&g.id, &u.id).await? {
        return Err(not_found("group member", &u.id));
    }
    let name = if add {
        "add-user-to-group"
    } else {
        "remove-user-from-group"
    };
    audit(
        &state,
        &caller,
        &source,
        name,
        &format!("{}/{}", g.id, u.id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v3/groups/{group_id}/users/{user_id}` (Huawei IAM `KeystoneAddUserToGroup`).
#[utoipa::path(put, path = "/v3/groups/{group_id}/users/{user_id}", operation_id = "KeystoneAddUserToGroup", tag = "iam-admin",
    params(("group_id" = String, Path, description = "The group's id."), ("user_id" = String, Path, description = "The user's id.")),
    responses(
        (status = 204, description = "The user is a member (idempotent)."),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:groups:addUserToGroup.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such group or user in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn add_user_to_group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    membership(state, caller, source, p, true).await
}

/// `DELETE /v3/groups/{group_id}/users/{user_id}` (Huawei IAM `KeystoneRemoveUserFromGroup`).
#[utoipa::path(delete, path = "/v3/groups/{group_id}/users/{user_id}", operation_id = "KeystoneRemoveUserFromGroup", tag = "iam-admin",
    params(("group_id" = String, Path, description = "The group's id."), ("user_id" = String, Path, description = "The user's id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:groups:removeUserFromGroup.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such group, user or membership in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn remove_user_from_group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    membership(state, caller, source, p, false).await
}

// ------------------------------------------------------------------ roles --

/// `POST /v3.0/OS-ROLE/roles` (Huawei IAM `CreateCloudServiceCustomPolicy`):
/// a custom policy, checked strictly.
#[utoipa::path(post, path = "/v3.0/OS-ROLE/roles", operation_id = "CreateCloudServiceCustomPolicy", tag = "iam-admin",
    request_body(content = CreateRoleRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = RoleResponse),
        (status = 400, description = "Invalid body or policy (Ecs.0005, naming the field, e.g. role.policy.Statement[0].Action); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:roles:createRole.", body = ecs_api::GatewayErrorBody),
        (status = 409, description = "The name is taken in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn create_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<RoleResponse>), ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateRole, true).await?;
    let req: CreateRoleRequest = parse_body(content_type(&headers), &body)?;
    let r = req.role;
    if !["AX", "XA"].contains(&r.role_type.as_str()) {
        return Err(ApiError::invalid(
            "Invalid request body at role.type: AX or XA.",
        ));
    }
    let name = r.display_name.trim();
    if name.is_empty() || name.len() > 128 || SystemRole::parse(name).is_some() {
        return Err(ApiError::invalid(
            "Invalid request body at role.display_name: 1 to 128 characters, not a system role's name.",
        ));
    }
    let d = domain(&state, &caller).await?;
    let p = crate::authz_admin::create_policy(
        &state,
        &d.name,
        name,
        r.description.as_deref().unwrap_or_default(),
        &r.policy.to_string(),
    )
    .await
    .map_err(service)?;
    audit(&state, &caller, &source, "create-policy", &p.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(RoleResponse {
            role: iam_role(&d, &p),
        }),
    ))
}

/// `GET /v3.0/OS-ROLE/roles` (Huawei IAM `ListCustomPolicies`): the system
/// roles, then the domain's custom policies.
#[utoipa::path(get, path = "/v3.0/OS-ROLE/roles", operation_id = "ListCustomPolicies", tag = "iam-admin",
    responses(
        (status = 200, description = "The roles.", body = ListRolesResponse),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:roles:listRoles.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_roles(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<ListRolesResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::ListRoles, true).await?;
    let d = domain(&state, &caller).await?;
    let mut roles: Vec<IamRole> = SystemRole::ALL.into_iter().map(system_role).collect();
    roles.extend(
        state
            .authz_store
            .policies(&d.name)
            .await?
            .iter()
            .map(|p| iam_role(&d, p)),
    );
    Ok(Json(ListRolesResponse {
        total_number: roles.len() as u32,
        roles,
    }))
}

// ----------------------------------------------------------------- grants --

async fn grant(
    state: AppState,
    caller: Caller,
    source: Source,
    p: Result<Path<(String, String, String)>, PathRejection>,
    add: bool,
) -> Result<StatusCode, ApiError> {
    let (project_id, group_id, role_id) = path(p)?;
    if project_id != caller.project_id {
        return Err(ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0023",
            "The project ID in the request does not match the project of the credential.",
        ));
    }
    let action = if add {
        Action::GrantRole
    } else {
        Action::RevokeRole
    };
    authorize(&state, &caller, &source.0, action, true).await?;
    let d = domain(&state, &caller).await?;
    let g = group_in(&state, &d, &group_id).await?;
    let grant = match SystemRole::parse(&role_id) {
        Some(r) => Grant::system(r),
        None => state
            .authz_store
            .policy(&role_id)
            .await?
            .filter(|p| p.domain_id == d.name)
            .map(|p| Grant::Policy(p.id))
            .ok_or_else(|| not_found("role", &role_id))?,
    };
    if add {
        state
            .authz_store
            .attach(&g.id, &caller.project_id, &grant)
            .await?;
    } else if !state
        .authz_store
        .detach(&g.id, &caller.project_id, &grant)
        .await?
    {
        return Err(not_found("grant", &role_id));
    }
    let name = if add { "grant-role" } else { "revoke-role" };
    audit(
        &state,
        &caller,
        &source,
        name,
        &format!("{}/{role_id}", g.id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v3/projects/{project_id}/groups/{group_id}/roles/{role_id}` (Huawei
/// IAM `KeystoneAssociateGroupWithProjectPermission`): grants a system role
/// (`admin`, `operator`, `readonly`) or a custom policy (its id) to a group
/// in the caller's project.
#[utoipa::path(put, path = "/v3/projects/{project_id}/groups/{group_id}/roles/{role_id}",
    operation_id = "KeystoneAssociateGroupWithProjectPermission", tag = "iam-admin",
    params(("project_id" = String, Path, description = "The caller's project."), ("group_id" = String, Path, description = "The group's id."),
        ("role_id" = String, Path, description = "A custom policy's id, or admin, operator or readonly.")),
    responses(
        (status = 204, description = "Granted (idempotent)."),
        (status = 400, description = "Another project than the credential's (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:permissions:grantRoleToGroupOnProject.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such group or role in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn grant_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    grant(state, caller, source, p, true).await
}

/// `DELETE /v3/projects/{project_id}/groups/{group_id}/roles/{role_id}`
/// (Huawei IAM `DeleteProjectPermission`): revokes it.
#[utoipa::path(delete, path = "/v3/projects/{project_id}/groups/{group_id}/roles/{role_id}",
    operation_id = "DeleteProjectPermission", tag = "iam-admin",
    params(("project_id" = String, Path, description = "The caller's project."), ("group_id" = String, Path, description = "The group's id."),
        ("role_id" = String, Path, description = "A custom policy's id, or admin, operator or readonly.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "Another project than the credential's (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:permissions:revokeRoleFromGroupOnProject.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such group, role or grant (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn revoke_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    grant(state, caller, source, p, false).await
}

// ------------------------------------------------------------ credentials --

async fn bound_user(state: &AppState, ak: &str) -> Result<Option<String>, ApiError> {
    Ok(state.authz_store.authz_version(ak).await?.1)
}

/// A permanent key of the caller's project.
async fn key_in(
    state: &AppState,
    caller: &Caller,
    ak: &str,
) -> Result<crate::store::lifecycle::AccessKeyInfo, ApiError> {
    state
        .lifecycle
        .list_access_keys(Some(&caller.project_id))
        .await?
        .into_iter()
        .find(|k| k.ak == ak)
        .ok_or_else(|| not_found("access key", ak))
}

async fn credential(
    state: &AppState,
    k: &crate::store::lifecycle::AccessKeyInfo,
) -> Result<IamCredential, ApiError> {
    Ok(IamCredential {
        access: k.ak.clone(),
        user_id: bound_user(state, &k.ak).await?.unwrap_or_default(),
        status: if k.enabled { "active" } else { "inactive" }.into(),
        create_time: crate::identity::iam_time(k.created),
        description: String::new(),
    })
}

/// `POST /v3.0/OS-CREDENTIAL/credentials` (Huawei IAM
/// `CreatePermanentAccessKey`): a key in the caller's project acting as a
/// user of the domain (its groups decide); the SK is answered once.
#[utoipa::path(post, path = "/v3.0/OS-CREDENTIAL/credentials", operation_id = "CreatePermanentAccessKey", tag = "iam-admin",
    request_body(content = CreateCredentialRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the SK is shown only here.", body = CreateCredentialResponse),
        (status = 400, description = "Invalid body (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:credentials:createCredential.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such user in the domain (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn create_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreateCredentialResponse>), ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateCredential, true).await?;
    let req: CreateCredentialRequest = parse_body(content_type(&headers), &body)?;
    let d = domain(&state, &caller).await?;
    let u = user_in(&state, &d, &req.credential.user_id).await?;
    let (ak, sk) = crate::authz_admin::create_user_key(&state, &caller.project_id, &u.id)
        .await
        .map_err(service)?;
    audit(&state, &caller, &source, "create-access-key", &ak).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateCredentialResponse {
            credential: CreatedCredential {
                access: ak,
                secret: sk.into(),
                user_id: u.id,
                status: "active".into(),
                create_time: crate::identity::iam_time(Utc::now()),
                description: req.credential.description.unwrap_or_default(),
            },
        }),
    ))
}

/// `GET /v3.0/OS-CREDENTIAL/credentials` (Huawei IAM `ListPermanentAccessKeys`):
/// the keys of the caller's project, never an SK.
#[utoipa::path(get, path = "/v3.0/OS-CREDENTIAL/credentials", operation_id = "ListPermanentAccessKeys", tag = "iam-admin",
    params(("user_id" = Option<String>, Query, description = "Only the keys acting as this user.")),
    responses(
        (status = 200, description = "The keys.", body = ListCredentialsResponse),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:credentials:listCredentials.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_credentials(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<ListCredentialsResponse>, ApiError> {
    authorize(&state, &caller, &source.0, Action::ListCredentials, true).await?;
    let mut credentials = Vec::new();
    for k in state
        .lifecycle
        .list_access_keys(Some(&caller.project_id))
        .await?
    {
        let c = credential(&state, &k).await?;
        if q.get("user_id").is_none_or(|u| *u == c.user_id) {
            credentials.push(c);
        }
    }
    Ok(Json(ListCredentialsResponse { credentials }))
}

/// `PUT /v3.0/OS-CREDENTIAL/credentials/{access_key}` (Huawei IAM
/// `UpdatePermanentAccessKey`): `active` or `inactive`, effective on the
/// key's next request.
#[utoipa::path(put, path = "/v3.0/OS-CREDENTIAL/credentials/{access_key}", operation_id = "UpdatePermanentAccessKey", tag = "iam-admin",
    params(("access_key" = String, Path, description = "The AK.")),
    request_body(content = UpdateCredentialRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed.", body = CredentialResponse),
        (status = 400, description = "Invalid body or status (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:credentials:updateCredential.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such key in the project (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn update_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<CredentialResponse>, ApiError> {
    let ak = path(p)?;
    authorize(&state, &caller, &source.0, Action::UpdateCredential, true).await?;
    let req: UpdateCredentialRequest = parse_body(content_type(&headers), &body)?;
    let enabled = match req.credential.status.as_str() {
        "active" => true,
        "inactive" => false,
        _ => {
            return Err(ApiError::invalid(
                "Invalid request body at credential.status: active or inactive.",
            ));
        }
    };
    key_in(&state, &caller, &ak).await?;
    state.lifecycle.set_access_key_enabled(&ak, enabled).await?;
    let name = if enabled {
        "enable-access-key"
    } else {
        "disable-access-key"
    };
    audit(&state, &caller, &source, name, &ak).await?;
    let k = key_in(&state, &caller, &ak).await?;
    Ok(Json(CredentialResponse {
        credential: credential(&state, &k).await?,
    }))
}

/// `DELETE /v3.0/OS-CREDENTIAL/credentials/{access_key}` (Huawei IAM
/// `DeletePermanentAccessKey`): the key stops working on its next request.
#[utoipa::path(delete, path = "/v3.0/OS-CREDENTIAL/credentials/{access_key}", operation_id = "DeletePermanentAccessKey", tag = "iam-admin",
    params(("access_key" = String, Path, description = "The AK.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "X-Project-Id is not the credential's project (Ecs.0023).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): iam:credentials:deleteCredential.", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such key in the project (Ecs.0005).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn delete_credential(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let ak = path(p)?;
    authorize(&state, &caller, &source.0, Action::DeleteCredential, true).await?;
    key_in(&state, &caller, &ak).await?;
    state.lifecycle.delete_access_key(&ak).await?;
    audit(&state, &caller, &source, "delete-access-key", &ak).await?;
    Ok(StatusCode::NO_CONTENT)
}
