//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) carried from
//! the webhook request into its message: a consumer's spans join the trace
//! the sender started, or the one the bridge starts when the request has
//! none.
//!
//! The bridge is one hop of the trace: the message's `traceparent` keeps
//! the trace id and flags, with a span id of the bridge's own (the hop that
//! published), and `tracestate` passes through unchanged. A malformed
//! `traceparent` is treated as absent, as the specification asks: a new
//! trace starts, and `tracestate` is dropped with it.
//!
//! With `--otlp-endpoint` the bridge's spans are also exported
//! ([`crate::otlp`]): then the ids come from those spans, so the message's
//! `traceparent` names the exported publish span.

use std::fmt;

use http::HeaderMap;
use rand::RngCore;

use crate::hex::push_hex;

/// The header names, on the request and on the message.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on; the specification lets a hop drop
/// what it cannot carry, and brokers limit header sizes.
const MAX_TRACESTATE: usize = 512;

/// One request's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The bridge's span: the parent of whatever consumes the message.
    pub span_id: [u8; 8],
    pub flags: u8,
    pub state: Option<String>,
    /// The sender's span, when the request brought the trace (None: the
    /// bridge began it).
    pub parent_id: Option<[u8; 8]>,
}

impl TraceContext {
    /// The request's trace, continued with a span of the bridge's, or a new
    /// trace when it has no valid `traceparent`.
    pub fn of_request(headers: &HeaderMap) -> Self {
        let mut span_id = [0u8; 8];
        random_nonzero(&mut span_id);
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parent {
            Some((trace_id, parent_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
                state: headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
                    .map(str::to_owned),
                parent_id: Some(parent_id),
            },
            None => {
                let mut trace_id = [0u8; 16];
                random_nonzero(&mut trace_id);
                Self {
                    trace_id,
                    span_id,
                    // Sampled: a trace the bridge begins is worth keeping
                    // for whoever consumes the message.
                    flags: 0x01,
                    state: None,
                    parent_id: None,
                }
            }
        }
    }

    /// Whether the request brought the trace.
    pub fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The `traceparent` the message carries.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The trace id, as logs and tools print it.
    pub fn trace_id(&self) -> TraceId<'_> {
        TraceId(&self.trace_id)
    }

    /// The `webhook` span, whose `trace_id` every log line about this
    /// webhook carries. Made for each line logged, never once per webhook:
    /// a span per webhook, entered and left at every poll, was about half
    /// of what the bridge costs beyond a bare pipeline on Kafka
    /// (docs/performance.md), and a webhook that succeeds logs nothing.
    pub fn log_span(&self) -> tracing::Span {
        tracing::info_span!("webhook", trace_id = %self.trace_id())
    }

    /// The headers the message gets: `traceparent`, and `tracestate` if
    /// the request had one.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        std::iter::once((TRACEPARENT, self.traceparent()))
            .chain(self.state.iter().map(|state| (TRACESTATE, state.clone())))
    }
}

/// A trace id, displayed as 32 lowercase hex digits.
pub struct TraceId<'a>(&'a [u8; 16]);

impl fmt::Display for TraceId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(self.0))
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; a later version is read by its first
/// four fields, as the specification allows. All-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = value.trim();
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let parent_id = fields.next()?;
    let flags = fields.next()?;
    let version = u8::from_str_radix(lower_hex(version, 2)?, 16).ok()?;
    if version == 0xff || (version == 0 && fields.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = decode(lower_hex(trace_id, 32)?)?;
    let parent_id: [u8; 8] = decode(lower_hex(parent_id, 16)?)?;
    let flags = u8::from_str_radix(lower_hex(flags, 2)?, 16).ok()?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// `text` if it is `len` lowercase hex digits.
fn lower_hex(text: &str, len: usize) -> Option<&str> {
    (text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Random bytes, never all zero (an invalid id), from the thread's own
/// generator (ChaCha, seeded and reseeded by the system's): unpredictable
/// enough for ids, with no system call on a request's path.
fn random_nonzero(out: &mut [u8]) {
    let mut random = rand::rng();
    loop {
        random.fill_bytes(out);
        if out.iter().any(|b| *b != 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        map
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_the_bridges() {
        let trace = TraceContext::of_request(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ]));
        assert!(trace.continued());
        assert_eq!(
            trace.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            "the sender's span, the parent of the bridge's spans"
        );
        let sent = trace.traceparent();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"), "{sent}");
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the bridge's own span id"
        );
        assert_eq!(
            trace.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let carried: Vec<_> = trace.headers().collect();
        assert_eq!(
            carried[1],
            (
                TRACESTATE,
                "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".to_owned()
            )
        );
        // The flags pass through: not sampled stays not sampled.
        let unsampled = TraceContext::of_request(&headers(&[(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]));
        assert!(unsampled.traceparent().ends_with("-00"));
    }

    #[test]
    fn without_a_valid_one_the_bridge_starts_a_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let trace =
                TraceContext::of_request(&headers(&[(TRACEPARENT, bad), (TRACESTATE, "rojo=1")]));
            assert!(!trace.continued(), "{bad:?} was taken as valid");
            assert_eq!(
                trace.state, None,
                "{bad:?}: tracestate kept without its parent"
            );
            let sent = trace.traceparent();
            assert_eq!(sent.len(), 55, "{sent}");
            assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
            assert_ne!(&sent[3..35], "00000000000000000000000000000000");
        }
        // A later version is read by its first four fields.
        let later = TraceContext::of_request(&headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        )]));
        assert!(later.continued());
        // Two requests without one get two traces.
        let (a, b) = (
            TraceContext::of_request(&HeaderMap::new()),
            TraceContext::of_request(&HeaderMap::new()),
        );
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let long = "a=".to_owned() + &"x".repeat(MAX_TRACESTATE);
        let trace =
            TraceContext::of_request(&headers(&[(TRACEPARENT, PARENT), (TRACESTATE, &long)]));
        assert!(trace.continued());
        assert_eq!(trace.state, None);
    }
}
