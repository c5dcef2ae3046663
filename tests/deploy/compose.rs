//! Cross-checks of the compose stack in deploy/compose/ (compose.yaml,
//! haproxy.cfg, Prometheus and Grafana provisioning): what no run here
//! shows (Docker's own engine and images are not on this machine). What a
//! run shows is run instead: tests/deploy/image.rs builds and runs the Dockerfile
//! with podman (and lists the build context each ignore file leaves),
//! tests/deploy/topology.rs runs haproxy.cfg, the bridges' environment and the
//! Prometheus config.
//!
//! The files are parsed and cross-checked
//! against the binary's own flags (`Cli`, `Settings`), so a renamed flag, a
//! port that does not match, a replica missing from the load balancer or from
//! Prometheus, or a mounted file that does not exist fails here. Where the
//! real tools are installed `haproxy -c` and `promtool check config` run on
//! the files too (`apt-get install haproxy prometheus`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::compose::interpolate;
use crate::support::process::{RUN_DEADLINE, output_within};
use crate::support::tool;
use apizee_bridge::commands::Cli;
use apizee_bridge::settings::Settings;
use apizee_bridge::sink::SinkSettings;
use clap::builder::{BoolValueParser, TypedValueParser};
use clap::{ArgAction, CommandFactory, FromArgMatches};
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE: &str = "deploy/compose/compose.yaml";
const DOCKERFILE: &str = "deploy/docker/Dockerfile";
const HAPROXY_CFG: &str = "deploy/compose/haproxy.cfg";
/// Where the haproxy image reads its configuration.
const HAPROXY_IMAGE_CFG: &str = "/usr/local/etc/haproxy/haproxy.cfg";

/// The variable compose.yaml reads to choose the replicas' sink, with every
/// value it documents and the sink each must give; `None` is "unset".
const SINK_CHOICES: &[(Option<&str>, Sink)] = &[
    (None, Sink::Kafka),
    (Some("kafka"), Sink::Kafka),
    (Some("nats"), Sink::Nats),
];
const SINK_VARIABLE: &str = "BRIDGE_SINK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Kafka,
    Nats,
}

// --- helpers: files -----------------------------------------------------------

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// `base` joined with `relative`, with `.` and `..` folded away (the path need
/// not exist).
fn normalize(base: &Path, relative: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(relative).components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn compose_dir() -> PathBuf {
    root().join("deploy/compose")
}

/// A path in the repository, relative to the compose file's folder, as
/// compose resolves it; panics if it leaves the repository.
fn from_compose_dir(relative: &str) -> PathBuf {
    let path = normalize(&compose_dir(), relative);
    assert!(
        path.starts_with(root()),
        "{COMPOSE}: {relative} points outside the repository ({})",
        path.display()
    );
    path
}

fn repo_relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Runs a checking tool (it reads files and exits): stdout and stderr
/// together, and whether it exited 0.
fn run_tool(program: &Path, args: &[&OsStr]) -> (bool, String) {
    let output = output_within(Command::new(program).args(args), RUN_DEADLINE);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// --- helpers: the binary's flags ------------------------------------------------

/// What the binary makes of this environment: the variables are turned into
/// the flags they stand for (the same value parsers apply), parsed by the
/// binary's own `Cli` with env lookup switched off (so that APIZEE_BRIDGE_*
/// variables of the process running the test play no part), then validated
/// by `Settings::from_args`, exactly as at start-up. Panics with the message
/// the bridge would exit 2 with.
fn settings_from_env(what: &str, env: &BTreeMap<String, String>) -> Settings {
    let mut reference = Cli::command();
    // Finalized, as for parsing, so that a value parser can describe its arg.
    reference.build();
    let mut args = vec!["apizee-bridge".to_owned()];
    for (key, value) in env {
        let arg = reference
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(key)))
            .unwrap_or_else(|| {
                panic!("{what}: {key} is not an environment variable of apizee-bridge (see --help)")
            });
        let long = arg
            .get_long()
            .expect("a flag with an env var has a long name");
        match arg.get_action() {
            // clap parses a flag's env value as a bool: "true" or "false".
            ArgAction::SetTrue => {
                let on = BoolValueParser::new()
                    .parse_ref(&reference, Some(arg), OsStr::new(value))
                    .unwrap_or_else(|e| panic!("{what}: {key}={value:?}: {e}"));
                if on {
                    args.push(format!("--{long}"));
                }
            }
            ArgAction::Set | ArgAction::Append => args.push(format!("--{long}={value}")),
            other => panic!("{what}: {key}: unexpected clap action {other:?}"),
        }
    }
    let command = Cli::command().mut_args(|a| a.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| panic!("{what}: apizee-bridge would refuse {args:?}:\n{e}"));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{what}: {e}"));
    Settings::from_args(cli.service)
        .unwrap_or_else(|e| panic!("{what}: apizee-bridge would exit 2 with: {e}"))
}

