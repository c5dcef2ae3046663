//! Every way a request can fail, mapped to status, machine code and message
//! in exactly one function. Handlers return a [`Rejection`] and never build
//! an error response by hand.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use super::budget::Budget;
use crate::auth::Denial;
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

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    details: &'a [serde_json::Value],
}

impl Rejection {
    /// Codes of every 4xx, so their counters exist (at 0) from the start.
    pub const CLIENT_ERROR_CODES: [&str; 12] = [
        "invalid_host",
        "not_found",
        "method_not_allowed",
        "unauthorized",
        "forbidden",
        "unsupported_media_type",
        "payload_too_large",
        "unreadable_body",
        "malformed_json",
        "invalid_envelope",
        "too_many_requests",
        "request_timeout",
    ];

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::InvalidHost(_) => StatusCode::BAD_REQUEST,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Denied(denial) if denial.is_forbidden() => StatusCode::FORBIDDEN,
            Rejection::Denied(_) => StatusCode::UNAUTHORIZED,
            Rejection::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::UnreadableBody(_) | Rejection::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Rejection::InvalidEnvelope(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code in the body; also the `reason` label of
    /// `apizee_bridge_rejections_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidHost(_) => "invalid_host",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::Denied(denial) if denial.is_forbidden() => "forbidden",
            Rejection::Denied(_) => "unauthorized",
            Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
            Rejection::PayloadTooLarge { .. } => "payload_too_large",
            Rejection::UnreadableBody(_) => "unreadable_body",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::InvalidEnvelope(_) => "invalid_envelope",
            Rejection::TooManyRequests { .. } => "too_many_requests",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::BrokerUnavailable(_) => "broker_unavailable",
        }
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

    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code(),
            message: self.message(),
            details: &self.details(),
        })
        .unwrap_or_default();
        let mut response = json_response(self.status(), body);
        let headers = response.headers_mut();
        match &self {
            Rejection::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Rejection::BrokerUnavailable(_) | Rejection::TooManyRequests { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
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
    fn client_error_codes_list_exactly_the_4xx_rejections() {
        let mut codes: Vec<&str> = all()
            .iter()
            .filter(|r| r.is_client_error())
            .map(Rejection::code)
            .collect();
        let mut listed = Rejection::CLIENT_ERROR_CODES.to_vec();
        codes.sort_unstable();
        listed.sort_unstable();
        assert_eq!(codes, listed);
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
                let response = Rejection::Denied(denial).into_response(1);
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
        let response = rejection.into_response(3);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = format!("{:?}", response.body());
        assert!(!body.contains("10.0.0.7"), "{body}");
    }
}
