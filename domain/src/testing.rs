//! Given/when/then tests for aggregates: given past events, when a command is decided,
//! then expect these events or this rejection.

use std::fmt::Debug;

use crate::Aggregate;

/// Starts a test from an aggregate's history.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    pub fn given_no_previous_events() -> Self {
        Self {
            state: A::default(),
        }
    }

    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(event);
        }
        Self { state }
    }

    pub fn when(self, command: A::Command) -> Decided<A> {
        let result = self.state.decide(command);
        Decided { result }
    }
}

/// The decision under test.
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Decided<A>
where
    A::Error: PartialEq + Debug,
{
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) {
        match self.result {
            Ok(events) => assert_eq!(events, expected),
            Err(error) => panic!("expected events {expected:?}, got rejection {error:?}"),
        }
    }

    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error) {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, got events {events:?}"),
            Err(error) => assert_eq!(error, expected),
        }
    }

    /// The events, for assertions on part of them.
    #[track_caller]
    pub fn events(self) -> Vec<A::Event> {
        match self.result {
            Ok(events) => events,
            Err(error) => panic!("expected events, got rejection {error:?}"),
        }
    }
}
