//! Caps on open connections (issue #11): one for the whole listener and one
//! per source address, so that one client (or one address's worth of
//! clients) cannot take every file descriptor.
//!
//! - The listener cap is back-pressure: when it is reached, `ecsd` stops
//!   accepting until a connection closes (new clients wait in the kernel's
//!   backlog rather than being refused).
//! - The per-source cap refuses: a connection over it is served one answer,
//!   429 `APIGW.0308` in the gateway shape with a request id, and closed.
//! - Agents are excepted by credential: a connection on which an agent has
//!   authenticated stops counting against its address (a fleet behind one NAT
//!   address long-polls with one connection per server), while it still
//!   counts against the listener cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open-connection counters shared by a listener's accept loop and its
/// connections.
pub struct ConnLimits {
    total: Arc<Semaphore>,
    max_total: usize,
    /// 0: no per-source cap.
    max_per_source: usize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place under the caps; dropping it (when the
/// connection ends) gives the place back.
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    limits: Arc<ConnLimits>,
    source: IpAddr,
    /// Whether this connection still counts against its source address.
    counted: AtomicBool,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        let max_total = max_total.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnLimits {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_source,
            per_source: Mutex::default(),
        })
    }

    /// The listener cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Waits for a place under the listener cap (call before `accept`).
    pub async fn reserve(&self) -> OwnedSemaphorePermit {
        self.total
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Counts an accepted connection from `source` (holding `permit`).
    /// `Err` when `source` is at its cap: the slot then still holds the
    /// listener place (the refusal is a connection too) but counts nothing
    /// against the address.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        permit: OwnedSemaphorePermit,
    ) -> Result<Arc<ConnSlot>, Arc<ConnSlot>> {
        let source = canonical(source);
        let mut admitted = true;
        if self.max_per_source > 0 {
            let mut map = self.per_source.lock().expect("connection counts lock");
            let n = map.entry(source).or_insert(0);
            if *n >= self.max_per_source {
                admitted = false;
            } else {
                *n += 1;
            }
        }
        let slot = Arc::new(ConnSlot {
            _permit: permit,
            limits: self.clone(),
            source,
            counted: AtomicBool::new(admitted && self.max_per_source > 0),
        });
        if admitted { Ok(slot) } else { Err(slot) }
    }

    /// Connections counted against `source` now.
    pub fn open_from(&self, source: IpAddr) -> usize {
        let map = self.per_source.lock().expect("connection counts lock");
        map.get(&canonical(source)).copied().unwrap_or(0)
    }

    fn release(&self, source: IpAddr) {
        let mut map = self.per_source.lock().expect("connection counts lock");
        if let Some(n) = map.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&source);
            }
        }
    }
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot")
            .field("source", &self.source)
            .field("counted", &self.counted.load(Ordering::Relaxed))
            .finish()
    }
}

impl ConnSlot {
    /// An agent authenticated on this connection: it no longer counts
    /// against its source address (idempotent).
    pub fn exempt(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.limits.release(self.source);
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.exempt();
    }
}

/// An IPv4 client reaching a dual-stack listener is counted as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Raises the soft open-files limit to the hard one (Unix) and returns the
/// limit in force, so the listener cap can stay below it.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::increase_nofile_limit(u64::MAX).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The listener cap to use: `configured`, lowered below the open-files
/// limit (leaving room for the database, logs and the listener itself).
pub fn effective_max(configured: usize, nofile: Option<u64>) -> usize {
    const RESERVED_FDS: u64 = 64;
    match nofile {
        Some(n) => {
            let room = usize::try_from(n.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
            configured.min(room)
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_per_source_cap_refuses_the_next_connection_and_frees_on_close() {
        let limits = ConnLimits::new(100, 2);
        let a = limits
            .admit(ip("10.0.0.1"), limits.reserve().await)
            .unwrap();
        let _b = limits
            .admit(ip("10.0.0.1"), limits.reserve().await)
            .unwrap();
        let refused = limits.admit(ip("10.0.0.1"), limits.reserve().await);
        assert!(refused.is_err());
        drop(refused);
        assert_eq!(
            limits.open_from(ip("10.0.0.1")),
            2,
            "a refusal frees nothing it did not take"
        );
        // Another address is not affected.
        let _c = limits
            .admit(ip("10.0.0.2"), limits.reserve().await)
            .unwrap();
        drop(a);
        assert_eq!(limits.open_from(ip("10.0.0.1")), 1);
        assert!(limits.admit(ip("10.0.0.1"), limits.reserve().await).is_ok());
    }

    #[tokio::test]
    async fn an_agent_connection_stops_counting_against_its_address_once() {
        let limits = ConnLimits::new(100, 1);
        let agent = limits
            .admit(ip("10.0.0.1"), limits.reserve().await)
            .unwrap();
        agent.exempt();
        agent.exempt();
        assert_eq!(limits.open_from(ip("10.0.0.1")), 0);
        let other = limits
            .admit(ip("10.0.0.1"), limits.reserve().await)
            .unwrap();
        assert_eq!(limits.open_from(ip("10.0.0.1")), 1);
        // Closing the exempted connection does not free the other's place twice.
        drop(agent);
        assert_eq!(limits.open_from(ip("10.0.0.1")), 1);
        drop(other);
        assert_eq!(limits.open_from(ip("10.0.0.1")), 0);
    }

    #[tokio::test]
    async fn the_listener_cap_waits_until_a_connection_closes() {
        let limits = ConnLimits::new(1, 0);
        let first = limits
            .admit(ip("10.0.0.1"), limits.reserve().await)
            .unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), limits.reserve());
        assert!(
            waiting.await.is_err(),
            "a second place while the first is held"
        );
        drop(first);
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), limits.reserve());
        assert!(again.await.is_ok());
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
    }

    #[test]
    fn the_listener_cap_stays_below_the_open_files_limit() {
        assert_eq!(effective_max(20_000, Some(1024)), 960);
        assert_eq!(effective_max(500, Some(1024)), 500);
        assert_eq!(effective_max(500, None), 500);
        assert_eq!(effective_max(500, Some(10)), 1);
    }
}
