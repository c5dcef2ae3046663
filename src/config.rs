//! Command-line flags (each with an `APIZEE_BRIDGE_*` env var), validated
//! once into [`Settings`]. Nothing downstream re-parses a string: a bad flag
//! fails at start-up with one line that names it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::auth::{
    BasicAuth, Cidr, Guard, SharedSecret, Signature, SignatureEncoding, SourceFilter,
};
use crate::envelope::Rules;
use crate::route::{DEFAULT_TEMPLATE, TopicTemplate, is_valid_topic, subject_matches};
use crate::tls::{TlsFiles, TlsSettings};

/// Receives Apizee (ApiRTC) webhooks and publishes each one to Kafka or NATS
/// (or to standard output, for development) on a topic named by object and event
/// (`apizee.ticket.update`), keyed by objectId. The sender gets a 2xx only
/// once the broker has the message.
///
/// Every flag can also be set with the environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(name = "apizee-bridge", version, max_term_width = 100)]
pub struct Cli {
    /// Address for webhooks, /healthz and /readyz.
    #[arg(long, env = "APIZEE_BRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// URL path that accepts webhooks (POST). A trailing slash is also accepted.
    #[arg(long, env = "APIZEE_BRIDGE_PATH", default_value = "/webhooks")]
    pub path: String,

    /// Certificate chain (PEM, leaf first) to serve webhooks over TLS
    /// (with --tls-key); HTTP/2 and HTTP/1.1 are offered by ALPN. Reloaded
    /// on SIGHUP and when the file changes; open connections keep theirs.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM): every client must present a certificate
    /// signed by one of them, or the TLS handshake is refused. Needs
    /// --tls-cert.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_CLIENT_CA", value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are read to see whether they changed; a
    /// change (or SIGHUP) reloads them. A failed reload keeps the previous
    /// certificate.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

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

    /// How long to wait for the broker's acknowledgement before answering 503.
    #[arg(long, env = "APIZEE_BRIDGE_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

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

    /// Directory of the durable spool. When the broker is down or does not
    /// acknowledge in time, the webhook is synced here and answered 202,
    /// then delivered, oldest first, once the broker is back. Survives
    /// kill -9 and reboots. Without it, such webhooks get 503.
    #[arg(long, env = "APIZEE_BRIDGE_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,