// --- helpers: compose -------------------------------------------------------------

/// compose.yaml, parsed, with YAML merge keys (`<<: *bridge`) applied as
/// compose applies them.
fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read(COMPOSE))
        .unwrap_or_else(|e| panic!("{COMPOSE} is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{COMPOSE}: merge keys: {e}"));
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{COMPOSE} has no services mapping"));
    services
        .iter()
        .map(|(name, service)| {
            let name = name.as_str().expect("service names are strings").to_owned();
            assert!(
                service.is_mapping(),
                "{COMPOSE}: service {name} is not a mapping"
            );
            (name, service.clone())
        })
        .collect()
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// The build context and Dockerfile of a service, as absolute paths.
fn build_of(service: &Value) -> Option<(PathBuf, PathBuf)> {
    let build = service.get("build")?;
    let (context, dockerfile) = match build {
        Value::String(context) => (context.as_str(), "Dockerfile"),
        other => (
            str_at(other, "context").unwrap_or("."),
            str_at(other, "dockerfile").unwrap_or("Dockerfile"),
        ),
    };
    let context = from_compose_dir(context);
    let dockerfile = normalize(&context, dockerfile);
    Some((context, dockerfile))
}

/// The apizee-bridge replicas: services built from deploy/docker/Dockerfile.
fn bridges(services: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    let dockerfile = root().join(DOCKERFILE);
    let bridges: BTreeMap<String, Value> = services
        .iter()
        .filter(|(_, s)| build_of(s).is_some_and(|(_, file)| file == dockerfile))
        .map(|(name, s)| (name.clone(), s.clone()))
        .collect();
    assert!(
        bridges.len() >= 2,
        "{COMPOSE}: expected at least two bridge replicas built from {DOCKERFILE}, found {:?}",
        bridges.keys().collect::<Vec<_>>()
    );
    bridges
}

/// A scalar as compose turns it into an environment value.
fn scalar(what: &str, value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => {
            panic!("{what} has no value, so compose would take it from the shell: give it one")
        }
        other => panic!("{what}: not a scalar: {other:?}"),
    }
}

/// The service's environment, interpolated with `vars`.
fn environment(
    name: &str,
    service: &Value,
    vars: &BTreeMap<&str, &str>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match service.get("environment") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (key, value) in map {
                let key = key
                    .as_str()
                    .expect("environment keys are strings")
                    .to_owned();
                let what = format!("{COMPOSE}: {name}: {key}");
                let raw = scalar(&what, value);
                let value = interpolate(&raw, vars).unwrap_or_else(|e| panic!("{what}: {e}"));
                env.insert(key, value);
            }
        }
        Some(Value::Sequence(list)) => {
            for item in list {
                let item = item.as_str().expect("environment items are strings");
                let (key, raw) = item.split_once('=').unwrap_or_else(|| {
                    panic!("{COMPOSE}: {name}: {item} has no value, so compose would take it from the shell")
                });
                let value = interpolate(raw, vars)
                    .unwrap_or_else(|e| panic!("{COMPOSE}: {name}: {key}: {e}"));
                env.insert(key.to_owned(), value);
            }
        }
        Some(other) => panic!("{COMPOSE}: {name}: environment is {other:?}"),
    }
    env
}

fn host_port(what: &str, address: &str) -> (String, u16) {
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: {address:?} has no port"));
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("{what}: port of {address:?}: {e}"));
    (host.to_owned(), port)
}

/// The container ports a service publishes.
fn published_container_ports(name: &str, service: &Value) -> BTreeSet<u16> {
    let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
        return BTreeSet::new();
    };
    ports
        .iter()
        .map(|port| match port {
            Value::Mapping(_) => port
                .get("target")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("{COMPOSE}: {name}: port {port:?} has no target")),
            other => {
                let text = scalar(&format!("{COMPOSE}: {name}: port"), other);
                let container = text.rsplit(':').next().unwrap_or(&text);
                let container = container.split('/').next().unwrap_or(container);
                container
                    .parse()
                    .unwrap_or_else(|e| panic!("{COMPOSE}: {name}: port {text:?}: {e}"))
            }
        })
        .collect()
}

/// (source, target) of every volume of a service. Short syntax
/// `source:target[:mode]` or long syntax.
fn volumes(name: &str, service: &Value) -> Vec<(String, String)> {
    let Some(list) = service.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    list.iter()
        .map(|volume| match volume {
            Value::String(text) => {
                let mut parts = text.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("{COMPOSE}: {name}: anonymous volume {text:?}"))
                    .to_owned();
                (source, target)
            }
            other => (
                str_at(other, "source").unwrap_or_default().to_owned(),
                str_at(other, "target")
                    .unwrap_or_else(|| panic!("{COMPOSE}: {name}: volume without target"))
                    .to_owned(),
            ),
        })
        .collect()
}

