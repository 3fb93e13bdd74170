//! Prometheus metrics (issue #12): `GET /metrics` in the OpenMetrics text
//! format (which Prometheus reads), from the `prometheus-client` crate.
//!
//! The metric objects are process-wide (like a global recorder): the code
//! that does the work counts where it happens, without threading a registry
//! through every function. Each replica exposes its own counts; Prometheus
//! sums them. Agent counts by version are read from the store at scrape
//! time (shared by the replicas, so every replica reports the same fleet).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route's path template (`/v1/{project_id}/...`), `unmatched` for
    /// no route: never the raw path, so ids do not become label values.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub sync: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub version: String,
    /// `up` (heard from within `agent_stale_secs`) or `stale`.
    pub status: &'static str,
}

fn latency_buckets() -> Histogram {
    // 0.5 ms .. ~33 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn apply_buckets() -> Histogram {
    // 1 s .. ~9 days: a reset applies at the server's next restart.
    Histogram::new(exponential_buckets(1.0, 4.0, 11))
}

/// Every metric `ecsd` exposes.
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Reset targets by what happened to them: `accepted`, `delivered`,
    /// `applied`, `failed`.
    pub reset_targets: Family<StateLabels, Counter>,
    /// Reset requests accepted (not dry runs).
    pub resets: Counter,
    /// From the reset's acceptance to the agent's APPLIED.
    pub reset_apply_seconds: Histogram,
    /// Power sub-jobs: `accepted`, `success`, `fail` (expiry included).
    pub sub_jobs: Family<StateLabels, Counter>,
    /// Sealing one request's passwords (all its targets).
    pub seal_seconds: Histogram,
    /// A store call, queueing for the connection included: `read`, `write`.
    pub store_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Group commits of the SQLite store by `sync` (`full`, or `normal` for
    /// a batch of time-only heartbeats).
    pub group_commits: Family<SyncLabels, Counter>,
    /// Writes carried by those commits.
    pub group_commit_writes: Counter,
    /// Failed authentications: `public`, `agent`.
    pub auth_failures: Family<ApiLabels, Counter>,
    /// Agent long polls waiting on this replica now.
    pub agents_polling: Gauge,
    /// 1 while this replica runs the job sweeper and retention.
    pub housekeeper: Gauge,
    /// Enrolled servers by agent version and liveness (read at scrape time).
    pub agents: Family<AgentLabels, Gauge>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    http_requests: Family::default(),
    http_seconds: Family::new_with_constructor(latency_buckets),
    reset_targets: Family::default(),
    resets: Counter::default(),
    reset_apply_seconds: apply_buckets(),
    sub_jobs: Family::default(),
    seal_seconds: latency_buckets(),
    store_seconds: Family::new_with_constructor(latency_buckets),
    group_commits: Family::default(),
    group_commit_writes: Counter::default(),
    auth_failures: Family::default(),
    agents_polling: Gauge::default(),
    housekeeper: Gauge::default(),
    agents: Family::default(),
});

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("ecsd");
    r.register(
        "http_requests",
        "HTTP requests answered, by method, route and status",
        m.http_requests.clone(),
    );
    r.register(
        "http_request_duration_seconds",
        "Time to answer an HTTP request (an agent's long poll included), by method and route",
        m.http_seconds.clone(),
    );
    r.register(
        "resets",
        "Password reset requests accepted",
        m.resets.clone(),
    );
    r.register(
        "reset_targets",
        "Reset targets by event: accepted, delivered (handed to the agent), applied, failed",
        m.reset_targets.clone(),
    );
    r.register(
        "reset_apply_duration_seconds",
        "Time from a reset's acceptance to its agent reporting APPLIED",
        m.reset_apply_seconds.clone(),
    );
    r.register(
        "power_sub_jobs",
        "Power sub-jobs by event: accepted, success, fail",
        m.sub_jobs.clone(),
    );
    r.register(
        "seal_duration_seconds",
        "Time to seal one request's passwords to its servers' keys",
        m.seal_seconds.clone(),
    );
    r.register(
        "store_duration_seconds",
        "Time of a store call, waiting for the connection included, by read or write",
        m.store_seconds.clone(),
    );
    r.register(
        "store_group_commits",
        "Transactions of the SQLite store's group writer, by sync (full; normal: time-only heartbeats)",
        m.group_commits.clone(),
    );
    r.register(
        "store_group_commit_writes",
        "Writes (acknowledgements, heartbeats, deliveries) carried by the group commits",
        m.group_commit_writes.clone(),
    );
    r.register(
        "auth_failures",
        "Failed authentications, by API (public, agent)",
        m.auth_failures.clone(),
    );
    r.register(
        "agents_polling",
        "Agent long polls open on this replica",
        m.agents_polling.clone(),
    );
    r.register(
        "housekeeper",
        "1 while this replica runs the job sweeper and retention (one replica at a time)",
        m.housekeeper.clone(),
    );
    r.register(
        "agents",
        "Enrolled servers by agent version and status (up, stale)",
        m.agents.clone(),
    );
    r
});

