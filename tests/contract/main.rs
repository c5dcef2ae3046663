//! The contract with senders and consumers: the envelope's properties over
//! arbitrary input, the JSON schemas and AsyncAPI file against the code and
//! the samples, and the README against the binary's flags and metrics.

#[path = "../support/mod.rs"]
mod support;

mod docs;
mod models;
mod oracle;
mod properties;
mod schemas;
