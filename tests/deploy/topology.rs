//! The compose topology, run for real on loopback: HAProxy with the repo's
//! `deploy/compose/haproxy.cfg` (addresses substituted, nothing else), two
//! bridge replicas configured from `compose.yaml`'s own environment (with
//! `BRIDGE_SINK=nats`, then `kafka`; plus a log filter that adds a debug
//! line per webhook acknowledged), nats-server with JetStream or Apache
//! Kafka, and Prometheus with the
//! compose scrape config and the repo's alert rules (scraping every second).
//!
//! Under load from 16 keep-alive senders through HAProxy, a rolling restart
//! as Kubernetes does it (SIGTERM one replica, let it drain and exit, start
//! it again, wait until HAProxy has it back, then the other) must give the
//! senders no answer but 200 and no connection error, and leave every
//! acknowledged webhook in the stream exactly once (on Kafka, at least
//! once). A webhook answered 200 that the broker lacks is named, with who
//! answered it when, HAProxy's log line for it and what the replicas logged
//! about it; the logs are kept.
//!
//! Needs `haproxy` and `prometheus` (Debian's packages; `bash .ci/test`
//! installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::compose::interpolate;
use crate::support::kafka::{KafkaCluster, header, read_all, wait_for_messages};
use crate::support::process::BridgeProcess;
use crate::support::prometheus::Prometheus;
use crate::support::*;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use rdkafka::Message as _;
use serde_yaml::Value as Yaml;
use tokio::net::TcpStream;

const COMPOSE: &str = "deploy/compose/compose.yaml";
const HAPROXY_CONFIG: &str = "deploy/compose/haproxy.cfg";
const PROMETHEUS_CONFIG: &str = "deploy/compose/prometheus/prometheus.yml";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";

/// Concurrent senders, each on its own keep-alive connection to HAProxy.
const SENDERS: usize = 16;
/// Bounds each sender's loop whatever happens to the stop flag.
const MAX_REQUESTS_PER_SENDER: usize = 100_000;
/// A sender's pause after a failed connect. Between webhooks there is none:
/// every sender has a request on its way at almost every moment, which is
/// what exposes a replica that closes a connection under one (with no drain
/// delay and no retry-on, this test sees such connection errors at every
/// rolling restart).
const PACE: Duration = Duration::from_millis(10);

/// The replicas' log filter: compose.yaml's `info`, plus the two debug
/// lines that trace each acknowledged webhook (see [`Replica::new`]).
const LOG_LEVEL: &str = "APIZEE_BRIDGE_LOG_LEVEL";
const BRIDGE_LOG_FILTER: &str =
    "info,apizee_bridge::http::handler=debug,apizee_bridge::sink::kafka=debug";

