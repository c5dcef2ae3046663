//! The Prometheus and Grafana files in deploy/: promtool accepts the rules and
//! their unit tests, every metric they query is one a live bridge exports,
//! and a real Prometheus server scrapes the bridge, loads the alerts,
//! evaluates them without error and answers every dashboard query with data.
//!
//! Needs `promtool` and `prometheus` (Debian's prometheus package, which
//! `bash .ci/test` installs). Set `PROMTOOL` or `PROMETHEUS` to use other
//! builds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::support::process::{RUN_DEADLINE, output_within};
use crate::support::prometheus::Prometheus;
use crate::support::*;
use apizee_bridge::sink::memory::MemorySink;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yaml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/apizee-bridge.json";

/// The job name every alert selects, and the scrape job of prometheus.yml.
const JOB: &str = "apizee-bridge";
const GROUP: &str = "apizee-bridge";

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml(relative: &str) -> Yaml {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// A tool from Debian's prometheus package: `$VAR`, else the PATH.
fn promtool(args: &[&str]) {
    let output = output_within(
        Command::new(tool("promtool", "PROMTOOL", "prometheus"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        RUN_DEADLINE,
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

// ---------------------------------------------------------------------------
// The rule files, on their own

/// The Helm chart's PrometheusRule holds ALERTS' groups, read from the
/// chart's files/alerts.yaml, a link to ALERTS: the rules live in one file,
/// which promtool and a plain Prometheus read, and the operator's object
/// (in the chart and in every Kustomize target rendered from it) is made
/// from it, never edited by hand.
#[test]
fn the_prometheus_rule_holds_the_alert_rules_and_promtool_accepts_them() {
    let rendered =
        crate::support::helm::template(&[], &["--show-only", "templates/prometheusrule.yaml"]);
    let rule =
        crate::support::kubernetes::parse_docs(&rendered, "the chart's PrometheusRule").remove(0);
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        yaml(ALERTS)["groups"],
        "the chart's PrometheusRule does not hold {ALERTS}'s groups"
    );
    // What the operator hands Prometheus is spec, a rule file of its own.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    promtool(&["check", "rules", rules.to_str().unwrap()]);
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_example_config() {
    promtool(&["check", "rules", ALERTS]);
    promtool(&["test", "rules", ALERTS_TEST]);
    // Also loads alerts.yaml through rule_files, relative to the config.
    promtool(&["check", "config", PROMETHEUS_CONFIG]);
}

/// Every alerting rule of alerts.yaml, as YAML mappings.
fn alert_rules() -> Vec<Yaml> {
    let file = yaml(ALERTS);
    let groups = file["groups"].as_sequence().expect("groups");
    assert_eq!(groups.len(), 1, "{ALERTS}: one group");
    assert_eq!(groups[0]["name"].as_str(), Some(GROUP));
    let rules: Vec<Yaml> = groups[0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter(|rule| rule.get("alert").is_some())
        .cloned()
        .collect();
    assert!(!rules.is_empty(), "{ALERTS} has no alerts");
    rules
}

fn alert_names() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .map(|rule| rule["alert"].as_str().expect("alert name").to_owned())
        .collect()
}

fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| panic!("{what} is missing or empty"))
}

#[test]
fn every_alert_has_a_duration_a_severity_and_instructions() {
    let names = alert_names();
    for required in [
        "ApizeeBridgeDown",
        "ApizeeBridgeNotReady",
        "ApizeeBridgePublishFailures",
        "ApizeeBridgeHighRejectionRate",
        "ApizeeBridgeHigh5xxRate",
        "ApizeeBridgeHighLatency",
        "ApizeeBridgeUnknownEnumValues",
    ] {
        assert!(names.contains(required), "{ALERTS} lacks {required}");
    }
    for rule in alert_rules() {
        let name = text(&rule["alert"], "alert");
        text(&rule["for"], &format!("{name}: for"));
        let severity = text(&rule["labels"]["severity"], &format!("{name}: severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        text(&rule["annotations"]["summary"], &format!("{name}: summary"));
        let description = text(
            &rule["annotations"]["description"],
            &format!("{name}: description"),
        );
        assert!(
            description.len() > 100,
            "{name}: the description should tell the operator what to do"
        );
    }
}

/// The `{...}` label matchers of an expression, in order.
fn selectors(expr: &str) -> Vec<&str> {
    expr.split('{')
        .skip(1)
        .map(|rest| rest.split('}').next().unwrap_or(rest))
        .collect()
}

#[test]
fn every_alert_selector_names_the_job() {
    let matcher = format!(r#"job="{JOB}""#);
    for rule in alert_rules() {
        let name = text(&rule["alert"], "alert");
        let expr = text(&rule["expr"], &format!("{name}: expr"));
        let selectors = selectors(expr);
        assert!(!selectors.is_empty(), "{name}: no selector in {expr}");
        for selector in selectors {
            assert!(
                selector.contains(&matcher),
                "{name}: selector {{{selector}}} lacks {matcher}"
            );
        }
        for metric in metric_names(expr) {
            assert!(
                expr.contains(&format!("{metric}{{")),
                "{name}: {metric} is used without the job selector"
            );
        }
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = yaml(ALERTS_TEST);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = text(&check["alertname"], "alertname").to_owned();
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for name in alert_names() {
        assert!(fires.contains(&name), "{ALERTS_TEST}: no case fires {name}");
        assert!(
            quiet.contains(&name),
            "{ALERTS_TEST}: no case where {name} stays quiet"
        );
    }
}

// ---------------------------------------------------------------------------
// The dashboard, on its own

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(panels: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(panel title, expr)` of every panel query.
fn dashboard_exprs(dashboard: &Json) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
                    (title.clone(), expr.to_owned())
                })
        })
        .collect()
}

/// The queries of the dashboard's variables (Grafana's `label_values(...)`).
fn variable_queries(dashboard: &Json) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|variable| variable["type"] == "query")
        .flat_map(|variable| {
            [
                &variable["definition"],
                &variable["query"]["query"],
                &variable["query"],
            ]
            .into_iter()
            .filter_map(|q| q.as_str().map(str::to_owned))
        })
        .collect()
}

#[test]
fn dashboard_has_the_variables_and_panels_asked_for() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["job", "instance"] {
        assert_eq!(variable(name)["type"], "query");
        assert_eq!(variable(name)["datasource"]["uid"], "${datasource}");
    }

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }

    let exprs = dashboard_exprs(&dashboard);
    for (title, expr) in &exprs {
        for metric in metric_names(expr) {
            assert!(
                expr.contains(&format!("{metric}{{")),
                "{title}: {metric} without a selector"
            );
        }
        for selector in selectors(expr) {
            for matcher in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                assert!(
                    selector.contains(matcher),
                    "{title}: selector {{{selector}}} lacks {matcher}"
                );
            }
        }
    }
    let used: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for wanted in [
        "apizee_bridge_webhooks_received_total",
        "apizee_bridge_http_requests_total",
        "apizee_bridge_rejections_total",
        "apizee_bridge_publishes_total",
        "apizee_bridge_publish_duration_seconds_bucket",
        "apizee_bridge_request_duration_seconds_bucket",
        "apizee_bridge_requests_in_flight",
        "apizee_bridge_broker_connected",
        "apizee_bridge_unknown_enum_values_total",
        "apizee_bridge_kafka_queue_messages",
        "apizee_bridge_kafka_delivery_errors_total",
        "apizee_bridge_max_in_flight",
        "apizee_bridge_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

// ---------------------------------------------------------------------------
// Metric names against a live bridge

/// The prefixes of the metric names the bridge exports: its own, and the
/// standard process metrics every Prometheus client names alike.
const PREFIXES: [&str; 2] = ["apizee_bridge_", "process_"];

/// Every metric identifier (`apizee_bridge_*`, `process_*`) in a PromQL
/// expression (or any text), in order of first use. Identifiers are whole
/// words: neither `my_apizee_bridge_x` nor `apizee_bridge_process_x`'s
/// `process_x` is one.
fn metric_names(text: &str) -> Vec<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    for word in text.split(|c: char| !is_word(c)) {
        let name: String = word
            .chars()
            .take_while(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            .collect();
        let named = PREFIXES
            .iter()
            .any(|prefix| name.len() > prefix.len() && name.starts_with(prefix));
        if named && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[test]
fn metric_names_are_whole_promql_identifiers() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(apizee_bridge_request_duration_seconds_bucket{job="x"}[5m])))
               / apizee_bridge_up_total + my_apizee_bridge_other + apizee_bridge_up_total"#
        ),
        [
            "apizee_bridge_request_duration_seconds_bucket",
            "apizee_bridge_up_total"
        ]
    );
    assert_eq!(
        metric_names(
            "rate(process_cpu_seconds_total{job=\"x\"}[5m]) + apizee_bridge_process_threads + process_"
        ),
        ["process_cpu_seconds_total", "apizee_bridge_process_threads"]
    );
    assert!(metric_names("sum(rate(up[5m])) apizee_bridge_ the process is down").is_empty());
}

/// What a scrape exports: the name of every sample line, and every metric
/// family with its type.
#[derive(Default)]
struct Exported {
    samples: BTreeSet<String>,
    families: BTreeMap<String, String>,
}

impl Exported {
    fn add(&mut self, exposition: &str) {
        for line in exposition.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                let mut words = family.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    self.families.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or(line);
                self.samples.insert(name.to_owned());
            }
        }
    }

    /// The metric family of a name a query uses: the name itself, or a
    /// histogram's name under its `_bucket`, `_sum` or `_count` series.
    fn family_of(&self, name: &str) -> Option<&str> {
        if let Some((family, _)) = self.families.get_key_value(name) {
            return Some(family);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let (family, kind) = self.families.get_key_value(base)?;
            (kind == "histogram").then_some(family.as_str())
        })
    }
}

/// The bridge twice, as a deployment would run it: with the memory sink
/// (every metric every sink has) and with the Kafka sink against librdkafka's
/// in-process mock cluster (the Kafka-only metrics, each with its series
/// from the start).
struct Bridges {
    memory_sink: Arc<MemorySink>,
    memory: Bridge,
    kafka: Bridge,
    /// The opt-in families: TLS, the spool, auth, dead letters.
    edge: Bridge,
    _edge_files: (crate::support::tls::Pki, tempfile::TempDir),
    // Dropped last: the Kafka bridge's producer talks to it until then.
    _cluster: MockCluster<'static, DefaultProducerContext>,
}

impl Bridges {
    async fn start() -> Self {
        let memory_sink = Arc::new(MemorySink::new());
        let memory = Bridge::with_sink(settings(&[]), memory_sink.clone()).await;
        memory.wait_ready().await;
        let reply = memory.post(SPEC_TICKET).await;
        assert_eq!(reply.status, 200, "{}", reply.text());

        let cluster = MockCluster::new(1).unwrap_or_else(|e| panic!("mock cluster: {e}"));
        cluster
            .create_topic("apizee.ticket.update", 1, 1)
            .unwrap_or_else(|e| panic!("create topic: {e}"));
        let kafka = Bridge::start(&[
            "--sink",
            "kafka",
            "--kafka-brokers",
            &cluster.bootstrap_servers(),
        ])
        .await;
        kafka.wait_ready().await;
        // The Kafka series exist at 0 from the start, the error counter's
        // too (one per librdkafka code the bridge knows): no delivery is
        // needed for every panel to find its series.
        // TLS, a spool, an HMAC key and a dead-letter topic: their series
        // exist at 0 from the start.
        let pki = crate::support::tls::Pki::new("edge");
        let mut args = pki.install(&pki.server("localhost"));
        // The key from a file: the secret files' reload series exist too.
        let hmac_file = pki.path("hmac-keys");
        std::fs::write(&hmac_file, "edge-key\n").unwrap_or_else(|e| panic!("{e}"));
        args.extend(
            [
                // A signature as the only credential: the unauthenticated
                // budget, and its gauge, are in force.
                "--hmac-secret-file",
                &hmac_file.to_string_lossy(),
                "--dead-letter-topic",
                "apizee.dead-letter",
            ]
            .map(str::to_owned),
        );
        let spool_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        args.extend(
            [
                "--spool-dir",
                &spool_dir.path().to_string_lossy(),
                "--spool-max-bytes",
                "1048576",
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let edge = Bridge::with_sink(settings(&args), Arc::new(MemorySink::new())).await;
        Self {
            memory_sink,
            memory,
            kafka,
            edge,
            _edge_files: (pki, spool_dir),
            _cluster: cluster,
        }
    }

    fn instances(&self) -> [SocketAddr; 3] {
        [
            self.memory.metrics_addr,
            self.kafka.metrics_addr,
            self.edge.metrics_addr,
        ]
    }

    async fn exported(&self) -> Exported {
        let mut exported = Exported::default();
        exported.add(&self.memory.metrics().await);
        exported.add(&self.kafka.metrics().await);
        exported.add(&self.edge.metrics().await);
        exported
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() {
    let bridges = Bridges::start().await;
    let exported = bridges.exported().await;
    assert!(
        exported
            .samples
            .contains("apizee_bridge_kafka_queue_messages")
            && exported.samples.contains("apizee_bridge_build_info"),
        "the scrapes lack known metrics: {:?}",
        exported.samples
    );
    assert!(
        !exported
            .samples
            .contains("apizee_bridge_no_such_metric_total"),
        "the check could not fail"
    );

    // Queries must name series exactly as exported: a histogram only through
    // its _bucket, _sum or _count series.
    let dashboard = dashboard();
    let mut queries: Vec<(String, String)> = alert_rules()
        .iter()
        .map(|rule| {
            let name = text(&rule["alert"], "alert");
            (
                format!("alert {name}"),
                text(&rule["expr"], name).to_owned(),
            )
        })
        .collect();
    queries.extend(
        dashboard_exprs(&dashboard)
            .into_iter()
            .map(|(title, expr)| (format!("panel {title}"), expr)),
    );
    queries.extend(
        variable_queries(&dashboard)
            .into_iter()
            .map(|q| ("dashboard variable".to_owned(), q)),
    );
    let mut checked = BTreeSet::new();
    for (source, query) in &queries {
        for name in metric_names(query) {
            assert!(
                exported.samples.contains(&name),
                "{source} queries {name}, which the bridge does not export \
                 (exported: {:?})",
                exported.samples
            );
            checked.insert(name);
        }
    }
    assert!(checked.len() >= 15, "only {checked:?} were checked");

    // Annotations may name a metric family, a histogram included.
    for rule in alert_rules() {
        let name = text(&rule["alert"], "alert");
        for annotation in rule["annotations"].as_mapping().into_iter().flatten() {
            for metric in metric_names(annotation.1.as_str().unwrap_or_default()) {
                assert!(
                    exported.family_of(&metric).is_some(),
                    "{name}: an annotation mentions {metric}, which the bridge does not export"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// End to end: a real Prometheus server scraping the bridge

/// deploy/prometheus/prometheus.yml pointed at the in-process bridges, with
/// a 1 s scrape and evaluation interval and alerts.yaml by absolute path.
fn prometheus_config(targets: &[SocketAddr]) -> Yaml {
    let mut config = yaml(PROMETHEUS_CONFIG);
    let seconds = Yaml::from("1s");
    config["global"]["scrape_interval"] = seconds.clone();
    config["global"]["scrape_timeout"] = seconds.clone();
    config["global"]["evaluation_interval"] = seconds;
    config["rule_files"] = Yaml::Sequence(vec![Yaml::from(
        path(ALERTS).to_string_lossy().into_owned(),
    )]);
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let job = jobs
        .iter_mut()
        .find(|job| job["job_name"] == JOB)
        .unwrap_or_else(|| panic!("{PROMETHEUS_CONFIG} has no job_name {JOB}"));
    let targets = targets.iter().map(|a| Yaml::from(a.to_string())).collect();
    job["static_configs"][0]["targets"] = Yaml::Sequence(targets);
    config
}

/// A dashboard query with its variables replaced as Grafana would, for the
/// default selection (this job, every instance).
fn as_grafana_sends_it(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace("$job", JOB)
        .replace("$instance", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_bridge_and_evaluates_the_alerts_and_dashboard() {
    let bridges = Bridges::start().await;
    let instances = bridges.instances();
    let prometheus = Prometheus::start(&prometheus_config(&instances));

    let expected: BTreeSet<String> = instances.iter().map(ToString::to_string).collect();
    let up = async || {
        let data = prometheus.api("targets").await?;
        let up: BTreeSet<String> = data["activeTargets"]
            .as_array()?
            .iter()
            .filter(|t| t["labels"]["job"] == JOB && t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        (up == expected).then_some(())
    };
    prometheus.poll("both bridges to be scraped", up).await;

    let build_info = async || {
        let result = prometheus.query("apizee_bridge_build_info").await?;
        (result.len() == 3).then_some(result)
    };
    for series in prometheus
        .poll("apizee_bridge_build_info", build_info)
        .await
    {
        assert_eq!(series["metric"]["job"], JOB, "{series}");
        assert_eq!(
            series["metric"]["version"],
            env!("CARGO_PKG_VERSION"),
            "{series}"
        );
        for label in ["revision", "rustc"] {
            let value = series["metric"][label].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "no {label}: {series}");
        }
        assert_eq!(series["value"][1], "1", "{series}");
    }

    // Every alert loaded, and evaluated against real series without error.
    let alerts = alert_names();
    let rules = async || {
        let data = prometheus.api("rules").await?;
        let group = data["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == GROUP)?
            .clone();
        let evaluated = group["rules"]
            .as_array()?
            .iter()
            .all(|r| r["health"] != "unknown");
        evaluated.then_some(group)
    };
    let group = prometheus.poll("the alerts to be evaluated", rules).await;
    let loaded: BTreeSet<String> = group["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(loaded, alerts, "/api/v1/rules lists other alerts");
    for rule in group["rules"].as_array().into_iter().flatten() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Every dashboard query finds series: the metric names and the job and
    // instance labels match what Prometheus stored.
    for (title, expr) in dashboard_exprs(&dashboard()) {
        let promql = as_grafana_sends_it(&expr);
        let has_data = async || {
            let result = prometheus.query(&promql).await?;
            (!result.is_empty()).then_some(())
        };
        prometheus
            .poll(&format!("data for panel {title}: {promql}"), has_data)
            .await;
    }

    // The broker goes away: the alert selects the real series and goes
    // pending (it fires after `for: 2m`, too long to wait for here).
    bridges.memory_sink.set_ready(false);
    let memory_instance = bridges.memory.metrics_addr.to_string();
    let not_ready = async || {
        let data = prometheus.api("alerts").await?;
        let alerts = data["alerts"].as_array()?.clone();
        alerts
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "ApizeeBridgeNotReady"
                    && a["labels"]["instance"] == memory_instance.as_str()
            })
            .then_some(alerts)
    };
    let active = prometheus.poll("ApizeeBridgeNotReady", not_ready).await;
    for alert in &active {
        let labels = &alert["labels"];
        assert_ne!(labels["alertname"], "ApizeeBridgeDown", "{alert}");
        assert_ne!(labels["alertname"], "ApizeeBridgeAbsent", "{alert}");
        if labels["alertname"] == "ApizeeBridgeNotReady" {
            assert_eq!(labels["instance"], memory_instance.as_str(), "{alert}");
            assert_eq!(labels["job"], JOB, "{alert}");
            assert_eq!(labels["sink"], "memory", "{alert}");
            assert_eq!(labels["severity"], "critical", "{alert}");
            assert_eq!(alert["state"], "pending", "{alert}");
        }
    }
    drop(prometheus);
    bridges.memory.stop().await;
    bridges.kafka.stop().await;
}

/// Exported families that no alert and no dashboard panel reads, on
/// purpose, and why. Any other family must be watched by one of them.
const UNWATCHED: &[(&str, &str)] = &[
    (
        "process_start_time_seconds",
        "restarts show as ApizeeBridgeDown and as counter resets",
    ),
    (
        "process_virtual_memory_bytes",
        "address space, not memory use; resident memory is on the dashboard",
    ),
    ("process_threads", "fixed by the runtime's worker count"),
    (
        "apizee_bridge_auth_last_reload_success_timestamp_seconds",
        "read by hand when a rotation is in doubt; a failed reload alerts through \
         apizee_bridge_auth_reloads_total",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_family_is_watched_or_listed_as_unwatched() {
    let bridges = Bridges::start().await;
    let exported = bridges.exported().await;
    let dashboard = dashboard();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let queries = alert_rules()
        .iter()
        .map(|rule| text(&rule["expr"], "expr").to_owned())
        .chain(
            dashboard_exprs(&dashboard)
                .into_iter()
                .map(|(_, expr)| expr),
        )
        .collect::<Vec<_>>();
    for query in &queries {
        for name in metric_names(query) {
            if let Some(family) = exported.family_of(&name) {
                read.insert(family.to_owned());
            }
        }
    }
    let unwatched: Vec<&str> = exported
        .families
        .keys()
        .filter(|family| PREFIXES.iter().any(|prefix| family.starts_with(prefix)))
        .filter(|family| !read.contains(*family))
        .filter(|family| !UNWATCHED.iter().any(|(name, _)| name == family))
        .map(String::as_str)
        .collect();
    assert!(
        unwatched.is_empty(),
        "exported, but no alert or dashboard panel reads them (watch them, or list them \
         in UNWATCHED with the reason): {unwatched:?}"
    );
    for (name, _) in UNWATCHED {
        assert!(
            exported.families.contains_key(*name),
            "UNWATCHED lists {name}, which is not exported"
        );
        assert!(
            !read.contains(*name),
            "UNWATCHED lists {name}, which is watched"
        );
    }
}
