//! The HTTP edge, in-process with a memory sink or as the binary: every
//! answer, access checks, hostile input, secrets rotated live, TLS, the
//! drain, the command line.

#[path = "../support/mod.rs"]
mod support;

mod answers;
mod auth;
mod cli;
mod drain;
mod hostile;
mod secrets;
mod tls;