/// One thing that happened: when (from the start of the run), to whom
/// (a replica, or the test), what.
type Event = (Duration, &'static str, String);

/// What happened to each replica, and when, from the start of the run: to
/// place an answer in the rolling restart.
#[derive(Clone)]
struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Arc::default(),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn record(&self, who: &'static str, what: impl Into<String>) {
        let at = self.now();
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, who, what.into()));
    }

    fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Each replica's last event at `at`, and how long before.
    fn phase(&self, at: Duration) -> String {
        let events = self.events();
        let mut last: BTreeMap<&str, (Duration, &str)> = BTreeMap::new();
        for (when, who, what) in &events {
            if *when <= at && who.starts_with("bridge-") {
                last.insert(who, (*when, what));
            }
        }
        last.iter()
            .map(|(who, (when, what))| {
                format!("{who}: {:.3}s after \"{what}\"", (at - *when).as_secs_f64())
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Replaces `from` with `to` in `text`, which must hold it exactly once: a
/// renamed address in the file fails here rather than run something else.
fn substitute(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{file}: {from:?} once");
    text.replacen(from, to, 1)
}

/// The bridges' environment in compose.yaml (the `x-bridge` anchor both
/// replicas merge), interpolated with `vars`, the compose service names
/// replaced by loopback addresses.
fn bridge_environment(
    vars: &BTreeMap<&str, &str>,
    addresses: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    let compose: Yaml =
        serde_yaml::from_str(&read(COMPOSE)).unwrap_or_else(|e| panic!("{COMPOSE}: {e}"));
    let environment = compose["x-bridge"]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{COMPOSE}: x-bridge has no environment"));
    environment
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().unwrap_or_default().to_owned();
            let value = match value {
                Yaml::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let mut value =
                interpolate(&value, vars).unwrap_or_else(|e| panic!("{COMPOSE}: {name}: {e}"));
            if let Some(address) = addresses.get(name.as_str()) {
                value = address.clone();
            }
            (name, value)
        })
        .collect()
}

/// One replica: its ports stay the same across restarts, as a pod's name
/// and address do behind a Service.
struct Replica {
    name: &'static str,
    env: BTreeMap<String, String>,
    addr: SocketAddr,
    log: PathBuf,
    process: Option<BridgeProcess>,
    timeline: Timeline,
}

impl Replica {
    fn new(
        name: &'static str,
        base: &BTreeMap<String, String>,
        dir: &Path,
        timeline: &Timeline,
    ) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = base.clone();
        for (var, value) in [
            ("APIZEE_BRIDGE_LISTEN", addr),
            ("APIZEE_BRIDGE_METRICS_LISTEN", metrics),
        ] {
            assert!(env.contains_key(var), "{COMPOSE}: the bridges set no {var}");
            env.insert(var.into(), value.to_string());
        }
        // The one setting compose.yaml does not give: a line per webhook
        // answered 200 ("delivered", with its event id) and per Kafka
        // delivery report (with its partition and offset), so that a
        // webhook missing from the broker can be traced to the replica, and
        // the run of it, that acknowledged it.
        assert!(!env.contains_key(LOG_LEVEL), "{COMPOSE} sets {LOG_LEVEL}");
        env.insert(LOG_LEVEL.into(), BRIDGE_LOG_FILTER.into());
        Self {
            name,
            env,
            addr,
            log: dir.join(format!("{name}.log")),
            process: None,
            timeline: timeline.clone(),
        }
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.env["APIZEE_BRIDGE_METRICS_LISTEN"]
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn start(&mut self) {
        let env = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let process = BridgeProcess::spawn_with_env(env, self.addr, &self.log);
        self.timeline
            .record(self.name, format!("started (pid {})", process.id()));
        process.wait_ready().await;
        self.timeline.record(self.name, "/readyz 200");
        self.process = Some(process);
    }

    /// SIGTERM, as the kubelet sends it, and the wait for the exit.
    async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let mut process = self
            .process
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        process.signal("TERM");
        self.timeline.record(self.name, "SIGTERM");
        let status = process.wait_exit().await;
        self.timeline
            .record(self.name, format!("exited ({status})"));
        assert!(status.success(), "{} exited with {status}", self.name);
        started.elapsed()
    }
}

/// HAProxy in the foreground with its own config file, killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: SocketAddr,
    log: PathBuf,
}

