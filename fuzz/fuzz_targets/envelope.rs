//! Any body: `envelope::parse` refuses it or accepts it, never panics, and an
//! accepted body becomes a message that agrees with it (the invariants of
//! `tests/properties.rs`, which checks the same on stable Rust). A body with
//! a repeated key is refused with that one problem, and an accepted objectId
//! holds no control or invisible character.
//!
//! cargo +nightly fuzz run envelope fuzz/corpus/envelope fuzz/seeds/envelope -- -dict=fuzz/envelope.dict

#![no_main]

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use apizee_bridge::envelope::{self, EnvelopeError, Rules};
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, TopicTemplate, header};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

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

/// Whether an object in the JSON text has the same key twice, found without
/// `envelope`: a set of each object's keys. Err when the text is not JSON.
fn has_duplicate_keys(body: &[u8]) -> Result<bool, serde_json::Error> {
    struct Finder;

    impl<'de> DeserializeSeed<'de> for Finder {
        type Value = bool;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Finder {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut found = false;
            while let Some(inner) = seq.next_element_seed(Finder)? {
                found |= inner;
            }
            Ok(found)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut keys = HashSet::new();
            let mut found = false;
            while let Some(key) = map.next_key::<String>()? {
                found |= !keys.insert(key);
                found |= map.next_value_seed(Finder)?;
            }
            Ok(found)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let found = Finder.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(found)
}

/// Cc, Zl, Zp and Cf (Unicode 17.0), as in `tests/properties.rs`.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'..='\u{2029}'
                | '\u{AD}'
                | '\u{600}'..='\u{605}'
                | '\u{61C}'
                | '\u{6DD}'
                | '\u{70F}'
                | '\u{890}'..='\u{891}'
                | '\u{8E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}
