//! Authorization: Huawei IAM policies as plain Rust (no I/O).
//!
//! A caller's effective policies (its groups' custom policies and system
//! roles in the project, or for a project access key its role) are compiled
//! once into a [`PolicySet`]: for each [`Action`] the statements whose
//! action patterns match it, so a decision looks only at those. An explicit
//! `Deny` that applies wins over any `Allow`; no applicable `Allow` denies.

pub mod policy;
pub mod tags;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

pub use policy::{Condition, Effect, Operator, Policy, PolicyError, Statement};

/// Every action a public call needs. Huawei's names where Huawei has one;
/// `ecs:enrollTokens:create` is ecsd's. The `iam:` actions are the remote
/// administration of users, groups, policies, grants and access keys
/// (system role `admin` only); `cts:traces:list` reads the audit trail
/// (every system role). `ecs:cloudServers:getPassword` hands out escrowed
/// (encrypted) passwords: system role `admin` only (readonly's `get*` is
/// denied it explicitly); `ecs:escrow:*` manages recipients and rotation
/// policies (issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ResetServerPwd,
    Reboot,
    Start,
    Stop,
    List,
    Get,
    GetJob,
    ShowServerTags,
    SetServerTags,
    CreateEnrollToken,
    CreateUser,
    ListUsers,
    UpdateUser,
    DeleteUser,
    CreateGroup,
    ListGroups,
    AddUserToGroup,
    RemoveUserFromGroup,
    CreateRole,
    ListRoles,
    GrantRole,
    RevokeRole,
    CreateCredential,
    ListCredentials,
    UpdateCredential,
    DeleteCredential,
    ListTraces,
    GetPassword,
    CreateRecipient,
    ListRecipients,
    DeleteRecipient,
    CreateRotationPolicy,
    ListRotationPolicies,
    DeleteRotationPolicy,
    GetPasswordStatus,
}

impl Action {
    pub const ALL: [Action; 35] = [
        Action::ResetServerPwd,
        Action::Reboot,
        Action::Start,
        Action::Stop,
        Action::List,
        Action::Get,
        Action::GetJob,
        Action::ShowServerTags,
        Action::SetServerTags,
        Action::CreateEnrollToken,
        Action::CreateUser,
        Action::ListUsers,
        Action::UpdateUser,
        Action::DeleteUser,
        Action::CreateGroup,
        Action::ListGroups,
        Action::AddUserToGroup,
        Action::RemoveUserFromGroup,
        Action::CreateRole,
        Action::ListRoles,
        Action::GrantRole,
        Action::RevokeRole,
        Action::CreateCredential,
        Action::ListCredentials,
        Action::UpdateCredential,
        Action::DeleteCredential,
        Action::ListTraces,
        Action::GetPassword,
        Action::CreateRecipient,
        Action::ListRecipients,
        Action::DeleteRecipient,
        Action::CreateRotationPolicy,
        Action::ListRotationPolicies,
        Action::DeleteRotationPolicy,
        Action::GetPasswordStatus,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ResetServerPwd => "ecs:cloudServers:resetServerPwd",
            Action::Reboot => "ecs:cloudServers:reboot",
            Action::Start => "ecs:cloudServers:start",
            Action::Stop => "ecs:cloudServers:stop",
            Action::List => "ecs:cloudServers:list",
            Action::Get => "ecs:cloudServers:get",
            Action::GetJob => "ecs:jobs:get",
            Action::ShowServerTags => "ecs:cloudServers:showServerTags",
            Action::SetServerTags => "ecs:cloudServers:batchSetServerTags",
            Action::CreateEnrollToken => "ecs:enrollTokens:create",
            Action::CreateUser => "iam:users:createUser",
            Action::ListUsers => "iam:users:listUsers",
            Action::UpdateUser => "iam:users:updateUser",
            Action::DeleteUser => "iam:users:deleteUser",
            Action::CreateGroup => "iam:groups:createGroup",
            Action::ListGroups => "iam:groups:listGroups",
            Action::AddUserToGroup => "iam:groups:addUserToGroup",
            Action::RemoveUserFromGroup => "iam:groups:removeUserFromGroup",
            Action::CreateRole => "iam:roles:createRole",
            Action::ListRoles => "iam:roles:listRoles",
            Action::GrantRole => "iam:permissions:grantRoleToGroupOnProject",
            Action::RevokeRole => "iam:permissions:revokeRoleFromGroupOnProject",
            Action::CreateCredential => "iam:credentials:createCredential",
            Action::ListCredentials => "iam:credentials:listCredentials",
            Action::UpdateCredential => "iam:credentials:updateCredential",
            Action::DeleteCredential => "iam:credentials:deleteCredential",
            Action::ListTraces => "cts:traces:list",
            Action::GetPassword => "ecs:cloudServers:getPassword",
            Action::CreateRecipient => "ecs:escrow:createRecipient",
            Action::ListRecipients => "ecs:escrow:listRecipients",
            Action::DeleteRecipient => "ecs:escrow:deleteRecipient",
            Action::CreateRotationPolicy => "ecs:escrow:createRotationPolicy",
            Action::ListRotationPolicies => "ecs:escrow:listRotationPolicies",
            Action::DeleteRotationPolicy => "ecs:escrow:deleteRotationPolicy",
            Action::GetPasswordStatus => "ecs:escrow:getPasswordStatus",
        }
    }
    fn index(self) -> usize {
        Action::ALL
            .iter()
            .position(|a| *a == self)
            .expect("every action is in ALL")
    }
}

