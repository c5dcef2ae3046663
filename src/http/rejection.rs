//! Every way a request can fail, and its answer, declared once. The table
//! of [`Kind`]s gives each one its status, code, log level and line, and
//! whether it carries `Retry-After`; a [`Rejection`] holds the data its
//! message and details need. Handlers return a `Rejection` with `?`, and
//! [`Rejection::answer`] logs it, counts it and builds the response: no
//! handler builds an error by hand.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use tracing::Level;

use super::budget::Budget;
use super::metrics::Metrics;
use crate::auth::Denial;
use crate::dead_letter::Letter;
use crate::envelope::Problem;
use crate::sink::PublishError;

#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// An HTTP/1.1 request without exactly one `Host` header (RFC 9112
    /// §3.2); holds how many it had.
    InvalidHost(usize),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    /// 401 or 403 by the denial's kind; which check failed stays in the
    /// logs and metrics.
    Denied(Denial),
    UnsupportedMediaType(String),
    PayloadTooLarge {
        limit: usize,
    },
    UnreadableBody(String),
    MalformedJson(String),
    InvalidEnvelope(Vec<Problem>),
    TooManyRequests {
        budget: Budget,
        limit: usize,
    },
    RequestTimeout,
    BrokerUnavailable(PublishError),
}

/// The kinds of answer a [`Rejection`] gets. Its code is the `error` of the
/// body and the `reason` label of `apizee_bridge_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidHost,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    UnsupportedMediaType,
    PayloadTooLarge,
    UnreadableBody,
    MalformedJson,
    InvalidEnvelope,
    TooManyRequests,
    RequestTimeout,
    BrokerUnavailable,
}

/// One row of the table: everything about a kind's answer but its message.
struct Row {
    status: StatusCode,
    code: &'static str,
    /// Every refusal is one an operator may have to act on (a sender with
    /// the wrong secret, a broker down, a client too fast): warn.
    level: Level,
    /// The log line's message.
    log: &'static str,
    /// Whether the same request may succeed later (`Retry-After`).
    retry_later: bool,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::InvalidHost,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::UnsupportedMediaType,
        Kind::PayloadTooLarge,
        Kind::UnreadableBody,
        Kind::MalformedJson,
        Kind::InvalidEnvelope,
        Kind::TooManyRequests,
        Kind::RequestTimeout,
        Kind::BrokerUnavailable,
    ];

    /// The table.
    const fn row(self) -> Row {
        use StatusCode as S;
        const REJECTED: &str = "request rejected";
        let (status, code, log, retry_later) = match self {
            Kind::InvalidHost => (S::BAD_REQUEST, "invalid_host", REJECTED, false),
            Kind::NotFound => (S::NOT_FOUND, "not_found", REJECTED, false),
            Kind::MethodNotAllowed => {
                (S::METHOD_NOT_ALLOWED, "method_not_allowed", REJECTED, false)
            }
            Kind::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "webhook refused", false),
            Kind::Forbidden => (S::FORBIDDEN, "forbidden", "webhook refused", false),
            Kind::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                REJECTED,
                false,
            ),
            Kind::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", REJECTED, false),
            Kind::UnreadableBody => (S::BAD_REQUEST, "unreadable_body", "webhook rejected", false),
            Kind::MalformedJson => (S::BAD_REQUEST, "malformed_json", "webhook rejected", false),
            Kind::InvalidEnvelope => (
                S::UNPROCESSABLE_ENTITY,
                "invalid_envelope",
                "webhook rejected",
                false,
            ),
            Kind::TooManyRequests => (S::TOO_MANY_REQUESTS, "too_many_requests", REJECTED, true),
            Kind::RequestTimeout => (S::REQUEST_TIMEOUT, "request_timeout", REJECTED, false),
            Kind::BrokerUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "webhook not published",
                true,
            ),
        };
        Row {
            status,
            code,
            level: Level::WARN,
            log,
            retry_later,
        }
    }

    pub const fn status(self) -> StatusCode {
        self.row().status
    }

    pub const fn code(self) -> &'static str {
        self.row().code
    }

    /// The 4xx kinds: the sender's request was wrong, and sending it again
    /// as it is won't help. Their counters exist (at 0) from the start.
    pub fn client_errors() -> impl Iterator<Item = Kind> {
        Kind::ALL
            .into_iter()
            .filter(|kind| kind.status().is_client_error())
    }
}

