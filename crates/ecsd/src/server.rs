//! Building and running the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::config::Database;
use crate::secrets::MasterKey;
use crate::state::AppState;
use crate::store::{PgStore, SqliteStore};

/// Opens the store (SQLite or PostgreSQL, by `database`) and the master key
/// described by `config`.
pub fn open_state(config: Config) -> anyhow::Result<AppState> {
    let master = match (&config.master_key, &config.master_key_file) {
        (Some(k), _) => MasterKey::from_base64(k)?,
        (None, Some(path)) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading master_key_file {}", path.display()))?,
            );
            MasterKey::from_base64(&SecretString::from(text.trim().to_owned()))
                .with_context(|| format!("master_key_file {}", path.display()))?
        }
        (None, None) => anyhow::bail!(
            "master_key is not configured (set ECSD_MASTER_KEY, master_key or master_key_file in the config file, or use --dev)"
        ),
    };
    let db = config.database();
    Ok(match &db {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(path)
                .map_err(|e| anyhow::anyhow!(crate::store::explain_open_error(path, &e)))?;
            AppState::new(Arc::new(store), master, config)
        }
        Database::Postgres(url) => {
            let store = PgStore::open(url, config.database_pool_size)
                .with_context(|| format!("opening {db}"))?;
            AppState::new(Arc::new(store), master, config)
        }
    })
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    tls: Option<crate::tls::Tls>,
    /// `metrics_listen`, when set.
    metrics: Option<TcpListener>,
}

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Server {
    /// Loads TLS (or checks that plain HTTP is allowed) and binds the listener.
    pub async fn bind(state: AppState) -> anyhow::Result<Server> {
        let tls = crate::tls::from_config(&state.config)?;
        if let Some(t) = &tls {
            let _ = state.ca_pin.set(t.ca_pin);
        }
        crate::tls::reload_on_sighup(tls.as_ref().map(|t| t.cert.clone()), state.clone());
        let addr = state.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let metrics = match state.config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Server {
            listener,
            state,
            tls,
            metrics,
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the `metrics_listen` listener, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    ///
    /// HTTP/1.1 only, served by hyper directly: an idle long-polling agent
    /// then costs one connection with hyper's own buffers and nothing more
    /// (see docs/benchmarks.md for the memory measured with 10,000 agents).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        use tower::ServiceExt;

        let wakers = self.state.wakers.clone();
        let request_timeout =
            std::time::Duration::from_secs(self.state.config.request_timeout_secs);
        let limits = {
            let cfg = &self.state.config;
            let nofile = crate::conn_limits::raise_nofile_limit();
            let max = crate::conn_limits::effective_max(cfg.max_connections, nofile);
            if max < cfg.max_connections {
                tracing::warn!(
                    configured = cfg.max_connections,
                    open_files_limit = nofile,
                    using = max,
                    "max_connections lowered below the open-files limit"
                );
            }
            crate::conn_limits::ConnLimits::new(max, cfg.max_connections_per_source)
        };
        let metrics = self.metrics.map(|l| {
            let app = crate::api::metrics::router(self.state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            })
        });
        // Several replicas on PostgreSQL: work stored through another one
        // wakes the agents long-polling this one.
        let listener = match self.state.config.database() {
            Database::Postgres(url) => {
                let (w1, w2) = (wakers.clone(), wakers.clone());
                Some(tokio::spawn(crate::store::postgres::listen_for_work(
                    url,
                    move |ids| w1.wake(ids),
                    move || w2.wake_all(),
                )))
            }
            Database::Sqlite(_) => None,
        };
        let sweeper = tokio::spawn(housekeeping(self.state.clone()));
        let app = crate::api::router(self.state);
        let refusal = crate::api::too_many_connections_router();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(request_timeout);
        let mut refusing = http.clone();
        refusing.keep_alive(false);
        tokio::pin!(shutdown);
        loop {
            // A place under the listener cap first: at the cap, new clients
            // wait in the kernel's backlog.
            let permit = tokio::select! {
                p = limits.reserve() => p,
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let (router, slot, http) = match limits.admit(peer.ip(), permit) {
                Ok(slot) => (app.clone(), slot, http.clone()),
                Err(slot) => {
                    tracing::debug!(%peer, "connection over max_connections_per_source");
                    (refusal.clone(), slot, refusing.clone())
                }
            };
            let svc = router.map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(slot.clone());
                req
            });
            let svc = TowerToHyperService::new(svc);
            match &self.tls {
                None => {
                    let stream = crate::raw_errors::GatewayErrors::new(stream, peer);
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(tls) => {
                    // The handshake runs in the connection's task, bounded in time,
                    // so a slow client never holds up the accept loop.
                    let acceptor = tls.acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let stream = match tokio::time::timeout(
                            TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let stream = crate::raw_errors::GatewayErrors::new(stream, peer);
                        let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), svc));
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        // Long polls answer "no work" at once instead of holding shutdown.
        wakers.close();
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
                tracing::warn!("connections still open after 30 s; closing them");
            }
        }
        sweeper.abort();
        if let Some(l) = listener {
            l.abort();
        }
        if let Some(m) = metrics {
            m.abort();
        }
        Ok(())
    }
}

