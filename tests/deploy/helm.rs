//! The Helm chart, deploy/helm/apizee-bridge, with the pinned helm
//! (`.ci/tools/helm.sh`): it lints, refuses a wrong value with a message
//! naming it, rolls the pods on a configuration change and not on a Secret
//! change, and is the one definition the Kustomize targets are rendered
//! from. What its output holds (valid Kubernetes, settings the binary
//! accepts, hardening, the memory limit...) is checked with the
//! Kustomize targets' in tests/deploy/kubernetes.rs; its spool pod is run
//! with podman in tests/deploy/image.rs.

use std::path::{Path, PathBuf};

use crate::support::helm::{CHART, RENDERED, WRITE_RENDERED, run, template, try_template};
use crate::support::kubernetes::{parse_docs, rel};

/// Every values file the chart is documented with: its own ci/ examples
/// (chart-testing's convention) and the Kustomize targets'.
fn values_combinations() -> Vec<Vec<PathBuf>> {
    let mut all: Vec<Vec<PathBuf>> = vec![Vec::new()];
    let ci = Path::new(CHART).join("ci");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&ci)
        .unwrap_or_else(|e| panic!("{}: {e}", ci.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "the chart's ci/ examples are missing");
    all.extend(examples.into_iter().map(|p| vec![p]));
    all.extend(RENDERED.iter().map(|r| r.values_paths()));
    all
}

#[test]
fn the_rendered_kustomize_targets_are_the_charts_output() {
    let write = std::env::var_os(WRITE_RENDERED).is_some();
    for r in RENDERED {
        let expected = r.expected();
        if write {
            std::fs::write(r.path(), &expected).unwrap_or_else(|e| panic!("{e}"));
        }
        let committed = std::fs::read_to_string(r.path()).unwrap_or_default();
        if committed != expected {
            let (line, (a, b)) = committed
                .lines()
                .zip(expected.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("(end of file)", "(end of file)")));
            panic!(
                "{} is not what the chart renders with {:?}: first difference at line {}:\n  \
                 committed: {a}\n  rendered:  {b}\nWrite it again with `{WRITE_RENDERED}=1 cargo \
                 test --test deploy rendered` (and commit it).",
                rel(&r.path()),
                r.values,
                line + 1
            );
        }
    }
}