impl Haproxy {
    fn start(replicas: &[&Replica], dir: &Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = read(HAPROXY_CONFIG);
        config = substitute(
            &config,
            "bind :8080",
            &format!("bind {addr}"),
            HAPROXY_CONFIG,
        );
        config = substitute(
            &config,
            "bind :8404",
            &format!("bind {stats}"),
            HAPROXY_CONFIG,
        );
        for replica in replicas {
            let name = replica.name;
            config = substitute(
                &config,
                &format!("server {name} {name}:8080"),
                &format!("server {name} {}", replica.addr),
                HAPROXY_CONFIG,
            );
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap_or_else(|e| panic!("{e}"));
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(tool("haproxy", "HAPROXY", "haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haproxy: {e}"));
        Self {
            child,
            addr,
            stats,
            log,
        }
    }

    /// Whether HAProxy's own metrics say `server` is in the pool.
    async fn is_up(&self, server: &str) -> bool {
        let Ok(reply) = get(self.stats, "/metrics").await else {
            return false;
        };
        let series =
            format!(r#"haproxy_server_status{{proxy="bridges",server="{server}",state="UP"}} 1"#);
        reply.text().lines().any(|line| line == series)
    }

    /// Requests by server and status, and how many were retried, from
    /// HAProxy's log.
    fn answers(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut answers: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let (mut retried, mut redispatched) = (0, 0);
        for (server, status, retries) in log.lines().filter_map(haproxy_fields) {
            *answers.entry((server, status)).or_default() += 1;
            if retries != "0" {
                retried += 1;
            }
            if retries.starts_with('+') {
                redispatched += 1;
            }
        }
        format!(
            "(server, status) -> requests {answers:?}, retried {retried}, redispatched {redispatched}"
        )
    }

    async fn wait_up(&self, server: &str) {
        wait_until(
            &format!("HAProxy to put {server} in the pool"),
            async || self.is_up(server).await,
        )
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- haproxy log, last lines first ---\n{}", tail.join("\n"));
        }
    }
}

/// The compose scrape config pointed at the loopback addresses, scraping
/// and evaluating every second, with the repo's rules by absolute path.
fn prometheus_config(replicas: &[&Replica], haproxy: &Haproxy, own: SocketAddr) -> Yaml {
    let mut text = read(PROMETHEUS_CONFIG);
    for replica in replicas {
        text = substitute(
            &text,
            &format!("\"{}:9090\"", replica.name),
            &format!("\"{}\"", replica.metrics_addr()),
            PROMETHEUS_CONFIG,
        );
    }
    text = substitute(
        &text,
        "\"haproxy:8404\"",
        &format!("\"{}\"", haproxy.stats),
        PROMETHEUS_CONFIG,
    );
    text = substitute(
        &text,
        "\"localhost:9090\"",
        &format!("\"{own}\""),
        PROMETHEUS_CONFIG,
    );
    let mut config: Yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let second = Yaml::from("1s");
    config["global"]["scrape_interval"] = second.clone();
    config["global"]["scrape_timeout"] = second.clone();
    config["global"]["evaluation_interval"] = second;
    config["rule_files"] = Yaml::Sequence(vec![Yaml::from(
        path(ALERTS).to_string_lossy().into_owned(),
    )]);
    config
}

/// One webhook answered 200, as its sender saw it.
struct Answer {
    /// The event id the answer gave.
    id: String,
    object_id: u64,
    sender: usize,
    /// Which of its sender's connections to HAProxy carried it (0 first),
    /// and that connection's local port (HAProxy's log shows it).
    connection: usize,
    local_port: u16,
    /// From the start of the run ([`Timeline`]).
    sent_at: Duration,
    answered_at: Duration,
    status: u16,
    /// Every response header, `name: value` joined with `; `.
    headers: String,
}

/// What the senders saw.
#[derive(Default)]
struct Tally {
    /// The webhooks answered 200.
    acknowledged: Vec<Answer>,
    /// Status codes other than 200, with the body of the first of each.
    other: BTreeMap<u16, (usize, String)>,
    /// Requests that got no answer: the connection failed or closed.
    connection_errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acknowledged.extend(other.acknowledged);
        for (status, (count, body)) in other.other {
            let entry = self.other.entry(status).or_insert((0, body));
            entry.0 += count;
        }
        self.connection_errors.extend(other.connection_errors);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A connection to `addr`, and its local port.
async fn connect(addr: SocketAddr) -> Result<(Sender, u16), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let port = stream.local_addr().map_or(0, |a| a.port());
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok((sender, port))
}

/// The trace id a webhook is sent with (in `traceparent`): its objectId in
/// hex, so that any line a bridge logs about it, and its message on the
/// broker, can be found from the objectId.
fn trace_id(object_id: u64) -> String {
    format!("{object_id:032x}")
}

/// The request line HAProxy logs for a webhook ([`send`] puts the objectId
/// in the query string, which the bridge ignores).
fn request_line(object_id: u64) -> String {
    format!("POST /webhooks?object={object_id} ")
}

/// Posts distinct webhooks on one keep-alive connection until `stop`,
/// opening a new connection only when HAProxy closes the old one. Each
/// carries its objectId in the query string (for HAProxy's log) and in its
/// trace id (for the bridges' logs).
async fn send(
    id: usize,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicCount>,
    timeline: Timeline,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    let mut connections = 0;
    let mut local_port = 0;
    for n in 0..MAX_REQUESTS_PER_SENDER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut connection = match sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => match connect(addr).await {
                Ok((sender, port)) => {
                    connections += 1;
                    local_port = port;
                    sender
                }
                Err(e) => {
                    tally.connection_errors.push(format!("connect: {e}"));
                    tokio::time::sleep(PACE).await;
                    continue;
                }
            },
        };
        let object_id = ((id + 1) * MAX_REQUESTS_PER_SENDER + n) as u64;
        let body = SPEC_TICKET.replace("\"objectId\": 100", &format!("\"objectId\": {object_id}"));
        assert_ne!(body, SPEC_TICKET, "the sample's objectId moved");
        let request = http::Request::post(format!("/webhooks?object={object_id}"))
            .header("host", "bridge.example")
            .header("content-type", "application/JSON")
            .header(
                "traceparent",
                format!("00-{}-{object_id:016x}-01", trace_id(object_id)),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|e| panic!("{e}"));
        if connection.ready().await.is_err() {
            tally
                .connection_errors
                .push("connection closed before the request".into());
            continue;
        }
        sent.add();
        let sent_at = timeline.now();
        let answer = async {
            let response = connection.send_request(request).await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| {
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
                })
                .collect::<Vec<_>>()
                .join("; ");
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, headers, body))
        };
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok((200, headers, body))) => {
                let json: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
                tally.acknowledged.push(Answer {
                    id: json["id"].as_str().unwrap_or_default().to_owned(),
                    object_id,
                    sender: id,
                    connection: connections - 1,
                    local_port,
                    sent_at,
                    answered_at: timeline.now(),
                    status: 200,
                    headers,
                });
            }
            Ok(Ok((status, _, body))) => {
                let entry = tally
                    .other
                    .entry(status)
                    .or_insert((0, String::from_utf8_lossy(&body).into_owned()));
                entry.0 += 1;
            }
            Ok(Err(e)) => tally.connection_errors.push(e.to_string()),
            Err(_) => tally.connection_errors.push("no answer within 30 s".into()),
        }
        sender = Some(connection);
    }
    tally
}