    /// Largest size of the spool on disk; when full, webhooks get 503.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_SPOOL_MAX_BYTES",
        default_value_t = 1024 * 1024 * 1024
    )]
    pub spool_max_bytes: u64,

    /// Publish every request refused with 422 (JSON, but not a valid
    /// envelope) to this topic, body untouched, with the reason in the
    /// apizee-rejection-reason and apizee-rejection-details headers. The
    /// sender gets its 422 at once; the dead letter is published in the
    /// background. Created with the template's topics by
    /// --kafka-create-topics, and captured by --nats-stream.
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_TOPIC", value_name = "NAME")]
    pub dead_letter_topic: Option<String>,

    /// Also dead-letter bodies that are not JSON at all (400).
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_MALFORMED")]
    pub dead_letter_malformed: bool,

    /// Most dead letters waiting to be published. When the broker is slow
    /// or down and the queue is full, the newest dead letter is dropped and
    /// counted (apizee_bridge_dead_letters_total{outcome="shed"}). Each
    /// holds its body: at most this many times --max-body-bytes of memory.
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_QUEUE", default_value_t = 128)]
    pub dead_letter_queue: usize,

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
    /// (the sink's flush) before SIGKILL.
    #[arg(long, env = "APIZEE_BRIDGE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// At start-up, how long a webhook waits for the broker to be reachable
    /// before it is published, instead of being answered 503 by a replica
    /// that has just started (without --spool-dir; with it, it is spooled).
    /// /readyz answers 503 until the broker is reachable. Once this has
    /// passed, or the broker has been reachable once, a webhook that finds
    /// it unreachable gets 503 at once.
    #[arg(long, env = "APIZEE_BRIDGE_STARTUP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub startup_timeout: Duration,

    /// Refuse (422) enum values the spec does not list, such as a new ticket
    /// state. By default they are published and counted in
    /// apizee_bridge_unknown_enum_values_total.
    #[arg(long, env = "APIZEE_BRIDGE_STRICT")]
    pub strict: bool,

    /// Value of {prefix} in the topic template.
    #[arg(long, env = "APIZEE_BRIDGE_TOPIC_PREFIX", default_value = "apizee")]
    pub topic_prefix: String,

    /// Topic (NATS subject) for each message. Placeholders: {prefix},
    /// {object}, {event}, {objectId}.
    #[arg(long, env = "APIZEE_BRIDGE_TOPIC_TEMPLATE", default_value = DEFAULT_TEMPLATE)]
    pub topic_template: String,

    /// Where messages go. stdout is a development mode: nothing is durable.
    #[arg(long, env = "APIZEE_BRIDGE_SINK", value_enum, default_value_t = SinkKind::Stdout)]
    pub sink: SinkKind,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Publish through JetStream and answer only after its PubAck; the
    /// event id goes in Nats-Msg-Id so a retried webhook is stored once.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_JETSTREAM")]
    pub nats_jetstream: bool,

    /// Create this JetStream stream on "<prefix>.>" at start-up if it does
    /// not exist (needs --nats-jetstream). An existing stream is left as is.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_STREAM", value_name = "NAME")]
    pub nats_stream: Option<String>,

    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CREDS_FILE", value_name = "PATH")]
    pub nats_creds_file: Option<PathBuf>,

    /// NATS nkey seed (SU...). Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_NKEY_SEED",
        value_name = "SEED",
        hide_env_values = true
    )]
    pub nats_nkey_seed: Option<String>,

    /// NATS token. Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,

    /// NATS password. Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,

    /// CA certificate (PEM) to verify the NATS server; turns TLS on.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CA_FILE", value_name = "PATH")]
    pub nats_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for NATS mutual TLS (with --nats-client-key).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CLIENT_CERT", value_name = "PATH")]
    pub nats_client_cert: Option<PathBuf>,

    /// Client private key (PEM) for NATS mutual TLS.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CLIENT_KEY", value_name = "PATH")]
    pub nats_client_key: Option<PathBuf>,

    /// Kafka bootstrap brokers, comma-separated host:port.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,

    /// Any librdkafka producer property, as key=value; repeat the flag, or
    /// separate with ';' in the env var. Applied after the bridge's defaults
    /// (acks=all, enable.idempotence=true, compression.type=none, linger.ms=0,
    /// message.timeout.ms=--publish-timeout), so it can override them.
    /// Examples: security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_OPTION",
        value_name = "KEY=VALUE",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_option: Vec<String>,

    /// At start-up, create every topic the template can produce (one per
    /// object type and event with the default template) and the dead-letter
    /// topic; existing topics are left alone. /readyz stays 503
    /// until done.
    #[arg(long, env = "APIZEE_BRIDGE_KAFKA_CREATE_TOPICS")]
    pub kafka_create_topics: bool,

    /// Partitions of topics made by --kafka-create-topics.
    #[arg(long, env = "APIZEE_BRIDGE_KAFKA_PARTITIONS", default_value_t = 3)]
    pub kafka_partitions: i32,

    /// Replication factor of topics made by --kafka-create-topics.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_KAFKA_REPLICATION_FACTOR",
        default_value_t = 3
    )]
    pub kafka_replication_factor: i32,

    /// Request header that must carry a shared secret (set as a custom
    /// header in the Apizee console). With "Authorization", a "Bearer "
    /// prefix is accepted.
    #[arg(long, env = "APIZEE_BRIDGE_AUTH_HEADER", value_name = "NAME")]
    pub auth_header: Option<String>,

    /// Accepted secret(s); repeat the flag or separate with commas to rotate.
    /// Prefer the env var or --auth-token-file to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_AUTH_TOKEN",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_token: Vec<String>,

    /// File with accepted secrets, one per line (blank lines and # comments
    /// ignored).
    #[arg(long, env = "APIZEE_BRIDGE_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Accepted HTTP Basic credentials, as USER:PASSWORD; repeat the flag or
    /// separate with commas. Prefer --basic-auth-file, which also allows
    /// commas in passwords.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub basic_auth: Vec<String>,

    /// File with accepted HTTP Basic credentials, one USER:PASSWORD per line
    /// (blank lines and # comments ignored).
    #[arg(long, env = "APIZEE_BRIDGE_BASIC_AUTH_FILE", value_name = "PATH")]
    pub basic_auth_file: Option<PathBuf>,

    /// Require an HMAC-SHA256 signature of the raw body, made with this key,
    /// in --hmac-header. Repeat the flag or separate with commas to rotate
    /// keys. Prefer the env var or --hmac-secret-file to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_HMAC_SECRET",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub hmac_secret: Vec<String>,

    /// File with HMAC keys, one per line (blank lines and # comments ignored).
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_SECRET_FILE", value_name = "PATH")]
    pub hmac_secret_file: Option<PathBuf>,

    /// Request header that carries the HMAC signature, optionally prefixed
    /// by "sha256=".
    #[arg(
        long,
        env = "APIZEE_BRIDGE_HMAC_HEADER",
        value_name = "NAME",
        default_value = "X-Signature"
    )]
    pub hmac_header: String,

    /// How the signature is written in --hmac-header.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_ENCODING", value_enum, default_value_t = SignatureEncoding::Hex)]
    pub hmac_encoding: SignatureEncoding,

    /// Request header with the time of signing, in UNIX seconds. When set,
    /// the signed bytes are "<timestamp>.<body>" and a request whose
    /// timestamp is further than --hmac-tolerance from now is refused, so a
    /// captured request cannot be replayed later.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_TIMESTAMP_HEADER", value_name = "NAME")]
    pub hmac_timestamp_header: Option<String>,

    /// Largest accepted difference between --hmac-timestamp-header and the
    /// bridge's clock, either way.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub hmac_tolerance: Duration,

    /// Accept webhooks only from these client addresses (CIDR ranges or
    /// single addresses); repeat the flag or separate with commas. Others get
    /// 403.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_ALLOW_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_cidr: Vec<String>,

    /// Proxies and load balancers whose X-Forwarded-For is believed when
    /// checking --allow-cidr (CIDR ranges or addresses; repeat or separate
    /// with commas). From any other peer, the connection's own address is
    /// the client.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,

    /// Accept webhooks only with a User-Agent that starts with this text (the
    /// platform sends "Cloud Apizee"); others get 403. A filter against stray
    /// traffic, not authentication: any client can send it.
    #[arg(long, env = "APIZEE_BRIDGE_REQUIRE_USER_AGENT", value_name = "TEXT")]
    pub require_user_agent: Option<String>,

    /// Log format.
    #[arg(long, env = "APIZEE_BRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax ("info", "apizee_bridge=debug").
    #[arg(long, env = "APIZEE_BRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    Stdout,
    Nats,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A flag that is wrong, and why. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            reason: reason.into(),
        }
    }
}

