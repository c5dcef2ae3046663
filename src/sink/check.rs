//! What `apizee-bridge check` learns of a broker: one finding per line of
//! its report. Each broker's checks (`nats/check.rs`, `kafka/check.rs`)
//! speak it; the command prints it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works as configured, but probably not as meant.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub what: String,
    pub detail: String,
}

impl Finding {
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, what, detail)
    }

    pub fn warn(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Status::Warn, what, detail)
    }

    pub fn fail(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Status::Fail, what, detail)
    }

    fn new(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<5} {}: {}", self.what, self.detail)
    }
}

/// What the broker checks need to know of the topics: every one the
/// template can produce (when known in advance) and the dead-letter topic.
pub struct Topics<'a> {
    pub all: Option<Vec<String>>,
    pub dead_letter: Option<&'a str>,
}
