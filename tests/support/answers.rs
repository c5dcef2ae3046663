//! The in-process bridge with a memory sink, and the one check of the JSON
//! error answer every handler refusal gives, so that every HTTP test holds
//! the answers to the same standard whatever the transport.

use std::sync::Arc;

use apizee_bridge::sink::memory::MemorySink;
use serde_json::Value;

use super::{Bridge, Reply, settings};

/// The bridge with its flags parsed as the binary does, publishing to a
/// memory sink the test holds.
pub async fn bridge_with(args: &[&str]) -> (Bridge, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let bridge = Bridge::with_sink(settings(args), sink.clone()).await;
    (bridge, sink)
}

/// Checks a JSON error answer: its status, `content-type:
/// application/json`, the `error` code, a non-empty `message` and a
/// `details` array. `case` names the request in a failure. Returns the body,
/// for the checks of `details` that only the caller knows.
pub fn assert_error(reply: &Reply, status: u16, code: &str, case: &str) -> Value {
    assert_eq!(reply.status, status, "{case}: {}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{case}"
    );
    let body: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{case}: answer is not JSON ({e}): {}", reply.text()));
    assert_eq!(body["error"], code, "{case}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
    assert!(body["details"].is_array(), "{case}: {body}");
    body
}
