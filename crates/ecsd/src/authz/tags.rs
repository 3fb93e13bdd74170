//! Server tags: Huawei's limits, and the stored form (`key=value` strings in
//! the server's `tags` list, which is also what the `tags` / `not-tags`
//! filters of `GET /cloudservers/detail` match exactly).

/// Huawei: a key is 1 to 36 characters, a value at most 43, a server has at
/// most 10 tags (and one request at most 10).
pub const MAX_KEY_CHARS: usize = 36;
pub const MAX_VALUE_CHARS: usize = 43;
pub const MAX_TAGS: usize = 10;

fn cjk(c: char) -> bool {
    ('\u{4E00}'..='\u{9FFF}').contains(&c)
}

/// A tag key: 1..=36 of `A-Z a-z 0-9 - _` and CJK ideographs.
pub fn valid_key(k: &str) -> bool {
    let n = k.chars().count();
    (1..=MAX_KEY_CHARS).contains(&n)
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || cjk(c))
}

/// A tag value: 0..=43 of `A-Z a-z 0-9 . - _` and CJK ideographs.
pub fn valid_value(v: &str) -> bool {
    v.chars().count() <= MAX_VALUE_CHARS
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || cjk(c))
}

/// Why a tag change was refused (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TagError {
    pub field: String,
    pub message: String,
}

fn bad(field: String, message: impl Into<String>) -> TagError {
    TagError {
        field,
        message: message.into(),
    }
}

/// Checks the tags of one request (`tags[i].key`, `tags[i].value`).
pub fn validate(tags: &[(String, Option<String>)]) -> Result<(), TagError> {
    if tags.is_empty() {
        return Err(bad(
            "tags".into(),
            "Invalid request body: tags must not be empty.",
        ));
    }
    if tags.len() > MAX_TAGS {
        return Err(bad(
            "tags".into(),
            format!("Invalid request body: at most {MAX_TAGS} tags in one request."),
        ));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if !valid_key(k) {
            return Err(bad(
                format!("tags[{i}].key"),
                format!(
                    "Invalid request body: tags[{i}].key must be 1 to {MAX_KEY_CHARS} letters, digits, '-' or '_'."
                ),
            ));
        }
        if v.as_deref().is_some_and(|v| !valid_value(v)) {
            return Err(bad(
                format!("tags[{i}].value"),
                format!(
                    "Invalid request body: tags[{i}].value must be at most {MAX_VALUE_CHARS} letters, digits, '.', '-' or '_'."
                ),
            ));
        }
    }
    Ok(())
}

/// Splits a stored tag (`key=value`; a bare `key` has the value "").
pub fn split(stored: &str) -> (&str, &str) {
    stored.split_once('=').unwrap_or((stored, ""))
}

/// The stored form of a tag.
pub fn join(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// Applies `create` (a key already there takes the new value, as Huawei):
/// refuses to go above [`MAX_TAGS`].
pub fn create(
    current: &[String],
    new: &[(String, Option<String>)],
) -> Result<Vec<String>, TagError> {
    let mut out: Vec<String> = current.to_vec();
    for (k, v) in new {
        let tag = join(k, v.as_deref().unwrap_or(""));
        match out.iter_mut().find(|t| split(t).0 == k) {
            Some(t) => *t = tag,
            None => out.push(tag),
        }
    }
    if out.len() > MAX_TAGS {
        return Err(bad(
            "tags".into(),
            format!("Invalid request body: a server has at most {MAX_TAGS} tags."),
        ));
    }
    Ok(out)
}

/// Applies `delete`: a tag goes if its key matches and, when a value is
/// given, its value too. Deleting an absent tag is not an error.
pub fn delete(current: &[String], gone: &[(String, Option<String>)]) -> Vec<String> {
    current
        .iter()
        .filter(|t| {
            let (k, v) = split(t);
            !gone
                .iter()
                .any(|(gk, gv)| gk == k && gv.as_deref().is_none_or(|gv| gv == v))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.into(), v.map(Into::into))
    }

    #[test]
    fn huaweis_limits_on_keys_and_values() {
        assert!(valid_key("env"));
        assert!(valid_key(&"k".repeat(36)));
        assert!(!valid_key(&"k".repeat(37)));
        assert!(!valid_key(""));
        assert!(!valid_key("a=b"));
        assert!(!valid_key("a.b"));
        assert!(valid_key("环境"));
        assert!(valid_value(""));
        assert!(valid_value("v1.2-x_y"));
        assert!(valid_value(&"v".repeat(43)));
        assert!(!valid_value(&"v".repeat(44)));
        assert!(!valid_value("a=b"));
        assert!(!valid_value("a b"));
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(validate(&[]).unwrap_err().field, "tags");
        let many: Vec<_> = (0..11).map(|i| t(&format!("k{i}"), None)).collect();
        assert_eq!(validate(&many).unwrap_err().field, "tags");
        let e = validate(&[t("ok", Some("x")), t("bad key", None)]).unwrap_err();
        assert_eq!(e.field, "tags[1].key");
        let e = validate(&[t("ok", Some("bad value"))]).unwrap_err();
        assert_eq!(e.field, "tags[0].value");
        assert!(validate(&[t("env", Some("staging"))]).is_ok());
    }

    #[test]
    fn create_overwrites_a_key_and_keeps_at_most_ten() {
        let cur = vec!["env=prod".to_owned(), "team=db".to_owned()];
        let out = create(&cur, &[t("env", Some("staging")), t("new", None)]).unwrap();
        assert_eq!(out, ["env=staging", "team=db", "new="]);
        let full: Vec<String> = (0..10).map(|i| format!("k{i}=v")).collect();
        assert!(create(&full, &[t("k0", Some("w"))]).is_ok());
        assert_eq!(create(&full, &[t("k10", None)]).unwrap_err().field, "tags");
    }

    #[test]
    fn delete_matches_the_key_and_the_value_when_given() {
        let cur = vec!["env=prod".to_owned(), "team=db".to_owned()];
        assert_eq!(delete(&cur, &[t("env", Some("staging"))]), cur);
        assert_eq!(delete(&cur, &[t("env", Some("prod"))]), ["team=db"]);
        assert_eq!(delete(&cur, &[t("team", None)]), ["env=prod"]);
        assert_eq!(delete(&cur, &[t("absent", None)]), cur);
    }

    #[test]
    fn stored_tags_split_at_the_first_equals_sign() {
        assert_eq!(split("env=staging"), ("env", "staging"));
        assert_eq!(split("bare"), ("bare", ""));
        assert_eq!(split(&join("k", "")), ("k", ""));
    }
}
