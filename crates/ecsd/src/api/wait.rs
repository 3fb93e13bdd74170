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
/// first value that differs from the first read or is `done` — or with
/// the value after `wait`.
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
        if now != first || done(&now) {
            return Ok(now);
        }
    }
}
