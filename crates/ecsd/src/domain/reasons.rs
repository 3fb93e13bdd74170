//! The user-facing reason texts that the domain writes into resets and jobs.

/// A reset replaced by a newer request before it was applied.
pub const SUPERSEDED: &str = "superseded by a newer reset request";
/// A reset sealed to a key the server's agent no longer holds.
pub const REKEYED: &str = "the agent re-enrolled with a new key before applying";
/// `os-start` on a server nothing can power on.
pub const NO_POWER_DRIVER: &str = "no out-of-band power driver: ecsd cannot power on a stopped machine; \
start it by hand (or through its BMC) and its agent reports it ACTIVE";
/// A power sub-job whose agent did not finish in time.
pub const TIMED_OUT: &str = "timed out: the server's agent did not complete the action in time";
/// The agent said no without saying why.
pub const AGENT_REFUSED: &str = "the agent refused the action";
/// A failed sub-job without a reason (should not happen).
pub const FAILED: &str = "failed";

/// The reason of a failed job: how many servers failed, and the first one's story.
pub fn job_failed(failed: usize, total: usize, first_server: &str, first_reason: &str) -> String {
    format!("{failed} of {total} servers failed; first: {first_server}: {first_reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_failure_counts_and_names_the_first_server() {
        assert_eq!(
            job_failed(2, 5, "srv-1", TIMED_OUT),
            "2 of 5 servers failed; first: srv-1: timed out: the server's agent did not complete the action in time"
        );
    }
}