/// Fleet-wide housekeeping, on one replica at a time: fails power sub-jobs
/// whose agent never completed them (jobs survive restarts in the
/// database, so this also catches jobs of a previous run) every 1–5 s, and
/// deletes records past retention every hour, runs the password rotation
/// scheduler every `rotation_check_secs`. With SQLite this process is
/// the only one; on PostgreSQL the replica holding the housekeeping lock
/// does it, and another takes over within a period when it dies.
async fn housekeeping(state: AppState) {
    let period = std::time::Duration::from_secs(state.config.job_timeout_secs.clamp(1, 5));
    let retention_every = std::time::Duration::from_secs(3600);
    let mut lead = Leadership::new(&state);
    let mut next_retention = tokio::time::Instant::now();
    // Rotation policies (issue 15): due ones run once (claimed in the
    // store), servers left behind catch up, retrieved passwords rotate
    // after their grace.
    let rotation_every = std::time::Duration::from_secs(state.config.rotation_check_secs.max(1));
    let mut next_rotation = tokio::time::Instant::now();
    loop {
        if lead.holds().await {
            match expire_jobs(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(sub_jobs = n, "power sub-jobs timed out"),
                Err(e) => tracing::error!(error = %e.chain(), "expiring sub-jobs failed"),
            }
            if tokio::time::Instant::now() >= next_retention {
                crate::lifecycle::retention_once(&state).await;
                next_retention = tokio::time::Instant::now() + retention_every;
            }
            if tokio::time::Instant::now() >= next_rotation {
                match crate::escrow::run_rotations(&state, state.clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(servers = n, "passwords rotated"),
                    Err(e) => tracing::error!(error = %e.chain(), "rotating passwords failed"),
                }
                next_rotation = tokio::time::Instant::now() + rotation_every;
            }
        }
        tokio::time::sleep(period.min(rotation_every)).await;
    }
}

/// Whether this replica does the housekeeping (see [`housekeeping`]),
/// shown as `state.housekeeper` and the `ecsd_housekeeper` gauge.
struct Leadership {
    url: Option<String>,
    session: Option<crate::store::postgres::HousekeepingSession>,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Leadership {
    fn new(state: &AppState) -> Leadership {
        Leadership {
            url: match state.config.database() {
                Database::Postgres(url) => Some(url),
                Database::Sqlite(_) => None,
            },
            session: None,
            flag: state.housekeeper.clone(),
        }
    }

    async fn holds(&mut self) -> bool {
        let held = match &self.url {
            None => true,
            Some(url) => {
                if self.session.is_none() {
                    match crate::store::postgres::HousekeepingSession::connect(url).await {
                        Ok(s) => self.session = Some(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "opening the housekeeping session failed")
                        }
                    }
                }
                match &mut self.session {
                    None => false,
                    Some(session) => {
                        let before = session.held();
                        match session.hold().await {
                            Ok(held) => {
                                if held && !before {
                                    tracing::info!(
                                        "this replica now runs the job sweeper and retention"
                                    );
                                }
                                held
                            }
                            Err(e) => {
                                if before {
                                    tracing::warn!(error = %e, "lost the housekeeping lock (the database connection ended)");
                                } else {
                                    tracing::warn!(error = %e, "asking for the housekeeping lock failed");
                                }
                                // Connect again at the next period.
                                self.session = None;
                                false
                            }
                        }
                    }
                }
            }
        };
        self.flag.store(held, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::METRICS.housekeeper.set(i64::from(held));
        held
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.flag.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One sweep: fails the open sub-jobs begun more than `job_timeout_secs`
/// before now. Begin times are stored wall-clock times (they must survive a
/// restart, and replicas share them), compared with the wall clock
/// (`state.clock`): a forward jump of the clock by more than the timeout
/// expires open sub-jobs early; a smaller one does not; a backward jump
/// delays expiry by the jump (docs/reliability.md, "Faults").
pub async fn expire_jobs(state: &AppState) -> crate::store::StoreResult<usize> {
    let timeout = chrono::Duration::seconds(state.config.job_timeout_secs as i64);
    let now = state.clock.now();
    let n = state.store.expire_sub_jobs(now - timeout, now).await?;
    crate::metrics::sub_jobs("fail", n as u64);
    if n > 0 {
        state.changes.bump();
    }
    Ok(n)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Reads the master key file of a data directory, creating it (mode 0600) if absent.
pub fn dev_master_key(data_dir: &std::path::Path) -> anyhow::Result<SecretString> {
    let path = data_dir.join("master.key");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(s.trim().to_owned()));
    }
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(data_dir)?;
    let key = MasterKey::generate_base64();
    crate::dev::write_private(&path, secrecy::ExposeSecret::expose_secret(&key).as_bytes())?;
    Ok(key)
}
