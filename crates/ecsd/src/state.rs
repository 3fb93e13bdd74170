//! What every handler shares.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::config::Config;
use crate::secrets::MasterKey;
use crate::store::{AuthzStore, EscrowStore, IdentityStore, LifecycleStore, Store};

/// An agent credential may send this many seconds' worth of its rate at once.
pub const AGENT_BURST_FACTOR: u32 = 4;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Users, tokens, temporary credentials: the same store object as `store`.
    pub identity: Arc<dyn IdentityStore>,
    /// Groups, policies and grants: the same store object as `store`.
    pub authz_store: Arc<dyn AuthzStore>,
    /// Compiled policy sets, cached across requests.
    pub authorizer: Arc<crate::authorize::Authorizer>,
    pub master: Arc<MasterKey>,
    pub config: Arc<Config>,
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Agent API requests per agent credential (its hash).
    pub agent_limiter: Arc<DefaultKeyedRateLimiter<String>>,
    pub wakers: Arc<Wakers>,
    /// The pin of the CA agents enroll against; set when serving HTTPS.
    pub ca_pin: Arc<std::sync::OnceLock<ecs_trust::CaPin>>,
    /// The work-signing keys, loaded (or made) on first use, reloaded on
    /// SIGHUP (after `ecsd admin work-key-rotate`).
    pub work_keys: Arc<std::sync::RwLock<Option<Arc<crate::work::WorkKeys>>>>,
    /// Access key lifecycle, revocation, rotation and audit traces: the same
    /// store object as `store`.
    pub lifecycle: Arc<dyn LifecycleStore>,
    /// Escrow recipients, escrowed versions and rotation policies (issue
    /// 15): the same store object as `store`.
    pub escrow: Arc<dyn EscrowStore>,
    /// Failed authentications per source address and per access key.
    pub auth_failures: Arc<crate::throttle::FailureThrottle>,
    /// The wall clock of the X-Sdk-Date window and of power-job expiry.
    pub clock: Clock,
    /// Whether this replica runs the fleet-wide housekeeping now (the job
    /// sweeper and retention: one replica at a time on PostgreSQL).
    pub housekeeper: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped whenever a reset target or a power job may have changed
    /// state here: wakes the outcome and job reads that `wait`.
    pub changes: Arc<Changes>,
    /// Event streams (`api::events`) open now on this replica.
    pub event_streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A counter of state changes that readers can wait on (`?wait=` on the
/// reset outcome and job endpoints). Changes made by another replica are
/// not seen here: those readers look again every second.
pub struct Changes(tokio::sync::watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Changes(tokio::sync::watch::Sender::new(0))
    }
}

