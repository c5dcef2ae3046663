//! The HTTP edge's metrics: requests, what they carried, and why some were
//! refused. Label values are enums declared with their names, so they stay
//! bounded: status codes, object and event names, rejection codes; never an
//! objectId or anything else a sender controls.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

use super::budget::Budget;
use super::handler::Endpoint;
use super::rejection::Kind;
use super::server::ConnectionError;
use crate::auth::Denial;
use crate::envelope::{ENUM_FIELDS, Envelope, Event, ObjectKind, UnknownValue};
use crate::metrics::{Registered, latency_opts, opts};

/// The HTTP edge's metrics: requests, what they carried, and why some were
/// refused.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    rejections: IntCounterVec,
    auth_failures: IntCounterVec,
    connection_errors: IntCounterVec,
    request_duration: Histogram,
    requests_in_flight: IntGauge,
    unknown_enum_values: IntCounterVec,
    in_flight_refusals: IntCounterVec,
    /// `webhooks_received_total`, by [`ObjectKind`] then [`Event`]: a
    /// labelled lookup hashes the label values and takes the vector's
    /// lock, so the series every accepted webhook touches are looked up
    /// once.
    received: [[IntCounter; Event::ALL.len()]; ObjectKind::ALL.len()],
    /// `http_requests_total{handler="webhook"}` for 200 and 202.
    webhook_ok: IntCounter,
    webhook_spooled: IntCounter,
}

