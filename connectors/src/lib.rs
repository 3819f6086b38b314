//! Adapters to the outside world, each implementing a port of `shopagent_domain::ports`
//! and keeping its wire types private, plus sandboxes that speak the same protocols for
//! tests and demos.
//!
//! * [`stripe_issuing`] — the card issuer, shaped after Stripe Issuing.
//! * [`sandbox_issuer`] — an issuer server speaking those same shapes.

pub mod sandbox_issuer;
pub mod stripe_issuing;
