//! Every response a test receives from the public API is checked against
//! the OpenAPI document (`openapi/ecsd.json`): the operation must document
//! the status, and the body must validate against its schema. A request to
//! no documented operation must be answered with one of the two error
//! bodies. The agent API (`/agent/v1`, contract §4, typed by
//! `ecs-agent-proto`) is not part of the public document and is not checked.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Value, json};

struct Doc {
    raw: Value,
    /// Compiled validators by schema reference.
    validators: std::sync::Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

fn doc() -> &'static Doc {
    static DOC: OnceLock<Doc> = OnceLock::new();
    DOC.get_or_init(|| Doc {
        raw: serde_json::from_str(&ecsd::api::openapi::document_json()).unwrap(),
        validators: Default::default(),
    })
}

/// The documented path template for `path` (literal segments win over
/// parameters, as in the router).
fn template<'a>(paths: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split('/').collect();
    paths
        .keys()
        .filter_map(|t| {
            let tsegs: Vec<&str> = t.split('/').collect();
            if tsegs.len() != segs.len() {
                return None;
            }
            let mut literal = 0;
            for (ts, s) in tsegs.iter().zip(&segs) {
                if ts.starts_with('{') && ts.ends_with('}') {
                    if s.is_empty() {
                        return None;
                    }
                } else if ts == s {
                    literal += 1;
                } else {
                    return None;
                }
            }
            Some((literal, t.as_str()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

fn validate(schema: &Value, body: &Value) -> Result<(), String> {
    let key = schema.to_string();
    let d = doc();
    let v = {
        let mut cache = d.validators.lock().unwrap();
        cache
            .entry(key)
            .or_insert_with(|| {
                let mut root = schema.clone();
                let obj = root.as_object_mut().expect("a schema object");
                obj.insert("components".into(), d.raw["components"].clone());
                obj.insert(
                    "$schema".into(),
                    json!("https://json-schema.org/draft/2020-12/schema"),
                );
                std::sync::Arc::new(jsonschema::validator_for(&root).expect("a valid schema"))
            })
            .clone()
    };
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .take(5)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A `text/event-stream` body: blocks of `id:`, `event:`, `data:`,
/// `retry:` lines and `:` comments; every `data` is JSON.
#[track_caller]
fn check_event_stream(method: &str, t: &str, status: u16, text: &str) {
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(data) = line.strip_prefix("data: ") {
            if let Err(e) = serde_json::from_str::<Value>(data) {
                panic!("{method} {t} -> {status}: an event's data is not JSON ({e}): {line:.300}");
            }
        } else {
            assert!(
                ["id: ", "event: ", "retry: ", ":"]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "{method} {t} -> {status}: not an event stream line: {line:.300}"
            );
        }
    }
}

/// Panics if this exchange is not what the document says.
#[track_caller]
pub fn check(method: &str, path: &str, status: u16, text: &str) {
    if path.starts_with("/agent/") {
        return;
    }
    let d = doc();
    let paths = d.raw["paths"].as_object().unwrap();
    let op = template(paths, path)
        .and_then(|t| paths[t].get(method.to_ascii_lowercase()).map(|op| (t, op)));
    if let Some((t, op)) = op
        && let Some(resp) = op["responses"].get(status.to_string())
        && resp["content"].get("text/event-stream").is_some()
    {
        check_event_stream(method, t, status, text);
        return;
    }
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| {
            panic!("{method} {path} -> {status}: the body is not JSON ({e}): {text:.300}")
        })
    };
    let Some((t, op)) = op else {
        // No such operation: an error in one of the two shapes.
        assert!(
            status >= 400,
            "{method} {path} -> {status}: undocumented success"
        );
        if let Err(e) = validate(&json!({"$ref": "#/components/schemas/ErrorBody"}), &body) {
            panic!("{method} {path} -> {status}: not an error body: {e}: {text:.300}");
        }
        return;
    };
    let responses = &op["responses"];
    let resp = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| {
            panic!("{method} {t} answered {status}, which the document does not list: {text:.300}")
        });
    match resp["content"]["application/json"].get("schema") {
        Some(schema) => {
            if let Err(e) = validate(schema, &body) {
                panic!(
                    "{method} {t} -> {status}: the body violates the document: {e}\nbody: {text:.600}"
                );
            }
        }
        None => {
            if resp["content"].as_object().is_none_or(|c| c.is_empty()) {
                assert!(
                    text.is_empty(),
                    "{method} {t} -> {status}: documented without a body, got {text:.300}"
                );
            }
        }
    }
}
