//! The bridge's own spans, exported over OTLP/HTTP (protobuf), opt-in
//! (`--otlp-endpoint`): a server span per webhook request and, for a
//! webhook that gets as far as the broker, a producer span for its publish,
//! child of the request span, following OpenTelemetry's HTTP and messaging
//! conventions. Both carry `apizee.outcome`: what the sender was answered
//! (`published`, `spooled`, or the rejection's code) and what the broker
//! did (`ok`, `spooled`, or the publish error's kind, as in the
//! `outcome` label of `apizee_bridge_publishes_total`).
//!
//! The ids are the spans': the request span continues the sender's
//! `traceparent` (or is the root of a new trace), and the message's
//! `traceparent` names the publish span, so a consumer's span is its child.
//! Spans are batched and exported from the SDK's own thread, never on a
//! request's path; at shutdown what is left is flushed within the shared
//! budget ([`crate::SHUTDOWN_AFTER_DRAIN`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, Uri, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use rustls::RootCertStore;

use crate::config::ConfigError;
use crate::delivery::Delivered;
use crate::route::Message;
use crate::sink::PublishError;
use crate::trace::TraceContext;

/// The `service.name` spans carry unless `--otlp-service-name` says
/// otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "apizee-bridge";

/// The path OTLP/HTTP collectors take traces on (OTLP specification,
/// "OTLP/HTTP Request").
const TRACES_PATH: &str = "/v1/traces";

/// Flags under "Tracing (OpenTelemetry)" in `--help`.
#[derive(Debug, clap::Args)]
pub struct OtlpArgs {
    /// Export the bridge's spans over OTLP/HTTP (protobuf) to this collector:
    /// a server span per webhook request and a producer span per publish,
    /// with the service name and the outcome. A URL without a path gets
    /// /v1/traces (http://otel-collector:4318). Off without it. The exporter
    /// also reads the standard OTEL_EXPORTER_OTLP_HEADERS (for an API key;
    /// never logged), OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_BSP_* (batching) and
    /// OTEL_TRACES_SAMPLER. https is checked against the system's CAs, or
    /// --otlp-ca-file's.
    #[arg(long, env = "APIZEE_BRIDGE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// CA (PEM) for an https endpoint's certificate, instead of the system's
    /// CAs.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_OTLP_CA_FILE",
        value_name = "PATH",
        requires = "otlp_endpoint"
    )]
    pub otlp_ca_file: Option<PathBuf>,

    /// The spans' service.name.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_OTLP_SERVICE_NAME",
        value_name = "NAME",
        default_value = DEFAULT_SERVICE_NAME,
        requires = "otlp_endpoint"
    )]
    pub otlp_service_name: String,
}

/// Where spans go, checked.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The full traces URL, `/v1/traces` included.
    pub endpoint: String,
    pub service_name: String,
    /// `--otlp-ca-file`, loaded: trusted instead of the system's CAs.
    pub roots: Option<Arc<RootCertStore>>,
}

impl OtlpArgs {
    /// None without `--otlp-endpoint`.
    pub fn settings(self) -> Result<Option<OtlpSettings>, ConfigError> {
        let Some(endpoint) = self.otlp_endpoint else {
            return Ok(None);
        };
        let endpoint =
            traces_url(&endpoint).map_err(|reason| ConfigError::new("--otlp-endpoint", reason))?;
        let roots = match &self.otlp_ca_file {
            Some(_) if !endpoint.starts_with("https:") => {
                return Err(ConfigError::new(
                    "--otlp-ca-file",
                    "is for an https --otlp-endpoint; this one is http",
                ));
            }
            Some(path) => Some(Arc::new(
                crate::tls::client_roots("--otlp-ca-file", path)
                    .map_err(|e| ConfigError::new(e.flag, e.to_string()))?,
            )),
            None => None,
        };
        if self.otlp_service_name.trim().is_empty() {
            return Err(ConfigError::new("--otlp-service-name", "must not be empty"));
        }
        Ok(Some(OtlpSettings {
            endpoint,
            service_name: self.otlp_service_name,
            roots,
        }))
    }
}

