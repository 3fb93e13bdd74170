//! What resets and power actions share: body parsing (errors name a field
//! path, never a value), the server list of a batch, the per-server checks
//! every batch makes, all-or-nothing rejection and the audit record.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use zeroize::Zeroize;

use crate::domain::error::display_id;
use crate::domain::{Error, Problem, ServerFailure};
use crate::state::{AppState, Caller};
use crate::store::{AuditEntry, Server};

/// Most servers in one batch.
pub const MAX_BATCH: usize = 1000;
/// Longest server id we accept (ours are 36-character UUIDs).
pub const MAX_ID_LEN: usize = 64;

/// `{"id": "..."}` in a server list.
#[derive(Deserialize)]
pub struct ServerRef {
    pub id: String,
}

/// Overwrites the request body in memory once parsed (best effort: only when
/// this is the last reference to the buffer).
pub fn wipe(body: Bytes) {
    if let Ok(mut b) = body.try_into_mut() {
        b.as_mut().zeroize();
    }
}

/// Checks the content type and parses a JSON body; errors as [`parse_body`].
pub fn parse_json(content_type: Option<&str>, body: &Bytes) -> Result<serde_json::Value, Error> {
    parse_body(content_type, body)
}

/// Checks the content type and parses a JSON body into `T`. Error messages
/// name the offending field's path, never its value.
pub fn parse_body<T: for<'de> Deserialize<'de>>(
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<T, Error> {
    if body.is_empty() {
        return Err(Error::EmptyBody);
    }
    let is_json = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Error::invalid(
            "",
            "Invalid request: Content-Type must be application/json.",
        ));
    }
    from_json(body).map_err(|e| match e {
        JsonError::Field(path) => Error::invalid(
            path.clone(),
            format!("Invalid request body: the value of {path} is missing or has the wrong type."),
        ),
        JsonError::Shape => Error::invalid(
            "",
            "Invalid request body: the body must be a JSON object of the documented shape.",
        ),
        JsonError::Syntax { line, column, .. } => Error::invalid(
            "",
            format!("Invalid request body: malformed JSON at line {line} column {column}."),
        ),
        JsonError::Trailing => Error::invalid("", TRAILING_MESSAGE),
    })
}

/// The message for bytes after the JSON value.
pub const TRAILING_MESSAGE: &str = "Invalid request body: unexpected data after the JSON value.";

/// Why a body is not the JSON expected (never a value from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Valid JSON, but the field at this path is missing or of the wrong type.
    Field(String),
    /// Valid JSON, but not of the expected shape at the top level.
    Shape,
    /// Not JSON (`path`: where the parser was, `.` at the top).
    Syntax {
        path: String,
        line: usize,
        column: usize,
    },
    /// A complete JSON value followed by something other than whitespace.
    Trailing,
}

/// The one JSON body parser of every route (public, IAM and agent API):
/// exactly one JSON value, optionally surrounded by whitespace. Anything
/// after the value (`]`, a second object, a NUL) is refused, so what the
/// signature covered is exactly what is acted on. JSON text is UTF-8
/// (RFC 8259 §8.1): invalid UTF-8 anywhere is refused, also in a string the
/// target type ignores (serde_json checks only the strings it keeps).
pub fn from_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, JsonError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let valid = &body[..e.valid_up_to()];
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        JsonError::Syntax {
            path: ".".into(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            column: valid.len() - line_start + 1,
        }
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            // A data error can stand for a syntax error further on: serde_json
            // reads a map whose key is its private RawValue token as raw JSON
            // and reports what follows as data (found by fuzzing). A body is
            // a field or shape problem only if its first value parses as JSON.
            serde_json::error::Category::Data => match first_value_syntax(text) {
                Some(s) => JsonError::Syntax {
                    path: ".".into(),
                    line: s.line(),
                    column: s.column(),
                },
                None if path != "." => JsonError::Field(path),
                None => JsonError::Shape,
            },
            _ => JsonError::Syntax {
                path,
                line: inner.line(),
                column: inner.column(),
            },
        }
    })?;
    de.end().map_err(|_| JsonError::Trailing)?;
    Ok(value)
}

/// The syntax error of the first JSON value of `text`, if it has one (what
/// follows the value is not looked at).
fn first_value_syntax(text: &str) -> Option<serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde::de::IgnoredAny>()
        .next()
        .and_then(Result::err)
}