/// Everything the service needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// TLS on `listen`, its files already loaded and checked; plain HTTP
    /// without it.
    pub tls: Option<TlsSettings>,
    /// Where and how big the durable spool is, if any.
    pub spool: Option<(PathBuf, u64)>,
    pub metrics_listen: SocketAddr,
    pub http: HttpSettings,
    pub drain: Drain,
    pub sink: SinkSettings,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// How the webhook listener stops: `delay` serving with /readyz at 503
/// (so load balancers notice), then at most `timeout` for in-flight
/// requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub delay: Duration,
    pub timeout: Duration,
}

/// What the webhook handler needs.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub path: String,
    pub max_body_bytes: usize,
    pub publish_timeout: Duration,
    /// How long after start-up a webhook waits for the broker.
    pub startup_timeout: Duration,
    /// Whole seconds, at least 1.
    pub retry_after_secs: u64,
    pub max_in_flight: usize,
    /// Bodies read before their request is authenticated (HMAC only).
    pub max_unauthenticated_in_flight: usize,
    pub limits: Limits,
    /// Where refused-but-readable requests go, if anywhere.
    pub dead_letter: Option<DeadLetter>,
    pub rules: Rules,
    pub template: TopicTemplate,
    /// Who may send webhooks; the default lets everyone in.
    pub guard: Guard,
}