fn is_host_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// The host file (in the repository) that a service mounts at `target`.
fn mounted_file(services: &BTreeMap<String, Value>, service: &str, target: &str) -> PathBuf {
    let spec = &services[service];
    let source = volumes(service, spec)
        .into_iter()
        .find(|(source, t)| t == target && is_host_path(source))
        .map(|(source, _)| source)
        .unwrap_or_else(|| panic!("{COMPOSE}: {service} mounts nothing from the host at {target}"));
    from_compose_dir(&source)
}

/// The service whose image starts with `image`, and its name.
fn service_with_image<'a>(
    services: &'a BTreeMap<String, Value>,
    image: &str,
) -> (&'a str, &'a Value) {
    services
        .iter()
        .find(|(_, s)| str_at(s, "image").is_some_and(|i| i.starts_with(image)))
        .map(|(name, s)| (name.as_str(), s))
        .unwrap_or_else(|| panic!("{COMPOSE}: no service runs the image {image}"))
}

/// The bridges' settings for one value of BRIDGE_SINK.
fn bridge_settings(vars: &BTreeMap<&str, &str>) -> BTreeMap<String, Settings> {
    let services = services(&compose());
    bridges(&services)
        .iter()
        .map(|(name, service)| {
            let env = environment(name, service, vars);
            let what = format!("{COMPOSE}: service {name} ({vars:?})");
            (name.clone(), settings_from_env(&what, &env))
        })
        .collect()
}

fn default_vars() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::new()
}

fn parse_duration(what: &str, text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what}: {text:?}: {e}"))
}

// --- compose.yaml ---------------------------------------------------------------------

#[test]
fn compose_file_parses_and_every_service_can_start() {
    let compose = compose();
    let services = services(&compose);
    assert!(!services.is_empty(), "{COMPOSE} has no services");
    let declared_volumes: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    for (name, service) in &services {
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{COMPOSE}: service {name} has neither image nor build"
        );
        if let Some((context, dockerfile)) = build_of(service) {
            assert!(
                context.is_dir(),
                "{COMPOSE}: {name}: build context {} does not exist",
                context.display()
            );
            assert!(
                dockerfile.is_file(),
                "{COMPOSE}: {name}: {} does not exist",
                dockerfile.display()
            );
        }
        if let Some(image) = str_at(service, "image") {
            // A pinned tag, never an implicit :latest.
            let tag = image.rsplit('/').next().unwrap_or(image);
            assert!(
                tag.contains(':') && !tag.ends_with(":latest"),
                "{COMPOSE}: {name}: image {image} has no pinned tag"
            );
        }
        // depends_on names real services, with a condition they can meet.
        if let Some(depends) = service.get("depends_on").and_then(Value::as_mapping) {
            for (dependency, spec) in depends {
                let dependency = dependency.as_str().expect("service name");
                let target = services.get(dependency).unwrap_or_else(|| {
                    panic!("{COMPOSE}: {name} depends on {dependency}, which is not a service")
                });
                let condition = str_at(spec, "condition").unwrap_or("service_started");
                match condition {
                    "service_started" | "service_completed_successfully" => {}
                    "service_healthy" => {
                        let test = target.get("healthcheck").and_then(|h| h.get("test"));
                        let disabled = target
                            .get("healthcheck")
                            .and_then(|h| h.get("disable"))
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        assert!(
                            test.is_some() && !disabled,
                            "{COMPOSE}: {name} waits for {dependency} to be healthy, but {dependency} has no healthcheck"
                        );
                    }
                    other => panic!("{COMPOSE}: {name}: unknown depends_on condition {other}"),
                }
            }
        }
        // A healthcheck's command runs in the container: CMD (exec) or CMD-SHELL.
        if let Some(test) = service.get("healthcheck").and_then(|h| h.get("test")) {
            let first = match test {
                Value::Sequence(items) => items.first().and_then(Value::as_str),
                Value::String(_) => Some("CMD-SHELL"),
                _ => None,
            };
            assert!(
                matches!(first, Some("CMD" | "CMD-SHELL" | "NONE")),
                "{COMPOSE}: {name}: healthcheck test {test:?}"
            );
        }
        // Named volumes are declared at the top level.
        for (source, target) in volumes(name, service) {
            assert!(
                target.starts_with('/'),
                "{COMPOSE}: {name}: volume target {target} is not absolute"
            );
            if !source.is_empty() && !is_host_path(&source) {
                assert!(
                    declared_volumes.contains(&source),
                    "{COMPOSE}: {name} uses the volume {source}, not declared under volumes:"
                );
            }
        }
        published_container_ports(name, service);
    }

    // Every string interpolates: a stray '$' (in a healthcheck command, say)
    // would be taken for a variable by compose.
    fn walk(value: &Value, at: &str) {
        match value {
            Value::String(s) => {
                if let Err(e) = interpolate(s, &BTreeMap::new()) {
                    panic!("{COMPOSE}: {at}: {e}");
                }
            }
            Value::Sequence(items) => items.iter().for_each(|v| walk(v, at)),
            Value::Mapping(map) => {
                for (k, v) in map {
                    walk(v, &format!("{at}.{}", k.as_str().unwrap_or("?")));
                }
            }
            _ => {}
        }
    }
    walk(&compose, "");
}