/// For `Option` fields where `null` is refused rather than taken as absent
/// (`#[serde(default, deserialize_with = "crate::batch::present")]`).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The server list of a batch (reset or power action): 1..=1000 entries,
/// ids non-empty, at most [`MAX_ID_LEN`], no id twice. `path` names the list
/// in messages (`servers`, `reboot.servers`).
pub fn validate_ids(servers: Option<Vec<ServerRef>>, path: &str) -> Result<Vec<String>, Error> {
    let servers = servers.ok_or_else(|| {
        Error::invalid(path, format!("Invalid request body: {path} is required."))
    })?;
    if servers.is_empty() {
        return Err(Error::invalid(
            path,
            format!("Invalid request body: {path} must list at least one server."),
        ));
    }
    if servers.len() > MAX_BATCH {
        return Err(Error::TooManyServers {
            count: servers.len(),
            limit: MAX_BATCH,
        });
    }
    let mut seen = HashSet::with_capacity(servers.len());
    let mut ids = Vec::with_capacity(servers.len());
    for (i, s) in servers.into_iter().enumerate() {
        let field = || format!("{path}[{i}].id");
        if s.id.is_empty() {
            return Err(Error::invalid(
                field(),
                format!("Invalid request body: {path}[{i}].id is empty."),
            ));
        }
        if s.id.len() > MAX_ID_LEN {
            return Err(Error::invalid(
                field(),
                format!(
                    "Invalid request body: {path}[{i}].id is longer than {MAX_ID_LEN} characters."
                ),
            ));
        }
        if !seen.insert(s.id.clone()) {
            return Err(Error::invalid(
                field(),
                format!(
                    "Invalid request body: server {} is listed more than once.",
                    display_id(&s.id)
                ),
            ));
        }
        ids.push(s.id);
    }
    Ok(ids)
}

/// The checks every batch makes of one server: it exists in the caller's
/// project and has an agent (`no_agent` says why that matters here).
pub fn enrolled<'a>(
    server: Option<&'a Server>,
    caller: &Caller,
    no_agent: Problem,
) -> Result<&'a Server, Problem> {
    let s = server
        .filter(|s| s.project_id == caller.project_id)
        .ok_or(Problem::NotFound)?;
    if s.agent_public_key.is_none() {
        return Err(no_agent);
    }
    Ok(s)
}

/// A batch refused as a whole (all or nothing): the code of the first
/// failing server, every failing server listed.
pub fn reject(failures: Vec<ServerFailure>, total: usize) -> Error {
    Error::Rejected { failures, total }
}

/// Common context of a mutating call, for the audit record.
pub struct CallContext<'a> {
    pub caller: &'a Caller,
    pub request_id: &'a str,
    pub source: &'a str,
}

impl CallContext<'_> {
    pub fn audit(
        &self,
        action: &str,
        servers: Vec<String>,
        dry_run: bool,
        outcome: String,
    ) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            request_id: self.request_id.to_owned(),
            project_id: self.caller.project_id.clone(),
            actor: self.caller.access_key.clone(),
            action: action.to_owned(),
            servers,
            dry_run,
            outcome,
            source: self.source.to_owned(),
            user_id: self.caller.user.as_ref().map(|u| u.id.clone()),
            user_name: self.caller.user.as_ref().map(|u| u.name.clone()),
            error_code: None,
            http_status: None,
        }
    }
}

