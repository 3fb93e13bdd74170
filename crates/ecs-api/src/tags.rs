//! Server tags (Huawei `BatchCreateServerTags`, `BatchDeleteServerTags`,
//! `ShowServerTags`). Stored tags are `key=value`; `ServerDetail.tags` and
//! the `tags` / `not-tags` list filters use that form.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `create` or `delete` (lower case only, as Huawei).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TagAction {
    Create,
    Delete,
}

/// One tag of a request: `value` may be left out (on create it is "", on
/// delete any value matches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagInput {
    /// 1 to 36 characters: letters, digits, `-`, `_` (and CJK ideographs).
    pub key: String,
    /// At most 43 characters: letters, digits, `.`, `-`, `_` (and CJK ideographs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `POST /v1/{project_id}/cloudservers/{server_id}/tags/action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTagsAction {
    pub action: TagAction,
    /// 1 to 10 tags.
    pub tags: Vec<TagInput>,
}

/// One tag of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerTag {
    pub key: String,
    pub value: String,
}

/// `GET /v1/{project_id}/cloudservers/{server_id}/tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerTagsResponse {
    pub tags: Vec<ServerTag>,
}
