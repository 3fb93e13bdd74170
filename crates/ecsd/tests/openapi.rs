//! The checked-in OpenAPI document is the code's: generated, served, and
//! kept in step (run with `UPDATE_OPENAPI=1` to rewrite it after a change).

mod common;

use common::TestServer;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/ecsd.json");

#[test]
fn the_checked_in_document_matches_the_code() {
    let generated = ecsd::api::openapi::document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        on_disk == generated,
        "openapi/ecsd.json differs from the code's document; run \
         `UPDATE_OPENAPI=1 cargo test -p ecsd --test openapi` and commit the file"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_documents_every_huawei_operation() {
    let doc: serde_json::Value =
        serde_json::from_str(&ecsd::api::openapi::document_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    for op in [
        "BatchResetServersPassword",
        "ResetServerPassword",
        "ShowResetPasswordFlag",
        "ListServersDetails",
        "ShowServer",
        "BatchServerAction",
        "ShowJob",
        "ShowResetOutcome",
        "CreateEnrollToken",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    // Signed operations document the gateway's errors and the request id.
    let batch = &doc["paths"]["/v1/{project_id}/cloudservers/os-reset-passwords"]["put"];
    for code in ["200", "400", "401", "403", "413", "429", "500"] {
        assert!(batch["responses"][code].is_object(), "no {code}");
        assert!(batch["responses"][code]["headers"]["X-Request-Id"].is_object());
    }
    // A batch names unknown servers per server in a 400, never as a 404.
    assert!(batch["responses"]["404"].is_null());
    let required = doc["components"]["schemas"]["ServerDetail"]["required"]
        .as_array()
        .unwrap();
    for p in [
        "enclave_options",
        "spod_id",
        "capacity_reservation_specification",
        "capacity_reservation_id",
        "OS-EXT-STS:power_state",
        "x-ecsd",
    ] {
        assert!(required.iter().any(|r| r == p), "{p} not required");
    }
}

#[tokio::test]
async fn the_server_serves_the_document_unsigned() {
    let t = TestServer::start().await;
    let r = t.raw(common::http().get(t.url("/openapi.json"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, ecsd::api::openapi::document_json());
    assert!(r.request_id.is_some());
}

#[test]
fn the_response_check_rejects_what_the_document_does_not_allow() {
    let ok = r#"{"job_id": "4b1b7a7e-7f0f-4a55-9c61-8a7f3b0f8b11"}"#;
    common::contract::check("POST", "/v1/p/cloudservers/action", 200, ok);
    let bad = [
        (200, r#"{"job": "x"}"#),
        (418, r#"{"error": {"code": "X", "message": "m"}}"#),
        (401, r#"{"error": {"code": "X", "message": "m"}}"#),
    ];
    for (status, text) in bad {
        let r = std::panic::catch_unwind(|| {
            common::contract::check("POST", "/v1/p/cloudservers/action", status, text)
        });
        assert!(r.is_err(), "{status} {text} passed");
    }
    let r = std::panic::catch_unwind(|| common::contract::check("GET", "/v1/p/nope", 200, "{}"));
    assert!(r.is_err(), "an undocumented success passed");
    common::contract::check(
        "GET",
        "/v1/p/nope",
        404,
        r#"{"error_code":"APIGW.0101","error_msg":"m","request_id":"r"}"#,
    );
}
