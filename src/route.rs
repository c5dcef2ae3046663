//! Routing: a validated [`Envelope`] and its raw body become a [`Message`]
//! with a topic, a key, headers and the untouched payload. Pure, no I/O.
//!
//! Topic names must be valid on every sink, so the template is checked at
//! start-up against the intersection of NATS subject and Kafka topic rules:
//! ASCII letters, digits, `-`, `_`, and `.` between non-empty tokens.

pub mod cloudevents;
pub mod config;

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::envelope::{Envelope, Event, ObjectKind};
use crate::hex::push_hex;
use cloudevents::CloudEvents;

/// Kafka's limit on topic name length; NATS has none worth worrying about.
pub const MAX_TOPIC_LEN: usize = 249;

pub const DEFAULT_TEMPLATE: &str = "{prefix}.{object}.{event}";

/// Header names on every published message. Lower case: Kafka and NATS keep
/// names as given, and consumers should not have to guess the case.
pub mod header {
    pub const CONTENT_TYPE: &str = "content-type";
    pub const EVENT: &str = "apizee-event";
    pub const OBJECT: &str = "apizee-object";
    pub const OBJECT_ID: &str = "apizee-object-id";
    pub const TIME: &str = "apizee-time";
    pub const RECEIVED_AT: &str = "apizee-received-at";
    pub const EVENT_ID: &str = "apizee-event-id";

    /// Every header the bridge sets, in the order it sets them.
    pub const ALL: [&str; 7] = [
        CONTENT_TYPE,
        EVENT,
        OBJECT,
        OBJECT_ID,
        TIME,
        RECEIVED_AT,
        EVENT_ID,
    ];

    /// On dead letters only: why the request was refused (the `error` code
    /// of the answer) and the details, as the JSON array of the answer.
    pub const REJECTION_REASON: &str = "apizee-rejection-reason";
    pub const REJECTION_DETAILS: &str = "apizee-rejection-details";

    /// The `'static` name for a header the bridge sets, as read back from
    /// storage.
    pub fn canonical(name: &str) -> Option<&'static str> {
        ALL.into_iter()
            .chain(super::cloudevents::header::ALL)
            .chain([crate::trace::TRACEPARENT, crate::trace::TRACESTATE])
            .find(|known| *known == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Object,
    Event,
    ObjectId,
}

/// A parsed `--topic-template`, with `{prefix}` already substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}}; use {{prefix}}, {{object}}, {{event}} or {{objectId}}")]
    UnknownPlaceholder(String),
    #[error("unclosed '{{'")]
    Unclosed,
    #[error(
        "it produces {0:?}, which is not a valid topic: use ASCII letters, digits, '-', '_' \
         and '.' between non-empty parts, at most 249 characters"
    )]
    InvalidTopic(String),
}

impl TopicTemplate {
    pub fn parse(template: &str, prefix: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let part = match &after[..close] {
                "prefix" => {
                    literal.push_str(prefix);
                    None
                }
                "object" => Some(Part::Object),
                "event" => Some(Part::Event),
                "objectId" => Some(Part::ObjectId),
                other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
            };
            if let Some(part) = part {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
            }
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = Self { parts };
        // Render the longest fixed names to catch bad literals now rather than
        // on the first webhook; the objectId is checked per request.
        for object in ObjectKind::ALL {
            for event in Event::ALL {
                let topic = template.render(object, event, "0");
                if !is_valid_topic(&topic) {
                    return Err(TemplateError::InvalidTopic(topic));
                }
            }
        }
        Ok(template)
    }

    pub fn uses_object_id(&self) -> bool {
        self.parts.contains(&Part::ObjectId)
    }

    pub fn render(&self, object: ObjectKind, event: Event, object_id: &str) -> String {
        let mut topic = String::with_capacity(48);
        for part in &self.parts {
            topic.push_str(match part {
                Part::Literal(s) => s,
                Part::Object => object.as_str(),
                Part::Event => event.as_str(),
                Part::ObjectId => object_id,
            });
        }
        topic
    }

    /// Every topic the template can produce, when it does not depend on the
    /// objectId: what a broker needs created up front.
    pub fn all_topics(&self) -> Option<Vec<String>> {
        if self.uses_object_id() {
            return None;
        }
        Some(
            ObjectKind::ALL
                .into_iter()
                .flat_map(|o| Event::ALL.into_iter().map(move |e| self.render(o, e, "")))
                .collect(),
        )
    }

