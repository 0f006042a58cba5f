//! Wharf: a multi-tenant host for services written as WebAssembly components.
//!
//! A node is made of rooms named after the parts of the platform (see `DESIGN.md`):
//!
//! - [`router`] maps a request's `Host` to an instance, in memory;
//! - [`runtime`] owns the wasmtime engine and runs one guest per request, metered;
//! - [`registry`] validates, compiles, caches and activates service versions;
//! - [`configurator`] keeps tenants and their instances;
//! - [`identity`] knows who is calling (users, sessions, API keys), [`access`]
//!   what they may do (roles, platform and service permissions), [`audit`] what
//!   they did;
//! - [`billing`] counts what each instance used;
//! - [`jobs`] is the durable job queue, its workers and the instance setups
//!   (migrations, seeders) that run on it;
//! - [`store`] is the control-plane database, and [`backup`] copies a node's
//!   whole state while it serves and restores it;
//! - [`admin`] is the JSON admin API, and [`ingress`] the public listener;
//! - [`sched`] lowers threads running CPU-heavy work, and [`metrics`] counts
//!   what the node does for Prometheus, and [`telemetry`] traces requests and
//!   jobs over OTLP;
//! - [`node`] wires them together, and [`cli`] is the `wharf` command.

pub mod access;
pub mod admin;
pub mod audit;
pub mod backup;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod configurator;
pub mod identity;
pub mod ingress;
pub mod instancedb;
pub mod jobs;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod quota;
pub mod registry;
pub mod rollout;
pub mod router;
pub mod runtime;
pub mod sched;
pub mod shared;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testdb;
pub mod usage;

pub use config::NodeConfig;
pub use node::{Node, RunningNode};