#[test]
fn bridge_environment_names_real_flags_and_is_accepted_by_the_binary() {
    for (value, expected) in SINK_CHOICES {
        let vars: BTreeMap<&str, &str> = value.map(|v| (SINK_VARIABLE, v)).into_iter().collect();
        for (name, settings) in bridge_settings(&vars) {
            let sink = match settings.sink {
                SinkSettings::Kafka(_) => Some(Sink::Kafka),
                SinkSettings::Nats(_) => Some(Sink::Nats),
                SinkSettings::Stdout => None,
            };
            assert_eq!(
                sink,
                Some(*expected),
                "{COMPOSE}: {name} with {SINK_VARIABLE}={value:?}"
            );
            // Reachable from the other containers, not only from inside.
            for (flag, address) in [
                ("--listen", settings.http.listen),
                ("--metrics-listen", settings.http.metrics_listen),
            ] {
                assert!(
                    address.ip().is_unspecified(),
                    "{COMPOSE}: {name}: {flag} {address} is not reachable from other containers: bind 0.0.0.0"
                );
            }
        }
    }
}

#[test]
fn bridges_reach_the_brokers_of_the_stack() {
    let services = services(&compose());
    for (name, settings) in bridge_settings(&default_vars()) {
        let kafka = match &settings.sink {
            SinkSettings::Kafka(kafka) => kafka.clone(),
            _ => unreachable!("checked by another test"),
        };
        for broker in kafka.brokers.split(',') {
            let what = format!("{COMPOSE}: {name}: APIZEE_BRIDGE_KAFKA_BROKERS");
            let (host, _) = host_port(&what, broker);
            let kafka_service = services
                .get(&host)
                .unwrap_or_else(|| panic!("{what}: {host} is not a service"));
            let env = environment(&host, kafka_service, &default_vars());
            let advertised = env
                .get("KAFKA_ADVERTISED_LISTENERS")
                .unwrap_or_else(|| panic!("{COMPOSE}: {host} sets no KAFKA_ADVERTISED_LISTENERS"));
            assert!(
                advertised
                    .split(',')
                    .any(|l| l.split_once("://").map(|(_, a)| a) == Some(broker)),
                "{what}: {broker} is not among {host}'s advertised listeners {advertised}: \
                 the bridge would be sent elsewhere after bootstrap"
            );
        }
    }
    let nats_vars = BTreeMap::from([(SINK_VARIABLE, "nats")]);
    for (name, settings) in bridge_settings(&nats_vars) {
        let nats = match &settings.sink {
            SinkSettings::Nats(nats) => nats.clone(),
            _ => unreachable!("checked by another test"),
        };
        for url in &nats.urls {
            let what = format!("{COMPOSE}: {name}: APIZEE_BRIDGE_NATS_URL");
            let address = url.strip_prefix("nats://").unwrap_or(url);
            let (host, port) = host_port(&what, address);
            let nats_service = services
                .get(&host)
                .unwrap_or_else(|| panic!("{what}: {host} is not a service"));
            let command: Vec<String> = nats_service
                .get("command")
                .and_then(Value::as_sequence)
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let server_port = command
                .iter()
                .find_map(|a| a.strip_prefix("--port=").or_else(|| a.strip_prefix("-p=")))
                .map_or(4222, |p| p.parse().expect("NATS port"));
            assert_eq!(port, server_port, "{what}: {url}");
            if nats.jetstream {
                assert!(
                    command.iter().any(|a| a == "--jetstream" || a == "-js"),
                    "{what}: the bridges publish through JetStream, but {host} runs without --jetstream"
                );
            }
        }
    }
}

