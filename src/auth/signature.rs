//! HMAC-SHA256 signatures over the raw body, for senders (or a signing
//! proxy in front of the bridge) that share a key with it.
//!
//! Without a timestamp header the signed bytes are the body itself. With
//! one, they are `<timestamp>.<body>`, the timestamp being the header's
//! value as sent (UNIX seconds), so a captured request cannot be replayed
//! once it is older than the tolerance; within the tolerance, a replay is an
//! exact duplicate, with the same `apizee-event-id`, which JetStream's
//! de-duplication window and idempotent consumers already absorb.
//!
//! The signature header holds the MAC in hex or base64, optionally prefixed
//! by `sha256=` as GitHub and others send it. Several keys may be
//! configured, so a key can be rotated without refusing anything; every key
//! is tried on every request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};
use ring::hmac;
use subtle::ConstantTimeEq;

use super::Denial;
use crate::config::Secret;

/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Clone)]
pub struct Signature {
    header: HeaderName,
    encoding: SignatureEncoding,
    keys: Vec<hmac::Key>,
    timestamp: Option<(HeaderName, Duration)>,
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signature")
            .field("header", &self.header)
            .field("encoding", &self.encoding)
            .field("keys", &self.keys.len())
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl Signature {
    pub fn new(
        header: HeaderName,
        encoding: SignatureEncoding,
        secrets: &[Secret],
        timestamp: Option<(HeaderName, Duration)>,
    ) -> Self {
        let keys = secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes()))
            .collect();
        Self {
            header,
            encoding,
            keys,
            timestamp,
        }
    }

    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), Denial> {
        let timestamp = match &self.timestamp {
            Some((name, tolerance)) => Some(fresh_timestamp(headers, name, *tolerance, now)?),
            None => None,
        };
        let mut valid = subtle::Choice::from(0);
        for value in headers.get_all(&self.header) {
            let Some(presented) = self.decode(value.as_bytes()) else {
                continue;
            };
            for key in &self.keys {
                valid |= tag(key, timestamp, body).as_ref().ct_eq(&presented);
            }
        }
        if bool::from(valid) {
            Ok(())
        } else {
            Err(Denial::Signature)
        }
    }

    fn decode(&self, value: &[u8]) -> Option<[u8; TAG_LEN]> {
        let value = value.trim_ascii();
        let value = match value.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &value[7..],
            _ => value,
        };
        let mut tag = [0u8; TAG_LEN];
        match self.encoding {
            SignatureEncoding::Hex => {
                if value.len() != 2 * TAG_LEN {
                    return None;
                }
                for (byte, pair) in tag.iter_mut().zip(value.chunks_exact(2)) {
                    *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
                }
            }
            SignatureEncoding::Base64 => {
                // 44 characters with padding; anything much longer is not a tag.
                if value.len() > 64 {
                    return None;
                }
                let decoded = STANDARD.decode(value).ok()?;
                if decoded.len() != TAG_LEN {
                    return None;
                }
                tag.copy_from_slice(&decoded);
            }
        }
        Some(tag)
    }
}

/// The signature of `body`: over `<timestamp>.<body>` when the request is
/// timestamped, else over the body alone. What `apizee-bridge send` signs
/// and what [`Signature::verify`] checks, defined once.
pub fn tag(key: &hmac::Key, timestamp: Option<&[u8]>, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    if let Some(timestamp) = timestamp {
        context.update(timestamp);
        context.update(b".");
    }
    context.update(body);
    context.sign()
}

/// A tag written as `--hmac-encoding` says.
pub fn encode(encoding: SignatureEncoding, tag: &hmac::Tag) -> String {
    match encoding {
        SignatureEncoding::Hex => tag.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        SignatureEncoding::Base64 => STANDARD.encode(tag.as_ref()),
    }
}

/// The timestamp header's raw value, if it is a UNIX time within
/// `tolerance` of `now`, either side: clocks drift both ways.
fn fresh_timestamp<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    tolerance: Duration,
    now: SystemTime,
) -> Result<&'a [u8], Denial> {
    let raw = headers
        .get(name)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or(Denial::Timestamp)?;
    let sent: u64 = std::str::from_utf8(raw)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(Denial::Timestamp)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(sent) > tolerance.as_secs() {
        return Err(Denial::Timestamp);
    }
    Ok(raw)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
