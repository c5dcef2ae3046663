//! The HTTP edge: the accept loop and graceful drain ([`server`]), the
//! webhook and health handlers ([`handler`]), and the one place where a
//! failure becomes a status code and a JSON body ([`rejection`]).

pub mod config;

pub mod budget;
pub mod handler;
pub mod metrics;
pub mod rejection;
pub mod server;

pub use handler::App;