#[test]
fn bridges_are_stopped_after_their_drain_not_during_it() {
    let services = services(&compose());
    for (name, settings) in bridge_settings(&default_vars()) {
        let grace = str_at(&services[&name], "stop_grace_period").unwrap_or("10s");
        let grace = parse_duration(&format!("{COMPOSE}: {name}: stop_grace_period"), grace);
        let drain = settings.http.drain.delay + settings.http.drain.timeout;
        assert!(
            grace > drain + apizee_bridge::SHUTDOWN_AFTER_DRAIN,
            "{COMPOSE}: {name}: stop_grace_period {grace:?} leaves no margin over the \
             drain delay and shutdown timeout {drain:?} and the rest of the shutdown: \
             SIGKILL would cut it short"
        );
        // The image's exposed ports are the ones the bridge listens on.
        let exposed: BTreeSet<String> = services[&name]
            .get("expose")
            .and_then(Value::as_sequence)
            .map(|e| {
                e.iter()
                    .map(|p| scalar("expose", p))
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default();
        for port in [
            settings.http.listen.port(),
            settings.http.metrics_listen.port(),
        ] {
            assert!(
                exposed.contains(&port.to_string()),
                "{COMPOSE}: {name}: expose lacks {port}"
            );
        }
    }
}

#[test]
fn every_file_mounted_from_the_host_exists() {
    let services = services(&compose());
    let mut mounted = 0;
    for (name, service) in &services {
        for (source, target) in volumes(name, service) {
            if !is_host_path(&source) {
                continue;
            }
            assert!(
                !source.starts_with('/') && !source.starts_with('~'),
                "{COMPOSE}: {name} mounts {source}, a path outside the repository: use a path relative to deploy/compose/"
            );
            let path = from_compose_dir(&source);
            assert!(
                path.exists(),
                "{COMPOSE}: {name} mounts {source} at {target}, but {} does not exist",
                repo_relative(&path)
            );
            mounted += 1;
        }
    }
    assert!(mounted > 0, "{COMPOSE} mounts no file: nothing was checked");
}

// --- HAProxy ------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct HaproxySection {
    kind: String,
    name: String,
    lines: Vec<String>,
}

fn haproxy_sections() -> Vec<HaproxySection> {
    let mut sections: Vec<HaproxySection> = Vec::new();
    for raw in read(HAPROXY_CFG).lines() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let starts_section = !raw.starts_with(char::is_whitespace);
        if starts_section {
            let mut words = line.split_whitespace();
            sections.push(HaproxySection {
                kind: words.next().unwrap_or_default().to_owned(),
                name: words.next().unwrap_or_default().to_owned(),
                lines: Vec::new(),
            });
        } else {
            sections
                .last_mut()
                .unwrap_or_else(|| panic!("{HAPROXY_CFG}: {line:?} outside any section"))
                .lines
                .push(line.to_owned());
        }
    }
    sections
}

/// HAProxy times are milliseconds unless a unit is given.
fn haproxy_duration(text: &str) -> Duration {
    match text.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => parse_duration(HAPROXY_CFG, text),
    }
}

#[test]
fn haproxy_balances_every_replica_and_checks_readyz() {
    let compose = compose();
    let services = services(&compose);
    let settings = bridge_settings(&default_vars());
    let sections = haproxy_sections();

    // The haproxy service runs this very file.
    let (haproxy, haproxy_service) = service_with_image(&services, "haproxy:");
    assert_eq!(
        mounted_file(&services, haproxy, HAPROXY_IMAGE_CFG),
        root().join(HAPROXY_CFG),
        "{COMPOSE}: {haproxy} must mount {HAPROXY_CFG} at {HAPROXY_IMAGE_CFG}"
    );

    let defaults: Vec<&String> = sections
        .iter()
        .filter(|s| s.kind == "defaults")
        .flat_map(|s| &s.lines)
        .collect();
    let backends: Vec<&HaproxySection> = sections.iter().filter(|s| s.kind == "backend").collect();
    let default_server_checks = defaults
        .iter()
        .any(|l| l.starts_with("default-server") && l.split_whitespace().any(|w| w == "check"));

    for (name, settings) in &settings {
        let (backend, server) = backends
            .iter()
            .find_map(|b| {
                b.lines
                    .iter()
                    .find(|l| {
                        let words: Vec<&str> = l.split_whitespace().collect();
                        words.first() == Some(&"server")
                            && words
                                .get(2)
                                .is_some_and(|a| a.split(':').next() == Some(name.as_str()))
                    })
                    .map(|l| (*b, l))
            })
            .unwrap_or_else(|| panic!("{HAPROXY_CFG}: no backend has a server for {name}"));
        let address = server.split_whitespace().nth(2).expect("server address");
        let (_, port) = host_port(HAPROXY_CFG, address);
        assert_eq!(
            port,
            settings.http.listen.port(),
            "{HAPROXY_CFG}: {server}: {name} listens on {}",
            settings.http.listen
        );
        assert!(
            default_server_checks
                || server.split_whitespace().any(|w| w == "check")
                || backend
                    .lines
                    .iter()
                    .any(|l| l.starts_with("default-server") && l.contains(" check")),
            "{HAPROXY_CFG}: {server}: health checks are not enabled (add `check`)"
        );
        let checks_readyz = backend.lines.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                ["option", "httpchk", _method, uri, ..] => *uri == "/readyz",
                ["http-check", "send", rest @ ..] => {
                    rest.windows(2).any(|w| w[0] == "uri" && w[1] == "/readyz")
                }
                _ => false,
            }
        }) && backend
            .lines
            .iter()
            .any(|l| l.starts_with("option httpchk"));
        assert!(
            checks_readyz,
            "{HAPROXY_CFG}: backend {} does not check GET /readyz (option httpchk + http-check send meth GET uri /readyz)",
            backend.name
        );
        // A slow broker must reach the sender as the bridge's 503, not as an
        // HAProxy 504.
        let timeout_server = backend
            .lines
            .iter()
            .chain(defaults.iter().copied())
            .find_map(|l| l.strip_prefix("timeout server "))
            .map(|t| haproxy_duration(t.trim()))
            .unwrap_or_else(|| panic!("{HAPROXY_CFG}: no timeout server"));
        assert!(
            timeout_server > settings.delivery.publish_timeout,
            "{HAPROXY_CFG}: timeout server {timeout_server:?} is not longer than {name}'s publish timeout {:?}",
            settings.delivery.publish_timeout
        );
    }

    // Every frontend port is published by the haproxy service.
    let published = published_container_ports(haproxy, haproxy_service);
    for frontend in sections.iter().filter(|s| s.kind == "frontend") {
        for bind in frontend
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("bind "))
        {
            let address = bind.split_whitespace().next().expect("bind address");
            let (_, port) = host_port(HAPROXY_CFG, address);
            assert!(
                published.contains(&port),
                "{HAPROXY_CFG}: frontend {} binds {port}, which {COMPOSE} does not publish for {haproxy}",
                frontend.name
            );
        }
    }
}

