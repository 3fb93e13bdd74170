//! Enforcement: every public handler names its [`Action`] and calls
//! [`authorize`] after authentication. The caller's effective policies are
//! resolved once per request: one small store read gives the authorization
//! data's version and the user an access key acts as; the compiled set of
//! that (project, user) is reused while the version stands. Otherwise the
//! grants of the user's groups in the project are read and compiled (a set
//! is also cached by its grant list, and a policy by its id: policies never
//! change after creation). A project access key without a user keeps its
//! role, mapped to the `admin` or `readonly` system role.
//!
//! Denials answer 403 `APIGW.0302` and are audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::authz::{Action, Policy, PolicySet, SystemRole};
use crate::domain::{Error, Problem, ServerFailure};
use crate::error::{ApiError, current_request_id};
use crate::state::{AppState, Caller};
use crate::store::authz::{AuthzStore, Grant};
use crate::store::identity::UserRole;
use crate::store::{AuditEntry, Role, Server};

/// Compiled sets by grant list, at most this many kept.
const MAX_CACHED_SETS: usize = 4096;

/// (project id, user id).
type CallerKey = (String, String, Option<Grant>);

/// Caches of compiled policies (shared by all requests).
#[derive(Default)]
pub struct Authorizer {
    callers: Mutex<HashMap<CallerKey, (i64, Arc<PolicySet>)>>,
    sets: Mutex<HashMap<Vec<Grant>, Arc<PolicySet>>>,
    policies: Mutex<HashMap<String, Arc<Policy>>>,
}

impl Authorizer {
    /// The compiled policies of a caller in its project.
    ///
    /// `user_role`: the system role the identity store gives the caller's
    /// user in the project (`ecsd admin user create --role`), granted besides
    /// the user's groups.
    pub async fn policy_set(
        &self,
        store: &dyn AuthzStore,
        caller: &Caller,
        user_role: Option<SystemRole>,
    ) -> Result<Arc<PolicySet>, Error> {
        let (version, bound) = store.authz_version(&caller.access_key).await?;
        let Some(user) = caller.user.as_ref().map(|u| u.id.clone()).or(bound) else {
            return Ok(match caller.role {
                Role::Admin => SystemRole::Admin.set(),
                Role::ReadOnly => SystemRole::ReadOnly.set(),
            });
        };
        let role_grant = user_role.map(Grant::system);
        let key = (caller.project_id.clone(), user, role_grant.clone());
        if let Some((v, set)) = self.callers.lock().expect("authz cache").get(&key)
            && *v == version
        {
            return Ok(set.clone());
        }
        let mut grants = store
            .caller_grants(&key.0, &caller.access_key, Some(&key.1))
            .await?
            .unwrap_or_default();
        if let Some(g) = role_grant
            && !grants.contains(&g)
        {
            grants.push(g);
            grants.sort();
        }
        let set = self.compile(store, grants).await?;
        let mut callers = self.callers.lock().expect("authz cache");
        if callers.len() >= MAX_CACHED_SETS {
            callers.clear();
        }
        callers.insert(key, (version, set.clone()));
        Ok(set)
    }

    /// The compiled set of these grants (sorted), from the cache when seen before.
    pub async fn compile(
        &self,
        store: &dyn AuthzStore,
        grants: Vec<Grant>,
    ) -> Result<Arc<PolicySet>, Error> {
        if let Some(s) = self.sets.lock().expect("authz cache").get(&grants) {
            return Ok(s.clone());
        }
        let missing: Vec<String> = {
            let cache = self.policies.lock().expect("authz cache");
            grants
                .iter()
                .filter_map(|g| match g {
                    Grant::Policy(id) if !cache.contains_key(id) => Some(id.clone()),
                    _ => None,
                })
                .collect()
        };
        if !missing.is_empty() {
            let stored = store.policies_by_ids(&missing).await?;
            let mut cache = self.policies.lock().expect("authz cache");
            if cache.len() + stored.len() > MAX_CACHED_SETS * 4 {
                cache.clear();
            }
            for p in stored {
                let parsed = Policy::parse(&p.document)
                    .map_err(|e| Error::internal("a stored policy does not parse", e))?;
                cache.insert(p.id, Arc::new(parsed));
            }
        }
        let set = {
            let cache = self.policies.lock().expect("authz cache");
            let mut policies: Vec<Arc<Policy>> = Vec::with_capacity(grants.len());
            for g in &grants {
                match g {
                    Grant::System(_) => {
                        let role = g.role().expect("a system grant names a role");
                        policies.push(Arc::new(role.policy().clone()));
                    }
                    // Deleted between the two reads: no longer granted.
                    Grant::Policy(id) => policies.extend(cache.get(id).cloned()),
                }
            }
            Arc::new(PolicySet::compile(policies.iter().map(|p| &**p)))
        };
        let mut sets = self.sets.lock().expect("authz cache");
        if sets.len() >= MAX_CACHED_SETS {
            sets.clear();
        }
        sets.insert(grants, set.clone());
        Ok(set)
    }
}

