//! The listeners' flags: addresses, the webhook path, sizes, budgets, the
//! limits against slow and greedy clients, and the drain.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::config::{ConfigError, parse_duration};

/// Flags under "HTTP and limits" in `--help`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address for webhooks, /healthz and /readyz.
    #[arg(long, env = "APIZEE_BRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// URL path that accepts webhooks (POST). A trailing slash is also accepted.
    #[arg(long, env = "APIZEE_BRIDGE_PATH", default_value = "/webhooks")]
    pub path: String,

    /// Address for Prometheus metrics (/metrics).
    #[arg(
        long,
        env = "APIZEE_BRIDGE_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// Largest accepted body; reading stops at this size and the answer is 413.
    #[arg(long, env = "APIZEE_BRIDGE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Most webhooks handled at once; past it the answer is 429 with
    /// Retry-After, at once, so memory stays bounded (at most this many
    /// bodies of --max-body-bytes) instead of a queue growing under load.
    #[arg(long, env = "APIZEE_BRIDGE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Most bodies read at once before their request is authenticated: with
    /// an HMAC signature (--hmac-secret) as the only credential, a body
    /// must be read before it can be checked, so these draw on this budget
    /// instead of --max-in-flight, and senders without the secret cannot
    /// take the slots signed webhooks need. Past it, 429. Unused when a
    /// token or Basic credential is checked from the headers first.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_MAX_UNAUTHENTICATED_IN_FLIGHT",
        default_value_t = 64
    )]
    pub max_unauthenticated_in_flight: usize,

    /// Most client connections open at once on the webhook listener; past
    /// it, new connections wait in the kernel's backlog until one closes.
    #[arg(long, env = "APIZEE_BRIDGE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest request head (request line and headers); larger heads get
    /// 431 and the connection is closed.
    #[arg(long, env = "APIZEE_BRIDGE_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Time a client has to send a request's headers, counted from when the
    /// bridge waits for them (with TLS, also to finish the handshake); also
    /// closes keep-alive connections, HTTP/2 ones included, idle for that
    /// long.
    #[arg(long, env = "APIZEE_BRIDGE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a client has to send the whole body once the headers are in;
    /// slower clients get 408.
    #[arg(long, env = "APIZEE_BRIDGE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Retry-After sent with 503 and 429 answers (rounded up to whole seconds).
    #[arg(long, env = "APIZEE_BRIDGE_RETRY_AFTER", default_value = "5s", value_parser = parse_duration)]
    pub retry_after: Duration,

    /// On SIGTERM/SIGINT, how long to keep serving with /readyz answering
    /// 503 before the listener closes, so that load balancers see the
    /// replica leave and stop sending to it: at least their health check's
    /// interval times its fall count, plus one interval (HAProxy's
    /// `inter 1s fall 2` in deploy/compose: 3s), or Kubernetes' endpoint
    /// propagation (a few seconds). Meanwhile every answer carries
    /// Connection: close and idle keep-alive connections are closed. 0s
    /// skips it.
    #[arg(long, env = "APIZEE_BRIDGE_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// On SIGTERM/SIGINT, after --drain-delay, how long in-flight requests
    /// may take to finish. Give the process --drain-delay plus this plus 5s
    /// (the queued dead letters and the sink's flush) before SIGKILL.
    #[arg(long, env = "APIZEE_BRIDGE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// The listeners and what the webhook handler enforces.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub path: String,
    pub max_body_bytes: usize,
    /// Whole seconds, at least 1.
    pub retry_after_secs: u64,
    pub max_in_flight: usize,
    /// Bodies read before their request is authenticated (HMAC only).
    pub max_unauthenticated_in_flight: usize,
    pub limits: Limits,
    pub drain: Drain,
}

/// Limits against slow and greedy clients on the webhook listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// How the webhook listener stops: `delay` serving with /readyz at 503
/// (so load balancers notice), then at most `timeout` for in-flight
/// requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub delay: Duration,
    pub timeout: Duration,
}

impl HttpArgs {
    pub fn settings(self) -> Result<HttpSettings, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new("--path", "must start with '/'"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("--max-body-bytes", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be at least 1"));
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "--max-header-bytes",
                "must be at least 8192",
            ));
        }
        for (flag, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("--max-in-flight", "must be at least 1"));
        }
        if self.max_unauthenticated_in_flight == 0 {
            return Err(ConfigError::new(
                "--max-unauthenticated-in-flight",
                "must be at least 1",
            ));
        }
        Ok(HttpSettings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            path: self.path,
            max_body_bytes: self.max_body_bytes,
            retry_after_secs: self.retry_after.as_secs_f64().ceil().max(1.0) as u64,
            max_in_flight: self.max_in_flight,
            max_unauthenticated_in_flight: self.max_unauthenticated_in_flight,
            limits: Limits {
                max_connections: self.max_connections,
                max_header_bytes: self.max_header_bytes,
                header_read_timeout: self.header_read_timeout,
                body_read_timeout: self.body_read_timeout,
            },
            drain: Drain {
                delay: self.drain_delay,
                timeout: self.shutdown_timeout,
            },
        })
    }
}