/// Records a rejected call (nothing else changes).
pub async fn audit_rejection(
    state: &AppState,
    ctx: &CallContext<'_>,
    action: &str,
    servers: Vec<String>,
    dry_run: bool,
    err: &Error,
) {
    let mut entry = ctx.audit(action, servers, dry_run, format!("rejected {}", err.code()));
    entry.error_code = Some(err.code().to_owned());
    // A failure inside ecsd is an incident; the status of other refusals
    // is left to the one error mapping (`error.rs`).
    if matches!(err, Error::Storage(_) | Error::Internal { .. }) {
        entry.http_status = Some(500);
    } else if matches!(err, Error::Unavailable(_)) {
        entry.http_status = Some(503);
    }
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e.chain(), "writing the audit record failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_behind_serde_jsons_raw_value_key_is_a_syntax_error() {
        // Found by fuzzing (json_bodies): with serde_json's `raw_value`
        // feature on, this key makes the parser read its value as raw JSON
        // and report the broken number after it as a data error at the key.
        let body = br#"{"reboot": {"servers": [{"$serde_json::private::RawValue":475e-917e-!}], "type": "SOFT"}}"#;
        assert!(matches!(
            from_json::<serde_json::Value>(body),
            Err(JsonError::Syntax { .. })
        ));
        // A well-formed body with a wrong field is still a field error, also
        // with bytes after it (the syntax check looks at the first value).
        assert!(matches!(
            from_json::<std::collections::BTreeMap<String, u32>>(br#"{"a": "x"} trailing"#),
            Err(JsonError::Field(p)) if p == "a"
        ));
    }

    /// Found by fuzzing (fuzz/fuzz_targets/json_bodies.rs): invalid UTF-8 in
    /// a string of a field the body type ignores was accepted, as serde_json
    /// validates only the strings it keeps.
    #[test]
    fn from_json_refuses_invalid_utf8_even_where_ignored() {
        #[derive(Deserialize, Debug)]
        struct Body {
            #[allow(dead_code)]
            kept: Option<String>,
        }
        let ignored = b"{\"kept\": \"a\",\n \"other\": \"\xb2\"}";
        assert_eq!(
            from_json::<Body>(ignored).unwrap_err(),
            JsonError::Syntax {
                path: ".".into(),
                line: 2,
                column: 12
            }
        );
        assert!(from_json::<Body>(b"{\"kept\": \"\xff\"}").is_err());
        assert!(from_json::<Body>("{\"other\": \"\u{e9}\"}".as_bytes()).is_ok());
    }

    fn refs(ids: &[&str]) -> Option<Vec<ServerRef>> {
        Some(ids.iter().map(|i| ServerRef { id: (*i).into() }).collect())
    }

    fn invalid(e: Error) -> (String, String) {
        match e {
            Error::Invalid { field, message } => (field, message),
            e => panic!("not Invalid: {e:?}"),
        }
    }

    #[test]
    fn a_server_list_is_required_non_empty_and_bounded() {
        let (f, m) = invalid(validate_ids(None, "reboot.servers").unwrap_err());
        assert_eq!(f, "reboot.servers");
        assert_eq!(m, "Invalid request body: reboot.servers is required.");
        let (_, m) = invalid(validate_ids(refs(&[]), "servers").unwrap_err());
        assert_eq!(
            m,
            "Invalid request body: servers must list at least one server."
        );
        let many: Vec<String> = (0..=MAX_BATCH).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        match validate_ids(refs(&many), "servers").unwrap_err() {
            Error::TooManyServers { count, limit } => assert_eq!((count, limit), (1001, 1000)),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn bad_ids_are_named_by_their_field_path() {
        let (f, m) = invalid(validate_ids(refs(&["a", ""]), "servers").unwrap_err());
        assert_eq!(
            (f.as_str(), m.as_str()),
            (
                "servers[1].id",
                "Invalid request body: servers[1].id is empty."
            )
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        let (f, _) = invalid(validate_ids(refs(&[&long]), "servers").unwrap_err());
        assert_eq!(f, "servers[0].id");
        let (f, m) = invalid(validate_ids(refs(&["a", "b", "a"]), "servers").unwrap_err());
        assert_eq!(f, "servers[2].id");
        assert_eq!(
            m,
            "Invalid request body: server a is listed more than once."
        );
        assert_eq!(
            validate_ids(refs(&["a", "b"]), "servers").unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn bodies_must_be_non_empty_json_and_errors_name_the_path() {
        #[derive(Deserialize, Debug)]
        struct B {
            #[allow(dead_code)]
            n: u32,
        }
        let json = Some("application/json;charset=UTF-8");
        assert!(matches!(
            parse_body::<B>(json, &Bytes::new()),
            Err(Error::EmptyBody)
        ));
        let (_, m) = invalid(parse_body::<B>(Some("text/plain"), &Bytes::from("{}")).unwrap_err());
        assert_eq!(m, "Invalid request: Content-Type must be application/json.");
        let (f, m) = invalid(parse_body::<B>(json, &Bytes::from(r#"{"n":"secret"}"#)).unwrap_err());
        assert_eq!(f, "n");
        assert!(!m.contains("secret"), "{m}");
        let (_, m) = invalid(parse_body::<B>(json, &Bytes::from("{")).unwrap_err());
        assert!(m.starts_with("Invalid request body: malformed JSON"), "{m}");
        assert_eq!(
            parse_body::<B>(json, &Bytes::from(r#"{"n":3}"#)).unwrap().n,
            3
        );
    }
}