/// A caller's right to one action in this request: checked for the action
/// as a whole by [`authorize`], then per server with its tags.
#[derive(Clone)]
pub struct Permit {
    pub action: Action,
    set: Arc<PolicySet>,
}

impl Permit {
    /// Every action allowed (internal callers and tests).
    pub fn all(action: Action) -> Permit {
        Permit {
            action,
            set: SystemRole::Admin.set(),
        }
    }
    /// Could the caller do the action on some resource at all?
    pub fn possible(&self) -> bool {
        self.set.may_allow(self.action)
    }
    /// May the caller do the action on a resource with these tags?
    pub fn allows_tags(&self, tags: &[String]) -> bool {
        self.set.decide(self.action, Some(tags)).allowed()
    }
    pub fn allows(&self, server: &Server) -> bool {
        self.allows_tags(&server.tags)
    }
    /// The servers (of the caller's project) the caller may not touch,
    /// as per-server failures in request order.
    pub fn refused<'a>(
        &self,
        ids: &[String],
        server: impl Fn(&str) -> Option<&'a Server>,
    ) -> Vec<ServerFailure> {
        // An action the caller may do on no server refuses every id, known or not.
        let none = !self.set.may_allow(self.action);
        ids.iter()
            .filter(|id| none || server(id).is_some_and(|s| !self.allows(s)))
            .map(|id| ServerFailure::new(id.clone(), Problem::Forbidden(self.action.as_str())))
            .collect()
    }
    /// The error for one server the caller may not touch.
    pub fn refuse(&self, server_id: &str) -> Error {
        Error::Refused(ServerFailure::new(
            server_id,
            Problem::Forbidden(self.action.as_str()),
        ))
    }
}

/// A caller's compiled policies, resolved once for the request.
#[derive(Clone)]
pub struct Permits {
    set: Arc<PolicySet>,
}

impl Permits {
    /// Every action allowed (ecsd's own calls: rotations).
    pub fn all() -> Permits {
        Permits {
            set: SystemRole::Admin.set(),
        }
    }
    /// The permit for one action (decided per server afterwards).
    pub fn permit(&self, action: Action) -> Permit {
        Permit {
            action,
            set: self.set.clone(),
        }
    }
}

/// The action of a batch power call.
pub fn power_action(kind: crate::domain::PowerKind) -> Action {
    match kind {
        crate::domain::PowerKind::Start => Action::Start,
        crate::domain::PowerKind::Stop => Action::Stop,
        crate::domain::PowerKind::Reboot => Action::Reboot,
    }
}

/// Resolves the caller's policies (one store read; compiled sets cached).
pub async fn permits(state: &AppState, caller: &Caller) -> Result<Permits, ApiError> {
    let set = state
        .authorizer
        .policy_set(
            &*state.authz_store,
            caller,
            identity_role(state, caller).await?,
        )
        .await
        .map_err(ApiError::from)?;
    Ok(Permits { set })
}

/// Resolves the caller's policies and checks that `action` can be allowed
/// at all (an action allowed only on tagged resources passes here and is
/// decided per server). Project-level calls (`project_level`: list, jobs,
/// enroll tokens, reset outcomes) must be allowed without a resource.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    source: &str,
    action: Action,
    project_level: bool,
) -> Result<Permit, ApiError> {
    let set = permits(state, caller).await?.set;
    let ok = if project_level {
        set.decide(action, None).allowed()
    } else {
        set.may_allow(action)
    };
    if !ok {
        let err = ApiError::forbidden(format!("the policies do not allow {}", action.as_str()));
        audit_denial(state, caller, source, action, Vec::new()).await;
        return Err(err);
    }
    Ok(Permit { action, set })
}

/// The system role of the caller's IAM user in its project, from the
/// identity store (none for project access keys and keys bound by authz).
async fn identity_role(state: &AppState, caller: &Caller) -> Result<Option<SystemRole>, Error> {
    let Some(user) = &caller.user else {
        return Ok(None);
    };
    let role = state
        .identity
        .user_role(&user.id, &caller.project_id)
        .await?;
    Ok(role.map(|r| match r {
        UserRole::Admin => SystemRole::Admin,
        UserRole::Operator => SystemRole::Operator,
        UserRole::ReadOnly => SystemRole::ReadOnly,
    }))
}

/// Records a denied call (who, what, which servers).
pub async fn audit_denial(
    state: &AppState,
    caller: &Caller,
    source: &str,
    action: Action,
    servers: Vec<String>,
) {
    let entry = AuditEntry {
        at: chrono::Utc::now(),
        request_id: current_request_id(),
        project_id: caller.project_id.clone(),
        actor: caller
            .user
            .as_ref()
            .map_or_else(|| caller.access_key.clone(), |u| u.id.clone()),
        action: action.as_str().to_owned(),
        servers,
        dry_run: false,
        outcome: "denied APIGW.0302".into(),
        source: source.to_owned(),
        user_id: caller.user.as_ref().map(|u| u.id.clone()),
        user_name: caller.user.as_ref().map(|u| u.name.clone()),
        error_code: Some("APIGW.0302".into()),
        http_status: Some(403),
    };
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e.chain(), "writing the audit record failed");
    }
}
