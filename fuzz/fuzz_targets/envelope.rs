//! Any body: `envelope::parse` refuses it or accepts it, never panics, and an
//! accepted body becomes a message that agrees with it (the invariants of
//! `tests/contract/properties.rs`, which checks the same on stable Rust). A body with
//! a repeated key is refused with that one problem, and an accepted objectId
//! holds no control or invisible character.
//!
//! cargo +nightly fuzz run envelope fuzz/corpus/envelope fuzz/seeds/envelope -- -dict=fuzz/envelope.dict

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use apizee_bridge::envelope::{self, EnvelopeError, Rules};
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, TopicTemplate, header};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../tests/contract/oracle.rs"]
mod oracle;
use oracle::{has_duplicate_keys, is_invisible};

fuzz_target!(|data: &[u8]| check(data));

fn template(text: &str, slot: &'static OnceLock<TopicTemplate>) -> &'static TopicTemplate {
    slot.get_or_init(|| TopicTemplate::parse(text, "apizee").unwrap())
}

/// Panics when an invariant does not hold.
fn check(data: &[u8]) {
    static DEFAULT: OnceLock<TopicTemplate> = OnceLock::new();
    static WITH_ID: OnceLock<TopicTemplate> = OnceLock::new();
    let default = template(DEFAULT_TEMPLATE, &DEFAULT);
    let with_id = template("{prefix}.{object}.{event}.{objectId}", &WITH_ID);
    let received_at = UNIX_EPOCH + Duration::from_secs(1_764_115_688);
    let document = serde_json::from_slice::<Value>(data).ok();
    let duplicated = has_duplicate_keys(data).unwrap_or(false);

    let mut lenient_accepts = false;
    for (strict, object_id_in_topic) in [(false, false), (true, false), (false, true), (true, true)]
    {
        let rules = Rules {
            strict,
            object_id_in_topic,
        };
        let envelope = match envelope::parse(data, rules) {
            Ok(envelope) => envelope,
            Err(EnvelopeError::Malformed(_)) => {
                assert!(document.is_none(), "valid JSON refused as malformed");
                continue;
            }
            Err(EnvelopeError::Invalid(problems)) => {
                assert!(document.is_some(), "malformed JSON refused as invalid");
                assert!(!problems.is_empty(), "refused without a problem");
                let repeated = |p: &envelope::Problem| p.problem.starts_with("has the key ");
                if duplicated {
                    assert!(
                        problems.len() == 1 && repeated(&problems[0]),
                        "repeated key, but {problems:?}"
                    );
                } else {
                    assert!(!problems.iter().any(repeated), "{problems:?}");
                }
                continue;
            }
        };
        assert!(!duplicated, "a repeated key accepted");
        if !strict && !object_id_in_topic {
            lenient_accepts = true;
        }
        assert!(lenient_accepts, "stricter rules {rules:?} accept more");
        if strict {
            assert!(
                envelope.unknown_values.is_empty(),
                "--strict counted unknown values"
            );
        }

        // What the body says, read without `envelope`.
        let root = document
            .as_ref()
            .and_then(Value::as_object)
            .expect("accepted a non-object");
        assert_eq!(
            root.get("event").and_then(Value::as_str),
            Some(envelope.event.as_str())
        );
        assert_eq!(
            root.get("object").and_then(Value::as_str),
            Some(envelope.object.as_str())
        );
        assert_eq!(
            root.get("time").and_then(Value::as_i64),
            Some(envelope.time)
        );
        let object_id = match root.get("objectId") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
        .expect("accepted objectId");
        assert!(
            !object_id.chars().any(is_invisible),
            "objectId {object_id:?} accepted"
        );

        let message = route::build_message(
            &envelope,
            Bytes::copy_from_slice(data),
            default,
            None,
            received_at,
        )
        .expect("default template");
        let topic = format!(
            "apizee.{}.{}",
            envelope.object.as_str(),
            envelope.event.as_str()
        );
        assert_eq!(message.topic, topic);
        assert!(route::is_valid_topic(&message.topic));
        assert_eq!(message.key, object_id, "the key is the objectId, unquoted");
        assert_eq!(&message.payload[..], data, "the payload is the body");
        let event_id = route::event_id(data);
        assert_eq!(message.event_id, event_id);
        assert!(
            event_id.len() == 32
                && event_id
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "event id {event_id:?}"
        );
        let names: Vec<&str> = message.headers.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, header::ALL);
        for (name, value) in &message.headers {
            assert!(
                !value.contains(['\r', '\n']),
                "header {name} breaks the line: {value:?}"
            );
            assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
        }
        assert!(
            message
                .headers
                .contains(&(header::OBJECT_ID, object_id.clone()))
        );
        assert!(message.headers.contains(&(header::EVENT_ID, event_id)));

        if object_id_in_topic {
            let message = route::build_message(
                &envelope,
                Bytes::copy_from_slice(data),
                with_id,
                None,
                received_at,
            )
            .expect("{objectId} template");
            assert_eq!(message.topic, format!("{topic}.{object_id}"));
            assert!(route::is_valid_topic(&message.topic));
            assert!(
                object_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "objectId {object_id:?} accepted for a topic"
            );
        }
    }
}