/// Limits against slow and greedy clients on the webhook listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    /// Also bodies that are not JSON (400), not only invalid envelopes (422).
    pub malformed: bool,
    /// Most dead letters waiting to be published.
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub enum SinkSettings {
    Stdout,
    Nats(Box<NatsSettings>),
    Kafka(Box<KafkaSettings>),
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// A topic the template produces, when one is known in advance: the
    /// readiness probe asks for its metadata rather than for every topic in
    /// the cluster.
    pub probe_topic: Option<String>,
    pub options: Vec<KafkaOption>,
    pub create_topics: Option<TopicCreation>,
    pub publish_timeout: Duration,
}

/// One `--kafka-option`. The value may be a password, so it is a [`Secret`].
#[derive(Debug, Clone)]
pub struct KafkaOption {
    pub key: String,
    pub value: Secret,
}

#[derive(Debug, Clone)]
pub struct TopicCreation {
    pub topics: Vec<String>,
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub jetstream: bool,
    /// The stream `--nats-stream` creates, if asked.
    pub stream: Option<StreamSettings>,
    pub auth: NatsAuth,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub publish_timeout: Duration,
}

/// A JetStream stream the bridge creates when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    /// The template's subject filter first, then the dead-letter subject
    /// when the filter does not already capture it.
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    CredsFile(PathBuf),
    NkeySeed(Secret),
    Token(Secret),
    UserPassword { user: String, password: Secret },
}

impl Settings {
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        if !cli.path.starts_with('/') {
            return Err(ConfigError::new("--path", "must start with '/'"));
        }
        if cli.max_body_bytes == 0 {
            return Err(ConfigError::new("--max-body-bytes", "must be at least 1"));
        }
        if cli.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be at least 1"));
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if cli.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "--max-header-bytes",
                "must be at least 8192",
            ));
        }
        for (flag, value) in [
            ("--header-read-timeout", cli.header_read_timeout),
            ("--body-read-timeout", cli.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        if cli.max_in_flight == 0 {
            return Err(ConfigError::new("--max-in-flight", "must be at least 1"));
        }
        if cli.max_unauthenticated_in_flight == 0 {
            return Err(ConfigError::new(
                "--max-unauthenticated-in-flight",
                "must be at least 1",
            ));
        }
        if cli.publish_timeout.is_zero() {
            return Err(ConfigError::new("--publish-timeout", "must be more than 0"));
        }
        let template =
            TopicTemplate::parse(&cli.topic_template, &cli.topic_prefix).map_err(|e| {
                // A template that works with the default prefix is failed by the prefix.
                let flag = if TopicTemplate::parse(&cli.topic_template, "apizee").is_ok() {
                    "--topic-prefix"
                } else {
                    "--topic-template"
                };
                ConfigError::new(flag, e.to_string())
            })?;
        let guard = guard_from_cli(&cli)?;
        let dead_letter = match (cli.dead_letter_topic.clone(), cli.dead_letter_malformed) {
            (Some(_), _) if cli.dead_letter_queue == 0 => {
                return Err(ConfigError::new(
                    "--dead-letter-queue",
                    "must be at least 1",
                ));
            }
            (Some(topic), malformed) if is_valid_topic(&topic) => Some(DeadLetter {
                topic,
                malformed,
                queue: cli.dead_letter_queue,
            }),
            (Some(topic), _) => {
                return Err(ConfigError::new(
                    "--dead-letter-topic",
                    format!(
                        "{topic:?} is not a valid topic: use ASCII letters, digits, '-', '_' \
                         and '.' between non-empty parts"
                    ),
                ));
            }
            (None, true) => {
                return Err(ConfigError::new(
                    "--dead-letter-malformed",
                    "needs --dead-letter-topic",
                ));
            }
            (None, false) => None,
        };
        let dead_letter_topic = dead_letter.as_ref().map(|d| d.topic.as_str());
        let sink = match cli.sink {
            SinkKind::Stdout => SinkSettings::Stdout,
            SinkKind::Nats => SinkSettings::Nats(Box::new(NatsSettings {
                urls: cli
                    .nats_url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
                jetstream: cli.nats_jetstream,
                stream: match cli.nats_stream {
                    None => None,
                    Some(_) if !cli.nats_jetstream => {
                        return Err(ConfigError::new(
                            "--nats-stream",
                            "needs --nats-jetstream: only JetStream publishes are stored",
                        ));
                    }
                    Some(name) => Some(StreamSettings {
                        subjects: stream_subjects(&template, dead_letter_topic)?,
                        name,
                    }),
                },
                auth: nats_auth(
                    cli.nats_creds_file,
                    cli.nats_nkey_seed,
                    cli.nats_token,
                    cli.nats_user,
                    cli.nats_password,
                )?,
                ca_file: cli.nats_ca_file,
                client_cert: match (cli.nats_client_cert, cli.nats_client_key) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (Some(_), None) => {
                        return Err(ConfigError::new(
                            "--nats-client-cert",
                            "needs --nats-client-key",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::new(
                            "--nats-client-key",
                            "needs --nats-client-cert",
                        ));
                    }
                },
                publish_timeout: cli.publish_timeout,
            })),
            SinkKind::Kafka => SinkSettings::Kafka(Box::new(kafka_settings(
                &cli,
                &template,
                dead_letter_topic,
            )?)),
        };
        if let SinkSettings::Nats(nats) = &sink
            && nats.urls.is_empty()
        {
            return Err(ConfigError::new("--nats-url", "names no server"));
        }
        if cli.spool_dir.is_some() && cli.spool_max_bytes == 0 {
            return Err(ConfigError::new("--spool-max-bytes", "must be at least 1"));
        }
        // Last: the only check that reads files.
        let tls = tls_settings(
            cli.tls_cert,
            cli.tls_key,
            cli.tls_client_ca,
            cli.tls_reload_interval,
        )?;
        Ok(Settings {
            spool: cli.spool_dir.map(|dir| (dir, cli.spool_max_bytes)),
            listen: cli.listen,
            tls,
            metrics_listen: cli.metrics_listen,
            http: HttpSettings {
                path: cli.path,
                max_body_bytes: cli.max_body_bytes,
                publish_timeout: cli.publish_timeout,
                startup_timeout: cli.startup_timeout,
                retry_after_secs: cli.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                max_in_flight: cli.max_in_flight,
                max_unauthenticated_in_flight: cli.max_unauthenticated_in_flight,
                limits: Limits {
                    max_connections: cli.max_connections,
                    max_header_bytes: cli.max_header_bytes,
                    header_read_timeout: cli.header_read_timeout,
                    body_read_timeout: cli.body_read_timeout,
                },
                dead_letter,
                rules: Rules {
                    strict: cli.strict,
                    object_id_in_topic: template.uses_object_id(),
                },
                template,
                guard,
            },
            drain: Drain {
                delay: cli.drain_delay,
                timeout: cli.shutdown_timeout,
            },
            sink,
            log_format: cli.log_format,
            log_level: cli.log_level,
        })
    }
}

fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    reload_interval: Duration,
) -> Result<Option<TlsSettings>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_some() => {
            return Err(ConfigError::new(
                "--tls-client-ca",
                "needs --tls-cert and --tls-key: client certificates are only asked for over TLS",
            ));
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--tls-cert",
                "needs --tls-key: give the certificate's private key (PEM) too",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--tls-key",
                "needs --tls-cert: give the certificate chain (PEM) the key belongs to",
            ));
        }
    };
    if reload_interval.is_zero() {
        return Err(ConfigError::new(
            "--tls-reload-interval",
            "must be more than 0",
        ));
    }
    let files = TlsFiles {
        cert,
        key,
        client_ca,
    };
    TlsSettings::load(files, reload_interval)
        .map(Some)
        .map_err(|e| ConfigError::new(e.flag, e.to_string()))
}

fn kafka_settings(
    cli: &Cli,
    template: &TopicTemplate,
    dead_letter_topic: Option<&str>,
) -> Result<KafkaSettings, ConfigError> {
    let brokers = &cli.kafka_brokers;
    let (partitions, replication_factor) = (cli.kafka_partitions, cli.kafka_replication_factor);
    if brokers.split(',').all(|b| b.trim().is_empty()) {
        return Err(ConfigError::new("--kafka-brokers", "names no broker"));
    }
    let options = cli
        .kafka_option
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|option| match option.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(KafkaOption {
                key: key.trim().to_owned(),
                value: Secret::new(value.to_owned()),
            }),
            // The text may hold a password: name the flag, not the value.
            _ => Err(ConfigError::new(
                "--kafka-option",
                "expected KEY=VALUE, such as security.protocol=SASL_SSL",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let create_topics = if cli.kafka_create_topics {
        if partitions < 1 {
            return Err(ConfigError::new("--kafka-partitions", "must be at least 1"));
        }
        if replication_factor < 1 {
            return Err(ConfigError::new(
                "--kafka-replication-factor",
                "must be at least 1",
            ));
        }
        let mut topics = template.all_topics().ok_or_else(|| {
            ConfigError::new(
                "--kafka-create-topics",
                format!(
                    "the topic template {template} uses {{objectId}}, so its topics cannot be \
                     known in advance"
                ),
            )
        })?;
        // Dead letters are lost on a cluster that does not create topics on
        // demand unless their topic is made with the others.
        if let Some(dead_letter) = dead_letter_topic
            && !topics.iter().any(|t| t == dead_letter)
        {
            topics.push(dead_letter.to_owned());
        }
        Some(TopicCreation {
            topics,
            partitions,
            replication_factor,
        })
    } else {
        None
    };
    Ok(KafkaSettings {
        probe_topic: template
            .all_topics()
            .and_then(|topics| topics.into_iter().next()),
        brokers: brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect::<Vec<_>>()
            .join(","),
        options,
        create_topics,
        publish_timeout: cli.publish_timeout,
    })
}

/// The template's subject filter, and the dead-letter subject when the
/// filter does not capture it already (a stream refuses overlapping
/// subjects).
fn stream_subjects(
    template: &TopicTemplate,
    dead_letter_topic: Option<&str>,
) -> Result<Vec<String>, ConfigError> {
    let filter = template.subject_filter().ok_or_else(|| {
        ConfigError::new(
            "--nats-stream",
            format!(
                "the topic template {template} does not start with a fixed token, so no \
                 stream subject can cover it without capturing every subject"
            ),
        )
    })?;
    let mut subjects = vec![filter];
    if let Some(dead_letter) = dead_letter_topic
        && !subject_matches(&subjects[0], dead_letter)
    {
        subjects.push(dead_letter.to_owned());
    }
    Ok(subjects)
}

fn guard_from_cli(cli: &Cli) -> Result<Guard, ConfigError> {
    let shared_secret = shared_secret_from_cli(
        cli.auth_header.as_deref(),
        &cli.auth_token,
        cli.auth_token_file.as_deref(),
    )?;

    let basic_pairs = secrets_from_cli(
        "--basic-auth-file",
        "USER:PASSWORD line",
        &cli.basic_auth,
        cli.basic_auth_file.as_deref(),
    )?;
    let basic = if basic_pairs.is_empty() {
        None
    } else {
        let flag = if cli.basic_auth_file.is_some() {
            "--basic-auth-file"
        } else {
            "--basic-auth"
        };
        if shared_secret
            .as_ref()
            .is_some_and(|s| s.header() == http::header::AUTHORIZATION)
        {
            return Err(ConfigError::new(
                flag,
                "cannot be combined with --auth-header Authorization: both need the \
                 Authorization header; name another header for the shared secret",
            ));
        }
        Some(BasicAuth::new(&basic_pairs).map_err(|e| ConfigError::new(flag, e.to_string()))?)
    };

    let hmac_keys = secrets_from_cli(
        "--hmac-secret-file",
        "key",
        &cli.hmac_secret,
        cli.hmac_secret_file.as_deref(),
    )?;
    let signature = if hmac_keys.is_empty() {
        if cli.hmac_timestamp_header.is_some() {
            return Err(ConfigError::new(
                "--hmac-timestamp-header",
                "needs a key: set --hmac-secret or --hmac-secret-file",
            ));
        }
        None
    } else {
        let header = header_name("--hmac-header", &cli.hmac_header)?;
        let timestamp = match &cli.hmac_timestamp_header {
            Some(name) => {
                if cli.hmac_tolerance.is_zero() {
                    return Err(ConfigError::new("--hmac-tolerance", "must be more than 0"));
                }
                Some((
                    header_name("--hmac-timestamp-header", name)?,
                    cli.hmac_tolerance,
                ))
            }
            None => None,
        };
        Some(Signature::new(
            header,
            cli.hmac_encoding,
            &hmac_keys,
            timestamp,
        ))
    };

    let allow = cidrs("--allow-cidr", &cli.allow_cidr)?;
    let trusted_proxies = cidrs("--trusted-proxy", &cli.trusted_proxy)?;
    let source = match (allow.is_empty(), trusted_proxies.is_empty()) {
        (true, true) => None,
        (true, false) => {
            return Err(ConfigError::new(
                "--trusted-proxy",
                "only takes effect with --allow-cidr: add the client ranges to accept",
            ));
        }
        (false, _) => Some(SourceFilter::new(allow, trusted_proxies)),
    };

    let user_agent = match cli.require_user_agent.as_deref() {
        None => None,
        Some("") => {
            return Err(ConfigError::new(
                "--require-user-agent",
                "is empty, which every request matches: give the expected text, such as \
                 \"Cloud Apizee\"",
            ));
        }
        Some(text) => Some(text.to_owned()),
    };

    Ok(Guard {
        source,
        user_agent,
        shared_secret,
        basic,
        signature,
    })
}

fn header_name(flag: &'static str, name: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::new(flag, format!("{name:?} is not a valid HTTP header name")))
}

fn cidrs(flag: &'static str, values: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<Cidr>()
                .map_err(|e| ConfigError::new(flag, e.to_string()))
        })
        .collect()
}