#[test]
fn haproxy_accepts_its_configuration() {
    let haproxy = tool("haproxy", "HAPROXY", "haproxy");
    let path = root().join(HAPROXY_CFG);
    let (ok, output) = run_tool(
        &haproxy,
        &[OsStr::new("-c"), OsStr::new("-f"), path.as_os_str()],
    );
    assert!(ok, "haproxy -c -f {HAPROXY_CFG} failed:\n{output}");
    // Compose service names do not resolve here; nothing else may warn.
    let unexpected: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("[WARNING]") || l.contains("[ALERT]"))
        .filter(|l| !l.contains("could not resolve address"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "haproxy -c -f {HAPROXY_CFG} warns:\n{}",
        unexpected.join("\n")
    );
}

// --- Prometheus ----------------------------------------------------------------------------

/// The Prometheus service: its name, the container path of its config, and
/// the config parsed.
fn prometheus() -> (BTreeMap<String, Value>, String, String, Value) {
    let services = services(&compose());
    let (name, service) = service_with_image(&services, "prom/prometheus:");
    let command: Vec<String> = service
        .get("command")
        .and_then(Value::as_sequence)
        .map(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let config_path = command
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml")
        .to_owned();
    let host_file = mounted_file(&services, name, &config_path);
    let text = std::fs::read_to_string(&host_file)
        .unwrap_or_else(|e| panic!("{}: {e}", host_file.display()));
    let config: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", repo_relative(&host_file)));
    (services.clone(), name.to_owned(), config_path, config)
}

#[test]
fn prometheus_scrapes_every_replica_on_its_metrics_port() {
    let (services, prometheus, _, config) = prometheus();
    let settings = bridge_settings(&default_vars());
    let mut scraped: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for job in config
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .expect("scrape_configs")
    {
        let job_name = str_at(job, "job_name").expect("job_name");
        let path = str_at(job, "metrics_path").unwrap_or("/metrics");
        let targets = job
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("targets").and_then(Value::as_sequence))
            .flatten()
            .filter_map(Value::as_str);
        for target in targets {
            let (host, port) = host_port("prometheus.yml", target);
            assert!(
                services.contains_key(&host) || host == "localhost",
                "prometheus.yml: job {job_name} scrapes {target}, but {host} is not a service of {COMPOSE}"
            );
            if settings.contains_key(&host) {
                assert_eq!(path, "/metrics", "prometheus.yml: job {job_name}");
                // The alert rules select job="apizee-bridge".
                assert_eq!(
                    job_name, "apizee-bridge",
                    "prometheus.yml: the bridges' job must be apizee-bridge (deploy/prometheus/alerts.yaml selects it)"
                );
                scraped
                    .entry(host.clone())
                    .or_default()
                    .push((job_name.to_owned(), port));
            }
        }
    }
    for (name, settings) in &settings {
        let jobs = scraped
            .get(name)
            .unwrap_or_else(|| panic!("prometheus.yml ({prometheus}) does not scrape {name}"));
        for (job, port) in jobs {
            assert_eq!(
                *port,
                settings.http.metrics_listen.port(),
                "prometheus.yml: job {job} scrapes {name}:{port}, but its /metrics is on {}",
                settings.http.metrics_listen
            );
        }
    }
}

