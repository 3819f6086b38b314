//! A small aggregate for exercising the store: a tally that must be opened before
//! amounts can be added.

#![allow(dead_code)] // each test binary uses a different part of this module

use serde::{Deserialize, Serialize};
use shopagent_domain::{Aggregate, DomainEvent, EventMetadata};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    pub opened: bool,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub enum TallyCommand {
    Open,
    Add(i64),
    /// Records two events in one append.
    AddTwice(i64),
    /// Records nothing.
    Touch,
    /// Adds `amount` unless the total would pass `limit`.
    AddUpTo {
        amount: i64,
        limit: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TallyEvent {
    Opened,
    Added { amount: i64 },
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened => "TallyOpened",
            Self::Added { .. } => "TallyAdded",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    #[error("tally is not open")]
    NotOpen,
    #[error("tally is already open")]
    AlreadyOpen,
    #[error("the total would pass its limit")]
    Full,
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = TallyError;

    fn decide(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, TallyError> {
        match command {
            TallyCommand::Open if self.opened => Err(TallyError::AlreadyOpen),
            TallyCommand::Open => Ok(vec![TallyEvent::Opened]),
            _ if !self.opened => Err(TallyError::NotOpen),
            TallyCommand::Add(amount) => Ok(vec![TallyEvent::Added { amount }]),
            TallyCommand::AddTwice(amount) => Ok(vec![
                TallyEvent::Added { amount },
                TallyEvent::Added { amount },
            ]),
            TallyCommand::Touch => Ok(vec![]),
            TallyCommand::AddUpTo { amount, limit } if self.total + amount > limit => {
                Err(TallyError::Full)
            }
            TallyCommand::AddUpTo { amount, .. } => Ok(vec![TallyEvent::Added { amount }]),
        }
    }

    fn apply(&mut self, event: TallyEvent) {
        match event {
            TallyEvent::Opened => self.opened = true,
            TallyEvent::Added { amount } => self.total += amount,
        }
    }
}

pub fn metadata() -> EventMetadata {
    EventMetadata::new("tenant-a", "user:1")
}