/// Secrets from a repeatable flag plus a file of one per line. An empty or
/// commented-out file is an error: it must not silently turn a check off.
fn secrets_from_cli(
    file_flag: &'static str,
    entry: &str,
    values: &[String],
    file: Option<&std::path::Path>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut secrets: Vec<Secret> = values
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new(t.clone()))
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(file_flag, format!("cannot read {}: {e}", path.display()))
        })?;
        let before = secrets.len();
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| Secret::new(l.to_owned())),
        );
        if secrets.len() == before {
            return Err(ConfigError::new(
                file_flag,
                format!("{} holds no {entry}", path.display()),
            ));
        }
    }
    Ok(secrets)
}

fn shared_secret_from_cli(
    header: Option<&str>,
    tokens: &[String],
    token_file: Option<&std::path::Path>,
) -> Result<Option<SharedSecret>, ConfigError> {
    let secrets = secrets_from_cli("--auth-token-file", "token", tokens, token_file)?;
    match (header, secrets.is_empty()) {
        (None, true) => Ok(None),
        (None, false) => Err(ConfigError::new(
            "--auth-header",
            "is required with --auth-token or --auth-token-file: name the header that carries the secret",
        )),
        (Some(_), true) => Err(ConfigError::new(
            "--auth-token",
            "no token given for --auth-header: set --auth-token or --auth-token-file",
        )),
        (Some(name), false) => SharedSecret::new(name, secrets)
            .map(Some)
            .map_err(|e| ConfigError::new("--auth-header", e.to_string())),
    }
}

