//! The OpenAPI 3.1 document of the public API, generated from the handlers'
//! `#[utoipa::path]` annotations and the `ecs-api` types. It is checked in
//! as `openapi/ecsd.json` (a test fails when they drift) and served at
//! `GET /openapi.json`.

use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ecsd",
        description = "Huawei Cloud ECS-compatible API for fleet-wide root/Administrator password resets. \
Huawei's operations keep Huawei's shapes (the official SDKs work unmodified); `x-ecsd`, `apply`, \
`readiness`, the reset outcome and enroll tokens are ecsd's extensions. Every call is signed with \
SDK-HMAC-SHA256 (AK/SK, or a temporary AK/SK with a signed X-Security-Token) as the Huawei SDKs sign, \
or carries an IAM user's X-Auth-Token from POST /v3/auth/tokens; every response carries X-Request-Id.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::resets::batch_reset,
        super::resets::single_reset,
        super::resets::resetpwd_flag,
        super::resets::reset_outcome,
        super::servers::list,
        super::servers::show,
        super::servers::action,
        super::servers::job,
        super::events::reset_events,
        super::events::job_events,
        super::tags::tags_action,
        super::tags::show_tags,
        super::agent::create_enroll_token,
        super::traces::list,
        super::escrow::create_recipient,
        super::escrow::list_recipients,
        super::escrow::delete_recipient,
        super::escrow::escrowed_passwords,
        super::escrow::create_policy,
        super::escrow::list_policies,
        super::escrow::delete_policy,
        super::escrow::password_status,
        super::iam::create_token,
        super::iam::validate_token,
        super::iam::revoke_token,
        super::iam::create_security_token,
        super::iam_admin::create_user,
        super::iam_admin::list_users,
        super::iam_admin::update_user,
        super::iam_admin::delete_user,
        super::iam_admin::create_group,
        super::iam_admin::list_groups,
        super::iam_admin::add_user_to_group,
        super::iam_admin::remove_user_from_group,
        super::iam_admin::create_role,
        super::iam_admin::list_roles,
        super::iam_admin::grant_role,
        super::iam_admin::revoke_role,
        super::iam_admin::create_credential,
        super::iam_admin::list_credentials,
        super::iam_admin::update_credential,
        super::iam_admin::delete_credential,
        health,
        openapi_json,
        super::metrics::on_api_listener,
    ),
    components(schemas(ecs_api::ErrorBody, ecs_api::GatewayErrorBody, ecs_api::EcsErrorBody)),
    modifiers(&CommonResponses),
    security(("sdk-hmac-sha256" = []), ("x-auth-token" = []), ("console-session" = [])),
    tags(
        (name = "resets", description = "Password resets (Huawei) and their per-server outcome (ecsd)."),
        (name = "servers", description = "Servers, start/stop/reboot, jobs (Huawei)."),
        (name = "agents", description = "Enrollment of password-reset agents (ecsd)."),
        (name = "escrow", description = "Generated passwords escrowed to age recipients, their audited retrieval, rotation policies and drift (ecsd; issue 15)."),
        (name = "audit", description = "The audit trail, in the shape of Huawei Cloud Trace Service ListTraces."),
        (name = "iam", description = "Tokens and temporary AK/SK (Huawei IAM), for IAM users (identity)."),
        (name = "iam-admin", description = "Remote IAM administration of the caller's domain (Huawei IAM shapes): users, groups, custom policies, grants, access keys; system role admin."),
        (name = "service", description = "Health, metrics and this document; no signature."),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON with a final newline (the checked-in form).
pub fn document_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// Adds what every signed operation can answer — the gateway's 401, 403,
/// 413 and 429, a project that is not the key's (400 Ecs.0023), the 500,
/// the 503 of a full or unavailable storage —
/// and the X-Request-Id header to every response, and declares the
/// signature scheme.
struct CommonResponses;

const PROJECT_MISMATCH: &str =
    " Also: the project in the URL or X-Project-Id is not the key's (Ecs.0023).";

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "sdk-hmac-sha256",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<names>, Signature=<hex>` over the \
canonical request, with X-Sdk-Date (15-minute window) and X-Project-Id, as the Huawei SDKs sign.",
            ))),
        );
        components.add_security_scheme(
            "x-auth-token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "A token from POST /v3/auth/tokens (its X-Subject-Token), instead of a signature.",
            ))),
        );
        components.add_security_scheme(
            "console-session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-ecsd-session",
                "The web console's session (sign-in at /console/login), valid only together with \
the session's CSRF token in X-CSRF-Token on every call; never accepted as X-Auth-Token.",
            ))),
        );
        let json = |schema: &str| {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
                .build()
        };
        let gateway = |desc: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(desc)
                .content("application/json", json("GatewayErrorBody"))
                .build()
                .into()
        };
        let signed_errors = ResponsesBuilder::new()
            .response(
                "401",
                gateway(
                    "Missing or wrong signature, unknown, disabled or locked AK, date outside the window; unknown, revoked or expired X-Auth-Token; temporary AK without its X-Security-Token or expired (APIGW.0301).",
                ),
            )
            .response(
                "403",
                gateway(
                    "The key may not do this: a read-only key on a mutating call, or the caller's policies do not allow the action (APIGW.0302).",
                ),
            )
            .response(
                "413",
                gateway("The body is larger than allowed (APIGW.0201)."),
            )
            .response(
                "429",
                gateway("Too many requests for this AK, or too many failed authentications from this address or for this AK (APIGW.0308)."),
            )
            .build();
        let internal: RefOr<Response> = ResponseBuilder::new()
            .description("An internal failure (Common.0001); details only in the server's log.")
            .content("application/json", json("EcsErrorBody"))
            .build()
            .into();
        let unavailable = gateway(
            "The storage is full or unavailable (disk full, I/O error, read-only): nothing was stored; retry later (APIGW.0503).",
        );
        let request_id = utoipa::openapi::HeaderBuilder::new()
            .schema(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[0-9a-f]{32}$")),
            )
            .description(Some(
                "The request's id (also in gateway error bodies and the log).",
            ))
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // Signed (AK/SK or X-Auth-Token through the auth layer): every /v1
                // operation and the /v3 ones that do not declare their own
                // security (the IAM token routes authenticate themselves).
                let signed =
                    path.starts_with("/v1/") || (path.starts_with("/v3") && op.security.is_none());
                if signed {
                    // The auth layer answers a foreign project (URL or X-Project-Id) with
                    // 400 Ecs.0023 before any handler; every signed operation documents a 400.
                    match op.responses.responses.get_mut("400") {
                        Some(RefOr::T(r)) => r.description.push_str(PROJECT_MISMATCH),
                        _ => {
                            op.responses.responses.insert(
                                "400".into(),
                                ResponseBuilder::new()
                                    .description(PROJECT_MISMATCH.trim_start())
                                    .content("application/json", json("EcsErrorBody"))
                                    .build()
                                    .into(),
                            );
                        }
                    }
                    for (code, resp) in &signed_errors.responses {
                        op.responses
                            .responses
                            .entry(code.clone())
                            .or_insert_with(|| resp.clone());
                    }
                } else {
                    op.security = Some(Vec::new());
                }
                op.responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| internal.clone());
                if path != "/health" && path != "/openapi.json" {
                    op.responses
                        .responses
                        .entry("503".into())
                        .or_insert_with(|| unavailable.clone());
                }
                for resp in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = resp {
                        r.headers.insert("X-Request-Id".into(), request_id.clone());
                    }
                }
            }
        }
    }
}

/// Liveness: answers while the process serves requests.
#[utoipa::path(get, path = "/health", operation_id = "Health", tag = "service",
    responses((status = 200, description = "Serving.", body = ecs_api::Health)))]
pub async fn health() -> axum::Json<ecs_api::Health> {
    axum::Json(ecs_api::Health {
        status: "ok".into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "OpenApiDocument", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json")))]
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(document_json).as_str(),
    )
}
