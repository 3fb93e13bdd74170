//! Entry points for the fuzz targets (`fuzz/`), compiled only with the
//! `fuzzing` feature: the body parsers of the public routes, each with the
//! validation that follows it, returning a comparable summary of what was
//! understood (the password included: the fuzz targets compare it).

use bytes::Bytes;

pub use crate::batch::{JsonError, from_json, parse_body};
use crate::domain::Error;

/// `PUT /v1/{project_id}/cloudservers/os-reset-passwords`: parse + shape rules.
pub fn batch_reset(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
    crate::reset::fuzz::batch_reset(content_type, body)
}

/// `PUT /v1/{project_id}/cloudservers/{server_id}/os-reset-password`: parse + required fields.
pub fn single_reset(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
    crate::reset::fuzz::single_reset(content_type, body)
}

/// `POST /v1/{project_id}/cloudservers/action`: parse + action and server list rules.
pub fn power_action(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
    crate::power::fuzz_parse_action(content_type, body)
}

/// `POST /v1/{project_id}/cloudservers/{server_id}/tags/action`: parse + Huawei's tag limits.
pub fn tags_action(
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<ecs_api::ServerTagsAction, Error> {
    let req: ecs_api::ServerTagsAction = parse_body(content_type, body)?;
    let list: Vec<(String, Option<String>)> = req
        .tags
        .iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    crate::authz::tags::validate(&list).map_err(|e| Error::invalid(e.field, e.message))?;
    Ok(req)
}