fn nats_auth(
    creds_file: Option<PathBuf>,
    nkey_seed: Option<String>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Result<NatsAuth, ConfigError> {
    let mut chosen = [
        ("--nats-creds-file", creds_file.is_some()),
        ("--nats-nkey-seed", nkey_seed.is_some()),
        ("--nats-token", token.is_some()),
        ("--nats-user", user.is_some()),
        ("--nats-password", user.is_none() && password.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag));
    // Name a flag that was actually given, not one the user never set.
    if let (Some(first), Some(_)) = (chosen.next(), chosen.next()) {
        return Err(ConfigError::new(
            first,
            "choose one NATS authentication: --nats-creds-file, --nats-nkey-seed, \
             --nats-token, or --nats-user with --nats-password",
        ));
    }
    Ok(match (creds_file, nkey_seed, token, user, password) {
        (Some(path), ..) => NatsAuth::CredsFile(path),
        (_, Some(seed), ..) => NatsAuth::NkeySeed(Secret::new(seed)),
        (_, _, Some(token), ..) => NatsAuth::Token(Secret::new(token)),
        (_, _, _, Some(user), Some(password)) => NatsAuth::UserPassword {
            user,
            password: Secret::new(password),
        },
        (_, _, _, Some(_), None) => {
            return Err(ConfigError::new("--nats-user", "needs --nats-password"));
        }
        (_, _, _, None, Some(_)) => {
            return Err(ConfigError::new("--nats-password", "needs --nats-user"));
        }
        (None, None, None, None, None) => NatsAuth::None,
    })
}

#[cfg(test)]
mod tests;
