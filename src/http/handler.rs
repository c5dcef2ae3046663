//! Request handling on the webhook listener: `POST <path>` for webhooks,
//! `GET /healthz` and `GET /readyz` for load balancers and Kubernetes.
//!
//! Every HTTP/1.1 request needs exactly one `Host` header. The webhook path
//! checks the cheap things first (auth on the headers, a budget slot, media
//! type, declared length) so a bad request costs as little as possible,
//! reads at most `max_body_bytes`, checks the signature, parses once, and
//! answers 200 only after the sink reports the broker's acknowledgement. A
//! refusal is answered at once: its dead letter, if any, is only queued.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use prometheus::{IntGauge, Registry};
use serde::Serialize;

use super::budget::Budgets;
use super::config::{HttpSettings, Limits};
use super::metrics::Metrics;
use super::rejection::{Answering, Rejection, json_response};
use crate::auth::LiveGuard;
use crate::dead_letter::DeadLetters;
use crate::delivery::{Delivered, Delivery};
use crate::envelope::{self, EnvelopeError, Problem};
use crate::metrics::{Registered, opts};
use crate::otlp::{RequestSpan, Spans};
use crate::route;
use crate::route::config::Routing;
use crate::trace::TraceContext;

/// Shared state of the webhook listener: every part a request goes
/// through, each built once by [`crate::Service::build`].
pub struct App {
    http: HttpSettings,
    /// Swapped whole when the secret files are reloaded.
    guard: LiveGuard,
    routing: Routing,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Bound the bodies in memory and the broker's queues.
    budgets: Budgets,
    /// Where refused-but-readable requests go, if anywhere.
    dead_letters: Option<Arc<DeadLetters>>,
    /// The spans exported over OTLP, with `--otlp-endpoint`.
    spans: Option<Arc<Spans>>,
}