/// `*` matches any run of characters, `?` exactly one (ASCII case-insensitive
/// when `fold`).
pub fn glob(pattern: &str, text: &str, fold: bool) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let eq = |a: u8, b: u8| {
        if fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Does an action pattern (`ecs:*:get*`) cover this action? Segment by
/// segment, so `*` never crosses a `:`; case-insensitive as IAM.
pub fn action_matches(pattern: &str, action: Action) -> bool {
    let mut ps = pattern.split(':');
    let mut asegs = action.as_str().split(':');
    loop {
        match (ps.next(), asegs.next()) {
            (None, None) => return true,
            (Some(p), Some(a)) if glob(p, a, true) => {}
            _ => return false,
        }
    }
}

/// The tags of the resource a decision is about; `None` for a call about
/// the project as a whole (list, jobs, enroll tokens).
pub type Tags<'a> = Option<&'a [String]>;

fn tag_value<'a>(tags: &'a [String], key: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| {
        let (k, v) = tags::split(t);
        (k == key).then_some(v)
    })
}

impl Condition {
    /// Values are alternatives; a negated operator holds when none matches
    /// (and when the tag is absent).
    pub fn holds(&self, resource: Tags<'_>) -> bool {
        let Some(value) = resource.and_then(|t| tag_value(t, &self.tag_key)) else {
            return self.operator.negated();
        };
        let any = match self.operator {
            Operator::StringEquals | Operator::StringNotEquals => {
                self.values.iter().any(|v| v == value)
            }
            Operator::StringLike | Operator::StringNotLike => {
                self.values.iter().any(|v| glob(v, value, false))
            }
        };
        any != self.operator.negated()
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A `Deny` statement applies.
    ExplicitDeny,
    /// No `Allow` applies.
    ImplicitDeny,
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// The statements of one effect for one action, indexed: a statement with a
/// `StringEquals` condition can only apply to a resource carrying one of its
/// values for that key, so it is found by the resource's tags (at most ten
/// lookups) instead of by scanning every statement.
#[derive(Debug, Clone, Default)]
struct Rules {
    /// An unconditional statement exists.
    always: bool,
    conds: Vec<Arc<[Condition]>>,
    /// Statements with a `StringEquals`: tag key -> value -> indices into `conds`.
    by_tag: HashMap<String, HashMap<String, Vec<usize>>>,
    /// The other conditional statements (scanned).
    scan: Vec<usize>,
}

impl Rules {
    fn add(&mut self, conditions: &Arc<[Condition]>) {
        if conditions.is_empty() {
            self.always = true;
            return;
        }
        let i = self.conds.len();
        match conditions
            .iter()
            .find(|c| c.operator == Operator::StringEquals)
        {
            Some(eq) => {
                let by_value = self.by_tag.entry(eq.tag_key.clone()).or_default();
                for v in &eq.values {
                    let ix = by_value.entry(v.clone()).or_default();
                    if ix.last() != Some(&i) {
                        ix.push(i);
                    }
                }
            }
            None => self.scan.push(i),
        }
        self.conds.push(conditions.clone());
    }

    fn is_empty(&self) -> bool {
        !self.always && self.conds.is_empty()
    }

    /// Does some statement apply to this resource?
    fn any_applies(&self, resource: Tags<'_>) -> bool {
        if self.always {
            return true;
        }
        let holds = |i: &usize| self.conds[*i].iter().all(|c| c.holds(resource));
        if let Some(tags) = resource {
            for t in tags {
                let (k, v) = tags::split(t);
                if let Some(ix) = self.by_tag.get(k).and_then(|m| m.get(v))
                    && ix.iter().any(holds)
                {
                    return true;
                }
            }
        }
        self.scan.iter().any(holds)
    }
}

#[derive(Debug, Clone, Default)]
struct ForAction {
    deny: Rules,
    allow: Rules,
}

/// Compiled policies: per action, the statements that can apply.
#[derive(Debug, Clone)]
pub struct PolicySet {
    by_action: [ForAction; Action::ALL.len()],
}

// By hand: `Default` is derived for arrays of at most 32 elements.
impl Default for PolicySet {
    fn default() -> Self {
        PolicySet {
            by_action: std::array::from_fn(|_| ForAction::default()),
        }
    }
}

impl PolicySet {
    pub fn compile<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> PolicySet {
        let mut set = PolicySet::default();
        for p in policies {
            for s in &p.statements {
                let conditions: Arc<[Condition]> = s.conditions.clone().into();
                for action in Action::ALL {
                    if !s.actions.iter().any(|pat| action_matches(pat, action)) {
                        continue;
                    }
                    let slot = &mut set.by_action[action.index()];
                    match s.effect {
                        Effect::Deny => slot.deny.add(&conditions),
                        Effect::Allow => slot.allow.add(&conditions),
                    }
                }
            }
        }
        set
    }

    /// The decision for `action` on a resource with these tags.
    pub fn decide(&self, action: Action, resource: Tags<'_>) -> Decision {
        let slot = &self.by_action[action.index()];
        if slot.deny.any_applies(resource) {
            return Decision::ExplicitDeny;
        }
        if slot.allow.any_applies(resource) {
            return Decision::Allow;
        }
        Decision::ImplicitDeny
    }

    /// Whether some resource could be allowed `action` (an `Allow` mentions
    /// it and no unconditional `Deny` does): a call that can never succeed
    /// is refused before any resource is looked at.
    pub fn may_allow(&self, action: Action) -> bool {
        let slot = &self.by_action[action.index()];
        !slot.deny.always && !slot.allow.is_empty()
    }
}

/// Built-in system roles, attached like custom policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemRole {
    /// Every action, IAM administration included.
    Admin,
    /// Resets, power actions, reading servers, jobs, tags and the audit
    /// trail; not enroll tokens, not tag changes, no IAM administration.
    Operator,
    /// Reading only (`get*`, `list*`, `show*` of `ecs:`, and the audit
    /// trail); no IAM administration.
    ReadOnly,
}

impl SystemRole {
    pub const ALL: [SystemRole; 3] = [
        SystemRole::Admin,
        SystemRole::Operator,
        SystemRole::ReadOnly,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SystemRole::Admin => "admin",
            SystemRole::Operator => "operator",
            SystemRole::ReadOnly => "readonly",
        }
    }
    pub fn parse(s: &str) -> Option<SystemRole> {
        SystemRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
    /// The role's policy document.
    pub fn policy(self) -> &'static Policy {
        static POLICIES: LazyLock<[Policy; 3]> = LazyLock::new(|| {
            SystemRole::ALL.map(|r| Policy::parse(r.document()).expect("built-in policies parse"))
        });
        &POLICIES[self as usize]
    }
    pub fn document(self) -> &'static str {
        match self {
            SystemRole::Admin => {
                r#"{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": ["ecs:*:*", "iam:*:*", "cts:*:*"]}]}"#
            }
            SystemRole::Operator => {
                r#"{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": [
                "ecs:cloudServers:resetServerPwd", "ecs:cloudServers:reboot", "ecs:cloudServers:start",
                "ecs:cloudServers:stop", "ecs:cloudServers:list", "ecs:cloudServers:get",
                "ecs:cloudServers:showServerTags", "ecs:jobs:get", "cts:traces:list"]}]}"#
            }
            SystemRole::ReadOnly => {
                r#"{"Version": "1.1", "Statement": [{"Effect": "Allow", "Action": [
                "ecs:*:get*", "ecs:*:list*", "ecs:*:show*", "cts:traces:list"]},
                {"Effect": "Deny", "Action": ["ecs:cloudServers:getPassword"]}]}"#
            }
        }
    }
    /// The compiled role alone (a project access key's policies).
    pub fn set(self) -> Arc<PolicySet> {
        static SETS: LazyLock<[Arc<PolicySet>; 3]> =
            LazyLock::new(|| SystemRole::ALL.map(|r| Arc::new(PolicySet::compile([r.policy()]))));
        SETS[self as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(docs: &[&str]) -> PolicySet {
        let ps: Vec<Policy> = docs.iter().map(|d| Policy::parse(d).unwrap()).collect();
        PolicySet::compile(&ps)
    }
    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const STAGING_RESETS: &str = r#"{"Version":"1.1","Statement":[{"Effect":"Allow",
        "Action":["ecs:cloudServers:resetServerPwd"],
        "Condition":{"StringEquals":{"ecs:ResourceTag/env":["staging"]}}}]}"#;

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob("*", "", false));
        assert!(glob("db-*", "db-1", false));
        assert!(!glob("db-*", "web-1", false));
        assert!(glob("a?c", "abc", false));
        assert!(!glob("a?c", "ac", false));
        assert!(glob("*b*", "abc", false));
        assert!(!glob("ABC", "abc", false));
        assert!(glob("ABC", "abc", true));
        assert!(glob("a*b*c", "aXXbYYc", false));
        assert!(!glob("a*b*c", "aXXbYY", false));
    }

    #[test]
    fn action_wildcards_stay_inside_their_segment() {
        assert!(action_matches("ecs:*:*", Action::GetJob));
        assert!(action_matches("ecs:cloudServers:*", Action::Reboot));
        assert!(!action_matches("ecs:cloudServers:*", Action::GetJob));
        assert!(action_matches("ecs:*:get*", Action::Get));
        assert!(action_matches("ecs:*:get*", Action::GetJob));
        assert!(!action_matches("ecs:*:get*", Action::List));
        assert!(action_matches(
            "ECS:CloudServers:ResetServerPwd",
            Action::ResetServerPwd
        ));
        assert!(!action_matches("ecs:*", Action::Get));
        assert!(!action_matches("*:*:*:*", Action::Get));
        assert!(!action_matches(
            "ecs:cloudServers:reset",
            Action::ResetServerPwd
        ));
    }

    #[test]
    fn no_allow_denies() {
        let s = PolicySet::default();
        assert_eq!(s.decide(Action::Get, None), Decision::ImplicitDeny);
        let s = set(&[
            r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["ecs:cloudServers:get"]}]}"#,
        ]);
        assert_eq!(s.decide(Action::Get, None), Decision::Allow);
        assert_eq!(s.decide(Action::List, None), Decision::ImplicitDeny);
    }

    #[test]
    fn string_equals_on_a_resource_tag() {
        let s = set(&[STAGING_RESETS]);
        let staging = tags(&["env=staging", "team=db"]);
        let prod = tags(&["env=production"]);
        assert!(s.decide(Action::ResetServerPwd, Some(&staging)).allowed());
        assert_eq!(
            s.decide(Action::ResetServerPwd, Some(&prod)),
            Decision::ImplicitDeny
        );
        assert!(!s.decide(Action::ResetServerPwd, Some(&[])).allowed());
        assert!(!s.decide(Action::ResetServerPwd, None).allowed());
        assert!(!s.decide(Action::Reboot, Some(&staging)).allowed());
        assert!(s.may_allow(Action::ResetServerPwd));
        assert!(!s.may_allow(Action::Reboot));
    }

    #[test]
    fn not_equals_and_like_and_not_like() {
        let s = set(&[r#"{"Version":"1.1","Statement":[
            {"Effect":"Allow","Action":["ecs:cloudServers:reboot"],"Condition":{"StringNotEquals":{"ecs:ResourceTag/env":["production","prod"]}}},
            {"Effect":"Allow","Action":["ecs:cloudServers:stop"],"Condition":{"StringLike":{"ecs:ResourceTag/team":["db-*","web-?"]}}},
            {"Effect":"Allow","Action":["ecs:cloudServers:start"],"Condition":{"StringNotLike":{"ecs:ResourceTag/team":["db-*"]}}}]}"#]);
        let t = |l: &[&str]| tags(l);
        assert!(
            s.decide(Action::Reboot, Some(&t(&["env=staging"])))
                .allowed()
        );
        assert!(!s.decide(Action::Reboot, Some(&t(&["env=prod"]))).allowed());
        assert!(
            !s.decide(Action::Reboot, Some(&t(&["env=production"])))
                .allowed()
        );
        // A negated operator holds when the tag is absent.
        assert!(s.decide(Action::Reboot, Some(&t(&[]))).allowed());
        assert!(
            s.decide(Action::Stop, Some(&t(&["team=db-main"])))
                .allowed()
        );
        assert!(s.decide(Action::Stop, Some(&t(&["team=web-1"]))).allowed());
        assert!(!s.decide(Action::Stop, Some(&t(&["team=web-12"]))).allowed());
        assert!(!s.decide(Action::Stop, Some(&t(&[]))).allowed());
        assert!(
            !s.decide(Action::Start, Some(&t(&["team=db-main"])))
                .allowed()
        );
        assert!(s.decide(Action::Start, Some(&t(&["team=web"]))).allowed());
    }

    #[test]
    fn all_conditions_of_a_statement_must_hold() {
        let s = set(&[
            r#"{"Version":"1.1","Statement":[{"Effect":"Allow","Action":["ecs:*:*"],
            "Condition":{"StringEquals":{"ecs:ResourceTag/env":["staging"],"ecs:ResourceTag/team":["db"]}}}]}"#,
        ]);
        assert!(
            s.decide(Action::Get, Some(&tags(&["env=staging", "team=db"])))
                .allowed()
        );
        assert!(
            !s.decide(Action::Get, Some(&tags(&["env=staging", "team=web"])))
                .allowed()
        );
        assert!(!s.decide(Action::Get, Some(&tags(&["team=db"]))).allowed());
    }

    #[test]
    fn an_explicit_deny_wins_over_any_allow() {
        let s = set(&[
            SystemRole::Admin.document(),
            r#"{"Version":"1.1","Statement":[{"Effect":"Deny","Action":["ecs:cloudServers:resetServerPwd"],
                "Condition":{"StringEquals":{"ecs:ResourceTag/env":["production"]}}}]}"#,
        ]);
        let prod = tags(&["env=production"]);
        let staging = tags(&["env=staging"]);
        assert_eq!(
            s.decide(Action::ResetServerPwd, Some(&prod)),
            Decision::ExplicitDeny
        );
        assert!(s.decide(Action::ResetServerPwd, Some(&staging)).allowed());
        assert!(s.decide(Action::Reboot, Some(&prod)).allowed());
        let s = set(&[
            SystemRole::Admin.document(),
            r#"{"Version":"1.1","Statement":[{"Effect":"Deny","Action":["ecs:enrollTokens:*"]}]}"#,
        ]);
        assert_eq!(
            s.decide(Action::CreateEnrollToken, None),
            Decision::ExplicitDeny
        );
        assert!(!s.may_allow(Action::CreateEnrollToken));
    }

    #[test]
    fn the_system_roles() {
        let admin = SystemRole::Admin.set();
        let op = SystemRole::Operator.set();
        let ro = SystemRole::ReadOnly.set();
        for a in Action::ALL {
            assert!(admin.decide(a, None).allowed(), "admin {a:?}");
        }
        let reads = [
            Action::List,
            Action::Get,
            Action::GetJob,
            Action::ShowServerTags,
            Action::ListTraces,
            // Escrow: public keys, policies and the drift report, never
            // an escrowed password (readonly's get* is denied it).
            Action::ListRecipients,
            Action::ListRotationPolicies,
            Action::GetPasswordStatus,
        ];
        for a in Action::ALL {
            let read = reads.contains(&a);
            assert_eq!(ro.decide(a, None).allowed(), read, "readonly {a:?}");
            let iam = a.as_str().starts_with("iam:");
            // Escrow is the admin's: operators reset, they do not read
            // escrowed passwords or manage who can.
            let escrow = a == Action::GetPassword || a.as_str().starts_with("ecs:escrow:");
            let op_may =
                !iam && !escrow && !matches!(a, Action::CreateEnrollToken | Action::SetServerTags);
            assert_eq!(op.decide(a, None).allowed(), op_may, "operator {a:?}");
        }
        assert_eq!(SystemRole::parse("operator"), Some(SystemRole::Operator));
        assert_eq!(SystemRole::parse("root"), None);
    }

    fn arb_condition() -> impl Strategy<Value = Condition> {
        (
            prop::sample::select(Operator::ALL.to_vec()),
            prop::sample::select(vec!["env", "team"]),
            prop::collection::vec(
                prop::sample::select(vec!["staging", "prod", "db-*", "*", "x"]),
                1..3,
            ),
        )
            .prop_map(|(operator, k, values)| Condition {
                operator,
                tag_key: k.to_owned(),
                values: values.into_iter().map(str::to_owned).collect(),
            })
    }

    fn arb_statement(effect: Effect) -> impl Strategy<Value = Statement> {
        let patterns = Action::ALL
            .iter()
            .map(|a| a.as_str().to_owned())
            .chain(["ecs:*:*", "ecs:cloudServers:*", "ecs:*:get*", "*:*:*"].map(String::from))
            .collect::<Vec<_>>();
        (
            prop::collection::vec(prop::sample::select(patterns), 1..4),
            prop::collection::vec(arb_condition(), 0..3),
        )
            .prop_map(move |(actions, conditions)| Statement {
                effect,
                actions,
                conditions,
            })
    }

    proptest! {
        /// Whatever else a caller has, a Deny that applies to the action
        /// and the resource decides.
        #[test]
        fn deny_always_wins(
            allows in prop::collection::vec(arb_statement(Effect::Allow), 0..6),
            denies in prop::collection::vec(arb_statement(Effect::Deny), 1..4),
            action in prop::sample::select(Action::ALL.to_vec()),
            resource in prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["env=staging", "env=prod", "team=db-1", "team=web"]), 0..3)),
        ) {
            let resource: Option<Vec<String>> = resource.map(|v| v.into_iter().map(String::from).collect());
            let r = resource.as_deref();
            let deny_applies = denies.iter().any(|s| {
                s.actions.iter().any(|p| action_matches(p, action))
                    && s.conditions.iter().all(|c| c.holds(r))
            });
            let mut statements = allows.clone();
            statements.extend(denies.clone());
            // Also with everything allowed.
            let with_admin = [Policy { statements }, SystemRole::Admin.policy().clone()];
            let d = PolicySet::compile(&with_admin).decide(action, r);
            if deny_applies {
                prop_assert_eq!(d, Decision::ExplicitDeny);
            } else {
                prop_assert_eq!(d, Decision::Allow);
            }
            // And the compiled decision agrees with a direct reading.
            let plain = PolicySet::compile([&Policy { statements: allows.clone() }]).decide(action, r);
            let allow_applies = allows.iter().any(|s| {
                s.actions.iter().any(|p| action_matches(p, action))
                    && s.conditions.iter().all(|c| c.holds(r))
            });
            prop_assert_eq!(plain.allowed(), allow_applies);
        }
    }
}
