//! The build's identity for `apizee_bridge_build_info`: the git revision
//! and the compiler's version, as `APIZEE_BRIDGE_REVISION` and
//! `APIZEE_BRIDGE_RUSTC` for `env!`.
//!
//! The revision is `git rev-parse --short=12 HEAD`, or the
//! `APIZEE_BRIDGE_REVISION` variable when set: the container build has no
//! `.git` in its context and passes the commit as a build argument instead
//! (deploy/docker/Dockerfile). Neither gives "unknown", never a failed
//! build: a source tarball must still build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// As long as `git rev-parse --short=12` gives, so a revision reads the
/// same however the binary was built.
const SHORT: usize = 12;

fn main() {
    println!("cargo:rerun-if-env-changed=APIZEE_BRIDGE_REVISION");
    let revision = std::env::var("APIZEE_BRIDGE_REVISION")
        .ok()
        .map(|given| shorten(given.trim()))
        .filter(|given| !given.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=APIZEE_BRIDGE_REVISION={revision}");

    // Cargo gives build scripts the compiler it builds with; a change of
    // toolchain rebuilds this script, which then runs again.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = output(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=APIZEE_BRIDGE_RUSTC={version}");
}

/// A full commit hash, as `git rev-parse HEAD` gives it to the container
/// build, cut to the length of a short one; anything else as it is.
fn shorten(given: &str) -> String {
    if given.len() > SHORT && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        given[..SHORT].to_owned()
    } else {
        given.to_owned()
    }
}

/// HEAD's commit, and the files to watch so that a commit or a checkout
/// runs this script again, and nothing else does.
fn git_revision() -> Option<String> {
    let revision =
        output(Command::new("git").args(["rev-parse", &format!("--short={SHORT}"), "HEAD"]))?;
    // In a worktree HEAD lives in its own git dir and the branches in the
    // common one, so both are asked for rather than assuming `.git/`.
    let git_dir = git_path("--absolute-git-dir")?;
    let common_dir = git_path("--git-common-dir")?;
    watch(&git_dir.join("HEAD"));
    if let Some(branch) = output(Command::new("git").args(["symbolic-ref", "-q", "HEAD"])) {
        let loose = common_dir.join(&branch);
        // A branch only in packed-refs gets a loose file at its next
        // commit: watching its folder sees it appear.
        if loose.exists() {
            watch(&loose);
        } else if let Some(folder) = loose.parent() {
            watch(folder);
        }
        watch(&common_dir.join("packed-refs"));
    }
    Some(revision)
}

fn git_path(flag: &str) -> Option<PathBuf> {
    output(Command::new("git").args(["rev-parse", "--path-format=absolute", flag]))
        .map(PathBuf::from)
}

/// Cargo runs a build script at every build when it watches a path that
/// does not exist, so only existing ones are watched.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// A command's first line of output, if it ran and succeeded.
fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
