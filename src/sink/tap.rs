//! What `apizee-bridge tail` reads from a broker: each message with its
//! topic, key and headers, as each broker's tap (`nats/tap.rs`,
//! `kafka/tap.rs`) delivers it; the command prints it.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

/// One message as a broker delivered it.
#[derive(Debug, Serialize)]
pub struct Tapped {
    pub topic: String,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "as_text")]
    pub payload: Bytes,
}

fn as_text<S: serde::Serializer>(payload: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(payload))
}

/// Whether `topic` is selected by any of `patterns` (NATS subject syntax).
pub fn selected(patterns: &[String], topic: &str) -> bool {
    patterns
        .iter()
        .any(|p| crate::route::subject_matches(p, topic))
}

/// How long a broker may take to answer tail's first request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
