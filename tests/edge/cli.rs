//! Tests of the binary as operators run it: --help, config errors, logs,
//! and shutdown on SIGTERM.

use std::process::Command;

use crate::support::process::{BINARY, BridgeProcess, RUN_DEADLINE, output_within, run};
use crate::support::*;
use apizee_bridge::commands::Cli;
use clap::CommandFactory;

#[test]
fn help_documents_every_flag_with_its_env_var() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let command = Cli::command();
    let mut flags = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        flags += 1;
        let env = format!("APIZEE_BRIDGE_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(env.as_str()),
            "--{long} must read {env}"
        );
        assert!(help.contains(&format!("--{long}")), "--help lacks --{long}");
        assert!(help.contains(&env), "--help lacks {env}");
        assert!(arg.get_help().is_some(), "--{long} has no help text");
    }
    assert!(flags >= 25, "only {flags} flags found");
}

#[test]
fn invalid_config_exits_non_zero_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (vec!["--listen", "not-an-address"], "--listen"),
        (vec!["--max-body-bytes", "0"], "--max-body-bytes"),
        (vec!["--publish-timeout", "soon"], "--publish-timeout"),
        (vec!["--sink", "kafkaesque"], "--sink"),
        (
            vec!["--topic-template", "{prefix}.{nope}"],
            "--topic-template",
        ),
        (vec!["--auth-token", "s3cret-value"], "--auth-header"),
        (
            vec!["--sink", "nats", "--nats-stream", "S"],
            "--nats-stream",
        ),
        (vec!["--log-level", "[[["], "--log-level"),
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret-value"), "secret echoed: {stderr}");
    }
}

/// librdkafka and OpenSSL are compiled in: the binary runs on a host that
/// has neither.
#[test]
fn binary_needs_no_system_librdkafka_or_openssl() {
    let output = output_within(Command::new("ldd").arg(BINARY), RUN_DEADLINE);
    let libraries = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{libraries}");
    for library in [
        "librdkafka",
        "libssl",
        "libcrypto",
        "libsasl2",
        "libz",
        "libzstd",
    ] {
        assert!(
            !libraries.contains(library),
            "{library} linked:\n{libraries}"
        );
    }
}

#[test]
fn env_vars_configure_the_binary() {
    let output = output_within(
        Command::new(BINARY)
            .env_clear()
            .env("APIZEE_BRIDGE_MAX_BODY_BYTES", "0"),
        RUN_DEADLINE,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-body-bytes"));
}

/// The spec's ticket webhook, with the platform's content type.
async fn post_spec_ticket(process: &BridgeProcess) -> Result<Reply, String> {
    request(
        process.addr,
        "POST",
        "/webhooks",
        &[("content-type", "application/JSON")],
        bytes::Bytes::from(SPEC_TICKET),
    )
    .await
}

/// SIGHUP's default action ends a process; without TLS there is nothing to
/// reload, and a `systemctl reload` must not drop the deliveries in flight.
#[tokio::test]
async fn sighup_without_tls_does_not_stop_the_bridge() {
    let mut process = BridgeProcess::spawn(&[]);
    process.wait_ready().await;
    process.signal("HUP");
    // The signal is pending once kill(1) returns, and acted on at the
    // process's next return to user space, long before it could answer.
    let reply = post_spec_ticket(&process)
        .await
        .unwrap_or_else(|e| panic!("the bridge stopped answering after SIGHUP: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    process.signal("TERM");
    let status = process.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let stderr = process.stderr_lines().join("\n");
    assert!(
        stderr.contains("SIGHUP received: nothing to reload without --tls-cert or a secret file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut process = BridgeProcess::spawn(&[]);
    process.wait_ready().await;
    let reply = post_spec_ticket(&process)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200);
    process.signal("TERM");
    let status = process.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}");

    // The stdout sink printed one JSON line with the exact payload.
    let lines = process.stdout_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: serde_json::Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
    assert_eq!(line["topic"], "apizee.ticket.update");
    assert_eq!(line["key"], "100");
    assert_eq!(line["payload"], SPEC_TICKET);
    assert_eq!(line["headers"]["apizee-object-id"], "100");

    let stderr = process.stderr_lines().join("\n");
    assert!(stderr.contains("nothing is durable"), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[tokio::test]
async fn json_logs_one_line_per_rejection_and_no_secret() {
    let mut process = BridgeProcess::spawn(&[
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "do-not-log-me",
    ]);
    process.wait_ready().await;
    // Each request's log line, refused or delivered, carries the trace it
    // came with.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    for (secret, body, status) in [
        ("wrong-guess", SPEC_TICKET, 401),
        ("do-not-log-me", "{", 400),
        ("do-not-log-me", SPEC_TICKET, 200),
    ] {
        let reply = request(
            process.addr,
            "POST",
            "/webhooks",
            &[("x-apizee-secret", secret), ("traceparent", &traceparent)],
            bytes::Bytes::from(body),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, status, "{}", reply.text());
    }
    process.signal("TERM");
    assert_eq!(process.wait_exit().await.code(), Some(0));
    let lines = process.stderr_lines();
    let mut reasons = Vec::new();
    let mut delivered = 0;
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string(), "{line}");
        assert!(!line.contains("do-not-log-me"), "secret logged: {line}");
        if let Some(reason) = entry["reason"].as_str() {
            reasons.push(reason.to_owned());
            assert_eq!(entry["span"]["trace_id"], TRACE, "{line}");
        }
        if entry["message"] == "delivered" {
            delivered += 1;
            assert_eq!(entry["span"]["trace_id"], TRACE, "{line}");
        }
    }
    assert_eq!(reasons, ["unauthorized", "malformed_json"], "{lines:#?}");
    assert_eq!(delivered, 1, "{lines:#?}");
}

/// The bash completions load in a real bash and complete the subcommands
/// and the flags.
#[test]
fn bash_completions_load_and_complete_subcommands_and_flags() {
    let output = run(&["completions", "bash"]);
    assert!(output.status.success());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let script = dir.path().join("apizee-bridge.bash");
    std::fs::write(&script, &output.stdout).unwrap_or_else(|e| panic!("{e}"));
    // COMP_* as bash sets them when the user presses Tab after the words.
    let complete = |words: &str| {
        let probe = format!(
            "source {}; complete -p apizee-bridge >/dev/null || exit 9; \
             COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _apizee__bridge apizee-bridge \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let output = output_within(
            Command::new("bash").args(["--norc", "-c", &probe]),
            RUN_DEADLINE,
        );
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let commands = complete("apizee-bridge ch");
    assert!(commands.lines().any(|l| l == "check"), "{commands}");
    let flags = complete("apizee-bridge check --skip");
    assert!(flags.lines().any(|l| l == "--skip-broker"), "{flags}");
}

/// The manual page is roff with every subcommand in it.
#[test]
fn man_prints_a_manual_page() {
    let output = run(&["man"]);
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(".TH apizee-bridge 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section}");
    }
    for command in ["check", "completions", "man"] {
        assert!(
            page.contains(&format!("apizee\\-bridge\\-{command}")),
            "no {command}"
        );
    }
    assert!(
        page.contains("APIZEE_BRIDGE_NATS_URL"),
        "env vars are documented"
    );
}
