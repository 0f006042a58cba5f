//! End-to-end tests: real nodes on ephemeral ports, guests built from source, HTTP
//! over loopback. One test binary for the whole project (every binary links
//! wasmtime again).

mod browser;
mod harness;

mod access;
mod backups;
mod billing;
mod cli;
mod cluster;
mod containment;
mod dashboard;
mod data;
mod exports;
mod instances;
mod jobs;
mod languages;
mod leaving;
mod lifecycle;
mod limits;
mod metrics;
mod openapi;
mod propagation;
mod publish;
mod races;
mod restart;
mod reuse;
mod rollout;
mod routing;
mod schema;
mod services;
mod structure;
mod switch;
mod traces;
mod trust;