impl App {
    pub fn new(
        http: HttpSettings,
        guard: LiveGuard,
        routing: Routing,
        delivery: Arc<Delivery>,
        dead_letters: Option<Arc<DeadLetters>>,
        spans: Option<Arc<Spans>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, prometheus::Error> {
        // A reload changes secrets, never which checks are configured: the
        // Guard in force at start-up decides the budget for good.
        let unauthenticated = guard
            .current()
            .authenticates_only_with_body()
            .then_some(http.max_unauthenticated_in_flight);
        register_limits(&http, unauthenticated, metrics.registry())?;
        Ok(Self {
            budgets: Budgets::new(http.max_in_flight, unauthenticated),
            http,
            guard,
            routing,
            delivery,
            metrics,
            draining: AtomicBool::new(false),
            dead_letters,
            spans,
        })
    }

    pub fn spans(&self) -> Option<&Arc<Spans>> {
        self.spans.as_ref()
    }

    pub fn dead_letters(&self) -> Option<&Arc<DeadLetters>> {
        self.dead_letters.as_ref()
    }

    pub fn limits(&self) -> Limits {
        self.http.limits
    }

    /// `--path`.
    pub fn path(&self) -> &str {
        &self.http.path
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.delivery.is_ready()
    }

    fn is_webhook_path(&self, path: &str) -> bool {
        let configured = self.http.path.trim_end_matches('/');
        path == self.http.path || path.trim_end_matches('/') == configured
    }
}

/// The limits the handler enforces, as gauges set once, so that what is in
/// use can be alerted on as a share of them (`requests_in_flight /
/// max_in_flight`) whatever the flags say. The unauthenticated budget's only
/// while it is in force: with an HMAC signature as the only credential.
fn register_limits(
    http: &HttpSettings,
    unauthenticated: Option<usize>,
    registry: &Registry,
) -> Result<(), prometheus::Error> {
    let gauge = |name: &str, help: &str, value: usize| -> Result<(), prometheus::Error> {
        IntGauge::with_opts(opts(name, help))?
            .registered(registry)?
            .set(i64::try_from(value).unwrap_or(i64::MAX));
        Ok(())
    };
    gauge(
        "max_in_flight",
        "--max-in-flight: webhooks handled at once before the answer is 429; \
         compare requests_in_flight with it.",
        http.max_in_flight,
    )?;
    gauge(
        "max_body_bytes",
        "--max-body-bytes: the largest body accepted; larger ones get 413.",
        http.max_body_bytes,
    )?;
    if let Some(limit) = unauthenticated {
        gauge(
            "max_unauthenticated_in_flight",
            "--max-unauthenticated-in-flight: bodies read at once before their HMAC \
             signature is checked, before the answer is 429; only when the signature is \
             the only credential.",
            limit,
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Accepted<'a> {
    topic: &'a str,
    id: &'a str,
    /// Present (true) only on a 202: the event waits in the spool.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spooled: bool,
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

named_enum! {
    /// Which endpoint a request was for: the `handler` label of
    /// `apizee_bridge_http_requests_total`.
    pub enum Endpoint {
        Webhook => "webhook",
        Health => "health",
        Other => "other",
    }
}

pub async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let path = request.uri().path();
    let endpoint = if app.is_webhook_path(path) {
        Endpoint::Webhook
    } else if path == "/healthz" || path == "/readyz" {
        Endpoint::Health
    } else {
        Endpoint::Other
    };
    // A webhook's trace: what its log lines carry, its exported spans, and
    // its message too.
    let mut trace =
        (endpoint == Endpoint::Webhook).then(|| TraceContext::of_request(request.headers()));
    let request_span = match (&mut trace, &app.spans) {
        (Some(trace), Some(spans)) => {
            Some(spans.request(trace, request.method(), request.version(), peer))
        }
        _ => None,
    };
    let result = match (check_host(&request), &mut trace) {
        (Err(rejection), _) => Err(rejection),
        (Ok(()), Some(trace)) => webhook(&app, peer, request, trace, request_span.as_ref()).await,
        (Ok(()), None) if endpoint == Endpoint::Health => health(&app, &request),
        (Ok(()), None) => Err(Rejection::NotFound),
    };
    let outcome = match &result {
        Ok(response) if response.status() == StatusCode::ACCEPTED => "spooled",
        Ok(_) => "published",
        Err(rejection) => rejection.code(),
    };
    let response = result.unwrap_or_else(|rejection| {
        let answering = Answering {
            retry_after_secs: app.http.retry_after_secs,
            challenge: app.guard.current().challenge(),
        };
        let log_span = || {
            trace
                .as_ref()
                .map_or_else(tracing::Span::none, TraceContext::log_span)
        };
        rejection.answer(peer, &app.metrics, answering, log_span)
    });
    if let Some(span) = request_span {
        span.end(response.status(), outcome);
    }
    app.metrics
        .http_request(endpoint, response.status(), started.elapsed());
    Ok(response)
}

fn health(app: &App, request: &Request<Incoming>) -> Result<Response<Full<Bytes>>, Rejection> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Err(Rejection::MethodNotAllowed { allow: "GET, HEAD" });
    }
    let (status, body) = match request.uri().path() {
        "/readyz" if !app.is_ready() => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        "/readyz" => (StatusCode::OK, "ready"),
        _ => (StatusCode::OK, "alive"),
    };
    Ok(json_response(
        status,
        serde_json::to_vec(&Status { status: body }).unwrap_or_default(),
    ))
}

async fn webhook(
    app: &App,
    peer: SocketAddr,
    request: Request<Incoming>,
    trace: &mut TraceContext,
    span: Option<&RequestSpan<'_>>,
) -> Result<Response<Full<Bytes>>, Rejection> {
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed { allow: "POST" });
    }
    let _in_flight = app.metrics.in_flight();
    let settings = &app.http;
    app.guard
        .current()
        .check_request(peer.ip(), request.headers())
        .map_err(Rejection::Denied)?;
    // Taken before the body is read, so the bodies in memory are bounded;
    // refusing at once beats queueing work the sender will time out on.
    let slot = app.budgets.before_body()?;
    check_content_type(request.headers())?;
    check_declared_length(request.headers(), settings.max_body_bytes)?;
    let received_at = SystemTime::now();
    let (head, body) = request.into_parts();
    let body = tokio::time::timeout(
        settings.limits.body_read_timeout,
        read_body(body, settings.max_body_bytes),
    )
    .await
    .map_err(|_| Rejection::RequestTimeout)??;
    // Before parsing: an unsigned body is not even worth a dead letter.
    app.guard
        .current()
        .check_body(&head.headers, &body, received_at)
        .map_err(Rejection::Denied)?;
    let _slot = app.budgets.authenticated(slot)?;

    let envelope = match envelope::parse(&body, app.routing.rules) {
        Ok(envelope) => envelope,
        Err(e) => {
            let rejection = match e {
                EnvelopeError::Malformed(reason) => Rejection::MalformedJson(reason),
                EnvelopeError::Invalid(problems) => Rejection::InvalidEnvelope(problems),
            };
            return Err(dead_letter(app, rejection, body, received_at, trace));
        }
    };
    let mut message = match route::build_message(
        &envelope,
        body.clone(),
        &app.routing.template,
        app.routing.cloudevents.as_ref(),
        received_at,
    ) {
        Ok(message) => message,
        Err(e) => {
            let rejection = Rejection::InvalidEnvelope(vec![Problem {
                field: "objectId".into(),
                problem: e.to_string(),
            }]);
            return Err(dead_letter(app, rejection, body, received_at, trace));
        }
    };
    // The publish span first: its id is the message's `traceparent`.
    let publish_span = span.map(|span| span.publish(trace, &message));
    message.headers.extend(trace.headers());
    app.metrics.webhook_received(&envelope);

    let delivered = app.delivery.deliver(&message, || trace.log_span()).await;
    if let Some(span) = publish_span {
        span.end(&delivered);
    }
    let delivered = delivered.map_err(Rejection::BrokerUnavailable)?;
    let status = match delivered {
        Delivered::Acknowledged => StatusCode::OK,
        Delivered::Spooled => StatusCode::ACCEPTED,
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        trace.log_span().in_scope(|| {
            tracing::debug!(topic = %message.topic, id = %message.event_id, ?delivered, "delivered");
        });
    }
    Ok(json_response(
        status,
        serde_json::to_vec(&Accepted {
            topic: &message.topic,
            id: &message.event_id,
            spooled: delivered == Delivered::Spooled,
        })
        .unwrap_or_default(),
    ))
}

