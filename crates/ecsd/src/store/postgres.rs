//! The PostgreSQL store: the same four traits as [`super::SqliteStore`], for
//! several ecsd replicas sharing one database.
//!
//! A `deadpool-postgres` pool of `tokio-postgres` connections, no TLS to the
//! database. The schema is versioned (`postgres_schema.rs`) and migrated
//! once at start under an advisory lock. Semantics are SQLite's: where
//! SQLite relied on its single writer, each write that reads before it
//! writes locks the rows it depends on first (`SELECT ... FOR UPDATE`), in
//! one order everywhere — the servers involved, sorted by id, then their
//! work — so concurrent replicas serialize per server instead of
//! deadlocking. Rules stay in [`crate::domain`]; SQL only reads and writes.
//!
//! Work for a server is created in [`PgStore::create_reset`] and
//! [`PgStore::create_job`] (and fails in re-keys): a cross-replica wake-up
//! (LISTEN/NOTIFY) belongs in [`PgStore::work_created`], called inside those
//! transactions.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ecs_policy::OsType;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::*;
use crate::domain::{self, Entity, PowerState, reasons, server as server_rules};

pub use super::postgres_schema::MigrateError;

/// Connections in the pool unless `database_pool_size` says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// True for `postgres://` and `postgresql://` URLs (the `database` setting).
pub fn is_postgres_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// The URL without its password (for logs and errors).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

pub(super) fn backend(e: impl Into<domain::error::BoxError>) -> StoreError {
    StoreError::storage(e)
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::unavailable(e)
        } else {
            StoreError::storage(e)
        }
    }
}

/// The database cannot be reached or cannot take the write now: a lost or
/// refused connection, a server shutting down or starting, a full disk
/// (answered 503 `APIGW.0503`, like SQLite's full disk; retry later).
pub(super) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // 08: connection exception; 53: insufficient resources (disk full,
        // out of memory, too many connections); 57P01-57P03: shutting down,
        // crash shutdown, cannot connect now.
        Some(c) => {
            let c = c.code();
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P0")
        }
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    /// No connection to be had: PostgreSQL is down or unreachable, or every
    /// connection stayed busy for the pool's wait (503, retry later).
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::unavailable(e)
    }
}

/// A unique, foreign-key, not-null or check violation (SQLite's
/// `ConstraintViolation`).
pub(super) fn is_constraint(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::CHECK_VIOLATION,
        ]
        .contains(c)
    })
}

/// Queries through each connection's statement cache: one round trip per
/// call instead of two (parse, then execute). Errors stay the driver's, so
/// callers can still tell a constraint violation.
#[async_trait::async_trait]
pub(super) trait Cached: GenericClient {
    async fn cached_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query(&st, params).await
    }
    async fn cached_query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_opt(&st, params).await
    }
    async fn cached_query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_one(&st, params).await
    }
    async fn cached_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.execute(&st, params).await
    }
}

impl<T: GenericClient> Cached for T {}

/// A deadlock or serialization failure: PostgreSQL rolled the transaction
/// back and it may simply be run again.
pub(super) fn is_retryable(e: &StoreError) -> bool {
    use tokio_postgres::error::SqlState;
    let StoreError::Storage(source) = e else {
        return false;
    };
    source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

/// Runs a whole transaction again (up to three times) when PostgreSQL
/// aborted it as a deadlock victim. For the maintenance writes (retention,
/// deregistration) that touch rows in another order than the request path.
pub(super) async fn retrying<T, Fut>(mut f: impl FnMut() -> Fut) -> StoreResult<T>
where
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < 2 && is_retryable(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            r => return r,
        }
    }
}

/// A pooled connection, timed (see [`PgStore::client`]).
pub(super) struct Timed {
    client: deadpool_postgres::Client,
    started: std::time::Instant,
}

impl std::ops::Deref for Timed {
    type Target = deadpool_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for Timed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        crate::metrics::store_call("call", self.started.elapsed());
    }
}

/// Parameters of a query built at run time (`$1`, `$2`, ...).
#[derive(Default)]
pub(super) struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    /// Adds a parameter; returns its placeholder.
    pub(super) fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }
    pub(super) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Where `offset` pages start, while the listing stays the same.
    page_starts: std::sync::Arc<super::page_starts::PageStarts>,
}

fn parse_config(url: &str) -> StoreResult<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url.trim())
        .map_err(|e| backend(format!("bad PostgreSQL URL: {e}")))
}

impl PgStore {
    /// Connects to `url`, migrates the schema to the latest version (once,
    /// even with several replicas starting together) and makes a pool of at
    /// most `pool_size` connections.
    pub async fn connect(url: &str, pool_size: u32) -> StoreResult<PgStore> {
        let config = parse_config(url)?;
        migrate_with(&config).await?;
        Self::pool_only(config, pool_size)
    }

    /// [`PgStore::connect`] for callers that are not async (startup): the
    /// migration runs on a thread of its own; the pool connects on first use
    /// in the caller's runtime.
    pub fn open(url: &str, pool_size: u32) -> StoreResult<PgStore> {
        let config = parse_config(url)?;
        let c = config.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(backend)?
                .block_on(migrate_with(&c))
        })
        .join()
        .map_err(|_| backend("the migration thread panicked"))??;
        Self::pool_only(config, pool_size)
    }

    fn pool_only(config: tokio_postgres::Config, pool_size: u32) -> StoreResult<PgStore> {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1) as usize)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(backend)?;
        Ok(PgStore {
            pool,
            page_starts: Default::default(),
        })
    }

    pub fn latest_schema_version() -> usize {
        super::postgres_schema::MIGRATIONS.len()
    }

    /// The schema version recorded in `schema_migrations`.
    pub async fn schema_version(&self) -> StoreResult<usize> {
        let c = self.client().await?;
        let v: i64 = c
            .cached_query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        Ok(v as usize)
    }

    /// A pooled connection for one store call; the call's time, from
    /// asking the pool to giving the connection back, is counted in
    /// `ecsd_store_duration_seconds{op="call"}`.
    pub(super) async fn client(&self) -> StoreResult<Timed> {
        let started = std::time::Instant::now();
        Ok(Timed {
            client: self.pool.get().await?,
            started,
        })
    }

    /// Called inside the transaction that creates work for `servers` (a
    /// reset, a power job). Nothing yet: the replica that took the request
    /// wakes its own long polls after the commit. A replica-to-replica
    /// wake-up (`NOTIFY`, committed with the work) goes here.
    /// Tells every replica (`LISTEN ecsd_work`, [`listen_for_work`]) which
    /// servers have new work: `pg_notify` inside the transaction, so the
    /// notification goes out at commit and never for a rolled-back batch.
    /// Server ids joined by `,`, in payloads under PostgreSQL's 8000-byte
    /// limit.
    async fn work_created(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        servers: &[&str],
    ) -> StoreResult<()> {
        for payload in notify_payloads(servers) {
            tx.execute("SELECT pg_notify($1, $2)", &[&WORK_CHANNEL, &payload])
                .await?;
        }
        Ok(())
    }
}

/// The channel on which replicas announce new work for servers.
pub const WORK_CHANNEL: &str = "ecsd_work";