    /// A NATS subject filter (`apizee.>`) that matches every topic, built from
    /// the fixed tokens at the start of the template. `None` when the first
    /// token is not fixed, since a stream on `>` would capture everything.
    pub fn subject_filter(&self) -> Option<String> {
        let Some(Part::Literal(head)) = self.parts.first() else {
            return None;
        };
        let fixed = match (head.rfind('.'), self.parts.len()) {
            // The whole template is one literal: the filter is the topic.
            (_, 1) => return Some(head.clone()),
            (Some(dot), _) => &head[..dot],
            (None, _) => return None,
        };
        Some(format!("{fixed}.>"))
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(s) => f.write_str(s)?,
                Part::Object => f.write_str("{object}")?,
                Part::Event => f.write_str("{event}")?,
                Part::ObjectId => f.write_str("{objectId}")?,
            }
        }
        Ok(())
    }
}

/// Valid as a NATS subject (no wildcard, no empty token) and as a Kafka topic.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether a NATS subject filter (`*` one token, `>` one or more at the
/// end) captures `subject`, as JetStream decides which stream stores it.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(found)) if literal == found => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// What a sink publishes: everything a broker needs, nothing of HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    /// The objectId as a plain string: one object, one partition.
    pub key: String,
    /// Also in the headers; kept apart for sinks that deduplicate on it
    /// (JetStream's `Nats-Msg-Id`).
    pub event_id: String,
    pub headers: Vec<(&'static str, String)>,
    /// The received body, byte for byte.
    pub payload: Bytes,
}

/// A deterministic id for a body: a retried identical webhook gets the same
/// id, so brokers and consumers can drop the duplicate. 128 bits of SHA-256
/// keep accidental collisions out of reach while staying short.
pub fn event_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut id = String::with_capacity(32);
    push_hex(&mut id, &digest[..16]);
    id
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the topic {0:?} built from the objectId is longer than {MAX_TOPIC_LEN} characters")]
pub struct TopicTooLong(pub String);

/// Builds the message for a valid envelope. `received_at` is when the request
/// arrived, as seen by this process. With `cloudevents` (`--cloudevents`),
/// the message is also a CloudEvent: its attribute headers follow the
/// bridge's own.
pub fn build_message(
    envelope: &Envelope,
    body: Bytes,
    template: &TopicTemplate,
    cloudevents: Option<&CloudEvents>,
    received_at: SystemTime,
) -> Result<Message, TopicTooLong> {
    let key = envelope.object_id.to_string();
    let topic = template.render(envelope.object, envelope.event, &key);
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicTooLong(topic));
    }
    let event_id = event_id(&body);
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (header::EVENT, envelope.event.as_str().to_owned()),
        (header::OBJECT, envelope.object.as_str().to_owned()),
        (header::OBJECT_ID, key.clone()),
        (header::TIME, envelope.time.to_string()),
        (
            header::RECEIVED_AT,
            humantime::format_rfc3339_millis(received_at).to_string(),
        ),
        (header::EVENT_ID, event_id.clone()),
    ];
    if let Some(cloudevents) = cloudevents {
        headers.extend(cloudevents.headers(envelope, &event_id));
    }
    Ok(Message {
        topic,
        key,
        event_id,
        headers,
        payload: body,
    })
}

#[cfg(test)]
mod tests;

/// Longest `apizee-rejection-details` header: enough for dozens of problems,
/// small enough for any broker's header limits.
const MAX_DETAILS_BYTES: usize = 4096;

/// A refused request, as published to `--dead-letter-topic`: the body byte
/// for byte, keyed and identified by its event id, with the reason in
/// headers so an operator can see, fix and replay it. Never a CloudEvent,
/// even with `--cloudevents`: a refused body is not a valid event.
pub fn dead_letter_message(
    topic: &str,
    body: Bytes,
    reason: &str,
    details: &str,
    received_at: SystemTime,
) -> Message {
    let event_id = event_id(&body);
    let mut details = details.to_owned();
    if details.len() > MAX_DETAILS_BYTES {
        let mut cut = MAX_DETAILS_BYTES;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        details.truncate(cut);
    }
    // Header values must stay on one line.
    let details = details.replace(['\r', '\n'], " ");
    Message {
        topic: topic.to_owned(),
        key: event_id.clone(),
        headers: vec![
            (header::REJECTION_REASON, reason.to_owned()),
            (header::REJECTION_DETAILS, details),
            (
                header::RECEIVED_AT,
                humantime::format_rfc3339_millis(received_at).to_string(),
            ),
            (header::EVENT_ID, event_id.clone()),
        ],
        // De-duplication keeps its own id: in a stream that captures both,
        // a dead letter holding the id its webhook gets once redriven
        // (`apizee-bridge redrive`) would make JetStream drop that webhook
        // as a duplicate. Retried refusals still share one.
        event_id: format!("{event_id}{DEAD_LETTER_ID_SUFFIX}"),
        payload: body,
    }
}

/// Appended to a dead letter's event id for de-duplication
/// (`Nats-Msg-Id`); its `apizee-event-id` header stays the body's id.
pub const DEAD_LETTER_ID_SUFFIX: &str = "-dead-letter";