/// The collector's traces URL: `/v1/traces` appended to a URL without a
/// path, as OTEL_EXPORTER_OTLP_ENDPOINT is read; any other path kept.
fn traces_url(text: &str) -> Result<String, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}); example: http://otel-collector:4318"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{text:?} must start with http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if authority.as_str().contains('@') {
        // The URL is logged at start-up; credentials belong in headers.
        return Err(
            "credentials in the URL would be logged; pass them in OTEL_EXPORTER_OTLP_HEADERS \
             instead (authorization=Bearer ...)"
                .into(),
        );
    }
    let text = text.trim_end_matches('/');
    Ok(match uri.path() {
        "" | "/" if uri.query().is_none() => format!("{text}{TRACES_PATH}"),
        _ => text.to_owned(),
    })
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for --otlp-endpoint: {0}")]
pub struct OtlpError(String);

/// The tracer the request path makes spans with, and the provider that
/// batches and exports them.
pub struct Spans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// `messaging.system`: the sink's name (`kafka`, `nats`).
    system: &'static str,
    /// `--path`, the request span's `http.route`; shared, not copied, by
    /// every span.
    route: Arc<str>,
    /// Publish spans are named `send <topic>` unless topics hold the
    /// objectId, which would make span names unbounded: then `send`.
    topic_in_name: bool,
}

impl Spans {
    /// Builds the exporter and its batching; nothing is sent until there is
    /// a span.
    pub fn start(
        settings: &OtlpSettings,
        system: &'static str,
        route: &str,
        topics_hold_object_id: bool,
    ) -> Result<Self, OtlpError> {
        let exporter = exporter(settings)?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, "exporting spans over OTLP");
        Ok(Self {
            provider,
            tracer,
            system,
            route: Arc::from(route),
            topic_in_name: !topics_hold_object_id,
        })
    }

    /// Starts a webhook request's server span, child of the sender's span
    /// if the request named one; `trace` takes the span's trace id and
    /// flags (the sampler's decision).
    pub fn request(
        &self,
        trace: &mut TraceContext,
        method: &Method,
        version: Version,
        peer: SocketAddr,
    ) -> RequestSpan<'_> {
        let parent = match trace.parent_id {
            Some(parent_id) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(trace.trace_id),
                SpanId::from_bytes(parent_id),
                TraceFlags::new(trace.flags),
                true,
                trace
                    .state
                    .as_deref()
                    .and_then(|state| TraceState::from_str(state).ok())
                    .unwrap_or_default(),
            )),
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(format!("{method} {}", self.route))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new(
                    "http.route",
                    opentelemetry::StringValue::from(self.route.clone()),
                ),
                KeyValue::new("network.protocol.version", protocol_version(version)),
                KeyValue::new("client.address", peer.ip().to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        let context = span.span_context();
        trace.trace_id = context.trace_id().to_bytes();
        trace.flags = context.trace_flags().to_u8();
        RequestSpan {
            spans: self,
            context: parent.with_span(span),
        }
    }

    /// Exports what is still batched, within `timeout`. Blocks: call it off
    /// the runtime's workers.
    fn flush_and_close(&self, timeout: Duration) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }

    /// Flushes the spans not yet exported, by `deadline`; after this no
    /// span is exported.
    pub async fn shutdown(self: std::sync::Arc<Self>, deadline: tokio::time::Instant) {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::task::spawn_blocking(move || self.flush_and_close(timeout)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "exporting the last spans at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "exporting the last spans at shutdown failed"),
        }
    }
}