/// Server ids joined by `,` into payloads of at most 7,900 bytes.
#[doc(hidden)]
fn notify_payloads(servers: &[&str]) -> Vec<String> {
    const MAX: usize = 7_900;
    let mut out = Vec::new();
    let mut cur = String::new();
    for id in servers {
        if !cur.is_empty() && cur.len() + 1 + id.len() > MAX {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(',');
        }
        cur.push_str(id);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Listens for work announced by any replica (`LISTEN ecsd_work`) and calls
/// `wake` with the server ids, until the task is dropped. On a lost
/// connection it reconnects (1 s apart, then up to 30 s) and calls
/// `wake_all` once connected again: notifications sent while it was away
/// are lost, so every waiting agent looks at the database again.
pub async fn listen_for_work(
    url: String,
    wake: impl Fn(Vec<&str>) + Send + 'static,
    wake_all: impl Fn() + Send + 'static,
) {
    let mut delay = Duration::from_secs(1);
    let mut first = true;
    loop {
        match listen_once(&url, &wake, &wake_all, first).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_secs = delay.as_secs(), "listening for work from other replicas failed");
            }
        }
        first = false;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// One connection's worth of [`listen_for_work`]; returns when it is lost.
async fn listen_once(
    url: &str,
    wake: &(impl Fn(Vec<&str>) + Send),
    wake_all: &(impl Fn() + Send),
    first: bool,
) -> StoreResult<()> {
    let config = parse_config(url)?;
    let (client, mut conn) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven here; notifications go to the channel.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
        .await?;
    tracing::debug!("listening for work from other replicas");
    if !first {
        // Catch up on what was announced while the connection was down.
        wake_all();
    }
    while let Some(payload) = rx.recv().await {
        wake(payload.split(',').filter(|s| !s.is_empty()).collect());
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// The session on which a replica asks for PostgreSQL's session advisory
/// lock that makes one replica the one doing fleet-wide housekeeping (the
/// job sweeper, retention), a connection of its own: when the holder dies
/// or loses the database, PostgreSQL ends its session, the lock is free and
/// another replica's next try, on its own kept session, takes it. The key is per schema, so deployments (and tests) sharing
/// a database in different schemas each have their own.
pub struct HousekeepingSession {
    client: tokio_postgres::Client,
    _driver: tokio::task::JoinHandle<()>,
    held: bool,
}

/// The lock's first key (the second is the schema's `hashtext`).
const HOUSEKEEPING_LOCK_CLASS: i32 = 0x6563_7364; // "ecsd"

impl HousekeepingSession {
    /// Opens the session (a connection of its own, outside the pool); it is
    /// kept for as long as it works, whether the lock is held or not, so a
    /// replica waiting for the lock asks again on the same session.
    pub async fn connect(url: &str) -> StoreResult<HousekeepingSession> {
        let (client, conn) = parse_config(url)?.connect(NoTls).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "the housekeeping lock's connection failed");
            }
        });
        Ok(HousekeepingSession {
            client,
            _driver: driver,
            held: false,
        })
    }

    /// Whether this session held the lock at its last [`Self::hold`].
    pub fn held(&self) -> bool {
        self.held
    }

    /// Takes the lock if no other session holds it (never waits); once
    /// held, checks with a query that the session (and so the lock) is
    /// still there, so that a database restart or a cut connection is
    /// noticed. An error: the session is gone, and the lock with it.
    pub async fn hold(&mut self) -> StoreResult<bool> {
        if self.client.is_closed() {
            self.held = false;
            return Err(backend("the housekeeping session is closed"));
        }
        if self.held {
            if let Err(e) = self.client.simple_query("SELECT 1").await {
                self.held = false;
                return Err(e.into());
            }
        } else {
            // Asked only while not held: the lock counts re-entries.
            self.held = self
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                    &[&HOUSEKEEPING_LOCK_CLASS],
                )
                .await?
                .get(0);
        }
        Ok(self.held)
    }
}

