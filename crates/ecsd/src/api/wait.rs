//! `?wait=SECONDS` on the reset outcome and job reads (our extension): the
//! answer comes as soon as what was read changes (or is final), instead of
//! the client polling at an interval. Changes made through this replica
//! wake the reader at once ([`crate::state::Changes`]); changes made
//! through another replica are seen at the next look, a second later.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use crate::error::ApiError;
use crate::state::AppState;

/// The longest `wait` (below the 60-s whole-call limit of common clients).
pub const MAX_WAIT_SECS: u64 = 50;

/// The `wait` parameter: absent is 0 (answer at once); other parameters
/// are ignored, as before it existed.
pub fn wait_param(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Duration, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::invalid("Invalid query string."))?;
    match q.get("wait") {
        None => Ok(Duration::ZERO),
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if secs <= MAX_WAIT_SECS => Ok(Duration::from_secs(secs)),
            _ => Err(ApiError::invalid(format!(
                "Invalid query parameter wait: it must be 0 to {MAX_WAIT_SECS} seconds."
            ))),
        },
    }
}

/// Reads with `read`; if the value is not `done` and `wait` is not zero,
/// reads again whenever something may have changed, and answers with the
/// first value that is `done`, or once a value differs from the first
/// read, with the latest value [`SETTLE`] later (or `done` before then) —
/// or with the value after `wait`.
pub async fn until_changed<T, F, Fut>(
    state: &AppState,
    wait: Duration,
    mut read: F,
    done: impl Fn(&T) -> bool,
) -> Result<T, ApiError>
where
    T: PartialEq,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    // Subscribed before the first read: a change in between still wakes us.
    let mut changes = state.changes.subscribe();
    let first = read().await?;
    if wait.is_zero() || done(&first) {
        return Ok(first);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            // Another replica's changes: look again now and then.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => return read().await,
            _ = state.wakers.closed() => return read().await,
        }
        let now = read().await?;
        if done(&now) {
            return Ok(now);
        }
        if now != first {
            return settle(state, deadline, now, &mut changes, &mut read, &done).await;
        }
    }
}

/// How long a value that changed but is not final waits for more changes
/// before it is answered: a fleet's acknowledgements arrive hundreds a
/// second, and a client following progress would otherwise get (and ask
/// again for) one answer per server. A final value is answered at once.
pub const SETTLE: Duration = Duration::from_millis(100);

async fn settle<T, F, Fut>(
    state: &AppState,
    deadline: tokio::time::Instant,
    mut latest: T,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    read: &mut F,
    done: &impl Fn(&T) -> bool,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let until = deadline.min(tokio::time::Instant::now() + SETTLE);
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(until) => return Ok(latest),
            _ = state.wakers.closed() => return Ok(latest),
        }
        latest = read().await?;
        if done(&latest) {
            return Ok(latest);
        }
    }
}
