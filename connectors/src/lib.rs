//! Adapters to the outside world: merchants, the card issuer, carriers, Kafka and search
//! engines. Each implements a port (a trait) defined by the crate that needs it and keeps
//! its wire types private.
//!
//! Nothing lives here yet: the event-sourced spine talks to no outside system. The first
//! connectors arrive with checkout; the crate exists now so the dependency rules
//! (`api → connectors → domain`, never the reverse) are enforced from the start.
