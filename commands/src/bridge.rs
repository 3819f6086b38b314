//! Adapts the domain's pure [`Aggregate`] trait to cqrs-es, so the domain crate needs
//! neither cqrs-es nor the async runtime it pulls in.

use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use shopagent_domain::{Aggregate, DomainEvent};

/// A domain aggregate as cqrs-es sees it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Stream<A>(pub A);

/// A domain event as cqrs-es sees it. Serialized exactly as the inner event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recorded<E>(pub E);

impl<E: DomainEvent> cqrs_es::DomainEvent for Recorded<E> {
    fn event_type(&self) -> String {
        self.0.event_type().to_owned()
    }

    fn event_version(&self) -> String {
        self.0.event_version().to_owned()
    }
}

impl<A: Aggregate> cqrs_es::Aggregate for Stream<A> {
    const TYPE: &'static str = A::TYPE;
    type Command = A::Command;
    type Event = Recorded<A::Event>;
    type Error = A::Error;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        // `EventSink::write` applies each event to the aggregate it is given, and
        // cqrs-es 0.5's snapshot path applies the collected events to the same context
        // again before serializing the snapshot, which would count every event twice.
        // The events were decided on `self` already, so they are applied to a scratch
        // value here and cqrs-es stays the only one to fold them into the context.
        let mut scratch = Self::default();
        for event in self.0.decide(command)? {
            sink.write(Recorded(event), &mut scratch).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.0.apply(event.0);
    }
}
