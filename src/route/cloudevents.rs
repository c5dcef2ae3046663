//! CloudEvents, opt-in (`--cloudevents`): every message also carries the
//! attributes of a CloudEvents 1.0 event in *binary content mode*, as the
//! Kafka and NATS protocol bindings define it, so any CloudEvents SDK reads
//! it as an event while the payload stays the bytes received and the
//! `apizee-*` headers stay as they are.
//!
//! The two bindings differ in their header names, which is why the
//! binding is chosen with the sink at start-up:
//! - Kafka: `ce_<attribute>`, and `datacontenttype` is the `content-type`
//!   header (already set on every message), values as UTF-8;
//! - NATS: `ce-<attribute>` for every attribute, `datacontenttype`
//!   included, values percent-encoded (binding, section 3.1.3.2); a
//!   `content-type` other than `application/cloudevents` is what tells a
//!   reader the message is in binary mode.
//!
//! Pure: the attributes are computed from the envelope, never from a clock.

use std::borrow::Cow;

use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::ConfigError;
use crate::envelope::Envelope;

pub const SPEC_VERSION: &str = "1.0";

/// Names the bridge, not Apizee: the bridge is what turns webhooks into
/// events, and the `id` (a digest of the body) is unique within it.
pub const DEFAULT_SOURCE: &str = "/apizee-bridge";

/// Webhooks are JSON, and the payload is passed on unchanged.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// Flags under "CloudEvents" in `--help`.
#[derive(Debug, Args)]
pub struct CloudEventsArgs {
    /// Also make every message a CloudEvents 1.0 event in binary content
    /// mode: its attributes in ce_ (Kafka) or ce- (NATS) headers, the payload
    /// unchanged. Dead letters are not events and stay as they are.
    #[arg(long, env = "APIZEE_BRIDGE_CLOUDEVENTS")]
    pub cloudevents: bool,

    /// The events' `source` attribute: a URI-reference naming this bridge,
    /// such as /apizee-bridge/eu or urn:example:apizee.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_CLOUDEVENTS_SOURCE",
        default_value = DEFAULT_SOURCE,
        requires = "cloudevents"
    )]
    pub cloudevents_source: String,
}

/// Which protocol binding names the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Kafka,
    Nats,
}

impl Binding {
    fn names(self) -> &'static Names {
        match self {
            Self::Kafka => &header::KAFKA,
            Self::Nats => &header::NATS,
        }
    }
}

/// The header name of each attribute in one binding; `None` where the
/// binding maps it elsewhere (Kafka's `datacontenttype` is `content-type`).
pub struct Names {
    pub specversion: &'static str,
    pub id: &'static str,
    pub source: &'static str,
    pub kind: &'static str,
    pub subject: &'static str,
    pub time: &'static str,
    pub datacontenttype: Option<&'static str>,
}

pub mod header {
    use super::Names;

    pub const KAFKA: Names = Names {
        specversion: "ce_specversion",
        id: "ce_id",
        source: "ce_source",
        kind: "ce_type",
        subject: "ce_subject",
        time: "ce_time",
        datacontenttype: None,
    };

    pub const NATS: Names = Names {
        specversion: "ce-specversion",
        id: "ce-id",
        source: "ce-source",
        kind: "ce-type",
        subject: "ce-subject",
        time: "ce-time",
        datacontenttype: Some("ce-datacontenttype"),
    };

    /// Every attribute header of both bindings, so a message read back from
    /// the spool keeps them whichever binding wrote it.
    pub const ALL: [&str; 13] = [
        KAFKA.specversion,
        KAFKA.id,
        KAFKA.source,
        KAFKA.kind,
        KAFKA.subject,
        KAFKA.time,
        NATS.specversion,
        NATS.id,
        NATS.source,
        NATS.kind,
        NATS.subject,
        NATS.time,
        "ce-datacontenttype",
    ];
}

/// `--cloudevents`, checked: what every event shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    pub source: String,
    pub binding: Binding,
}

impl CloudEventsArgs {
    /// `None` without `--cloudevents`: messages stay exactly as they were.
    pub fn settings(self, binding: Binding) -> Result<Option<CloudEvents>, ConfigError> {
        if !self.cloudevents {
            return Ok(None);
        }
        check_uri_reference(&self.cloudevents_source)
            .map_err(|reason| ConfigError::new("--cloudevents-source", reason))?;
        Ok(Some(CloudEvents {
            source: self.cloudevents_source,
            binding,
        }))
    }
}

impl CloudEvents {
    /// The attribute headers of the event for `envelope`, whose `id` is
    /// `event_id` (the `apizee-event-id` header).
    pub fn headers(&self, envelope: &Envelope, event_id: &str) -> Vec<(&'static str, String)> {
        let names = self.binding.names();
        let kind = format!(
            "com.apizee.{}.{}",
            envelope.object.as_str(),
            envelope.event.as_str()
        );
        let mut headers = vec![
            (names.specversion, SPEC_VERSION.to_owned()),
            (names.id, event_id.to_owned()),
            (names.source, self.encode(&self.source)),
            (names.kind, kind),
            (names.subject, self.encode(&envelope.object_id.to_string())),
        ];
        // `time` is optional in CloudEvents; a time past the year 9999 has
        // no RFC 3339 form, and refusing the webhook for it would lose an
        // event the platform considers valid (apizee-time keeps the value).
        if let Some(time) = rfc3339(envelope.time) {
            headers.push((names.time, time));
        }
        if let Some(name) = names.datacontenttype {
            headers.push((name, DATA_CONTENT_TYPE.to_owned()));
        }
        headers
    }

    fn encode(&self, value: &str) -> String {
        match self.binding {
            // Kafka header values are UTF-8 bytes: nothing to escape.
            Binding::Kafka => value.to_owned(),
            Binding::Nats => percent_encode(value).into_owned(),
        }
    }
}

/// UNIX seconds as an RFC 3339 UTC timestamp (`2019-12-10T11:13:33Z`).
pub fn rfc3339(unix_seconds: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// The NATS binding's percent-encoding (section 3.1.3.2): space, `"`, `%`
/// and everything outside printable ASCII, as `%XY` per UTF-8 byte.
pub fn percent_encode(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut encoded = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if plain(b) {
            encoded.push(char::from(b));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(b >> 4)]));
            encoded.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    Cow::Owned(encoded)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986 URI-reference syntax, which `source` must follow: a URI
/// (`scheme:...`) or a relative reference (`/path`), made of the characters
/// a URI allows, with `%` only as the start of `%XY`.
fn check_uri_reference(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty (CloudEvents requires a source)".into());
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(format!(
                    "{value:?} is not a URI-reference: '%' must start an escape such as %20"
                ));
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b)) {
            let c = value[i..].chars().next().unwrap_or_default();
            return Err(format!(
                "{value:?} is not a URI-reference: {c:?} is not allowed in a URI \
                 (percent-encode it)"
            ));
        }
        i += 1;
    }
    // In a relative reference the first segment cannot hold a ':', so a
    // ':' before any '/', '?' or '#' ends a scheme, which must be valid.
    let head = value.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((scheme, _)) = head.split_once(':') {
        let mut chars = scheme.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !valid {
            return Err(format!(
                "{value:?} is not a URI-reference: {scheme:?} is not a URI scheme"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