#[test]
fn helm_lint_strict_passes_for_every_values_combination() {
    for values in values_combinations() {
        let mut args = vec!["lint", "--strict", CHART];
        let shown: Vec<String> = values.iter().map(|v| v.display().to_string()).collect();
        for v in &shown {
            args.extend(["--values", v]);
        }
        let out = run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm {args:?}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What helm says, in the schema's words or the chart's own `fail`, when a
/// value is wrong: each message names the value.
#[test]
fn a_wrong_value_fails_with_a_message_that_names_it() {
    for (set, expected) in [
        (
            "replicaCount=-1",
            "at '/replicaCount': minimum: got -1, want 0",
        ),
        (
            "sink=redis",
            "at '/sink': value must be one of 'nats', 'kafka', 'stdout'",
        ),
        ("nats.url=nats-0:4222", "at '/nats/url'"),
        (
            "kafka.partitions=0",
            "at '/kafka/partitions': minimum: got 0, want 1",
        ),
        ("auth.existingSecret=", "at '/auth/existingSecret'"),
        (
            "bridge.maxInFlight=lots",
            "at '/bridge/maxInFlight': got string, want integer",
        ),
        (
            "resources.limits.memory=lots",
            "at '/resources/limits/memory'",
        ),
        // A client certificate without its key.
        (
            "nats.tls.certKey=tls.crt",
            "at '/nats/tls/keyKey': minLength: got 0, want 1",
        ),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        (
            "autoscaling.minReplicas=1",
            "podDisruptionBudget.minAvailable (1) must be below autoscaling.minReplicas (1), or \
             no pod can ever be evicted",
        ),
        (
            "autoscaling.maxReplicas=1",
            "autoscaling.minReplicas (2) is above autoscaling.maxReplicas (1)",
        ),
        (
            "auth.tokenKey=",
            "auth: tokenKey, basicAuthKey and hmacSecretKey are all empty",
        ),
        (
            "settings.log_level=debug",
            "at '/settings': additional properties 'log_level' not allowed",
        ),
        (
            "settings.APIZEE_BRIDGE_MAX_IN_FLIGHT=10",
            "settings.APIZEE_BRIDGE_MAX_IN_FLIGHT: the chart sets APIZEE_BRIDGE_MAX_IN_FLIGHT \
             itself, from its values",
        ),
    ] {
        let error = try_template(&[], &["--set", set])
            .map(|_| String::new())
            .expect_err(&format!("--set {set} was accepted"));
        assert!(
            error.contains(expected),
            "--set {set}: helm's message does not say {expected:?}:\n{error}"
        );
    }
    // A drain of a pod that still runs would fight it for its claim.
    let error = try_template(
        &[],
        &[
            "--set",
            "spool.enabled=true",
            "--set",
            "spool.drain.ordinals={1}",
        ],
    )
    .expect_err("a drain of a running pod's claim was accepted");
    assert!(
        error.contains("spool.drain.ordinals: 1 is a running pod's (replicaCount is 2)"),
        "{error}"
    );
}

/// The pod template's checksum/config annotation.
fn config_checksum(set: &[&str]) -> String {
    let mut args = Vec::new();
    for s in set {
        args.extend(["--set", *s]);
    }
    let yaml = template(&[], &args);
    let workload = parse_docs(&yaml, "helm template")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .expect("checksum/config")
        .to_owned()
}

#[test]
fn a_setting_change_rolls_the_pods_and_a_secret_change_does_not() {
    let before = config_checksum(&[]);
    assert_eq!(before, config_checksum(&[]), "the checksum is stable");
    for set in [
        "settings.APIZEE_BRIDGE_LOG_LEVEL=debug",
        "bridge.maxInFlight=100",
        "nats.url=nats://other:4222",
    ] {
        assert_ne!(
            before,
            config_checksum(&[set]),
            "--set {set} changes the settings but not the pod template: no roll"
        );
    }
    // The chart never reads a Secret (no `lookup`: what helm renders is the
    // same whatever the Secrets hold), and the webhook secrets reach the
    // pods as files of a directory mount, which the kubelet updates in
    // place; the bridge reloads them (tests/edge/secrets.rs). Here: which
    // Secret holds them is the only thing the pod template says of them.
    let yaml = template(&[], &[]);
    assert!(
        !yaml.contains("secretKeyRef"),
        "the default install reads a Secret into the environment, which only a restart \
         changes"
    );
}

/// One row of the values table: a key's dotted path, its default as YAML,
/// and the comment right above it in values.yaml.
struct Documented {
    path: String,
    default: String,
    description: String,
}

/// The documented keys of values.yaml, in order. A key with documented
/// keys below it is a heading, not a row; a documented key whose children
/// are not (`settings`) is one row, its default shown whole. Every value
/// must be documented by its own comment or an ancestor's: an
/// undocumented one fails here, naming it.
fn documented_values() -> Vec<Documented> {
    let file = Path::new(CHART).join("values.yaml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    let values: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    // (indent, key) of the enclosing keys; the comment block above a line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    let mut keys: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            comment.clear();
        } else if let Some(c) = trimmed.strip_prefix('#') {
            comment.push(c.trim().to_owned());
        } else if let Some((key, _)) = trimmed
            .split_once(':')
            .filter(|_| !trimmed.starts_with('-'))
        {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_owned()));
            let path = stack
                .iter()
                .map(|(_, k)| k.as_str())
                .collect::<Vec<_>>()
                .join(".");
            let description = (!comment.is_empty()).then(|| comment.join(" "));
            keys.push((path, description));
            comment.clear();
        } else {
            comment.clear();
        }
    }
    let lookup = |path: &str| path.split('.').fold(&values, |v, k| &v[k]);
    let mut rows: Vec<Documented> = Vec::new();
    for (path, description) in &keys {
        let value = lookup(path);
        let has_documented_child = keys
            .iter()
            .any(|(p, d)| d.is_some() && p.starts_with(&format!("{path}.")));
        let leaf = !(value.is_mapping() && has_documented_child);
        let under_a_row = rows
            .iter()
            .any(|r| path.starts_with(&format!("{}.", r.path)));
        match description {
            Some(description) if leaf => rows.push(Documented {
                path: path.clone(),
                default: serde_json::to_string(value).unwrap_or_else(|e| panic!("{e}")),
                description: description.clone(),
            }),
            None if leaf && !under_a_row => panic!(
                "{}: {path} has no comment right above it: say what it is (the README's \
                 values table is made from these comments)",
                rel(&file)
            ),
            _ => {}
        }
    }
    rows
}