/// The OpenMetrics text of every metric.
pub fn render() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &REGISTRY)
        .expect("writing to a String cannot fail");
    out
}

/// Counts a store call of `kind` that took `d`.
pub fn store_call(kind: &'static str, d: Duration) {
    METRICS
        .store_seconds
        .get_or_create(&OpLabels { op: kind })
        .observe(d.as_secs_f64());
}

/// Counts one group commit of `writes` writes.
pub fn group_commit(durable: bool, writes: u64) {
    METRICS
        .group_commits
        .get_or_create(&SyncLabels {
            sync: if durable { "full" } else { "normal" },
        })
        .inc();
    METRICS.group_commit_writes.inc_by(writes);
}

/// Counts reset targets of `state`.
pub fn targets(state: &'static str, n: u64) {
    METRICS
        .reset_targets
        .get_or_create(&StateLabels { state })
        .inc_by(n);
}

/// Counts power sub-jobs of `state`.
pub fn sub_jobs(state: &'static str, n: u64) {
    METRICS
        .sub_jobs
        .get_or_create(&StateLabels { state })
        .inc_by(n);
}

/// Counts a failed authentication on `api`.
pub fn auth_failure(api: &'static str) {
    METRICS
        .auth_failures
        .get_or_create(&ApiLabels { api })
        .inc();
}

/// Replaces the agent counts with `census`.
pub fn set_agents(census: &[crate::store::AgentCount]) {
    METRICS.agents.clear();
    for c in census {
        for (status, n) in [("up", c.up), ("stale", c.stale)] {
            if n > 0 {
                METRICS
                    .agents
                    .get_or_create(&AgentLabels {
                        version: c.version.clone(),
                        status,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Holds the "agents polling" gauge up while a long poll waits.
pub struct Polling;

impl Polling {
    pub fn start() -> Polling {
        METRICS.agents_polling.inc();
        Polling
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        METRICS.agents_polling.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_its_prefix_and_ends_with_eof() {
        // A family appears once it has a series.
        targets("accepted", 2);
        sub_jobs("accepted", 1);
        auth_failure("public");
        store_call("read", Duration::from_millis(1));
        let route = RouteLabels {
            method: "GET".into(),
            route: "/health".into(),
        };
        METRICS.http_seconds.get_or_create(&route).observe(0.001);
        METRICS
            .http_requests
            .get_or_create(&HttpLabels {
                method: "GET".into(),
                route: "/health".into(),
                status: 200,
            })
            .inc();
        let text = render();
        for name in [
            "ecsd_http_requests",
            "ecsd_http_request_duration_seconds",
            "ecsd_resets",
            "ecsd_reset_targets",
            "ecsd_reset_apply_duration_seconds",
            "ecsd_power_sub_jobs",
            "ecsd_seal_duration_seconds",
            "ecsd_store_duration_seconds",
            "ecsd_auth_failures",
            "ecsd_agents_polling",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("ecsd_reset_targets_total{state=\"accepted\"}"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn the_agent_census_replaces_the_previous_one() {
        set_agents(&[crate::store::AgentCount {
            version: "9.9.1".into(),
            up: 3,
            stale: 0,
        }]);
        assert!(render().contains("ecsd_agents{version=\"9.9.1\",status=\"up\"} 3"));
        set_agents(&[crate::store::AgentCount {
            version: "9.9.2".into(),
            up: 0,
            stale: 1,
        }]);
        let text = render();
        assert!(!text.contains("9.9.1"), "{text}");
        assert!(text.contains("ecsd_agents{version=\"9.9.2\",status=\"stale\"} 1"));
    }
}
