//! Adapters to the outside world, each implementing a port of `shopagent_domain::ports`
//! and keeping its wire types private, plus sandboxes that speak the same protocols for
//! tests and demos.
//!
//! * [`stripe_issuing`] — the card issuer, shaped after Stripe Issuing.
//! * [`easypost`] — carrier tracking, shaped after EasyPost trackers.
//! * [`sandbox_carrier`] — a tracking server speaking those same shapes.
//! * [`sandbox_issuer`] — an issuer server speaking those same shapes.
//! * [`ucp`] — merchants speaking the Universal Commerce Protocol (REST binding).
//! * [`sandbox_merchant`] — a UCP merchant server with switchable failure modes.

pub mod easypost;
pub mod kafka;
pub mod product_page;
mod propagation;
mod sandbox;
pub use sandbox::Sandbox;
pub mod sandbox_carrier;
pub mod sandbox_issuer;
pub mod sandbox_merchant;
pub mod search;
pub mod stripe_issuing;
pub mod ucp;