#[test]
fn promtool_accepts_the_prometheus_configuration_and_its_rules() {
    let (services, prometheus, config_path, config) = prometheus();
    let config_dir = Path::new(&config_path)
        .parent()
        .expect("config folder")
        .to_owned();
    // The container's config folder, rebuilt from the mounts, so that the
    // relative rule_files resolve as they will in the container.
    let scratch = tempfile::tempdir().expect("temporary folder");
    for (source, target) in volumes(&prometheus, &services[&prometheus]) {
        let Ok(inside) = Path::new(&target).strip_prefix(&config_dir) else {
            continue;
        };
        if !is_host_path(&source) {
            continue;
        }
        let from = from_compose_dir(&source);
        let to = scratch.path().join(inside);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("{} ({COMPOSE}): {e}", repo_relative(&from)));
    }
    let rule_files: Vec<&str> = config
        .get("rule_files")
        .and_then(Value::as_sequence)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        !rule_files.is_empty(),
        "prometheus.yml loads no rule file: deploy/prometheus/alerts.yaml should be one"
    );
    for rule_file in &rule_files {
        assert!(
            !rule_file.contains('*'),
            "prometheus.yml: rule_files {rule_file}: a glob that matches nothing is not an error; name the file"
        );
        let inside = Path::new(rule_file)
            .strip_prefix(&config_dir)
            .unwrap_or(Path::new(rule_file));
        assert!(
            scratch.path().join(inside).is_file(),
            "prometheus.yml: rule file {rule_file} is not mounted by {COMPOSE} under {}",
            config_dir.display()
        );
    }
    let first_rules = if rule_files[0].starts_with('/') {
        rule_files[0].to_owned()
    } else {
        format!("{}/{}", config_dir.display(), rule_files[0])
    };
    let alerts = mounted_file(&services, &prometheus, &first_rules);
    assert_eq!(alerts, root().join("deploy/prometheus/alerts.yaml"));

    let promtool = tool("promtool", "PROMTOOL", "prometheus");
    let file_name = Path::new(&config_path).file_name().expect("file name");
    let config_copy = scratch.path().join(file_name);
    let (ok, output) = run_tool(
        &promtool,
        &[
            OsStr::new("check"),
            OsStr::new("config"),
            config_copy.as_os_str(),
        ],
    );
    assert!(
        ok,
        "promtool check config (compose's prometheus.yml) failed:\n{output}"
    );
    assert!(
        output.contains(&format!("SUCCESS: {} rule files found", rule_files.len())),
        "promtool did not load the rule files:\n{output}"
    );
}

// --- Grafana ------------------------------------------------------------------------------------

