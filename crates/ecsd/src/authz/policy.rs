//! Huawei IAM policy documents (`{"Version": "1.1", "Statement": [...]}`),
//! parsed strictly: an unknown key or a malformed value is an error naming
//! the field (`Statement[0].Condition.StringLike`), answered 400 `Ecs.0005`.

use serde_json::Value;

/// Why a policy document was refused; `field` is the path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid policy: {field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A condition operator (Huawei's names; more may follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    StringEquals,
    StringNotEquals,
    /// `*` any run of characters, `?` one character.
    StringLike,
    StringNotLike,
}

impl Operator {
    pub const ALL: [Operator; 4] = [
        Operator::StringEquals,
        Operator::StringNotEquals,
        Operator::StringLike,
        Operator::StringNotLike,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::StringEquals => "StringEquals",
            Operator::StringNotEquals => "StringNotEquals",
            Operator::StringLike => "StringLike",
            Operator::StringNotLike => "StringNotLike",
        }
    }
    /// Negated operators hold when the key is absent (as in IAM).
    pub fn negated(self) -> bool {
        matches!(self, Operator::StringNotEquals | Operator::StringNotLike)
    }
}

/// The condition key prefix of a resource tag: `ecs:ResourceTag/<tag key>`.
pub const RESOURCE_TAG: &str = "ecs:ResourceTag/";

/// One test: the resource tag `tag_key` against `values` (any of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub operator: Operator,
    pub tag_key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub effect: Effect,
    /// `service:resource:action` patterns; `*` matches any run of characters
    /// inside a segment (`ecs:*:get*`).
    pub actions: Vec<String>,
    /// All must hold.
    pub conditions: Vec<Condition>,
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

/// At most this many statements, actions per statement and values per key.
pub const MAX_STATEMENTS: usize = 100;
pub const MAX_LIST: usize = 100;

fn object<'a>(
    v: &'a Value,
    field: &str,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, PolicyError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(field, "must be a JSON object"))?;
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        let at = if field.is_empty() {
            k.clone()
        } else {
            format!("{field}.{k}")
        };
        return Err(err(
            at,
            format!("unknown key (allowed: {})", allowed.join(", ")),
        ));
    }
    Ok(o)
}

fn string_list(v: &Value, field: &str) -> Result<Vec<String>, PolicyError> {
    let a = v
        .as_array()
        .ok_or_else(|| err(field, "must be a list of strings"))?;
    if a.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if a.len() > MAX_LIST {
        return Err(err(field, format!("at most {MAX_LIST} entries")));
    }
    a.iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(format!("{field}[{i}]"), "must be a string"))
        })
        .collect()
}

/// `service:resource:action`, each segment letters, digits and `*`.
fn valid_action(a: &str) -> bool {
    let segs: Vec<&str> = a.split(':').collect();
    segs.len() == 3
        && segs
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*'))
}

