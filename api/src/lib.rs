//! The `shopagent` binary's library half: configuration, the HTTP interface, telemetry
//! and the server's life cycle. This is the only crate that knows HTTP.

pub mod auth;
pub mod cli;
pub mod demo;
pub mod directory;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod openapi;
pub mod problem;
pub mod report;
pub mod routes;
pub mod server;
pub mod telemetry;

pub use server::{App, Server};