/// Queues a refused-but-readable request for `--dead-letter-topic`, if
/// configured, and hands the rejection back for the answer, which never
/// waits for the dead letter's publish.
fn dead_letter(
    app: &App,
    rejection: Rejection,
    body: Bytes,
    received_at: SystemTime,
    trace: &TraceContext,
) -> Rejection {
    if let Some(dead_letters) = &app.dead_letters
        && let Some(letter) = rejection.dead_letter()
        && dead_letters.wants(letter)
    {
        let details = serde_json::to_string(&rejection.details()).unwrap_or_default();
        dead_letters.offer(rejection.code(), &details, body, received_at, || {
            trace.log_span()
        });
    }
    rejection
}

/// RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request with no
/// Host header or more than one. HTTP/1.0 may omit it; HTTP/2 carries the
/// authority in its pseudo-header instead.
fn check_host<B>(request: &Request<B>) -> Result<(), Rejection> {
    if request.version() != Version::HTTP_11 {
        return Ok(());
    }
    match request.headers().get_all(header::HOST).iter().count() {
        1 => Ok(()),
        count => Err(Rejection::InvalidHost(count)),
    }
}

/// A missing Content-Type is accepted: not every sender sets one. An
/// explicit one must be JSON, in any case and with any parameters, since the
/// platform sends `application/JSON`.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    let is_json = essence.split_once('/').is_some_and(|(kind, subtype)| {
        kind.eq_ignore_ascii_case("application")
            && (subtype.eq_ignore_ascii_case("json")
                || subtype.to_ascii_lowercase().ends_with("+json"))
    });
    if is_json {
        Ok(())
    } else {
        Err(Rejection::UnsupportedMediaType(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ))
    }
}

/// Refuses a body announced as too large before reading any of it.
fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(Rejection::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Reads the body, stopping as soon as it passes `limit`: a chunked body
/// without Content-Length is never buffered beyond the limit.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Rejection> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Rejection::PayloadTooLarge { limit })
        }
        Err(e) => Err(Rejection::UnreadableBody(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use prometheus::Encoder;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        http: super::super::config::HttpArgs,
    }

    fn settings(args: &[&str]) -> HttpSettings {
        let flags = Flags::try_parse_from([&["apizee-bridge"], args].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        flags.http.settings().unwrap_or_else(|e| panic!("{e}"))
    }

    fn exported(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn limit_gauges_hold_the_configured_limits() {
        let http = settings(&[
            "--max-in-flight",
            "300",
            "--max-body-bytes",
            "4096",
            "--max-unauthenticated-in-flight",
            "7",
        ]);
        let registry = Registry::new();
        register_limits(&http, Some(http.max_unauthenticated_in_flight), &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = exported(&registry);
        for line in [
            "apizee_bridge_max_in_flight 300\n",
            "apizee_bridge_max_body_bytes 4096\n",
            "apizee_bridge_max_unauthenticated_in_flight 7\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_unauthenticated_budget_has_a_gauge_only_while_in_force() {
        let http = settings(&[]);
        let registry = Registry::new();
        register_limits(&http, None, &registry).unwrap_or_else(|e| panic!("{e}"));
        let text = exported(&registry);
        assert!(
            text.contains("apizee_bridge_max_in_flight 1024\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("apizee_bridge_max_body_bytes {}\n", 256 * 1024)),
            "{text}"
        );
        assert!(!text.contains("max_unauthenticated"), "{text}");
    }
}