impl Changes {
    /// Something changed: wake every waiting reader.
    pub fn bump(&self) {
        self.0.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The wall clock that the X-Sdk-Date window (`auth.rs`) and power jobs
/// (their stored begin time, the sweeper's cutoff) read: the system's
/// `Utc::now()`, plus an offset that only tests set ([`Clock::jump`]), to
/// play an NTP step or an operator's `date -s` without changing the
/// machine's clock. Timeouts of requests and connections use tokio's
/// monotonic `Instant` and are not affected by wall-clock jumps at all
/// (docs/reliability.md, "Faults").
#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    /// The current time as this process sees it.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::milliseconds(
                self.offset_ms.load(std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// Moves this clock (every copy of it) by `by`, forward or back.
    pub fn jump(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl AppState {
    pub fn new<S: Store + LifecycleStore + IdentityStore + AuthzStore + EscrowStore>(
        store: Arc<S>,
        master: MasterKey,
        config: Config,
    ) -> Self {
        let rate = NonZeroU32::new(config.rate_limit_per_sec.max(1)).expect("max(1) is non-zero");
        let agent_rate =
            NonZeroU32::new(config.agent_rate_limit_per_sec.max(1)).expect("max(1) is non-zero");
        AppState {
            lifecycle: store.clone(),
            escrow: store.clone(),
            identity: store.clone(),
            authz_store: store.clone(),
            authorizer: Arc::new(crate::authorize::Authorizer::default()),
            auth_failures: Arc::new(crate::throttle::FailureThrottle::new(
                config.auth_failures_per_minute,
            )),
            store,
            master: Arc::new(master),
            limiter: Arc::new(RateLimiter::keyed(Quota::per_second(rate))),
            // An agent's start is a burst (heartbeat, polls, acknowledgements).
            agent_limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(agent_rate).allow_burst(
                    agent_rate
                        .saturating_mul(NonZeroU32::new(AGENT_BURST_FACTOR).expect("non-zero")),
                ),
            )),
            config: Arc::new(config),
            wakers: Arc::new(Wakers::default()),
            ca_pin: Arc::default(),
            work_keys: Arc::default(),
            clock: Clock::default(),
            housekeeper: Arc::default(),
            changes: Arc::default(),
            event_streams: Arc::default(),
        }
    }

    /// The work-signing keys (made on first use).
    pub async fn work_keys(&self) -> Result<Arc<crate::work::WorkKeys>, crate::work::WorkKeyError> {
        if let Some(k) = self.work_keys.read().expect("work keys lock").clone() {
            return Ok(k);
        }
        self.reload_work_keys().await
    }

    /// Reads the work-signing keys from the store again (a rotation made by
    /// `ecsd admin work-key-rotate`, possibly on another replica).
    pub async fn reload_work_keys(
        &self,
    ) -> Result<Arc<crate::work::WorkKeys>, crate::work::WorkKeyError> {
        let keys =
            Arc::new(crate::work::WorkKeys::load_or_create(&*self.store, &self.master).await?);
        *self.work_keys.write().expect("work keys lock") = Some(keys.clone());
        Ok(keys)
    }
}

/// The authenticated caller of a public API request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential's id: the AK (permanent or temporary), or for a token
    /// the token's id (never the token).
    pub access_key: String,
    pub project_id: String,
    pub role: crate::store::Role,
    /// The IAM user behind the credential; `None` for a project access key
    /// made by `ecsd admin access-key create` (no user).
    pub user: Option<UserRef>,
}

/// An IAM user as a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    pub id: String,
    pub name: String,
}

/// The peer address of the connection.
#[derive(Debug, Clone)]
pub struct Source(pub String);

/// Wakes long-polling agents when work for their server arrives, without
/// polling the database. One `Notify` per waiting server.
#[derive(Default)]
pub struct Wakers {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    closing: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// One waiting agent's hold on its server's notifier.
pub struct Subscription {
    wakers: Arc<Wakers>,
    server_id: String,
    notify: Arc<Notify>,
}

impl Subscription {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    /// Drops the map's entry once no agent waits on it.
    fn drop(&mut self) {
        let mut map = self.wakers.map.lock().expect("wakers lock");
        // Our reference goes while the lock is held, so that two polls
        // ending at once cannot both see the other's and leave the entry.
        let mine = std::mem::take(&mut self.notify);
        // Two strong references left: ours and the map's.
        if Arc::strong_count(&mine) <= 2 {
            map.remove(&self.server_id);
        }
        drop(mine);
    }
}

impl Wakers {
    /// Ends every long poll at once (graceful shutdown).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.closing.notify_waiters();
    }

    /// Completes when the server shuts down.
    pub async fn closed(&self) {
        let n = self.closing.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            n.await;
        }
    }

    /// The notifier a waiting agent subscribes to, held until the returned
    /// subscription is dropped: when the poll ends, and also when it is
    /// cancelled (the agent's connection closed mid-poll).
    pub fn subscribe(self: &Arc<Self>, server_id: &str) -> Subscription {
        let notify = self
            .map
            .lock()
            .expect("wakers lock")
            .entry(server_id.to_owned())
            .or_default()
            .clone();
        Subscription {
            wakers: self.clone(),
            server_id: server_id.to_owned(),
            notify,
        }
    }

    /// How many servers' agents are long-polling this replica now.
    pub fn waiting(&self) -> usize {
        self.map.lock().expect("wakers lock").len()
    }

    /// Wakes every waiting agent (after notifications from other replicas
    /// may have been lost: each looks at the database again).
    pub fn wake_all(&self) {
        for n in self.map.lock().expect("wakers lock").values() {
            n.notify_waiters();
        }
    }

    /// Wakes the agents of these servers.
    pub fn wake<'a>(&self, server_ids: impl IntoIterator<Item = &'a str>) {
        let map = self.map.lock().expect("wakers lock");
        for id in server_ids {
            if let Some(n) = map.get(id) {
                n.notify_waiters();
            }
        }
    }
}