/// Requests sent so far, for waiting until load has gone through.
#[derive(Default)]
struct AtomicCount(std::sync::atomic::AtomicUsize);

impl AtomicCount {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

async fn wait_for_more_load(sent: &AtomicCount, more: usize) {
    let target = sent.get() + more;
    wait_until(&format!("{more} more webhooks sent"), async || {
        sent.get() >= target
    })
    .await;
}

/// Every message's `apizee-event-id` in `stream`, read with an ephemeral
/// pull consumer from the first message.
async fn stored_ids(nats: &NatsServer, stream: &str) -> Vec<String> {
    let js = jetstream::new(nats.client().await);
    let mut stream = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let total = stream
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream info: {e}"))
        .state
        .messages as usize;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("messages: {e}"));
    let mut ids = Vec::with_capacity(total);
    while ids.len() < total {
        let message = tokio::time::timeout(READY_DEADLINE, messages.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {total} messages read, then nothing", ids.len()))
            .unwrap_or_else(|| panic!("the consumer ended"))
            .unwrap_or_else(|e| panic!("reading the stream: {e}"));
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("apizee-event-id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        ids.push(id);
    }
    ids
}

/// The broker the replicas publish to, and how to read back what it holds.
enum Broker {
    Nats(NatsServer),
    Kafka(KafkaCluster),
}

impl Broker {
    fn sink(&self) -> &'static str {
        match self {
            Broker::Nats(_) => "nats",
            Broker::Kafka(_) => "kafka",
        }
    }

    /// Where compose.yaml's bridges find their broker, here.
    fn addresses(&self) -> BTreeMap<&'static str, String> {
        match self {
            Broker::Nats(nats) => BTreeMap::from([("APIZEE_BRIDGE_NATS_URL", nats.url())]),
            Broker::Kafka(kafka) => {
                BTreeMap::from([("APIZEE_BRIDGE_KAFKA_BROKERS", kafka.bootstrap())])
            }
        }
    }

