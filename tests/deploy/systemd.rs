//! The systemd unit: valid for systemd, hardened, and consistent with the
//! binary's flags and shutdown timeout.

use std::process::Command;

use apizee_bridge::commands::Cli;
use clap::CommandFactory;

const UNIT: &str = include_str!("../../deploy/systemd/apizee-bridge.service");

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
        crate::support::process::BINARY,
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
    // The rest of the shutdown (dead letters, the sink's flush) comes after.
    let drain =
        default("drain-delay") + default("shutdown-timeout") + apizee_bridge::SHUTDOWN_AFTER_DRAIN;
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

#[test]
fn systemd_analyze_security_rates_the_unit_ok() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("apizee-bridge.service");
    std::fs::write(&path, UNIT).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze not found ({e}): install Debian's systemd"));
    let text = String::from_utf8_lossy(&output.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for apizee-bridge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    // 1.4 when written; systemd calls up to 3.9 "OK".
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

/// The unit's `Environment=` lines, with `%d` (the credentials directory
/// systemd makes from `LoadCredential=`) replaced by `credentials`.
fn unit_environment(credentials: &std::path::Path) -> Vec<(String, String)> {
    directive("Environment")
        .into_iter()
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            let value = value.replace("%d", &credentials.to_string_lossy());
            (name.to_owned(), value)
        })
        .collect()
}

/// What systemd cannot do here (no systemd runs in this sandbox), done the
/// way it would: each `LoadCredential=` file copied into a credentials
/// directory, the unit's environment pointed at it, the example settings of
/// the unit's header, and the binary started on that alone. The token the
/// credential holds is the one webhooks must carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_runs_the_binary_with_its_credentials() {
    let credentials = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for credential in directive("LoadCredential") {
        let (name, source) = credential
            .split_once(':')
            .unwrap_or_else(|| panic!("LoadCredential={credential}: expected NAME:PATH"));
        assert!(source.starts_with("/etc/apizee-bridge/"), "{source}");
        std::fs::write(credentials.path().join(name), "token-from-credential\n")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut env = unit_environment(credentials.path());
    assert!(
        env.iter()
            .any(|(name, value)| name == "APIZEE_BRIDGE_AUTH_TOKEN_FILE"
                && value.starts_with(&*credentials.path().to_string_lossy())),
        "the token file is not read from the credentials directory: {env:?}"
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::support::free_port())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in [
        ("APIZEE_BRIDGE_SINK", "stdout".to_owned()),
        ("APIZEE_BRIDGE_AUTH_HEADER", "X-Apizee-Secret".to_owned()),
        ("APIZEE_BRIDGE_LISTEN", addr.to_string()),
        // No load balancer to wait for when the test stops it.
        ("APIZEE_BRIDGE_DRAIN_DELAY", "0s".to_owned()),
        (
            "APIZEE_BRIDGE_METRICS_LISTEN",
            format!("127.0.0.1:{}", crate::support::free_port()),
        ),
    ] {
        env.push((name.to_owned(), value));
    }
    // ExecStartPre= runs first, with the same environment and credentials.
    for command in directive("ExecStartPre") {
        let mut words = command.split_whitespace();
        assert_eq!(
            words.next(),
            Some("/usr/local/bin/apizee-bridge"),
            "{command}"
        );
        let output = std::process::Command::new(crate::support::process::BINARY)
            .args(words)
            .env_clear()
            .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ExecStartPre={command} failed:\n{report}"
        );
        assert!(
            report.contains("ok    auth: shared secret in x-apizee-secret"),
            "{report}"
        );
        assert!(!report.contains("token-from-credential"), "{report}");
    }
    // A credential that is not there stops the start at ExecStartPre=.
    let missing: Vec<(String, String)> = env
        .iter()
        .map(|(n, v)| match n.as_str() {
            "APIZEE_BRIDGE_AUTH_TOKEN_FILE" => (n.clone(), format!("{v}.missing")),
            _ => (n.clone(), v.clone()),
        })
        .collect();
    let output = std::process::Command::new(crate::support::process::BINARY)
        .args(["check", "--skip-broker"])
        .env_clear()
        .envs(missing.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("FAIL  configuration: invalid --auth-token-file: cannot read"),
        "{output:?}"
    );
    let log = credentials.path().join("bridge.log");
    let mut bridge = crate::support::process::BridgeProcess::spawn_with_env(
        env.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        addr,
        &log,
    );
    bridge.wait_ready().await;
    let post = async |token: &str| {
        crate::support::request(
            addr,
            "POST",
            "/webhooks",
            &[
                ("content-type", "application/json"),
                ("x-apizee-secret", token),
            ],
            bytes::Bytes::from_static(crate::support::SPEC_TICKET.as_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status
    };
    assert_eq!(post("wrong").await, 401);
    assert_eq!(post("token-from-credential").await, 200);
    // ExecReload= sends SIGHUP: the process stays.
    assert!(
        directive("ExecReload")
            .iter()
            .any(|command| command.contains("-HUP $MAINPID")),
        "ExecReload= does not send SIGHUP"
    );
    let pid = bridge.id();
    bridge.signal("HUP");
    // The bridge logs each SIGHUP it takes: once that line is there, the
    // signal has been dealt with, and the process it went to must still be
    // the one running. The test holds the child unreaped, so its pid can
    // name no other process, and an exit leaves a zombie ("Z") behind. The
    // token comes from a credential file, so `systemctl reload` reloads it.
    const HANDLED: &str = "SIGHUP received: reloading the secret files";
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    crate::support::wait_until("the bridge to log the SIGHUP", async || {
        let state = process_state(pid);
        assert!(
            state.is_some_and(|s| s != 'Z' && s != 'X'),
            "the bridge (pid {pid}) ended on SIGHUP (state {state:?}); its log:\n{}",
            log_text()
        );
        log_text().contains(HANDLED)
    })
    .await;
    assert_eq!(post("token-from-credential").await, 200);
    let state = process_state(pid);
    assert!(
        state.is_some_and(|s| s != 'Z' && s != 'X'),
        "the bridge (pid {pid}) is gone after SIGHUP (state {state:?})"
    );
    // Started once: the answer came from the process that took the signal.
    let log_text = log_text();
    assert_eq!(
        log_text.matches("apizee-bridge started").count(),
        1,
        "{log_text}"
    );
    // And it is the SIGTERM that ends it, with its clean exit: a process
    // that SIGHUP had ended would show "signal: 1 (SIGHUP)" here.
    bridge.signal("TERM");
    let status = bridge.wait_exit().await;
    assert!(status.success(), "SIGHUP, then SIGTERM: {status}");
}

/// The state letter of process `pid` in `/proc/PID/stat` (`R`, `S`, `Z` for
/// a process that exited and is not reaped yet, ...); None if there is no
/// such process.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses, the state
    // follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn the_spool_has_a_state_directory_to_go_to() {
    assert_eq!(directive("StateDirectory"), ["apizee-bridge"]);
    assert!(
        UNIT.contains("APIZEE_BRIDGE_SPOOL_DIR=/var/lib/apizee-bridge/"),
        "the example spool directory is not in the state directory"
    );
}