const README_TABLE_START: &str = "<!-- values table:";
const README_TABLE_END: &str = "<!-- end of the values table -->";
const WRITE_README: &str = "APIZEE_BRIDGE_WRITE_README";

/// The README's values table (Deploy > Helm) is made from values.yaml:
/// every value, its default and its comment, in the file's order.
#[test]
fn the_readme_values_table_is_values_yaml() {
    let rows = documented_values();
    assert!(rows.len() > 40, "only {} documented values", rows.len());
    let mut table = String::from("| Value | Default | What it is |\n| --- | --- | --- |\n");
    for r in &rows {
        table.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            r.path,
            r.default,
            r.description.replace('|', "\\|")
        ));
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap_or_else(|e| panic!("{e}"));
    let start = readme
        .find(README_TABLE_START)
        .and_then(|i| readme[i..].find('\n').map(|n| i + n + 1))
        .unwrap_or_else(|| panic!("README.md: no `{README_TABLE_START}` line"));
    let end = readme[start..]
        .find(README_TABLE_END)
        .map(|n| start + n)
        .unwrap_or_else(|| panic!("README.md: no `{README_TABLE_END}` line"));
    if std::env::var_os(WRITE_README).is_some() {
        let written = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, written).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let committed = &readme[start..end];
    for (committed, expected) in committed.lines().zip(table.lines()) {
        assert_eq!(
            committed, expected,
            "README.md's values table is not values.yaml's: write it again with \
             `{WRITE_README}=1 cargo test --test deploy values_table`"
        );
    }
    assert_eq!(
        committed.lines().count(),
        table.lines().count(),
        "README.md's values table has not one row per value of values.yaml: write it again \
         with `{WRITE_README}=1 cargo test --test deploy values_table`"
    );
}

/// What `helm install` prints once done (NOTES.txt) tells how to create the
/// Secret the pods wait for, with the keys the values name, and where to
/// send webhooks: rendered by helm's client-side dry run, no cluster needed.
#[test]
fn the_install_notes_say_which_secret_to_create_and_where_webhooks_go() {
    let notes = |values: &[&Path]| {
        let mut args = vec![
            "install".to_owned(),
            crate::support::helm::RELEASE.to_owned(),
            CHART.to_owned(),
            "--dry-run=client".to_owned(),
            "--namespace".to_owned(),
            "webhooks".to_owned(),
        ];
        for v in values {
            args.extend(["--values".to_owned(), v.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "helm {args:?}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split_once("NOTES:\n")
            .unwrap_or_else(|| panic!("helm install printed no NOTES:\n{stdout}"))
            .1
            .to_owned()
    };
    let defaults = notes(&[]);
    for expected in [
        "kubectl -n webhooks create secret generic apizee-bridge-auth --from-file=auth-token=./auth-token\n",
        "POST http://apizee-bridge.webhooks.svc:80/webhooks with the header X-Apizee-Secret;",
    ] {
        assert!(
            defaults.contains(expected),
            "the NOTES do not say {expected:?}:\n{defaults}"
        );
    }
    let all = notes(&[&Path::new(CHART).join("ci/nats-tls-auth-values.yaml")]);
    for expected in [
        "--from-file=auth-token=./auth-token --from-file=basic-auth=./basic-auth \
         --from-file=hmac-secret=./hmac-secret\n",
        "POST https://",
    ] {
        assert!(
            all.contains(expected),
            "the NOTES do not say {expected:?}:\n{all}"
        );
    }
}

/// The chart installs the image of this version of the bridge: its
/// appVersion is the crate's version, the image tag it defaults to.
#[test]
fn the_chart_installs_this_version() {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("Chart.yaml"))
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml's appVersion is not Cargo.toml's version"
    );
    let yaml = template(&[], &["--show-only", "templates/workload.yaml"]);
    assert!(
        yaml.contains(&format!(
            "image: ghcr.io/apizee-bridge/apizee-bridge:{}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "the pods do not run this version's image:\n{yaml}"
    );
}
