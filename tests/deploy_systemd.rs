//! The systemd unit: valid for systemd, hardened, and consistent with the
//! binary's flags and shutdown timeout.

use std::process::Command;
use std::time::Duration;

use apizee_bridge::config::Cli;
use clap::CommandFactory;

const UNIT: &str = include_str!("../deploy/systemd/apizee-bridge.service");

fn directive<'a>(name: &str) -> Vec<&'a str> {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let unit = UNIT.replace(
        "/usr/local/bin/apizee-bridge",
        env!("CARGO_BIN_EXE_apizee-bridge"),
    );
    let path = dir.path().join("apizee-bridge.service");
    std::fs::write(&path, unit).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze not found ({e}): install Debian's systemd"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // verify reports unknown directives as warnings, not failures.
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Failed to parse"),
        "{stderr}"
    );
}

#[test]
fn unit_is_hardened() {
    for (name, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(
            directive(name).contains(&value),
            "{name}={value} missing from the unit"
        );
    }
}

#[test]
fn stop_timeout_leaves_room_for_the_drain() {
    let default = |long: &str| {
        Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_default_values().first().cloned())
            .and_then(|v| humantime::parse_duration(&v.to_string_lossy()).ok())
            .unwrap_or_else(|| panic!("--{long} has no default"))
    };
    // The sink's flush at exit (SINK_FLUSH_TIMEOUT in src/lib.rs) comes after.
    let drain = default("drain-delay") + default("shutdown-timeout") + Duration::from_secs(5);
    let stop = directive("TimeoutStopSec")
        .first()
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or_else(|| panic!("TimeoutStopSec missing"));
    assert!(stop > drain, "TimeoutStopSec {stop:?} <= drain {drain:?}");
}

#[test]
fn example_settings_are_real_env_vars() {
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let examples: Vec<&str> = UNIT
        .lines()
        .filter_map(|line| line.trim_start_matches(['#', ' ']).split_once('='))
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("APIZEE_BRIDGE_"))
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for name in examples {
        assert!(
            known.iter().any(|k| k == name),
            "{name} is not a flag's env var"
        );
    }
}
