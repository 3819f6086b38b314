//! A request's hold on its idempotency key, written by the request's first append.
//!
//! The HTTP layer keeps one row per `Idempotency-Key` (`http_idempotency`): held while
//! the request runs, then its answer. A request whose only effects are its commands
//! need not take that row before it runs, a round trip every request would wait for:
//! its first append writes the row in the same statement as the events (one round
//! trip, one commit). So either the request's commands start committing with its key
//! held by it, or nothing of that append is stored
//! ([`AppendError::RequestKeyTaken`]) and the request is answered from what the key
//! holds. The claim is handed down as a task-local, set around the request by
//! [`with_request_claim`]: buses and units run a request's commands on its own task,
//! and need not carry it.

use std::cell::Cell;
use std::sync::Arc;

use crate::store::AppendError;

/// The row that holds a request's key while it runs, as the first append writes it.
#[derive(Debug, Clone)]
pub struct RequestClaim {
    pub tenant: String,
    pub key: String,
    /// The request's digest: a retry is answered from the row only when it asks the
    /// same.
    pub request_hash: String,
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    /// What is kept of the request to run it again, should its process die.
    pub request: String,
    pub request_body: bytes::Bytes,
}

/// What became of a request's claim once the request ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// No append of the request's wrote it: the request appended nothing (refused, a
    /// no-op, its commands' outcomes replayed).
    Unused,
    /// Written with one of the request's appends: the request holds its key.
    Written,
    /// An append found the key held already, and stored nothing: the request's answer
    /// is what the key holds.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unused,
    /// An append carrying the claim is being made.
    Appending,
    Written,
    Refused,
}

#[derive(Debug)]
struct Slot {
    claim: Arc<RequestClaim>,
    state: Cell<State>,
}

tokio::task_local! {
    static SLOT: Slot;
}

/// Runs `work` (a request) with `claim` to be written by its first append, and tells
/// what became of the claim.
pub async fn with_request_claim<F: Future>(
    claim: RequestClaim,
    work: F,
) -> (F::Output, ClaimOutcome) {
    let slot = Slot {
        claim: Arc::new(claim),
        state: Cell::new(State::Unused),
    };
    SLOT.scope(slot, async move {
        let output = work.await;
        let outcome = SLOT.with(|slot| match slot.state.get() {
            State::Written => ClaimOutcome::Written,
            State::Refused => ClaimOutcome::Refused,
            State::Unused | State::Appending => ClaimOutcome::Unused,
        });
        (output, outcome)
    })
    .await
}

/// The claim an append about to be made must carry: none outside a request with one,
/// or once it is written. Once refused, every later append of the request is refused
/// too: none may commit without the key. One made while another carries the claim is
/// told to try again (a conflict), so that no append of the request's commits before
/// the key is known to be its.
pub(crate) fn for_append() -> Result<Option<ClaimInUse>, AppendError> {
    SLOT.try_with(|slot| match slot.state.get() {
        State::Unused => {
            slot.state.set(State::Appending);
            Ok(Some(ClaimInUse {
                claim: slot.claim.clone(),
                settled: false,
            }))
        }
        State::Appending => Err(AppendError::Conflict),
        State::Written => Ok(None),
        State::Refused => Err(AppendError::RequestKeyTaken),
    })
    .unwrap_or(Ok(None))
}

/// A claim carried by an append being made. Dropped without [`ClaimInUse::settle`] (the
/// append was given up), the claim is still to be written.
#[derive(Debug)]
pub(crate) struct ClaimInUse {
    claim: Arc<RequestClaim>,
    settled: bool,
}

impl ClaimInUse {
    pub(crate) fn claim(&self) -> &Arc<RequestClaim> {
        &self.claim
    }

    /// Records how the append that carried the claim went.
    pub(crate) fn settle<T>(mut self, appended: &Result<T, AppendError>) {
        let state = match appended {
            Ok(_) => State::Written,
            Err(AppendError::RequestKeyTaken) => State::Refused,
            Err(_) => State::Unused,
        };
        set(state);
        self.settled = true;
    }
}

impl Drop for ClaimInUse {
    fn drop(&mut self) {
        if !self.settled {
            set(State::Unused);
        }
    }
}

fn set(state: State) {
    // Outside the request's task there is no slot, and nothing to record.
    let _ = SLOT.try_with(|slot| slot.state.set(state));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> RequestClaim {
        RequestClaim {
            tenant: "acme".into(),
            key: "k".into(),
            request_hash: "hash".into(),
            lease_until_ms: 2,
            created_at_ms: 1,
            request: "{}".into(),
            request_body: bytes::Bytes::new(),
        }
    }

    #[tokio::test]
    async fn outside_a_request_an_append_carries_no_claim() {
        assert!(matches!(for_append(), Ok(None)));
    }

    #[tokio::test]
    async fn the_first_append_that_commits_writes_the_claim_and_later_ones_carry_none() {
        let ((), outcome) = with_request_claim(claim(), async {
            let failed = for_append().expect("claim").expect("carried");
            failed.settle(&Err::<(), _>(AppendError::Conflict));
            let first = for_append().expect("claim").expect("carried again");
            assert!(
                matches!(for_append(), Err(AppendError::Conflict)),
                "an append beside the one carrying the claim must wait"
            );
            first.settle(&Ok(()));
            assert!(matches!(for_append(), Ok(None)));
        })
        .await;
        assert_eq!(outcome, ClaimOutcome::Written);
    }

    #[tokio::test]
    async fn once_the_key_is_found_taken_no_append_of_the_request_may_commit() {
        let ((), outcome) = with_request_claim(claim(), async {
            let carried = for_append().expect("claim").expect("carried");
            carried.settle(&Err::<(), _>(AppendError::RequestKeyTaken));
            assert!(matches!(for_append(), Err(AppendError::RequestKeyTaken)));
        })
        .await;
        assert_eq!(outcome, ClaimOutcome::Refused);
    }

    /// Every append borrows the request's claim, body and all: each must give it back.
    #[tokio::test]
    async fn a_request_s_claim_is_held_by_nothing_once_its_appends_are_made() {
        let held = || SLOT.with(|slot| Arc::strong_count(&slot.claim));
        with_request_claim(claim(), async {
            let failed = for_append().expect("claim").expect("carried");
            failed.settle(&Err::<(), _>(AppendError::Conflict));
            assert_eq!(held(), 1, "after a failed append");
            drop(for_append());
            assert_eq!(held(), 1, "after an append given up");
            let written = for_append().expect("claim").expect("carried");
            written.settle(&Ok(()));
            assert_eq!(held(), 1, "after the append that wrote it");
        })
        .await;
    }

    #[tokio::test]
    async fn an_append_given_up_leaves_the_claim_to_the_next() {
        let ((), outcome) = with_request_claim(claim(), async {
            drop(for_append().expect("claim").expect("carried"));
            assert!(matches!(for_append(), Ok(Some(_))));
        })
        .await;
        assert_eq!(outcome, ClaimOutcome::Unused);
    }
}