impl Policy {
    /// Parses a document from JSON text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| err("", format!("not valid JSON ({e})")))?;
        Policy::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<Policy, PolicyError> {
        let root = object(v, "", &["Version", "Statement"])?;
        match root.get("Version") {
            Some(Value::String(s)) if s == "1.1" => {}
            Some(_) => return Err(err("Version", "must be \"1.1\"")),
            None => return Err(err("Version", "is required")),
        }
        let list = root
            .get("Statement")
            .ok_or_else(|| err("Statement", "is required"))?
            .as_array()
            .ok_or_else(|| err("Statement", "must be a list of statements"))?;
        if list.is_empty() {
            return Err(err("Statement", "must not be empty"));
        }
        if list.len() > MAX_STATEMENTS {
            return Err(err(
                "Statement",
                format!("at most {MAX_STATEMENTS} statements"),
            ));
        }
        let statements = list
            .iter()
            .enumerate()
            .map(|(i, s)| statement(s, &format!("Statement[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    /// The document as Huawei writes it (stored form).
    pub fn to_value(&self) -> Value {
        let statements: Vec<Value> = self
            .statements
            .iter()
            .map(|s| {
                let mut o = serde_json::Map::new();
                o.insert(
                    "Effect".into(),
                    match s.effect {
                        Effect::Allow => "Allow",
                        Effect::Deny => "Deny",
                    }
                    .into(),
                );
                o.insert("Action".into(), s.actions.clone().into());
                if !s.conditions.is_empty() {
                    let mut ops = serde_json::Map::new();
                    for c in &s.conditions {
                        let entry = ops
                            .entry(c.operator.as_str())
                            .or_insert_with(|| Value::Object(Default::default()));
                        entry.as_object_mut().expect("an object").insert(
                            format!("{RESOURCE_TAG}{}", c.tag_key),
                            c.values.clone().into(),
                        );
                    }
                    o.insert("Condition".into(), Value::Object(ops));
                }
                Value::Object(o)
            })
            .collect();
        serde_json::json!({"Version": "1.1", "Statement": statements})
    }
}

fn statement(v: &Value, field: &str) -> Result<Statement, PolicyError> {
    let o = object(v, field, &["Effect", "Action", "Condition"])?;
    let effect = match o.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(_) => {
            return Err(err(
                format!("{field}.Effect"),
                "must be \"Allow\" or \"Deny\"",
            ));
        }
        None => return Err(err(format!("{field}.Effect"), "is required")),
    };
    let af = format!("{field}.Action");
    let actions = string_list(o.get("Action").ok_or_else(|| err(&af, "is required"))?, &af)?;
    for (i, a) in actions.iter().enumerate() {
        if !valid_action(a) {
            return Err(err(
                format!("{af}[{i}]"),
                "must be service:resource:action (letters, digits, *)",
            ));
        }
    }
    let mut conditions = Vec::new();
    if let Some(c) = o.get("Condition") {
        let cf = format!("{field}.Condition");
        let names: Vec<&str> = Operator::ALL.iter().map(|o| o.as_str()).collect();
        let ops = object(c, &cf, &names)?;
        for (name, keys) in ops {
            let operator = *Operator::ALL
                .iter()
                .find(|o| o.as_str() == name)
                .expect("checked by object()");
            let of = format!("{cf}.{name}");
            let keys = keys
                .as_object()
                .ok_or_else(|| err(&of, "must be an object of condition keys"))?;
            if keys.is_empty() {
                return Err(err(&of, "must not be empty"));
            }
            for (key, values) in keys {
                let kf = format!("{of}.{key}");
                let tag_key = key
                    .strip_prefix(RESOURCE_TAG)
                    .filter(|k| crate::authz::tags::valid_key(k))
                    .ok_or_else(|| {
                        err(
                            &kf,
                            format!("unsupported condition key (use {RESOURCE_TAG}<tag key>)"),
                        )
                    })?;
                conditions.push(Condition {
                    operator,
                    tag_key: tag_key.to_owned(),
                    values: string_list(values, &kf)?,
                });
            }
        }
        if conditions.is_empty() {
            return Err(err(&cf, "must not be empty"));
        }
    }
    Ok(Statement {
        effect,
        actions,
        conditions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str) -> String {
        Policy::parse(text).unwrap_err().field
    }

    #[test]
    fn a_full_document_parses_and_round_trips() {
        let text = r#"{"Version": "1.1", "Statement": [
            {"Effect": "Allow", "Action": ["ecs:cloudServers:resetServerPwd", "ecs:*:get*"],
             "Condition": {"StringEquals": {"ecs:ResourceTag/env": ["staging"]},
                           "StringLike": {"ecs:ResourceTag/team": ["db-*"]}}},
            {"Effect": "Deny", "Action": ["ecs:cloudServers:stop"]}]}"#;
        let p = Policy::parse(text).unwrap();
        assert_eq!(p.statements.len(), 2);
        assert_eq!(p.statements[0].effect, Effect::Allow);
        assert_eq!(p.statements[0].conditions.len(), 2);
        assert_eq!(p.statements[0].conditions[0].tag_key, "env");
        assert_eq!(p.statements[1].effect, Effect::Deny);
        assert!(p.statements[1].conditions.is_empty());
        let again = Policy::from_value(&p.to_value()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        assert_eq!(
            field(r#"{"Version":"1.1","Statement":[],"Extra":1}"#),
            "Extra"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c"],"Resource":["*"]}]}"#
            ),
            "Statement[0].Resource"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c"],"Condition":{"NumericEquals":{}}}]}"#
            ),
            "Statement[0].Condition.NumericEquals"
        );
    }

    #[test]
    fn malformed_values_are_named_with_their_path() {
        assert_eq!(field(r#"{"Version":"1.0","Statement":[]}"#), "Version");
        assert_eq!(field(r#"{"Statement":[]}"#), "Version");
        assert_eq!(field(r#"{"Version":"1.1","Statement":[]}"#), "Statement");
        assert_eq!(field(r#"{"Version":"1.1","Statement":{}}"#), "Statement");
        assert_eq!(
            field(r#"{"Version":"1.1","Statement":[{"Effect":"allow","Action":["a:b:c"]}]}"#),
            "Statement[0].Effect"
        );
        assert_eq!(
            field(r#"{"Version":"1.1","Statement":[{"Effect":"Allow"}]}"#),
            "Statement[0].Action"
        );
        assert_eq!(
            field(r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":"a:b:c"}]}"#),
            "Statement[0].Action"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c", "ecs:servers"]}]}"#
            ),
            "Statement[0].Action[1]"
        );
        assert_eq!(
            field(r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c", 3]}]}"#),
            "Statement[0].Action[1]"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c"],"Condition":{"StringEquals":{"ecs:ResourceTag/env":"x"}}}]}"#
            ),
            "Statement[0].Condition.StringEquals.ecs:ResourceTag/env"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c"],"Condition":{"StringEquals":{"g:UserName":["x"]}}}]}"#
            ),
            "Statement[0].Condition.StringEquals.g:UserName"
        );
        assert_eq!(
            field(
                r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["a:b:c"],"Condition":{}}]}"#
            ),
            "Statement[0].Condition"
        );
        assert_eq!(field("[1]"), "");
        assert_eq!(field("{"), "");
    }
}