async fn migrate_with(config: &tokio_postgres::Config) -> StoreResult<usize> {
    let (mut client, conn) = config
        .connect(NoTls)
        .await
        .map_err(|e| backend(format!("connecting to PostgreSQL: {}", chain(&e))))?;
    let task = tokio::spawn(conn);
    let v = super::postgres_schema::migrate(&mut client)
        .await
        .map_err(|e| backend(format!("migrating the PostgreSQL schema: {}", chain(&e))));
    drop(client);
    let _ = task.await;
    v
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn parse_status(s: &str) -> StoreResult<ServerStatus> {
    s.parse().map_err(backend)
}

fn parse_kind(s: &str) -> StoreResult<PowerKind> {
    PowerKind::parse(s).ok_or_else(|| backend(format!("bad job kind {s:?}")))
}

pub(super) fn opt_time(v: Option<String>) -> StoreResult<Option<DateTime<Utc>>> {
    v.as_deref().map(parse_time).transpose()
}

/// Locks the rows of these servers, sorted by id (one order everywhere: no
/// deadlock between two transactions locking overlapping sets).
async fn lock_servers(c: &impl GenericClient, ids: &[&str]) -> StoreResult<()> {
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    c.cached_query(
        "SELECT id FROM servers WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&sorted],
    )
    .await?;
    Ok(())
}

/// Locks one server's row; its status and boot id, `None` if it does not exist.
async fn lock_server(
    c: &impl GenericClient,
    id: &str,
) -> StoreResult<Option<(String, Option<String>)>> {
    Ok(c.cached_query_opt(
        "SELECT status, boot_id FROM servers WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    .map(|r| (r.get(0), r.get(1))))
}

/// Writes a server's new status and task state.
async fn set_power_state(
    c: &impl GenericClient,
    id: &str,
    st: PowerState,
    nows: &str,
) -> StoreResult<()> {
    c.cached_execute(
        "UPDATE servers SET status = $2, task_state = $3, updated_at = $4 WHERE id = $1",
        &[
            &id,
            &st.status.as_str(),
            &st.task_state.map(|t| t.as_str()),
            &nows,
        ],
    )
    .await?;
    Ok(())
}

/// Writes how a sub-job ended.
async fn end_sub_job(
    c: &impl GenericClient,
    sub_job_id: &str,
    end: &domain::SubJobEnd,
    nows: &str,
) -> StoreResult<()> {
    c.cached_execute(
        "UPDATE sub_jobs SET status = $2, error_code = $3, fail_reason = $4, end_time = $5 \
         WHERE sub_job_id = $1",
        &[
            &sub_job_id,
            &end.status.as_str(),
            &end.error_code,
            &end.fail_reason,
            &nows,
        ],
    )
    .await?;
    Ok(())
}

/// Gives an enrolled server a new agent key and credential; its open resets,
/// sealed to the old key, fail. The caller holds the server's row lock.
async fn rekey_server_tx(
    c: &impl GenericClient,
    id: &str,
    e: &Enrollment,
    nows: &str,
) -> StoreResult<()> {
    c.cached_execute(
        "UPDATE servers SET agent_public_key = $2, agent_credential_hash = $3, hostname = $4, \
         os_type = $5, agent_version = $6, machine_id = $7, updated_at = $8 WHERE id = $1",
        &[
            &id,
            &e.public_key,
            &e.credential_hash,
            &e.hostname,
            &e.os_type.as_str(),
            &e.agent_version,
            &e.machine_id,
            &nows,
        ],
    )
    .await?;
    c.cached_execute(
        "UPDATE reset_targets SET state = $3, sealed = NULL, updated_at = $2, reason = $4 \
         WHERE server_id = $1 AND state IN ('PENDING', 'DELIVERED')",
        &[&id, &nows, &ResetState::Failed.as_str(), &reasons::REKEYED],
    )
    .await?;
    Ok(())
}

const SERVER_COLS: &str = "s.id, s.project_id, s.name, s.os_type, s.status, s.agent_public_key, \
    s.agent_version, s.agent_last_seen, s.boot_id, s.hostname, s.created_at, s.updated_at, \
    s.last_reset_id, (SELECT t.state FROM reset_targets t WHERE t.request_id = s.last_reset_id AND t.server_id = s.id), \
    s.task_state, s.addresses, s.tags, s.power_driver";

fn server_from_row(r: &Row) -> StoreResult<Server> {
    let os: String = r.try_get(3)?;
    let last_id: Option<String> = r.try_get(12)?;
    let last_state: Option<String> = r.try_get(13)?;
    Ok(Server {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        name: r.try_get(2)?,
        os_type: OsType::parse(&os).ok_or_else(|| backend(format!("bad os_type {os}")))?,
        status: parse_status(r.try_get(4)?)?,
        agent_public_key: r.try_get(5)?,
        agent_version: r.try_get(6)?,
        agent_last_seen: opt_time(r.try_get(7)?)?,
        boot_id: r.try_get(8)?,
        hostname: r.try_get(9)?,
        created: parse_time(r.try_get(10)?)?,
        updated: parse_time(r.try_get(11)?)?,
        last_reset: match (
            last_id,
            last_state
                .as_deref()
                .and_then(|s| s.parse::<ResetState>().ok()),
        ) {
            (Some(id), Some(state)) => Some((id, state)),
            _ => None,
        },
        task_state: r.try_get(14)?,
        addresses: serde_json::from_str(r.try_get(15)?).map_err(backend)?,
        tags: serde_json::from_str(r.try_get(16)?).map_err(backend)?,
        power_driver: r.try_get(17)?,
    })
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(super) fn project_from_row(r: &Row) -> StoreResult<Project> {
    Ok(Project {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created: parse_time(r.try_get(2)?)?,
    })
}

async fn insert_audit(c: &impl GenericClient, e: &AuditEntry) -> StoreResult<()> {
    c.cached_execute(
        "INSERT INTO audit (at, request_id, project_id, actor, action, servers, dry_run, outcome, source, \
         user_id, user_name, error_code, http_status, rating) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &fmt_time(e.at),
            &e.request_id,
            &e.project_id,
            &e.actor,
            &e.action,
            &serde_json::to_string(&e.servers).map_err(backend)?,
            &e.dry_run,
            &e.outcome,
            &e.source,
            &e.user_id,
            &e.user_name,
            &e.error_code,
            &e.http_status.map(i32::from),
            &super::lifecycle::TraceRating::of(e.error_code.as_deref(), e.http_status).as_str(),
        ],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_project(&self, name: &str) -> StoreResult<Project> {
        let project = Project {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created: Utc::now(),
        };
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO projects (id, name, created_at) VALUES ($1, $2, $3)",
            &[&project.id, &project.name, &fmt_time(project.created)],
        )
        .await
        .map_err(|e| {
            if is_constraint(&e) {
                StoreError::Conflict(format!("a project named {:?} exists", project.name))
            } else {
                backend(e)
            }
        })?;
        Ok(project)
    }

    async fn project_by_name(&self, name: &str) -> StoreResult<Option<Project>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT id, name, created_at FROM projects WHERE name = $1",
            &[&name],
        )
        .await?
        .as_ref()
        .map(project_from_row)
        .transpose()
    }

    async fn project(&self, id: &str) -> StoreResult<Option<Project>> {
        let c = self.client().await?;
        c.cached_query_opt(
            "SELECT id, name, created_at FROM projects WHERE id = $1",
            &[&id],
        )
        .await?
        .as_ref()
        .map(project_from_row)
        .transpose()
    }

    async fn create_access_key(&self, key: AccessKey) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO access_keys (ak, project_id, sk_sealed, role, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&key.ak, &key.project_id, &key.sk_sealed, &key.role.as_str(), &fmt_time(Utc::now())],
        )
        .await?;
        Ok(())
    }

    async fn register_server(&self, s: NewServer) -> StoreResult<Server> {
        {
            let c = self.client().await?;
            let now = fmt_time(Utc::now());
            c.cached_execute(
                "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $7, $5, $6, $6)",
                &[&s.id, &s.project_id, &s.name, &s.os_type.as_str(), &s.agent_public_key, &now,
                  &ServerStatus::Active.as_str()],
            )
            .await?;
        }
        self.server(&s.project_id, &s.id)
            .await?
            .ok_or_else(|| StoreError::server_not_found(&s.id))
    }

    async fn create_enroll_token(
        &self,
        project_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
        uses: u32,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        c.cached_execute(
            "INSERT INTO enroll_tokens (token_hash, project_id, expires_at, uses_left, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&token_hash, &project_id, &fmt_time(expires), &i64::from(uses), &fmt_time(Utc::now())],
        )
        .await?;
        Ok(())
    }

    async fn access_key(&self, ak: &str) -> StoreResult<Option<AccessKey>> {
        let c = self.client().await?;
        let row = c
            .cached_query_opt(
                "SELECT ak, project_id, sk_sealed, role FROM access_keys WHERE ak = $1",
                &[&ak],
            )
            .await?;
        row.map(|r| {
            let role: String = r.try_get(3)?;
            Ok(AccessKey {
                ak: r.try_get(0)?,
                project_id: r.try_get(1)?,
                sk_sealed: r.try_get(2)?,
                role: Role::parse(&role).ok_or_else(|| backend("bad role"))?,
            })
        })
        .transpose()
    }

    async fn servers_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Server>> {
        let c = self.client().await?;
        let sql = format!("SELECT {SERVER_COLS} FROM servers s WHERE s.id = ANY($1)");
        c.cached_query(&sql, &[&ids])
            .await?
            .iter()
            .map(server_from_row)
            .collect()
    }

    async fn server(&self, project_id: &str, id: &str) -> StoreResult<Option<Server>> {
        let c = self.client().await?;
        let sql =
            format!("SELECT {SERVER_COLS} FROM servers s WHERE s.id = $1 AND s.project_id = $2");
        c.cached_query_opt(&sql, &[&id, &project_id])
            .await?
            .as_ref()
            .map(server_from_row)
            .transpose()
    }

    async fn create_reset(&self, reset: NewReset) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = fmt_time(reset.created);
        let servers: Vec<&str> = reset.targets.iter().map(|(s, _)| s.as_str()).collect();
        // Every target's server first, in id order: a concurrent reset, take
        // or ack of the same servers waits here, so superseding below sees
        // every open target and the sequence numbers never repeat.
        lock_servers(&tx, &servers).await?;
        tx.cached_execute(
            "INSERT INTO resets (request_id, project_id, apply_now, created_at) VALUES ($1, $2, $3, $4)",
            &[&reset.request_id, &reset.project_id, &reset.apply_now, &now],
        )
        .await?;
        // Set-wise, a few statements whatever the batch size: the servers'
        // open targets superseded, their sequences advanced (each server once:
        // a batch names a server once), the targets inserted in request order.
        tx.cached_execute(
            "UPDATE reset_targets SET state = $2, sealed = NULL, updated_at = $3, reason = $4 \
             WHERE server_id = ANY($1) AND state IN ('PENDING', 'DELIVERED')",
            &[
                &servers,
                &ResetState::Superseded.as_str(),
                &now,
                &reasons::SUPERSEDED,
            ],
        )
        .await?;
        let seqs: std::collections::HashMap<String, i64> = tx
            .cached_query(
                "UPDATE servers SET last_reset_id = $1, updated_at = $3, work_seq = work_seq + 1 \
                 WHERE id = ANY($2) RETURNING id, work_seq",
                &[&reset.request_id, &servers, &now],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let seq: Vec<i64> = servers
            .iter()
            .map(|id| {
                seqs.get(*id)
                    .copied()
                    .ok_or_else(|| StoreError::server_not_found(id))
            })
            .collect::<StoreResult<_>>()?;
        let positions: Vec<i64> = (0..servers.len() as i64).collect();
        let sealed: Vec<&[u8]> = reset.targets.iter().map(|(_, b)| b.as_slice()).collect();
        tx.cached_execute(
            "INSERT INTO reset_targets (request_id, server_id, position, state, sealed, updated_at, seq) \
             SELECT $1, t.server_id, t.position, $2, t.sealed, $3, t.seq \
             FROM unnest($4::text[], $5::bigint[], $6::bytea[], $7::bigint[]) \
                 AS t(server_id, position, sealed, seq) ORDER BY t.position",
            &[
                &reset.request_id,
                &ResetState::Pending.as_str(),
                &now,
                &servers,
                &positions,
                &sealed,
                &seq,
            ],
        )
        .await?;
        insert_audit(&tx, &reset.audit).await?;
        self.work_created(&tx, &servers).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset_outcome(
        &self,
        project_id: &str,
        request_id: &str,
    ) -> StoreResult<Option<ResetOutcome>> {
        let c = self.client().await?;
        let Some(head) = c
            .cached_query_opt(
                "SELECT apply_now, created_at FROM resets WHERE request_id = $1 AND project_id = $2",
                &[&request_id, &project_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let rows = c
            .cached_query(
                "SELECT server_id, state, reason, updated_at FROM reset_targets WHERE request_id = $1 ORDER BY position",
                &[&request_id],
            )
            .await?;
        let mut targets = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: &str = r.try_get(1)?;
            targets.push(TargetState {
                server_id: r.try_get(0)?,
                state: state
                    .parse::<ResetState>()
                    .map_err(|_| backend("bad state"))?,
                reason: r.try_get(2)?,
                updated: parse_time(r.try_get(3)?)?,
            });
        }
        Ok(Some(ResetOutcome {
            request_id: request_id.to_owned(),
            project_id: project_id.to_owned(),
            apply_now: head.try_get(0)?,
            created: parse_time(head.try_get(1)?)?,
            targets,
        }))
    }

    async fn latest_reset_id(&self, project_id: &str) -> StoreResult<Option<String>> {
        let c = self.client().await?;
        Ok(c
            .cached_query_opt(
                "SELECT request_id FROM resets WHERE project_id = $1 ORDER BY created_at DESC, row_no DESC LIMIT 1",
                &[&project_id],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        let c = self.client().await?;
        insert_audit(&*c, &entry).await
    }

    async fn list_servers(
        &self,
        project_id: &str,
        f: ListFilter,
        limit: u32,
        page: u32,
        marker: Option<String>,
    ) -> StoreResult<(Vec<Server>, u64)> {
        use super::page_starts::{PageOf, RowKey, Start};
        let mut c = self.client().await?;
        // One snapshot: the count, the listing generation and the page.
        let c = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut args = Args::default();
        let mut clauses = vec![format!(
            "s.project_id = {}",
            args.push(project_id.to_owned())
        )];
        if let Some(ids) = f.server_ids.clone() {
            clauses.push(format!("s.id = ANY({})", args.push(ids)));
        } else {
            if let Some(n) = &f.name {
                let p = args.push(format!("%{}%", like_escape(n)));
                clauses.push(format!("s.name LIKE {p} ESCAPE '\\'"));
            }
            if let Some(st) = &f.status {
                match st.parse::<ServerStatus>() {
                    Ok(st) => {
                        let p = args.push(st.as_str().to_owned());
                        clauses.push(format!("s.status = {p}"));
                    }
                    // A status outside the contract matches no server.
                    Err(_) => clauses.push("FALSE".into()),
                }
            }
            if let Some(ip) = &f.ip {
                let p = args.push(format!("%{}%", like_escape(ip)));
                clauses.push(format!("s.addresses LIKE {p} ESCAPE '\\'"));
            }
            if let Some(ip) = &f.ip_eq {
                let p = args.push(format!("%\"{}\"%", like_escape(ip)));
                clauses.push(format!("s.addresses LIKE {p} ESCAPE '\\'"));
            }
            if let Some(t) = &f.tags {
                let p = args.push(format!("%\"{}\"%", like_escape(t)));
                clauses.push(format!("s.tags LIKE {p} ESCAPE '\\'"));
            }
            if let Some(t) = &f.not_tags {
                let p = args.push(format!("%\"{}\"%", like_escape(t)));
                clauses.push(format!("s.tags NOT LIKE {p} ESCAPE '\\'"));
            }
            if let Some(os) = &f.os_type {
                match OsType::parse(os) {
                    Some(os) => {
                        let p = args.push(os.as_str().to_owned());
                        clauses.push(format!("s.os_type = {p}"));
                    }
                    None => clauses.push("FALSE".into()),
                }
            }
        }
        let (server_count, generation): (i64, i64) = c
            .cached_query_opt(
                "SELECT server_count, list_gen FROM projects WHERE id = $1",
                &[&project_id],
            )
            .await?
            .map_or((0, 0), |r| (r.get(0), r.get(1)));
        let count: i64 = if clauses.len() == 1 {
            // No filter: the count kept by triggers.
            server_count
        } else {
            let sql = format!(
                "SELECT COUNT(*) FROM servers s WHERE {}",
                clauses.join(" AND ")
            );
            c.cached_query_one(&sql, &args.refs()).await?.get(0)
        };
        let mut offset = u64::from(page.max(1) - 1) * u64::from(limit);
        if let Some(m) = &marker {
            let created: Option<String> = c
                .cached_query_opt(
                    "SELECT created_at FROM servers WHERE id = $1 AND project_id = $2",
                    &[m, &project_id],
                )
                .await?
                .map(|r| r.get(0));
            let created = created.ok_or_else(|| StoreError::NotFound {
                entity: Entity::Marker,
                id: m.clone(),
            })?;
            let (a, b) = (args.push(created), args.push(m.clone()));
            clauses.push(format!("(s.created_at, s.id) < ({a}, {b})"));
            offset = 0;
        }
        let at = PageOf {
            project: project_id,
            filter: &f,
            limit,
            page,
            generation,
        };
        if marker.is_none()
            && let Some(plan) = self.page_starts.plan(at)
        {
            // A page whose start (or a start before it) is known: keyset.
            let (op, key) = match plan.start {
                Start::At(k) => ("<=", k),
                Start::After(k) => ("<", k),
            };
            let (a, b) = (args.push(key.created_at), args.push(key.id));
            clauses.push(format!("(s.created_at, s.id) {op} ({a}, {b})"));
            offset = plan.skip;
        }
        let (l, o) = (args.push(i64::from(limit)), args.push(offset as i64));
        let sql = format!(
            "SELECT {SERVER_COLS} FROM servers s WHERE {} ORDER BY s.created_at DESC, s.id DESC LIMIT {l} OFFSET {o}",
            clauses.join(" AND ")
        );
        let rows = c.cached_query(&sql, &args.refs()).await?;
        c.commit().await?;
        let out: Vec<Server> = rows
            .iter()
            .map(server_from_row)
            .collect::<StoreResult<_>>()?;
        if marker.is_none() {
            let key = |r: &tokio_postgres::Row| RowKey {
                created_at: r.get(10),
                id: r.get(0),
            };
            let ends = rows.first().map(key).zip(rows.last().map(key));
            let full = out.len() == limit as usize;
            self.page_starts.record(at, ends, full);
        }
        Ok((out, count as u64))
    }

    async fn create_job(&self, job: NewJob) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let servers: Vec<&str> = job.subs.iter().map(|(_, s, _)| s.as_str()).collect();
        // The servers first (sorted): two jobs for the same server cannot
        // both find it idle.
        lock_servers(&tx, &servers).await?;
        let busy: std::collections::HashSet<String> = tx
            .cached_query(
                "SELECT DISTINCT server_id FROM sub_jobs \
                 WHERE server_id = ANY($1) AND status IN ('INIT', 'RUNNING')",
                &[&servers],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !busy.is_empty() {
            // In the job's order, as the caller listed them.
            let ids = servers
                .iter()
                .filter(|s| busy.contains(**s))
                .map(|s| s.to_string())
                .collect();
            return Err(StoreError::Busy { ids });
        }
        let now = fmt_time(job.created);
        tx.cached_execute(
            "INSERT INTO jobs (job_id, project_id, kind, hard, begin_time) VALUES ($1, $2, $3, $4, $5)",
            &[&job.job_id, &job.project_id, &job.kind.as_str(), &job.hard, &now],
        )
        .await?;
        // What the domain makes of each sub-job: failed at once, or work
        // (INIT) with the server's next sequence number.
        let created: Vec<Option<domain::SubJobEnd>> = job
            .subs
            .iter()
            .map(|(_, _, failed)| domain::job::created(job.kind, failed.as_deref()))
            .collect();
        let work: Vec<&str> = servers
            .iter()
            .zip(&created)
            .filter(|(_, end)| end.is_none())
            .map(|(s, _)| *s)
            .collect();
        let seqs: std::collections::HashMap<String, i64> = tx
            .cached_query(
                "UPDATE servers SET work_seq = work_seq + 1 WHERE id = ANY($1) RETURNING id, work_seq",
                &[&work],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let n = job.subs.len();
        let (mut status, mut code, mut reason, mut end, mut seq) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((_, server, _), made) in job.subs.iter().zip(created) {
            match made {
                Some(e) => {
                    status.push(e.status.as_str());
                    code.push(e.error_code);
                    reason.push(e.fail_reason);
                    end.push(Some(now.clone()));
                    seq.push(0i64);
                }
                None => {
                    status.push(JobStatus::Init.as_str());
                    code.push(None);
                    reason.push(None);
                    end.push(None);
                    seq.push(
                        *seqs
                            .get(server)
                            .ok_or_else(|| StoreError::server_not_found(server))?,
                    );
                }
            }
        }
        let subs: Vec<&str> = job.subs.iter().map(|(s, _, _)| s.as_str()).collect();
        let positions: Vec<i64> = (0..n as i64).collect();
        tx.cached_execute(
            "INSERT INTO sub_jobs (sub_job_id, job_id, server_id, position, status, error_code, \
             fail_reason, begin_time, end_time, seq) \
             SELECT t.sub, $1, t.server_id, t.position, t.status, t.code, t.reason, $2, t.end_time, t.seq \
             FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], \
                         $9::text[], $10::bigint[]) \
                 AS t(sub, server_id, position, status, code, reason, end_time, seq) \
             ORDER BY t.position",
            &[
                &job.job_id,
                &now,
                &subs,
                &servers,
                &positions,
                &status,
                &code,
                &reason,
                &end,
                &seq,
            ],
        )
        .await?;
        insert_audit(&tx, &job.audit).await?;
        self.work_created(&tx, &servers).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job(&self, project_id: &str, job_id: &str) -> StoreResult<Option<Job>> {
        let c = self.client().await?;
        let Some(head) = c
            .cached_query_opt(
                "SELECT kind, begin_time FROM jobs WHERE job_id = $1 AND project_id = $2",
                &[&job_id, &project_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let rows = c
            .cached_query(
                "SELECT sub_job_id, server_id, status, error_code, fail_reason, begin_time, end_time \
                 FROM sub_jobs WHERE job_id = $1 ORDER BY position",
                &[&job_id],
            )
            .await?;
        let mut subs = Vec::with_capacity(rows.len());
        for r in &rows {
            subs.push(SubJob {
                sub_job_id: r.try_get(0)?,
                server_id: r.try_get(1)?,
                status: r.try_get::<_, &str>(2)?.parse().map_err(backend)?,
                error_code: r.try_get(3)?,
                fail_reason: r.try_get(4)?,
                begin: parse_time(r.try_get(5)?)?,
                end: opt_time(r.try_get(6)?)?,
            });
        }
        Ok(Some(Job {
            job_id: job_id.to_owned(),
            kind: parse_kind(head.try_get(0)?)?,
            begin: parse_time(head.try_get(1)?)?,
            subs,
        }))
    }

    async fn expire_sub_jobs(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let nows = fmt_time(now);
        let cutoff = fmt_time(older_than);
        let candidates: Vec<String> = tx
            .cached_query(
                "SELECT DISTINCT server_id FROM sub_jobs \
                 WHERE status IN ('INIT', 'RUNNING') AND begin_time < $1",
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = candidates.iter().map(String::as_str).collect();
        lock_servers(&tx, &ids).await?;
        // Read again under the locks: an ack may have ended some meanwhile.
        let expired = tx
            .cached_query(
                "SELECT s.sub_job_id, s.server_id, j.kind, v.status FROM sub_jobs s \
                 JOIN jobs j ON j.job_id = s.job_id JOIN servers v ON v.id = s.server_id \
                 WHERE s.status IN ('INIT', 'RUNNING') AND s.begin_time < $1 AND s.server_id = ANY($2)",
                &[&cutoff, &ids],
            )
            .await?;
        let n = expired.len();
        for r in &expired {
            let (sub, server, kind, status): (&str, &str, &str, &str) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let (end, st) = server_rules::expired(parse_status(status)?, parse_kind(kind)?);
            end_sub_job(&tx, sub, &end, &nows).await?;
            // Servers stuck mid-action return to a plain state.
            set_power_state(&tx, server, st, &nows).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn enroll(
        &self,
        token_hash: &str,
        e: Enrollment,
        now: DateTime<Utc>,
        duplicate: DuplicateMachineId,
    ) -> StoreResult<EnrollResult> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let nows = fmt_time(now);
        // A re-key token's server first (the order everywhere: server, then
        // what hangs off it), so a deregistration at the same moment waits
        // instead of deadlocking. A token's server never changes.
        let rekeys: Option<String> = tx
            .cached_query_opt(
                "SELECT server_id FROM enroll_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?
            .and_then(|r| r.get(0));
        if let Some(id) = &rekeys {
            lock_server(&tx, id).await?;
        }
        // The token's row stays locked until the commit: its uses are
        // counted exactly, whichever replica the agents reach.
        let token = tx
            .cached_query_opt(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1 \
                 WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2 RETURNING project_id, server_id",
                &[&token_hash, &nows],
            )
            .await?;
        let Some(token) = token else {
            return Ok(EnrollResult::BadToken);
        };
        let (project_id, rekey_server): (String, Option<String>) = (token.get(0), token.get(1));
        let (server_id, re_enrolled) = match rekey_server {
            // A re-key token made by an admin for this one server.
            Some(id) => {
                rekey_server_tx(&tx, &id, &e, &nows).await?;
                (id, true)
            }
            None => {
                // Two enrollments of one machine id at once: one after the
                // other, so `refuse` refuses the second.
                tx.cached_execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2)::bigint)",
                    &[&project_id, &e.machine_id],
                )
                .await?;
                let existing: Option<String> = tx
                    .cached_query_opt(
                        "SELECT id FROM servers WHERE project_id = $1 AND machine_id = $2 LIMIT 1",
                        &[&project_id, &e.machine_id],
                    )
                    .await?
                    .map(|r| r.get(0));
                if let (Some(server_id), DuplicateMachineId::Refuse) = (&existing, duplicate) {
                    // Nothing is written: the token keeps its use.
                    tx.rollback().await?;
                    return Ok(EnrollResult::DuplicateMachine {
                        server_id: server_id.clone(),
                    });
                }
                let id = uuid::Uuid::new_v4().to_string();
                tx.cached_execute(
                    "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, \
                     agent_credential_hash, machine_id, agent_version, hostname, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $10, $5, $6, $7, $8, $3, $9, $9)",
                    &[&id, &project_id, &e.hostname, &e.os_type.as_str(), &e.public_key,
                      &e.credential_hash, &e.machine_id, &e.agent_version, &nows,
                      &ServerStatus::Active.as_str()],
                )
                .await?;
                (id, false)
            }
        };
        tx.commit().await?;
        Ok(EnrollResult::Enrolled(Enrolled {
            server_id,
            project_id,
            re_enrolled,
        }))
    }

    async fn rekey(
        &self,
        server_id: &str,
        e: Enrollment,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Enrolled>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let project_id: Option<String> = tx
            .cached_query_opt(
                "SELECT project_id FROM servers WHERE id = $1 FOR UPDATE",
                &[&server_id],
            )
            .await?
            .map(|r| r.get(0));
        let Some(project_id) = project_id else {
            return Ok(None);
        };
        rekey_server_tx(&tx, server_id, &e, &fmt_time(now)).await?;
        tx.commit().await?;
        Ok(Some(Enrolled {
            server_id: server_id.to_owned(),
            project_id,
            re_enrolled: true,
        }))
    }

    async fn create_rekey_token(
        &self,
        server_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let c = self.client().await?;
        // One statement: the server's project, if the server exists.
        Ok(c
            .cached_query_opt(
                "INSERT INTO enroll_tokens (token_hash, project_id, expires_at, uses_left, server_id, created_at) \
                 SELECT $1, project_id, $2, 1, id, $4 FROM servers WHERE id = $3 RETURNING project_id",
                &[&token_hash, &fmt_time(expires), &server_id, &fmt_time(Utc::now())],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn create_rekey_challenge(
        &self,
        challenge_id: &str,
        server_id: &str,
        answer_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        // Expired challenges go as new ones come.
        c.cached_execute(
            "DELETE FROM rekey_challenges WHERE expires_at <= $1",
            &[&fmt_time(Utc::now())],
        )
        .await?;
        c.cached_execute(
            "INSERT INTO rekey_challenges (challenge_id, server_id, answer_hash, expires_at) VALUES ($1, $2, $3, $4)",
            &[&challenge_id, &server_id, &answer_hash, &fmt_time(expires)],
        )
        .await?;
        // Unauthenticated callers can ask: keep at most 4 open per server.
        c.cached_execute(
            "DELETE FROM rekey_challenges WHERE server_id = $1 AND challenge_id NOT IN \
             (SELECT challenge_id FROM rekey_challenges WHERE server_id = $1 ORDER BY row_no DESC LIMIT 4)",
            &[&server_id],
        )
        .await?;
        Ok(())
    }

    async fn take_rekey_challenge(
        &self,
        challenge_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(String, String)>> {
        let c = self.client().await?;
        Ok(c.cached_query_opt(
            "DELETE FROM rekey_challenges WHERE challenge_id = $1 AND expires_at > $2 \
                 RETURNING server_id, answer_hash",
            &[&challenge_id, &fmt_time(now)],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    async fn work_keys(&self) -> StoreResult<Vec<StoredWorkKey>> {
        let c = self.client().await?;
        let rows = c
            .cached_query(
                "SELECT public_key, secret_sealed, endorsed_by, signature, created_at FROM work_keys ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredWorkKey {
                    public_key: r.try_get(0)?,
                    secret_sealed: r.try_get(1)?,
                    endorsed_by: r.try_get(2)?,
                    signature: r.try_get(3)?,
                    created: parse_time(r.try_get(4)?)?,
                })
            })
            .collect()
    }

    async fn add_work_key(&self, key: StoredWorkKey, first: bool) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if first {
            // Replicas starting together: only one first key. The lock
            // conflicts with itself and with writers, not with readers.
            tx.batch_execute("LOCK TABLE work_keys IN SHARE ROW EXCLUSIVE MODE")
                .await?;
            let n: i64 = tx
                .cached_query_one("SELECT COUNT(*) FROM work_keys", &[])
                .await?
                .get(0);
            if n > 0 {
                return Ok(false);
            }
        }
        tx.cached_execute(
            "INSERT INTO work_keys (public_key, secret_sealed, endorsed_by, signature, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &key.public_key,
                &key.secret_sealed,
                &key.endorsed_by,
                &key.signature,
                &fmt_time(key.created),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reset_accepted_at(&self, request_id: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let c = self.client().await?;
        let row = c
            .cached_query_opt(
                "SELECT created_at FROM resets WHERE request_id = $1",
                &[&request_id],
            )
            .await?;
        row.map(|r| parse_time(&r.get::<_, String>(0))).transpose()
    }

    async fn agent_census(&self, stale_before: DateTime<Utc>) -> StoreResult<Vec<AgentCount>> {
        let c = self.client().await?;
        let cutoff = fmt_time(stale_before);
        let rows = c
            .query(
                "SELECT COALESCE(agent_version, 'unknown') AS v, \
                        COUNT(*) FILTER (WHERE agent_last_seen IS NOT NULL AND agent_last_seen >= $1), \
                        COUNT(*) FILTER (WHERE agent_last_seen IS NULL OR agent_last_seen < $1) \
                 FROM servers WHERE agent_public_key IS NOT NULL OR agent_last_seen IS NOT NULL \
                 GROUP BY 1 ORDER BY COALESCE(agent_version, 'unknown') COLLATE \"C\"",
                &[&cutoff],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AgentCount {
                version: r.get(0),
                up: r.get::<_, i64>(1).try_into().unwrap_or(0),
                stale: r.get::<_, i64>(2).try_into().unwrap_or(0),
            })
            .collect())
    }

    async fn agent_server_id(&self, credential_hash: &str) -> StoreResult<Option<String>> {
        let c = self.client().await?;
        Ok(c.cached_query_opt(
            "SELECT id FROM servers WHERE agent_credential_hash = $1",
            &[&credential_hash],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn heartbeat(
        &self,
        server_id: &str,
        hb: Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let nows = fmt_time(now);
        let (status, old_boot) = lock_server(&tx, server_id)
            .await?
            .ok_or_else(|| StoreError::server_not_found(server_id))?;
        let back =
            server_rules::heartbeat(parse_status(&status)?, old_boot.as_deref(), &hb.boot_id);
        let addresses = match &hb.address {
            Some(a) => serde_json::to_string(&[a]).map_err(backend)?,
            None => "[]".to_owned(),
        };
        tx.cached_execute(
            "UPDATE servers SET agent_version = $2, boot_id = $3, uptime_secs = $4, agent_last_seen = $5, \
             addresses = $6, power_driver = $7 WHERE id = $1",
            &[&server_id, &hb.agent_version, &hb.boot_id, &(hb.uptime_secs as i64), &nows, &addresses, &hb.power_driver],
        )
        .await?;
        if let Some(st) = back {
            set_power_state(&tx, server_id, st, &nows).await?;
            let running = tx
                .cached_query(
                    "SELECT s.sub_job_id, j.kind, s.boot_id_at_start FROM sub_jobs s \
                     JOIN jobs j ON j.job_id = s.job_id WHERE s.server_id = $1 AND s.status = 'RUNNING'",
                    &[&server_id],
                )
                .await?;
            for r in &running {
                let (sub, kind, boot_at_start): (&str, &str, Option<&str>) =
                    (r.get(0), r.get(1), r.get(2));
                if domain::job::completes_on_boot(parse_kind(kind)?, boot_at_start, &hb.boot_id) {
                    end_sub_job(&tx, sub, &domain::SubJobEnd::success(), &nows).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_power(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<PowerWork>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some((status, _)) = lock_server(&tx, server_id).await? else {
            return Ok(None);
        };
        let found = tx
            .cached_query_opt(
                "SELECT s.sub_job_id, j.kind, j.hard, s.seq FROM sub_jobs s JOIN jobs j ON j.job_id = s.job_id \
                 WHERE s.server_id = $1 AND s.status = 'INIT' ORDER BY s.begin_time LIMIT 1",
                &[&server_id],
            )
            .await?;
        let Some(r) = found else {
            return Ok(None);
        };
        let (sub, kind, hard, seq): (String, String, bool, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let kind = parse_kind(&kind)?;
        let nows = fmt_time(now);
        tx.cached_execute(
            "UPDATE sub_jobs SET status = $3, boot_id_at_start = (SELECT boot_id FROM servers WHERE id = $2) \
             WHERE sub_job_id = $1",
            &[&sub, &server_id, &JobStatus::Running.as_str()],
        )
        .await?;
        let st = server_rules::power_taken(parse_status(&status)?, kind, hard);
        set_power_state(&tx, server_id, st, &nows).await?;
        tx.commit().await?;
        Ok(Some(PowerWork {
            sub_job_id: sub,
            kind,
            hard,
            seq: seq as u64,
        }))
    }

    async fn power_ack(
        &self,
        server_id: &str,
        sub_job_id: &str,
        ok: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some((status, _)) = lock_server(&tx, server_id).await? else {
            return Ok(false);
        };
        let found = tx
            .cached_query_opt(
                "SELECT j.kind FROM sub_jobs s JOIN jobs j ON j.job_id = s.job_id \
                 WHERE s.sub_job_id = $1 AND s.server_id = $2 AND s.status = 'RUNNING'",
                &[&sub_job_id, &server_id],
            )
            .await?;
        let Some(r) = found else {
            return Ok(false);
        };
        let kind: String = r.get(0);
        let nows = fmt_time(now);
        let effect =
            server_rules::power_acked(parse_status(&status)?, parse_kind(&kind)?, ok, reason);
        if let Some(end) = &effect.sub_job {
            end_sub_job(&tx, sub_job_id, end, &nows).await?;
        }
        if let Some(st) = effect.server {
            set_power_state(&tx, server_id, st, &nows).await?;
        }
        // reboot and start complete when the server reports a new boot.
        tx.commit().await?;
        Ok(true)
    }

    async fn take_work(&self, server_id: &str, now: DateTime<Utc>) -> StoreResult<Option<Work>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The server's row first, as create_reset does: a reset being stored
        // for it is either seen whole or not at all.
        if lock_server(&tx, server_id).await?.is_none() {
            return Ok(None);
        }
        let work = tx
            .cached_query_opt(
                "SELECT t.request_id, t.sealed, r.apply_now, t.state, t.seq FROM reset_targets t \
                 JOIN resets r ON r.request_id = t.request_id \
                 WHERE t.server_id = $1 AND t.state IN ('PENDING', 'DELIVERED') AND t.sealed IS NOT NULL \
                 ORDER BY r.created_at DESC, t.row_no DESC LIMIT 1",
                &[&server_id],
            )
            .await?;
        let Some(r) = work else {
            return Ok(None);
        };
        let (request_id, sealed, apply_now, state, seq): (String, Vec<u8>, bool, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let state: ResetState = state.parse().map_err(backend)?;
        if let Some(next) = domain::reset::delivered(state) {
            tx.cached_execute(
                "UPDATE reset_targets SET state = $4, updated_at = $3 WHERE request_id = $1 AND server_id = $2",
                &[&request_id, &server_id, &fmt_time(now), &next.as_str()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Work {
            request_id,
            sealed,
            apply_now,
            seq: seq as u64,
        }))
    }

    async fn ack(
        &self,
        server_id: &str,
        request_id: &str,
        applied: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The server's row first, as take_work and create_reset do: a take
        // in progress cannot turn this outcome back into DELIVERED.
        if lock_server(&tx, server_id).await?.is_none() {
            return Ok(false);
        }
        let state = domain::reset::acknowledged(applied).as_str();
        let n = tx
            .cached_execute(
                "UPDATE reset_targets SET state = $3, reason = $4, sealed = NULL, updated_at = $5 \
                 WHERE request_id = $1 AND server_id = $2 AND state IN ('PENDING', 'DELIVERED')",
                &[&request_id, &server_id, &state, &reason, &fmt_time(now)],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }
}

/// Throwaway schemas for tests: each check gets `t_<random>` in the test
/// database, dropped afterwards. The database is
/// `ECSD_TEST_POSTGRES` (a URL) or `postgres://postgres@127.0.0.1:5432/test`;
/// `ECSD_TEST_POSTGRES=skip` skips the PostgreSQL tests. A database that
/// cannot be reached fails the test.
pub mod testing {
    use super::*;

    /// The test database's URL, or `None` when PostgreSQL tests are skipped.
    pub fn base_url() -> Option<String> {
        match std::env::var("ECSD_TEST_POSTGRES") {
            Ok(v) if v.trim().eq_ignore_ascii_case("skip") => None,
            Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
            _ => Some("postgres://postgres@127.0.0.1:5432/test".to_owned()),
        }
    }

    /// A fresh schema; dropped (with everything in it, its sessions ended)
    /// when this is dropped.
    pub struct TestSchema {
        base: String,
        pub name: String,
        /// The base URL with `options=-csearch_path=<name>` and
        /// `application_name=<name>`.
        pub url: String,
    }

    fn run<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        // A thread of its own: callable from sync code and from inside any runtime.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(f)
        })
        .join()
        .expect("the PostgreSQL test helper panicked")
    }

    async fn exec(url: String, sql: String) -> Result<(), String> {
        let (client, conn) = tokio_postgres::connect(&url, NoTls)
            .await
            .map_err(|e| format!("connecting to {url}: {}", chain(&e)))?;
        let task = tokio::spawn(conn);
        let r = client
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("{sql}: {}", chain(&e)));
        drop(client);
        let _ = task.await;
        r
    }

    /// Runs `sql` (CREATE SCHEMA); a missing test database is created first
    /// (from the server's `postgres` database) on a fresh machine.
    async fn create_schema(base: String, sql: String) -> Result<(), String> {
        let config = parse_config(&base).map_err(|e| e.chain())?;
        match config.connect(NoTls).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
                let db = config.get_dbname().unwrap_or("test").to_owned();
                let mut admin = config.clone();
                admin.dbname("postgres");
                let (client, conn) = admin.connect(NoTls).await.map_err(|e| chain(&e))?;
                let task = tokio::spawn(conn);
                let created = client
                    .batch_execute(&format!("CREATE DATABASE \"{db}\""))
                    .await;
                drop(client);
                let _ = task.await;
                use tokio_postgres::error::SqlState;
                match created {
                    // Another test made it meanwhile (caught by the catalog's
                    // unique index when both commit at once).
                    Err(e)
                        if ![SqlState::DUPLICATE_DATABASE, SqlState::UNIQUE_VIOLATION]
                            .iter()
                            .any(|c| e.code() == Some(c)) =>
                    {
                        return Err(format!("creating database {db}: {}", chain(&e)));
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(format!("connecting: {}", chain(&e))),
            Ok((client, conn)) => {
                drop(client);
                let _ = conn.await;
            }
        }
        exec(base, sql).await
    }

    impl TestSchema {
        /// Creates a schema in the test database; `None` when skipped.
        /// Panics (failing the test) when PostgreSQL cannot be reached.
        pub fn create() -> Option<TestSchema> {
            let base = base_url()?;
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let sep = if base.contains('?') { '&' } else { '?' };
            // The application name finds this schema's sessions when it is dropped.
            let url = format!("{base}{sep}options=-csearch_path%3D{name}&application_name={name}");
            let sql = format!("CREATE SCHEMA {name}");
            if let Err(e) = run(create_schema(base.clone(), sql)) {
                panic!(
                    "PostgreSQL tests need a server (set ECSD_TEST_POSTGRES to a URL, \
                     or to `skip`): {e}"
                );
            }
            Some(TestSchema { base, name, url })
        }

        /// Runs SQL in this schema (tests that change rows behind the store's back).
        pub fn execute(&self, sql: &str) {
            let url = self.url.clone();
            if let Err(e) = run(exec(url, sql.to_owned())) {
                panic!("{e}");
            }
        }

        /// A migrated store on this schema.
        pub fn store(&self) -> PgStore {
            PgStore::open(&self.url, 4).expect("opening the PostgreSQL store")
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            // The pool's sessions live in the test's runtime, which is
            // blocked here: one left in a transaction (a dropped one's
            // ROLLBACK not sent yet) would hold its locks, so they end first.
            let sql = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{0}' AND pid <> pg_backend_pid(); \
                 DROP SCHEMA IF EXISTS {0} CASCADE",
                self.name
            );
            if let Err(e) = run(exec(self.base.clone(), sql)) {
                eprintln!("dropping the test schema {}: {e}", self.name);
            }
        }
    }

    /// For the conformance macros: a fresh store, `None` when skipped.
    pub fn fresh() -> Option<(TestSchema, PgStore)> {
        let schema = TestSchema::create()?;
        let store = schema.store();
        Some((schema, store))
    }
}

/// The store conformance suite on PostgreSQL: one fresh schema per check.
#[cfg(test)]
mod conformance {
    use super::testing::fresh;

    crate::store_conformance_tests!(fresh);

    #[tokio::test]
    async fn run_all_on_one_store() {
        let Some((_schema, store)) = fresh() else {
            return;
        };
        crate::store::conformance::run_all(&store).await;
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestSchema;
    use super::*;

    /// The open states spelled in this file's SQL are the domain's.
    #[test]
    fn the_open_states_in_sql_are_the_domains() {
        let open = |names: Vec<&str>| {
            let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            format!("({})", quoted.join(", "))
        };
        let resets = open(
            ResetState::ALL
                .iter()
                .filter(|s| domain::reset::is_open(**s))
                .map(|s| s.as_str())
                .collect(),
        );
        let subs = open(
            JobStatus::ALL
                .iter()
                .rev()
                .filter(|s| domain::job::is_open(**s))
                .map(|s| s.as_str())
                .collect(),
        );
        for src in [
            include_str!("postgres.rs"),
            include_str!("postgres_schema.rs"),
        ] {
            for (needle, want) in [("state IN (", &resets), ("status IN (", &subs)] {
                for (i, _) in src.match_indices(needle) {
                    let rest = &src[i + needle.len() - 1..];
                    if rest.starts_with("(\"") || rest.starts_with("({") {
                        continue; // this test's own text
                    }
                    assert!(
                        rest.starts_with(want.as_str()),
                        "{}",
                        &rest[..40.min(rest.len())]
                    );
                }
            }
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ecsd:s3cret@db:5432/ecsd?sslmode=disable"),
            "postgres://ecsd:***@db:5432/ecsd?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgresql://db/ecsd?user=ecsd&password=s3cret"),
            "postgresql://db/ecsd?user=ecsd&password=***"
        );
        assert_eq!(redact_url("postgres://ecsd@db/x"), "postgres://ecsd@db/x");
    }

    #[test]
    fn urls_select_postgres() {
        for url in [
            "postgres://u@h/db",
            "postgresql://h:5432/db?sslmode=disable",
            "POSTGRES://h/db",
        ] {
            assert!(is_postgres_url(url), "{url}");
            if !url.starts_with("POSTGRES") {
                parse_config(url).expect(url);
            }
        }
        for path in [
            "ecsd.db",
            "/var/lib/ecsd/ecsd.db",
            "postgres.db",
            "./postgres:/x",
        ] {
            assert!(!is_postgres_url(path), "{path}");
        }
    }

    /// Replicas starting together: every one migrates or waits, the schema
    /// is migrated once, and opening again changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_starts_migrate_once() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let url = schema.url.clone();
                tokio::spawn(async move { PgStore::connect(&url, 2).await })
            })
            .collect();
        for s in starts {
            s.await.unwrap().expect("every replica starts");
        }
        let store = PgStore::connect(&schema.url, 2).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            PgStore::latest_schema_version()
        );
        let c = store.client().await.unwrap();
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as usize, PgStore::latest_schema_version());
        let domains: i64 = c
            .query_one("SELECT COUNT(*) FROM domains WHERE name = 'default'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(domains, 1, "the data migration ran once");
    }

    /// Where pg_trgm can be had (here: the tests' superuser), the name
    /// filter gets its trigram index and the planner uses it.
    #[tokio::test]
    async fn the_name_filter_has_a_trigram_index() {
        let Some((_schema, store)) = testing::fresh() else {
            return;
        };
        let c = store.client().await.unwrap();
        let found: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() \
                 AND indexname = 'servers_name_trgm')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(found, "no servers_name_trgm index");
        c.batch_execute("SET enable_seqscan = off").await.unwrap();
        let plan: Vec<String> = c
            .query(
                "EXPLAIN SELECT id FROM servers WHERE name LIKE '%4242%' ESCAPE '\\'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("servers_name_trgm")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_missing_schema_is_a_clear_error() {
        let Some(base) = testing::base_url() else {
            return;
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3Dno_such_schema_ecsd");
        let err = PgStore::open(&url, 1).err().expect("refused").chain();
        assert!(err.contains("no schema"), "{err}");
    }

    /// Two replicas storing resets for overlapping servers at once: every
    /// server ends with exactly one open reset and distinct sequence numbers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_resets_keep_one_open_target_per_server() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let a = PgStore::connect(&schema.url, 4).await.unwrap();
        let b = PgStore::connect(&schema.url, 4).await.unwrap();
        let p = a.create_project("p").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..4 {
            let s = a
                .register_server(NewServer {
                    id: format!("srv-{i}"),
                    project_id: p.id.clone(),
                    name: format!("s{i}"),
                    os_type: OsType::Linux,
                    agent_public_key: Some(vec![1; 32]),
                })
                .await
                .unwrap();
            ids.push(s.id);
        }
        let reset = |ids: Vec<String>, project: String| NewReset {
            request_id: uuid::Uuid::new_v4().to_string(),
            project_id: project.clone(),
            apply_now: false,
            created: Utc::now(),
            targets: ids.into_iter().map(|s| (s, vec![9; 16])).collect(),
            audit: AuditEntry {
                at: Utc::now(),
                request_id: "r".into(),
                project_id: project,
                actor: "t".into(),
                action: "batch-reset-password".into(),
                servers: vec![],
                dry_run: false,
                outcome: "accepted".into(),
                source: "test".into(),
                user_id: None,
                user_name: None,
                error_code: None,
                http_status: None,
            },
        };
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            // Opposite orders: locking in id order must prevent deadlocks.
            let mut batch = ids.clone();
            if i % 2 == 1 {
                batch.reverse();
            }
            let r = reset(batch, p.id.clone());
            tasks.push(tokio::spawn(async move { store.create_reset(r).await }));
        }
        for t in tasks {
            t.await.unwrap().expect("no reset fails");
        }
        let c = a.client().await.unwrap();
        for id in &ids {
            let open: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM reset_targets WHERE server_id = $1 AND state IN ('PENDING', 'DELIVERED')",
                    &[id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(open, 1, "{id}");
            let seqs: Vec<i64> = c
                .query(
                    "SELECT seq FROM reset_targets WHERE server_id = $1 ORDER BY seq",
                    &[id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(seqs, (1..=20).collect::<Vec<i64>>(), "{id}");
        }
    }

    /// Replicas at once: one first work-signing key; one server per machine
    /// id under `refuse`, and each token use counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_keys_and_enrollments_stay_single() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let a = PgStore::connect(&schema.url, 4).await.unwrap();
        let b = PgStore::connect(&schema.url, 4).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                store
                    .add_work_key(
                        StoredWorkKey {
                            public_key: format!("pk-{i}"),
                            secret_sealed: vec![1; 8],
                            endorsed_by: None,
                            signature: None,
                            created: Utc::now(),
                        },
                        true,
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut firsts = 0;
        for t in tasks {
            firsts += usize::from(t.await.unwrap());
        }
        assert_eq!(firsts, 1);
        assert_eq!(a.work_keys().await.unwrap().len(), 1);

        let p = a.create_project("p").await.unwrap();
        let expires = Utc::now() + chrono::Duration::minutes(5);
        a.create_enroll_token(&p.id, "tok", expires, 5)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let e = Enrollment {
                    machine_id: "same-machine".into(),
                    hostname: format!("h{i}"),
                    os_type: OsType::Linux,
                    public_key: vec![i as u8; 32],
                    agent_version: "1".into(),
                    credential_hash: format!("cred-{i}"),
                };
                store
                    .enroll("tok", e, Utc::now(), DuplicateMachineId::Refuse)
                    .await
                    .unwrap()
            }));
        }
        let (mut enrolled, mut refused, mut bad) = (0, 0, 0);
        for t in tasks {
            match t.await.unwrap() {
                EnrollResult::Enrolled(_) => enrolled += 1,
                EnrollResult::DuplicateMachine { .. } => refused += 1,
                EnrollResult::BadToken => bad += 1,
            }
        }
        assert_eq!((enrolled, refused, bad), (1, 7, 0));
        let c = a.client().await.unwrap();
        let left: i64 = c
            .query_one(
                "SELECT uses_left FROM enroll_tokens WHERE token_hash = 'tok'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 4, "only the enrollment used the token");
    }

    /// A real deadlock is recognised as one to run again; other errors are not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_victim_is_retryable() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PgStore::connect(&schema.url, 4).await.unwrap();
        store.create_project("a").await.unwrap();
        store.create_project("b").await.unwrap();
        let in_order = |first: &'static str, second: &'static str| {
            let store = store.clone();
            async move {
                let mut c = store.client().await?;
                let tx = c.transaction().await?;
                let lock = "SELECT id FROM projects WHERE name = $1 FOR UPDATE";
                tx.query(lock, &[&first]).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.query(lock, &[&second]).await?;
                tx.commit().await?;
                StoreResult::Ok(())
            }
        };
        let (x, y) = tokio::join!(
            tokio::spawn(in_order("a", "b")),
            tokio::spawn(in_order("b", "a"))
        );
        let errors: Vec<StoreError> = [x.unwrap(), y.unwrap()]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(errors.len(), 1, "one deadlock victim: {errors:?}");
        assert!(is_retryable(&errors[0]), "{}", errors[0].chain());
        assert!(!is_retryable(&StoreError::Conflict("x".into())));
        let other = store.create_project("a").await.unwrap_err();
        assert!(!is_retryable(&other));
    }
}

#[cfg(test)]
mod notify_tests {
    use super::notify_payloads;

    #[test]
    fn payloads_stay_under_the_notify_limit_and_keep_every_id_once() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:036}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let payloads = notify_payloads(&refs);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= 7_900));
        let back: Vec<&str> = payloads.iter().flat_map(|p| p.split(',')).collect();
        assert_eq!(back, refs);
        assert!(notify_payloads(&[]).is_empty());
    }
}