/// What an answer needs from the listener's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answering {
    /// `Retry-After` of the kinds that may succeed later.
    pub retry_after_secs: u64,
    /// `WWW-Authenticate` of a 401, when a credential scheme has one.
    pub challenge: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    details: &'a [serde_json::Value],
}

/// Logs at a level chosen at run time; tracing's macros need it constant.
macro_rules! event_at {
    ($level:expr, $($fields:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!($($fields)+),
            Level::WARN => tracing::warn!($($fields)+),
            Level::INFO => tracing::info!($($fields)+),
            Level::DEBUG => tracing::debug!($($fields)+),
            _ => tracing::trace!($($fields)+),
        }
    };
}

impl Rejection {
    pub fn kind(&self) -> Kind {
        match self {
            Rejection::InvalidHost(_) => Kind::InvalidHost,
            Rejection::NotFound => Kind::NotFound,
            Rejection::MethodNotAllowed { .. } => Kind::MethodNotAllowed,
            Rejection::Denied(denial) if denial.is_forbidden() => Kind::Forbidden,
            Rejection::Denied(_) => Kind::Unauthorized,
            Rejection::UnsupportedMediaType(_) => Kind::UnsupportedMediaType,
            Rejection::PayloadTooLarge { .. } => Kind::PayloadTooLarge,
            Rejection::UnreadableBody(_) => Kind::UnreadableBody,
            Rejection::MalformedJson(_) => Kind::MalformedJson,
            Rejection::InvalidEnvelope(_) => Kind::InvalidEnvelope,
            Rejection::TooManyRequests { .. } => Kind::TooManyRequests,
            Rejection::RequestTimeout => Kind::RequestTimeout,
            Rejection::BrokerUnavailable(_) => Kind::BrokerUnavailable,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind().status()
    }

    /// The machine-readable code in the body; also the `reason` label of
    /// `apizee_bridge_rejections_total`.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// One sentence for a human: what is wrong and what to do about it.
    /// Never includes a secret or a broker address.
    pub fn message(&self) -> String {
        match self {
            Rejection::InvalidHost(0) => {
                "An HTTP/1.1 request needs a Host header (RFC 9112, section 3.2).".into()
            }
            Rejection::InvalidHost(count) => format!(
                "An HTTP/1.1 request needs exactly one Host header (RFC 9112, section 3.2); \
                 this one has {count}."
            ),
            Rejection::NotFound => {
                "No such path; webhooks are accepted on the configured path.".into()
            }
            Rejection::MethodNotAllowed { allow } => {
                format!("This path only accepts {allow}.")
            }
            Rejection::Denied(denial) if denial.is_forbidden() => {
                "This client may not send webhooks here; ask the operator to allow it.".into()
            }
            Rejection::Denied(_) => {
                "Missing or wrong credentials: send what the bridge's operator configured.".into()
            }
            Rejection::UnsupportedMediaType(found) => {
                format!("Content-Type must be application/json, found {found:?}.")
            }
            Rejection::PayloadTooLarge { limit } => {
                format!("The body is larger than the limit of {limit} bytes.")
            }
            Rejection::UnreadableBody(_) => "The request body could not be read completely.".into(),
            Rejection::MalformedJson(_) => "The body is not valid JSON.".into(),
            Rejection::InvalidEnvelope(problems) => format!(
                "The JSON is not a valid Apizee webhook envelope ({} problem{}, see details).",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            Rejection::RequestTimeout => {
                "The body did not arrive in time; send it faster or in one go.".into()
            }
            Rejection::TooManyRequests { budget, limit } => format!(
                "{limit} {}; retry after the delay in Retry-After.",
                budget.describe()
            ),
            Rejection::BrokerUnavailable(_) => {
                "The message broker did not accept the event; retry later.".into()
            }
        }
    }

    /// What the `details` array of the answer holds.
    /// Which dead letter this refusal makes, if any: only a body that was
    /// read and is worth a look; never a refusal before the body (401, 413,
    /// 415, ...) nor a broker's 503, whose sender retries.
    pub fn dead_letter(&self) -> Option<Letter> {
        match self {
            Rejection::InvalidEnvelope(_) => Some(Letter::InvalidEnvelope),
            Rejection::MalformedJson(_) => Some(Letter::MalformedJson),
            _ => None,
        }
    }

    pub fn details(&self) -> Vec<serde_json::Value> {
        match self {
            Rejection::InvalidEnvelope(problems) => problems
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect(),
            Rejection::MalformedJson(parse_error) | Rejection::UnreadableBody(parse_error) => {
                vec![serde_json::json!({ "problem": parse_error })]
            }
            // The publish error stays in our logs: it can name broker
            // addresses and stream names the sender has no business seeing.
            _ => Vec::new(),
        }
    }

    /// A 4xx: the sender's request was wrong, and retrying it as is won't help.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// The answer to a request on the webhook listener: logged, counted,
    /// and turned into the response.
    /// `log_span` makes the span its line is logged in.
    pub fn answer(
        self,
        peer: SocketAddr,
        metrics: &Metrics,
        answering: Answering,
        log_span: impl FnOnce() -> tracing::Span,
    ) -> Response<Full<Bytes>> {
        log_span().in_scope(|| self.log(peer));
        let kind = self.kind();
        if kind.status().is_client_error() {
            metrics.rejected(kind);
        }
        match &self {
            Rejection::Denied(denial) => metrics.auth_failure(*denial),
            Rejection::TooManyRequests { budget, .. } => metrics.in_flight_refused(*budget),
            _ => {}
        }
        self.into_response(answering)
    }

    /// One line for the operator, who (unlike the sender) learns which
    /// check failed and why the broker refused.
    fn log(&self, peer: SocketAddr) {
        let row = self.kind().row();
        let (status, reason) = (row.status.as_u16(), row.code);
        // Fields that are None are left out of the line.
        let error = match self {
            Rejection::BrokerUnavailable(error) => Some(tracing::field::display(error)),
            _ => None,
        };
        let fields = match self {
            Rejection::InvalidEnvelope(problems) => Some(tracing::field::debug(
                problems
                    .iter()
                    .map(|p| p.field.as_str())
                    .collect::<Vec<_>>(),
            )),
            _ => None,
        };
        let check = match self {
            Rejection::Denied(denial) => Some(denial.as_str()),
            _ => None,
        };
        let detail = match self {
            Rejection::MalformedJson(detail) | Rejection::UnreadableBody(detail) => {
                Some(tracing::field::display(detail))
            }
            _ => None,
        };
        event_at!(row.level, %peer, status, reason, error, fields, check, detail, "{}", row.log);
    }

    /// The response alone, neither logged nor counted (the metrics
    /// listener's own 404 and 405).
    pub fn into_response(self, answering: Answering) -> Response<Full<Bytes>> {
        let kind = self.kind();
        let row = kind.row();
        let body = serde_json::to_vec(&ErrorBody {
            error: row.code,
            message: self.message(),
            details: &self.details(),
        })
        .unwrap_or_default();
        let mut response = json_response(row.status, body);
        let headers = response.headers_mut();
        if row.retry_later {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(answering.retry_after_secs),
            );
        }
        if let Rejection::MethodNotAllowed { allow } = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let (Kind::Unauthorized, Some(challenge)) = (kind, answering.challenge) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Rejection> {
        vec![
            Rejection::InvalidHost(0),
            Rejection::NotFound,
            Rejection::MethodNotAllowed { allow: "POST" },
            Rejection::Denied(Denial::SharedSecret),
            Rejection::Denied(Denial::SourceNotAllowed),
            Rejection::UnsupportedMediaType("text/plain".into()),
            Rejection::PayloadTooLarge { limit: 1 },
            Rejection::UnreadableBody("reset".into()),
            Rejection::MalformedJson("eof".into()),
            Rejection::InvalidEnvelope(vec![]),
            Rejection::TooManyRequests {
                budget: Budget::InFlight,
                limit: 1,
            },
            Rejection::RequestTimeout,
            Rejection::BrokerUnavailable(PublishError::NotConnected),
        ]
    }

    #[test]
    fn every_kind_has_a_rejection_and_a_code_of_its_own() {
        let kinds: Vec<Kind> = all().iter().map(Rejection::kind).collect();
        for kind in Kind::ALL {
            assert!(kinds.contains(&kind), "no rejection of kind {kind:?}");
        }
        let mut codes: Vec<&str> = Kind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Kind::ALL.len(), "two kinds share a code");
        assert_eq!(Kind::client_errors().count(), Kind::ALL.len() - 1);
    }

    #[test]
    fn only_a_body_read_and_refused_for_its_content_is_dead_lettered() {
        let lettered: Vec<(&str, Letter)> = all()
            .iter()
            .filter_map(|r| Some((r.code(), r.dead_letter()?)))
            .collect();
        assert_eq!(
            lettered,
            [
                ("malformed_json", Letter::MalformedJson),
                ("invalid_envelope", Letter::InvalidEnvelope),
            ]
        );
    }

    #[test]
    fn retry_after_goes_with_the_answers_a_retry_may_change() {
        let answering = Answering {
            retry_after_secs: 7,
            challenge: Some("Basic realm=\"apizee-bridge\""),
        };
        for rejection in all() {
            let kind = rejection.kind();
            let response = rejection.into_response(answering);
            let retry = response.headers().get(header::RETRY_AFTER);
            assert_eq!(
                retry.is_some(),
                matches!(kind, Kind::TooManyRequests | Kind::BrokerUnavailable),
                "{kind:?}"
            );
            assert_eq!(
                response.headers().contains_key(header::WWW_AUTHENTICATE),
                kind == Kind::Unauthorized,
                "{kind:?}"
            );
            assert_eq!(
                response.headers().contains_key(header::ALLOW),
                kind == Kind::MethodNotAllowed,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn only_broker_unavailability_is_a_server_error() {
        for rejection in all() {
            let server_error = rejection.status().is_server_error();
            assert_eq!(
                server_error,
                matches!(rejection, Rejection::BrokerUnavailable(_)),
                "{rejection:?}"
            );
            assert!(server_error || rejection.is_client_error());
        }
    }

    #[test]
    fn denials_never_say_which_check_failed() {
        let answers: Vec<(u16, String)> = Denial::ALL
            .iter()
            .map(|&denial| {
                let response = Rejection::Denied(denial).into_response(Answering::default());
                (response.status().as_u16(), format!("{:?}", response.body()))
            })
            .collect();
        for (denial, (status, body)) in Denial::ALL.iter().zip(&answers) {
            let expected = if denial.is_forbidden() { 403 } else { 401 };
            assert_eq!(*status, expected, "{denial:?}");
            // Every 401 reads the same, and so does every 403.
            let same_status = answers.iter().filter(|(s, _)| s == status);
            assert!(same_status.clone().all(|(_, b)| b == body), "{denial:?}");
        }
    }

    #[test]
    fn publish_errors_never_reach_the_body() {
        let rejection =
            Rejection::BrokerUnavailable(PublishError::Refused("stream at 10.0.0.7".into()));
        let response = rejection.into_response(Answering {
            retry_after_secs: 3,
            challenge: None,
        });
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = format!("{:?}", response.body());
        assert!(!body.contains("10.0.0.7"), "{body}");
    }
}