#[test]
fn grafana_provisions_prometheus_and_the_dashboard() {
    let services = services(&compose());
    let (grafana, grafana_service) = service_with_image(&services, "grafana/grafana:");
    let (prometheus, _) = service_with_image(&services, "prom/prometheus:");
    let provisioning = "/etc/grafana/provisioning";

    // Datasources: Prometheus, by its service name.
    let datasources_dir = mounted_file(&services, grafana, &format!("{provisioning}/datasources"));
    let mut uids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&datasources_dir).expect("datasources folder") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("datasource file");
        let file: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", repo_relative(&path)));
        for datasource in file
            .get("datasources")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let url = str_at(datasource, "url").expect("datasource url");
            let host = url
                .trim_start_matches("http://")
                .split([':', '/'])
                .next()
                .unwrap_or_default();
            assert_eq!(
                host,
                prometheus,
                "{}: datasource url {url} is not the {prometheus} service",
                repo_relative(&path)
            );
            uids.extend(str_at(datasource, "uid").map(str::to_owned));
            names.extend(str_at(datasource, "name").map(str::to_owned));
        }
    }
    assert!(!uids.is_empty(), "no datasource is provisioned with a uid");

    // Dashboards: the provider's folder holds deploy/grafana/apizee-bridge.json.
    let providers_dir = mounted_file(&services, grafana, &format!("{provisioning}/dashboards"));
    let mut dashboard_folders = Vec::new();
    for entry in std::fs::read_dir(&providers_dir).expect("dashboards folder") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("provider file");
        let file: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", repo_relative(&path)));
        for provider in file
            .get("providers")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let folder = provider
                .get("options")
                .and_then(|o| str_at(o, "path"))
                .expect("provider options.path");
            dashboard_folders.push(folder.to_owned());
        }
    }
    let dashboard_target = volumes(grafana, grafana_service)
        .into_iter()
        .find(|(source, _)| {
            from_compose_dir(source) == root().join("deploy/grafana/apizee-bridge.json")
        })
        .map(|(_, target)| target)
        .unwrap_or_else(|| {
            panic!("{COMPOSE}: {grafana} does not mount deploy/grafana/apizee-bridge.json")
        });
    assert!(
        dashboard_folders
            .iter()
            .any(|folder| Path::new(&dashboard_target).parent() == Some(Path::new(folder))),
        "{COMPOSE}: the dashboard is mounted at {dashboard_target}, in none of the provider folders {dashboard_folders:?}"
    );
    let home = environment(grafana, grafana_service, &default_vars())
        .get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .cloned();
    if let Some(home) = home {
        assert_eq!(
            home, dashboard_target,
            "{COMPOSE}: {grafana}: home dashboard"
        );
    }

    // The dashboard's datasource references resolve against the provisioned
    // datasource (a provisioned dashboard gets no `__inputs` substitution).
    let path = root().join("deploy/grafana/apizee-bridge.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("deploy/grafana/apizee-bridge.json: {e}"));
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/grafana/apizee-bridge.json is not JSON: {e}"));
    let variables: BTreeSet<String> = dashboard
        .pointer("/templating/list")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(serde_json::Value::as_str))
        .map(str::to_owned)
        .collect();
    let builtin = ["grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"];
    let resolves = |reference: &str, known: &BTreeSet<String>| {
        if let Some(variable) = reference.strip_prefix('$') {
            let variable = variable.trim_start_matches('{').trim_end_matches('}');
            variables.contains(variable)
        } else {
            known.contains(reference) || builtin.contains(&reference)
        }
    };
    fn references(value: &serde_json::Value, out: &mut Vec<(bool, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "datasource" {
                        match v {
                            serde_json::Value::String(name) => out.push((false, name.clone())),
                            serde_json::Value::Object(ds) => {
                                if let Some(uid) = ds.get("uid").and_then(|u| u.as_str()) {
                                    out.push((true, uid.to_owned()));
                                }
                            }
                            _ => {}
                        }
                    }
                    references(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    references(&dashboard, &mut refs);
    for (is_uid, reference) in refs {
        let known = if is_uid { &uids } else { &names };
        assert!(
            resolves(&reference, known),
            "deploy/grafana/apizee-bridge.json: datasource {reference:?} is neither a dashboard \
             variable nor a provisioned datasource ({known:?}), so its panels would show no data in the compose stack"
        );
    }
}

// --- the checkers themselves ---------------------------------------------------------------------

#[test]
fn checkers_catch_what_they_are_for() {
    // Interpolation.
    let vars = BTreeMap::from([("SET", "x"), ("EMPTY", "")]);
    assert_eq!(interpolate("a${SET}b", &vars).as_deref(), Ok("axb"));
    assert_eq!(interpolate("${UNSET:-d}", &vars).as_deref(), Ok("d"));
    assert_eq!(interpolate("${EMPTY:-d}", &vars).as_deref(), Ok("d"));
    assert_eq!(interpolate("${EMPTY-d}", &vars).as_deref(), Ok(""));
    assert_eq!(interpolate("$$HOME", &vars).as_deref(), Ok("$HOME"));
    assert_eq!(interpolate("$SET/", &vars).as_deref(), Ok("x/"));
    assert!(interpolate("${UNSET}", &vars).is_err());
    assert!(interpolate("cost: 5$", &vars).is_err());
    assert!(interpolate("${UNSET:?needed}", &vars).is_err());

    // Environment to Settings: a real flag with a good value passes, an
    // unknown variable and a bad value fail.
    let good = BTreeMap::from([
        ("APIZEE_BRIDGE_SINK".to_owned(), "kafka".to_owned()),
        ("APIZEE_BRIDGE_STRICT".to_owned(), "true".to_owned()),
        (
            "APIZEE_BRIDGE_KAFKA_OPTION".to_owned(),
            "a=1;b=2".to_owned(),
        ),
    ]);
    let settings = settings_from_env("good", &good);
    assert!(settings.routing.rules.strict);
    match settings.sink {
        SinkSettings::Kafka(kafka) => assert_eq!(kafka.options.len(), 2),
        other => panic!("{other:?}"),
    }
    for bad in [
        ("APIZEE_BRIDGE_NO_SUCH_FLAG", "1"),
        ("APIZEE_BRIDGE_STRICT", "yes"),
        ("APIZEE_BRIDGE_LISTEN", "8080"),
        ("APIZEE_BRIDGE_NATS_STREAM", "WEBHOOKS"), // needs --nats-jetstream
    ] {
        let mut env = BTreeMap::from([("APIZEE_BRIDGE_SINK".to_owned(), "nats".to_owned())]);
        env.insert(bad.0.to_owned(), bad.1.to_owned());
        let result = std::panic::catch_unwind(|| settings_from_env("bad", &env));
        assert!(result.is_err(), "{bad:?} was accepted");
    }
}