    /// Every message stored for the ticket webhooks, of which
    /// `acknowledged` were acknowledged. On Kafka, waits until the topic
    /// holds at least that many (or [`READY_DEADLINE`] passes), then reads
    /// all it holds, whatever the count: the caller names what is missing.
    async fn stored(&self, env: &BTreeMap<String, String>, acknowledged: usize) -> Stored {
        match self {
            Broker::Nats(nats) => Stored {
                ids: stored_ids(nats, &env["APIZEE_BRIDGE_NATS_STREAM"]).await,
                at: BTreeMap::new(),
                how: "the whole stream".into(),
            },
            Broker::Kafka(kafka) => {
                let bootstrap = kafka.bootstrap();
                tokio::task::spawn_blocking(move || {
                    let topic = "apizee.ticket.update";
                    let waited = Instant::now();
                    let marks = wait_for_messages(&bootstrap, topic, acknowledged);
                    let waited = waited.elapsed();
                    let messages = read_all(&bootstrap, topic);
                    let id = |m| header(m, "apizee-event-id").unwrap_or_default().to_owned();
                    Stored {
                        ids: messages.iter().map(id).collect(),
                        at: messages
                            .iter()
                            .map(|m| ((m.partition(), m.offset()), id(m)))
                            .collect(),
                        how: format!(
                            "{topic} read to its high watermarks after waiting {waited:.1?} for \
                             {acknowledged} messages; high watermarks then {marks:?} (sum {})",
                            marks.values().sum::<i64>()
                        ),
                    }
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }
}

/// What the broker holds for the ticket webhooks.
struct Stored {
    /// The event id of every message, a duplicate as often as it is there.
    ids: Vec<String>,
    /// On Kafka, the event id at each (partition, offset).
    at: BTreeMap<(i32, i64), String>,
    /// How it was read.
    how: String,
}

/// One line of a replica's log, with the run of the replica it came from
/// (1 for the first start, 2 after the restart).
struct LogLine {
    replica: &'static str,
    run: usize,
    number: usize,
    text: String,
}

/// Every line of each replica's log (both runs append to one file).
fn replica_logs(replicas: &[&Replica]) -> Vec<LogLine> {
    let mut lines = Vec::new();
    for replica in replicas {
        let text = std::fs::read_to_string(&replica.log).unwrap_or_default();
        let mut run = 0;
        for (number, line) in text.lines().enumerate() {
            if line.contains("apizee-bridge started") {
                run += 1;
            }
            lines.push(LogLine {
                replica: replica.name,
                run,
                number: number + 1,
                text: line.to_owned(),
            });
        }
    }
    lines
}

impl LogLine {
    fn message(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(&self.text).ok()?;
        json["message"].as_str().map(str::to_owned)
    }

    fn is_warning(&self) -> bool {
        self.text.contains("\"level\":\"WARN") || self.text.contains("\"level\":\"ERROR")
    }

    fn shown(&self) -> String {
        let text: String = self.text.chars().take(600).collect();
        format!(
            "{} run {} line {}: {text}",
            self.replica, self.run, self.number
        )
    }
}

/// The replicas' warnings and errors, counted by message (the first 80
/// characters): what a run that passed still went through.
fn warnings_by_message(logs: &[LogLine]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in logs.iter().filter(|l| l.is_warning()) {
        let message = line.message().unwrap_or_default();
        *counts
            .entry(message.chars().take(80).collect())
            .or_default() += 1;
    }
    format!("{counts:?}")
}

/// HAProxy's log line for a request (`option httplog`), split in fields:
/// the server is in `backend/server`, the status two fields on, and the
/// retries last in `actconn/feconn/beconn/srv_conn/retries` five further
/// (with a `+` when redispatched). None for other lines (health checks).
fn haproxy_fields(line: &str) -> Option<(&str, &str, &str)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| f.starts_with("bridges/"))?;
    let server = fields[at].strip_prefix("bridges/")?;
    let status = fields.get(at + 2).filter(|s| s.parse::<u16>().is_ok())?;
    let retries = fields.get(at + 7)?.rsplit('/').next()?;
    Some((server, status, retries))
}

/// What the run tells about each webhook in `missing`: who answered it and
/// when in the restart, what HAProxy logged for it, what the replicas
/// logged about it (each logs a line per webhook it acknowledged, and on
/// Kafka one per delivery report, with the partition and offset), and what
/// the broker holds there; then counts that compare the three.
fn missing_report(
    missing: &[&Answer],
    stored: &Stored,
    timeline: &Timeline,
    replicas: &[&Replica],
    haproxy: &Haproxy,
) -> String {
    use std::fmt::Write as _;
    let logs = replica_logs(replicas);
    let haproxy_log = std::fs::read_to_string(&haproxy.log).unwrap_or_default();
    let mut report = String::new();
    let _ = writeln!(report, "broker: {}", stored.how);
    for answer in missing.iter().take(50) {
        let _ = writeln!(
            report,
            "- event {} (objectId {}, trace id {}): sender {}, its connection {} (local port {}); \
             sent at {:.3}s, answered {} at {:.3}s; response headers: {}",
            answer.id,
            answer.object_id,
            trace_id(answer.object_id),
            answer.sender,
            answer.connection,
            answer.local_port,
            answer.sent_at.as_secs_f64(),
            answer.status,
            answer.answered_at.as_secs_f64(),
            answer.headers,
        );
        let _ = writeln!(
            report,
            "    when sent: {}\n    when answered: {}",
            timeline.phase(answer.sent_at),
            timeline.phase(answer.answered_at)
        );
        let line = request_line(answer.object_id);
        let proxied: Vec<&str> = haproxy_log.lines().filter(|l| l.contains(&line)).collect();
        if proxied.is_empty() {
            let _ = writeln!(report, "    HAProxy logged nothing for it");
        }
        for line in proxied {
            let _ = writeln!(report, "    HAProxy: {line}");
        }
        let trace = trace_id(answer.object_id);
        let about: Vec<&LogLine> = logs
            .iter()
            .filter(|l| l.text.contains(&answer.id) || l.text.contains(&trace))
            .collect();
        if about.is_empty() {
            let _ = writeln!(report, "    no replica logged anything about it");
        }
        for line in about.iter().take(10) {
            let _ = writeln!(report, "    {}", line.shown());
            let json: serde_json::Value = serde_json::from_str(&line.text).unwrap_or_default();
            if let (Some(partition), Some(offset)) =
                (json["partition"].as_i64(), json["offset"].as_i64())
            {
                let location = (i32::try_from(partition).unwrap_or(-1), offset);
                let _ = writeln!(
                    report,
                    "      the topic holds at partition {partition} offset {offset}: {}",
                    stored.at.get(&location).map_or("nothing", String::as_str)
                );
            }
        }
    }
    if missing.len() > 50 {
        let _ = writeln!(report, "(and {} more)", missing.len() - 50);
    }

    // Who answered what, by the three accounts.
    let mut by_run: BTreeMap<(&str, usize), (usize, usize)> = BTreeMap::new();
    for line in &logs {
        let counts = by_run.entry((line.replica, line.run)).or_default();
        match line.message().as_deref() {
            Some("delivered") => counts.0 += 1,
            Some("Kafka acknowledged") => counts.1 += 1,
            _ => {}
        }
    }
    let _ = writeln!(
        report,
        "replicas' own count, (replica, run) -> (webhooks answered 200, Kafka delivery reports): \
         {by_run:?}; answered 200 in all {}",
        by_run.values().map(|c| c.0).sum::<usize>()
    );
    let _ = writeln!(report, "HAProxy's count: {}", haproxy.answers());
    let warnings: Vec<&LogLine> = logs.iter().filter(|l| l.is_warning()).collect();
    let _ = writeln!(
        report,
        "replicas' warnings and errors ({}):",
        warnings.len()
    );
    for line in warnings.iter().take(40) {
        let _ = writeln!(report, "    {}", line.shown());
    }
    let _ = writeln!(report, "timeline:");
    for (at, who, what) in timeline.events() {
        let _ = writeln!(report, "    {:8.3}s {who}: {what}", at.as_secs_f64());
    }
    report
}

/// Fails if any of the repo's alerts is pending or firing. Every rule in
/// alerts.yaml waits a minute or more (`for:`) before it fires, longer than
/// a run lasts, so "nothing firing" would hold whatever the replicas did:
/// what would fire is `pending` first. The state checked is that of a rule
/// evaluation begun after the call (the group's `lastEvaluation` changed
/// twice: the first change may be an evaluation already under way), and
/// every rule of the file must be loaded and evaluate without error, or
/// "inactive" would mean nothing either.
async fn assert_no_alert_active(prometheus: &Prometheus) {
    let alerts: Yaml = serde_yaml::from_str(&read(ALERTS)).unwrap_or_else(|e| panic!("{e}"));
    let expected: BTreeSet<String> = alerts["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_sequence().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(!expected.is_empty(), "{ALERTS}: no alert");
    // The rule groups, and when each was last evaluated.
    let groups = async || {
        let data = prometheus.api("rules?type=alert").await?;
        let groups = data["groups"].as_array()?.clone();
        let evaluated: Vec<String> = groups
            .iter()
            .map(|g| g["lastEvaluation"].as_str().unwrap_or_default().to_owned())
            .collect();
        Some((groups, evaluated))
    };
    let (mut groups_now, mut evaluated) = prometheus.poll("the alert rules", groups).await;
    for _ in 0..2 {
        let before = evaluated.clone();
        (groups_now, evaluated) = prometheus
            .poll("an evaluation of the alert rules", async || {
                let (groups, evaluated) = groups().await?;
                let all_again = evaluated.len() == before.len()
                    && evaluated.iter().zip(&before).all(|(now, then)| now != then);
                all_again.then_some((groups, evaluated))
            })
            .await;
    }
    let rules: Vec<&serde_json::Value> = groups_now
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(loaded, expected, "the alert rules Prometheus evaluates");
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(
        unhealthy.is_empty(),
        "alert rules that failed: {unhealthy:?}"
    );
    let active: Vec<String> = rules
        .iter()
        .filter(|r| r["state"] != "inactive")
        .map(|r| {
            let alerts: Vec<String> = r["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| format!("{} since {}", a["labels"], a["activeAt"]))
                .collect();
            format!("{} {}: {}", r["name"], r["state"], alerts.join(", "))
        })
        .collect();
    assert!(
        active.is_empty(),
        "alerts pending or firing (every rule has a `for:` longer than this run, so a firing \
         one shows as pending first): {active:?}"
    );
}

/// Starts the topology on `broker`, restarts the replicas one after the
/// other under load, and checks what the senders saw against what the
/// broker holds. JetStream stores a retried webhook once (Nats-Msg-Id);
/// Kafka may hold it twice (consumers deduplicate on apizee-event-id), so
/// there only "none missing" is required.
async fn rolling_restart(broker: Broker) {
    // One topology at a time: two would share the machine's two cores.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let timeline = Timeline::new();
    let vars = BTreeMap::from([("BRIDGE_SINK", broker.sink())]);
    let env = bridge_environment(&vars, &broker.addresses());
    assert_eq!(env["APIZEE_BRIDGE_SINK"], broker.sink());

    let mut first = Replica::new("bridge-1", &env, dir.path(), &timeline);
    let mut second = Replica::new("bridge-2", &env, dir.path(), &timeline);
    first.start().await;
    second.start().await;
    let haproxy = Haproxy::start(&[&first, &second], dir.path());
    for name in ["bridge-1", "bridge-2"] {
        haproxy.wait_up(name).await;
        timeline.record(name, "HAProxy has it UP");
    }
    let prometheus_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prometheus = Prometheus::start_on(
        &prometheus_config(&[&first, &second], &haproxy, prometheus_addr),
        prometheus_addr,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicCount::default());
    let senders: Vec<_> = (0..SENDERS)
        .map(|id| {
            let (stop, sent, timeline) = (stop.clone(), sent.clone(), timeline.clone());
            tokio::spawn(send(id, haproxy.addr, stop, sent, timeline))
        })
        .collect();
    timeline.record("test", "load started");
    wait_for_more_load(&sent, 200).await;

    let mut drains = Vec::new();
    for replica in [&mut first, &mut second] {
        let name = replica.name;
        drains.push((name, replica.stop().await));
        replica.start().await;
        haproxy.wait_up(name).await;
        timeline.record(name, "HAProxy has it UP");
        wait_for_more_load(&sent, 200).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for sender in senders {
        tally.merge(sender.await.unwrap_or_else(|e| panic!("{e}")));
    }
    timeline.record("test", "load stopped");

    let stored = broker.stored(&env, tally.acknowledged.len()).await;
    let stored_set: BTreeSet<&str> = stored.ids.iter().map(String::as_str).collect();
    let acknowledged: BTreeSet<&str> = tally.acknowledged.iter().map(|a| a.id.as_str()).collect();
    let missing: Vec<&Answer> = tally
        .acknowledged
        .iter()
        .filter(|a| !stored_set.contains(a.id.as_str()))
        .collect();
    let twice = stored.ids.len() - stored_set.len();
    println!(
        "{}: rolling restart through HAProxy, {SENDERS} keep-alive senders: sent {}, answered 200 {}, \
         other answers {:?}, connection errors {}, stored {}, missing {}, \
         stored twice {twice}; drain and exit took {drains:?}; HAProxy: {}; the replicas' \
         warnings and errors: {}",
        broker.sink(),
        sent.get(),
        tally.acknowledged.len(),
        tally
            .other
            .iter()
            .map(|(status, (count, _))| (*status, *count))
            .collect::<Vec<_>>(),
        tally.connection_errors.len(),
        stored.ids.len(),
        missing.len(),
        haproxy.answers(),
        warnings_by_message(&replica_logs(&[&first, &second])),
    );
    if !missing.is_empty() {
        let report = missing_report(&missing, &stored, &timeline, &[&first, &second], &haproxy);
        // The replicas' and HAProxy's logs, for a look at all of them.
        let kept = dir.keep();
        panic!(
            "{} acknowledged webhooks missing from the broker (answered 200 through HAProxy, \
             not stored); logs kept in {}\n{report}",
            missing.len(),
            kept.display()
        );
    }
    assert!(
        tally.other.is_empty(),
        "answers other than 200: {:?}",
        tally.other
    );
    assert!(
        tally.connection_errors.is_empty(),
        "requests without an answer: {:?}",
        tally.connection_errors
    );
    assert_eq!(
        acknowledged.len(),
        tally.acknowledged.len(),
        "an id acknowledged twice"
    );
    assert_eq!(
        stored_set.len(),
        acknowledged.len(),
        "stored but never acknowledged"
    );
    if let Broker::Nats(_) = broker {
        assert_eq!(twice, 0, "webhooks stored twice in the stream");
    }

    // Prometheus sees both replicas again, and nothing fires.
    let instances: BTreeSet<String> = [&first, &second]
        .iter()
        .map(|r| r.metrics_addr().to_string())
        .collect();
    let both_up = async || {
        let result = prometheus.query(r#"up{job="apizee-bridge"} == 1"#).await?;
        let up: BTreeSet<String> = result
            .iter()
            .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_owned))
            .collect();
        (up == instances).then_some(())
    };
    prometheus.poll("both replicas to be up", both_up).await;
    assert_no_alert_active(&prometheus).await;

    for replica in [&mut first, &mut second] {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_loses_and_refuses_nothing_with_nats() {
    rolling_restart(Broker::Nats(NatsServer::start(true).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_loses_and_refuses_nothing_with_kafka() {
    rolling_restart(Broker::Kafka(KafkaCluster::single().await)).await;
}