/// The exporter, with an HTTP client of the bridge's: its TLS is rustls
/// with ring, as everywhere else in the bridge, trusting `--otlp-ca-file`
/// or the system's CAs.
///
/// reqwest's blocking client (what the SDK's export thread needs) runs a
/// runtime of its own, which must be neither made nor dropped on one of
/// ours: a thread of its own builds the client and the exporter holding
/// it, as opentelemetry-otlp does for the client it would make itself.
fn exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
    let roots = match &settings.roots {
        Some(roots) => RootCertStore::clone(roots),
        None if settings.endpoint.starts_with("https:") => system_roots()?,
        // Plain http: no certificate is ever checked.
        None => RootCertStore::empty(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let endpoint = settings.endpoint.clone();
    let timeout = export_timeout();
    let built = std::thread::Builder::new()
        .name("otlp-client".into())
        .spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(timeout)
                .build()
                .map_err(|e| OtlpError(format!("cannot build the HTTP client: {e}")))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
                .map_err(|e| OtlpError(e.to_string()))
        })
        .map_err(|e| OtlpError(format!("cannot start a thread: {e}")))?;
    built
        .join()
        .map_err(|_| OtlpError("building the exporter panicked".into()))?
}

/// The system's CAs (on Debian, the ca-certificates package; SSL_CERT_FILE
/// and SSL_CERT_DIR are honoured).
fn system_roots() -> Result<RootCertStore, OtlpError> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(OtlpError(
            "no CA certificates found on this system for the https endpoint \
             (on Debian: install ca-certificates); or pass --otlp-ca-file"
                .into(),
        ));
    }
    Ok(roots)
}

/// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT, in
/// milliseconds; 10 s by default, as the OTLP exporter specification says.
/// Read here because the client, whose timeout it is, is the bridge's.
fn export_timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok()?.trim().parse::<u64>().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A request's server span, in progress.
pub struct RequestSpan<'a> {
    spans: &'a Spans,
    /// Holds the span: the parent of the publish span.
    context: Context,
}

impl RequestSpan<'_> {
    /// Starts the publish span; `trace` takes its span id, which the
    /// message's `traceparent` carries.
    pub fn publish(&self, trace: &mut TraceContext, message: &Message) -> PublishSpan {
        let spans = self.spans;
        let name = if spans.topic_in_name {
            format!("send {}", message.topic)
        } else {
            "send".to_owned()
        };
        let span = spans
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", spans.system),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", message.topic.clone()),
                KeyValue::new("messaging.message.id", message.event_id.clone()),
            ])
            .start_with_context(&spans.tracer, &self.context);
        trace.span_id = span.span_context().span_id().to_bytes();
        PublishSpan(span)
    }

    /// Ends the span with the answer: `outcome` is `published`, `spooled`
    /// or the rejection's code. A 5xx marks it as an error; a 4xx is the
    /// sender's, not the server's, as the HTTP conventions say.
    pub fn end(self, status: StatusCode, outcome: &'static str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        span.set_attribute(KeyValue::new("apizee.outcome", outcome));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", outcome));
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}

/// A publish's producer span, in progress.
pub struct PublishSpan(opentelemetry_sdk::trace::Span);

impl PublishSpan {
    /// Ends the span with what the broker did.
    pub fn end(mut self, result: &Result<Delivered, PublishError>) {
        let outcome = match result {
            Ok(Delivered::Acknowledged) => "ok",
            Ok(Delivered::Spooled) => "spooled",
            Err(e) => e.outcome().as_str(),
        };
        self.0
            .set_attribute(KeyValue::new("apizee.outcome", outcome));
        if let Err(e) = result {
            self.0.set_attribute(KeyValue::new("error.type", outcome));
            self.0.set_status(Status::error(e.to_string()));
        }
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        for (given, used) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "http://127.0.0.1:4318/v1/traces",
                "http://127.0.0.1:4318/v1/traces",
            ),
            ("http://gateway/otlp/traces", "http://gateway/otlp/traces"),
        ] {
            assert_eq!(traces_url(given).as_deref(), Ok(used), "{given}");
        }
    }

    #[test]
    fn a_bad_endpoint_is_refused_saying_why() {
        for (given, says) in [
            ("collector:4318", "must start with http:// or https://"),
            ("ftp://collector", "must start with http:// or https://"),
            (
                "http://user:secret@collector:4318",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            ("http://", "not a URL"),
        ] {
            let reason = traces_url(given).expect_err(given);
            assert!(reason.contains(says), "{given}: {reason}");
            assert!(!reason.contains("secret"), "{given}: {reason}");
        }
    }
}
