//! A reset target's lifecycle: PENDING → DELIVERED (the agent fetched it) →
//! APPLIED or FAILED (its acknowledgement); an open target becomes SUPERSEDED
//! when a newer request stores one for the same server, or FAILED when the
//! server's agent is re-keyed (it was sealed to the old key).

use ecs_api::ResetState;

/// Not yet APPLIED, FAILED or SUPERSEDED: it can still change.
pub fn is_open(state: ResetState) -> bool {
    !state.is_final()
}

/// The state after the agent fetched the target, if it changes.
pub fn delivered(state: ResetState) -> Option<ResetState> {
    (state == ResetState::Pending).then_some(ResetState::Delivered)
}

/// The state an agent's acknowledgement gives an open target.
pub fn acknowledged(applied: bool) -> ResetState {
    if applied {
        ResetState::Applied
    } else {
        ResetState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetching_delivers_a_pending_target_once() {
        assert_eq!(delivered(ResetState::Pending), Some(ResetState::Delivered));
        assert_eq!(delivered(ResetState::Delivered), None);
    }

    #[test]
    fn an_acknowledgement_applies_or_fails() {
        assert_eq!(acknowledged(true), ResetState::Applied);
        assert_eq!(acknowledged(false), ResetState::Failed);
    }

    #[test]
    fn only_pending_and_delivered_are_open() {
        let open: Vec<_> = ResetState::ALL.iter().filter(|s| is_open(**s)).collect();
        assert_eq!(open, [&ResetState::Pending, &ResetState::Delivered]);
    }
}
