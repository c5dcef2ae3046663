//! The chart, deploy/helm/apizee-bridge, as the pinned helm renders it, and
//! the Kustomize targets under deploy/kubernetes/overlays that are its
//! output: one definition of the pods, never two kept in sync by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::process::{RUN_DEADLINE, output_within};

/// The chart's directory.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/apizee-bridge");

/// The release name every rendering here uses: object names are then
/// `apizee-bridge`, as the README's commands and the alerts' job expect.
pub const RELEASE: &str = "apizee-bridge";

/// The helm that `.ci/tools/helm.sh` builds (pinned there), or `$HELM`.
pub fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm/bin/helm");
    if !path.is_file() {
        super::missing_tool(format!(
            "helm not found at {}: build the pinned one with `bash .ci/tools/helm.sh` (go \
             install, about 4 minutes once), or set HELM=/path/to/helm",
            path.display()
        ));
    }
    path
}

/// `helm ARGS` within the run deadline. Its log line about the link
/// files/alerts.yaml (an INFO on stderr) is not an error.
pub fn run(args: &[&str]) -> Output {
    output_within(Command::new(helm()).args(args), RUN_DEADLINE)
}

/// `helm template RELEASE CHART -f VALUES... EXTRA...`: the manifests, or
/// helm's error (stderr) when it refuses the values.
pub fn try_template(values: &[&Path], extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["template".to_owned(), RELEASE.to_owned(), CHART.to_owned()];
    for v in values {
        args.push("--values".to_owned());
        args.push(v.display().to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm template prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// As [`try_template`], failing the test with helm's error.
pub fn template(values: &[&Path], extra: &[&str]) -> String {
    try_template(values, extra)
        .unwrap_or_else(|e| panic!("helm template {CHART} with {values:?} {extra:?} failed:\n{e}"))
}

/// A Kustomize target that is the chart's output: its directory under
/// deploy/kubernetes, the values files it is rendered with (relative to
/// deploy/kubernetes, in order), and the templates it is limited to.
pub struct Rendered {
    pub dir: &'static str,
    pub values: &'static [&'static str],
    pub show_only: &'static [&'static str],
}

/// Every target under deploy/kubernetes/overlays: one list, which the
/// generation, the comparison and the tests all read.
pub const RENDERED: [Rendered; 6] = [
    Rendered {
        dir: "overlays/nats",
        values: &["overlays/nats/values.yaml"],
        show_only: &[],
    },
    Rendered {
        dir: "overlays/kafka",
        values: &["overlays/kafka/values.yaml"],
        show_only: &[],
    },
    Rendered {
        dir: "overlays/nats-spool",
        values: &["overlays/nats-spool/values.yaml"],
        show_only: &[],
    },
    Rendered {
        dir: "overlays/kafka-spool",
        values: &["overlays/kafka-spool/values.yaml"],
        show_only: &[],
    },
    // The drain Jobs: the spool target's values, one replica fewer and the
    // ordinal whose claim to drain; the ConfigMap (the same as the spool
    // target's, so applying it changes nothing) and the Job only, so that
    // applying them never touches the StatefulSet.
    Rendered {
        dir: "overlays/nats-spool-drain",
        values: &[
            "overlays/nats-spool/values.yaml",
            "overlays/nats-spool-drain/values.yaml",
        ],
        show_only: &["templates/configmap.yaml", "templates/drain-job.yaml"],
    },
    Rendered {
        dir: "overlays/kafka-spool-drain",
        values: &[
            "overlays/kafka-spool/values.yaml",
            "overlays/kafka-spool-drain/values.yaml",
        ],
        show_only: &["templates/configmap.yaml", "templates/drain-job.yaml"],
    },
];

/// The file each target's kustomization.yaml names, written from the chart.
pub const RENDERED_FILE: &str = "apizee-bridge.yaml";

/// Set to write the rendered files instead of comparing them.
pub const WRITE_RENDERED: &str = "APIZEE_BRIDGE_WRITE_MANIFESTS";

impl Rendered {
    pub fn path(&self) -> PathBuf {
        Path::new(super::kubernetes::ROOT)
            .join(self.dir)
            .join(RENDERED_FILE)
    }

    pub fn values_paths(&self) -> Vec<PathBuf> {
        self.values
            .iter()
            .map(|v| Path::new(super::kubernetes::ROOT).join(v))
            .collect()
    }

    /// `helm template` with this target's values and templates.
    pub fn template(&self) -> String {
        let values = self.values_paths();
        let values: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
        let mut extra = Vec::new();
        for t in self.show_only {
            extra.extend(["--show-only", t]);
        }
        template(&values, &extra)
    }

    /// What the file must hold: a header saying where it comes from, then
    /// `helm template`'s output.
    pub fn expected(&self) -> String {
        let rendered = self.template();
        let mut command = format!("helm template {RELEASE} deploy/helm/{RELEASE}");
        for v in self.values {
            command.push_str(&format!(" -f deploy/kubernetes/{v}"));
        }
        for t in self.show_only {
            command.push_str(&format!(" --show-only {t}"));
        }
        format!(
            "# Generated from the Helm chart deploy/helm/apizee-bridge: do not edit.\n\
             # Edit values.yaml here (or the chart), then write this file again with\n\
             #   {WRITE_RENDERED}=1 cargo test --test deploy rendered\n\
             # It is\n#   {command}\n{rendered}"
        )
    }
}

/// The objects the chart renders for the target in `dir` (one of
/// [`RENDERED`]): what its committed file holds, straight from the chart.
pub fn render(dir: &str) -> Vec<serde_yaml::Value> {
    let target = RENDERED
        .iter()
        .find(|r| r.dir == dir)
        .unwrap_or_else(|| panic!("{dir} is not a rendered target"));
    super::kubernetes::parse_docs(&target.template(), &format!("the chart for {dir}"))
}