impl Metrics {
    /// Registers the edge's metrics in `registry`, with every series whose
    /// labels are known up front at 0, so dashboards and `rate()` see them
    /// before the first event.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let http_requests = IntCounterVec::new(
            opts(
                "http_requests_total",
                "HTTP requests answered on the webhook listener, by handler \
                 (webhook, health, other) and status code.",
            ),
            &["handler", "code"],
        )?
        .registered(&registry)?;
        let webhooks_received = IntCounterVec::new(
            opts(
                "webhooks_received_total",
                "Valid webhooks received, by object type and event.",
            ),
            &["object", "event"],
        )?
        .registered(&registry)?;
        let rejections = IntCounterVec::new(
            opts(
                "rejections_total",
                "Requests refused with a 4xx, by reason (the error code in the body).",
            ),
            &["reason"],
        )?
        .registered(&registry)?;
        let auth_failures = IntCounterVec::new(
            opts(
                "auth_failures_total",
                "Webhooks refused with 401 or 403, by the check that failed.",
            ),
            &["reason"],
        )?
        .registered(&registry)?;
        let connection_errors = IntCounterVec::new(
            opts(
                "connection_errors_total",
                "Webhook connections that ended in an error, by kind: head_too_large and \
                 malformed_head (answered 431/400 by the HTTP layer, before any handler), \
                 header_timeout (no complete request head within --header-read-timeout, \
                 including an idle keep-alive connection), incomplete_message, other.",
            ),
            &["kind"],
        )?
        .registered(&registry)?;
        let request_duration = Histogram::with_opts(latency_opts(
            "request_duration_seconds",
            "Time to answer a webhook POST, from headers read to response.",
        ))?
        .registered(&registry)?;
        let requests_in_flight = IntGauge::with_opts(opts(
            "requests_in_flight",
            "Webhook requests being handled right now.",
        ))?
        .registered(&registry)?;
        let unknown_enum_values = IntCounterVec::new(
            opts(
                "unknown_enum_values_total",
                "Webhooks forwarded with an enum value the spec does not list, by object and field.",
            ),
            &["object", "field"],
        )?
        .registered(&registry)?;
        let in_flight_refusals = IntCounterVec::new(
            opts(
                "in_flight_refusals_total",
                "Requests answered 429 because a budget was spent, by budget: max_in_flight \
                 (webhooks being handled) or max_unauthenticated_in_flight (bodies read before \
                 their HMAC signature is checked).",
            ),
            &["budget"],
        )?
        .registered(&registry)?;
        for field in &ENUM_FIELDS {
            unknown_enum_values.with_label_values(&[field.object.as_str(), field.field]);
        }
        for kind in Kind::client_errors() {
            rejections.with_label_values(&[kind.code()]);
        }
        for denial in Denial::ALL {
            auth_failures.with_label_values(&[denial.as_str()]);
        }
        for kind in ConnectionError::ALL {
            connection_errors.with_label_values(&[kind.as_str()]);
        }
        for budget in Budget::ALL {
            in_flight_refusals.with_label_values(&[budget.as_str()]);
        }
        let webhook = Endpoint::Webhook.as_str();
        Ok(Self {
            received: ObjectKind::ALL.map(|object| {
                Event::ALL.map(|event| {
                    webhooks_received.with_label_values(&[object.as_str(), event.as_str()])
                })
            }),
            webhook_ok: http_requests.with_label_values(&[webhook, "200"]),
            webhook_spooled: http_requests.with_label_values(&[webhook, "202"]),
            registry,
            http_requests,
            rejections,
            auth_failures,
            connection_errors,
            request_duration,
            requests_in_flight,
            unknown_enum_values,
            in_flight_refusals,
        })
    }

    /// Where the other parts register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Only webhook requests feed the latency histogram, so probes do not
    /// dilute it.
    pub fn http_request(&self, endpoint: Endpoint, status: http::StatusCode, duration: Duration) {
        match (endpoint, status.as_u16()) {
            (Endpoint::Webhook, 200) => self.webhook_ok.inc(),
            (Endpoint::Webhook, 202) => self.webhook_spooled.inc(),
            _ => self
                .http_requests
                .with_label_values(&[endpoint.as_str(), status.as_str()])
                .inc(),
        }
        if endpoint == Endpoint::Webhook {
            self.request_duration.observe(duration.as_secs_f64());
        }
    }

    pub fn webhook_received(&self, envelope: &Envelope) {
        self.received[envelope.object as usize][envelope.event as usize].inc();
        for UnknownValue { object, field } in &envelope.unknown_values {
            self.unknown_enum_values
                .with_label_values(&[object.as_str(), field])
                .inc();
        }
    }

    /// A 4xx, under its code.
    pub fn rejected(&self, kind: Kind) {
        self.rejections.with_label_values(&[kind.code()]).inc();
    }

    pub fn connection_error(&self, kind: ConnectionError) {
        self.connection_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    pub fn auth_failure(&self, denial: Denial) {
        self.auth_failures
            .with_label_values(&[denial.as_str()])
            .inc();
    }

    pub fn in_flight_refused(&self, budget: Budget) {
        self.in_flight_refusals
            .with_label_values(&[budget.as_str()])
            .inc();
    }

    /// Counts a request as in flight until the guard is dropped, whichever
    /// way the request ends (even if the client goes away mid-publish).
    pub fn in_flight(&self) -> InFlight {
        self.requests_in_flight.inc();
        InFlight(self.requests_in_flight.clone())
    }

    /// The Prometheus text exposition of every metric in the registry.
    pub fn render(&self) -> Vec<u8> {
        crate::metrics::render(&self.registry)
    }
}

pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        let registry = crate::metrics::registry().unwrap_or_else(|e| panic!("{e}"));
        Metrics::new(registry).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hot_series_count_under_their_own_labels() {
        let metrics = metrics();
        metrics.received[ObjectKind::Media as usize][Event::Delete as usize].inc();
        metrics.http_request(
            Endpoint::Webhook,
            http::StatusCode::ACCEPTED,
            Duration::ZERO,
        );
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        for line in [
            r#"apizee_bridge_webhooks_received_total{event="delete",object="media"} 1"#,
            r#"apizee_bridge_webhooks_received_total{event="create",object="media"} 0"#,
            r#"apizee_bridge_http_requests_total{code="202",handler="webhook"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn series_known_up_front_are_exported_at_zero() {
        let metrics = metrics();
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        for line in [
            r#"apizee_bridge_webhooks_received_total{event="delete",object="conversationevent"} 0"#,
            r#"apizee_bridge_unknown_enum_values_total{field="_parent.name",object="media"} 0"#,
            r#"apizee_bridge_rejections_total{reason="malformed_json"} 0"#,
            r#"apizee_bridge_connection_errors_total{kind="header_timeout"} 0"#,
            r#"apizee_bridge_in_flight_refusals_total{budget="max_unauthenticated_in_flight"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
