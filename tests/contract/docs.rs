//! The README documents every flag, env var and metric the binary has, and
//! nothing it lacks; what its "Try it" shows is what the binary does.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::support::process::BridgeProcess;
use crate::support::*;
use apizee_bridge::commands::Cli;
use apizee_bridge::sink::memory::MemorySink;
use clap::CommandFactory;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"))
}

#[test]
fn readme_lists_every_flag_with_its_env_var() {
    let readme = readme();
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .and_then(|e| e.to_str())
            .unwrap_or_else(|| panic!("--{long} has no env var"));
        let row = format!("| `--{long}` | `{env}` |");
        assert_eq!(
            readme.matches(&row).count(),
            1,
            "README must have the row {row} once"
        );
        // Under the heading --help shows it under.
        let heading = arg
            .get_help_heading()
            .unwrap_or_else(|| panic!("--{long} has no help heading"));
        let section = readme
            .split_once(&format!("\n**{heading}**\n"))
            .map(|(_, rest)| rest.split("\n**").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("README has no **{heading}** table"));
        assert!(
            section.contains(&row),
            "README lists --{long} outside **{heading}**"
        );
    }
}

/// The metric families a bridge with a memory sink and these flags exports.
async fn exported_families(args: &[&str]) -> BTreeSet<String> {
    let bridge = Bridge::with_sink(settings(args), Arc::new(MemorySink::new())).await;
    // Request counters are labelled by status code, so they appear with the
    // first request.
    bridge.wait_ready().await;
    let exported = bridge
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        // The memory sink exports no Kafka series; tests/brokers/kafka.rs checks those.
        .collect();
    bridge.stop().await;
    exported
}

#[tokio::test]
async fn readme_metrics_table_matches_the_exported_metrics() {
    // Dead-letter series exist only with --dead-letter-topic, like the
    // spool's, TLS's, Kafka's and the secret files' reloads with theirs; the
    // unauthenticated budget's limit only while it is in force, with a
    // signature as the only credential.
    const UNAUTHENTICATED: &str = "apizee_bridge_max_unauthenticated_in_flight";
    let plain = exported_families(&[]).await;
    assert!(
        !plain.iter().any(|name| name.contains("dead_letter")),
        "dead-letter series without --dead-letter-topic: {plain:?}"
    );
    assert!(!plain.contains(UNAUTHENTICATED), "{plain:?}");
    // The key from a file: the secret files' reload series exist too.
    let keys = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(keys.path(), "docs-key\n").unwrap_or_else(|e| panic!("{e}"));
    let exported = exported_families(&[
        "--dead-letter-topic",
        "apizee.dead-letter",
        "--hmac-secret-file",
        &keys.path().to_string_lossy(),
    ])
    .await;
    assert!(exported.is_superset(&plain));
    let readme = readme();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `apizee_bridge_"))
        .filter_map(|l| l.split('`').next())
        // Kafka, spool and TLS series exist only with --sink kafka /
        // --spool-dir / --tls-cert: tests/kafka*.rs, tests/brokers/spool.rs and
        // tests/edge/tls.rs check those.
        .filter(|name| {
            !["kafka_", "spool", "tls_"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .map(|name| format!("apizee_bridge_{name}"))
        // The process metrics, unprefixed, are collected on Linux only.
        .chain(
            readme
                .lines()
                .filter(|_| cfg!(target_os = "linux"))
                .filter_map(|l| l.strip_prefix("| `process_"))
                .filter_map(|l| l.split('`').next())
                .map(|name| format!("process_{name}")),
        )
        .collect();
    assert_eq!(exported, documented);
}

/// The fenced blocks of `text`: each one's language and its lines.
fn fenced_blocks(text: &str) -> Vec<(&str, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(language) = line.strip_prefix("```") {
            let body = lines.by_ref().take_while(|l| !l.starts_with("```"));
            blocks.push((language, body.collect()));
        }
    }
    blocks
}

/// The words of a shell command: split at blanks, except inside single
/// quotes, which are removed (all the README's commands need).
fn words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// A console block's `curl` command, run against `addr` as curl would send
/// it (`-H`, `--data`, the URL's path): the answer. What the block shows
/// the command printing comes with it.
async fn curl<'a>(addr: std::net::SocketAddr, block: &[&'a str]) -> (Reply, Vec<&'a str>) {
    let mut lines = block.iter().copied();
    let mut command = String::new();
    let mut line = lines
        .next()
        .and_then(|l| l.strip_prefix("$ "))
        .unwrap_or_else(|| panic!("no command in {block:?}"));
    while let Some(continued) = line.strip_suffix('\\') {
        command.push_str(continued);
        line = lines
            .next()
            .unwrap_or_else(|| panic!("{command}: the line it continues onto is missing"));
    }
    command.push_str(line);
    let words = words(&command);
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{command}");
    let (mut headers, mut body, mut path) = (Vec::new(), String::new(), None);
    let mut rest = words.iter().skip(1);
    while let Some(word) = rest.next() {
        match word.as_str() {
            "-H" => headers.push(
                rest.next()
                    .and_then(|h| h.split_once(": "))
                    .unwrap_or_else(|| panic!("{command}: -H without a header")),
            ),
            "--data" => body.clone_from(
                rest.next()
                    .unwrap_or_else(|| panic!("{command}: --data without data")),
            ),
            "-s" | "-si" => {}
            url => {
                path = url
                    .strip_prefix("http://127.0.0.1:8080")
                    .map(str::to_owned)
                    .or_else(|| panic!("{command}: what is {url}?"));
            }
        }
    }
    let path = path.unwrap_or_else(|| panic!("{command}: no URL"));
    let reply = request(addr, "POST", &path, &headers, bytes::Bytes::from(body))
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    (reply, lines.collect())
}

/// `00-<32 hex>-<16 hex>-01`: a trace the bridge started, sampled.
fn is_started_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3] == "01"
}

/// `2026-11-25T23:48:08.970Z`: RFC 3339 in UTC, to the millisecond.
fn is_received_at(value: &str) -> bool {
    let shape: String = value
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    shape == "9999-99-99T99:99:99.999Z"
}

/// A header line as curl prints it, with a `date` (when it was answered)
/// checked for its form, `Sun, 06 Dec 2026 16:07:46 GMT`, and replaced by
/// that form's name.
fn normalised_header(line: &str, whose: &str) -> String {
    match line.strip_prefix("date: ") {
        Some(date) => {
            let shape: String = date
                .chars()
                .map(|c| match c {
                    '0'..='9' => '9',
                    'A'..='Z' => 'A',
                    'a'..='z' => 'a',
                    c => c,
                })
                .collect();
            assert_eq!(shape, "Aaa, 99 Aaa 9999 99:99:99 AAA", "{whose}: {line}");
            "date: <HTTP date>".to_owned()
        }
        None => line.to_owned(),
    }
}

/// A printed message with what differs from run to run (when it was
/// received, the trace the bridge started) checked for its form and
/// replaced by that form's name.
fn normalised(mut message: serde_json::Value, whose: &str) -> serde_json::Value {
    for (header, form, is) in [
        (
            "apizee-received-at",
            "<RFC 3339 time>",
            is_received_at as fn(&str) -> bool,
        ),
        ("traceparent", "<started trace>", is_started_traceparent),
    ] {
        if let Some(value) = message["headers"].get_mut(header) {
            let text = value.as_str().unwrap_or_default();
            assert!(is(text), "{whose}: {header} is {value}, not {form}");
            *value = form.into();
        }
    }
    message
}

/// "Try it": each command of the section, run against the binary as it
/// starts by default (`--sink stdout`), gets the answer the README shows
/// (status line, headers and body; the event id is the body's digest, so
/// it is the same), and the binary prints the message the README shows
/// (one line there wrapped over several). What differs from run to run (the
/// answer's `date`, when the message was received, the trace the bridge
/// started) is checked for its form instead.
#[tokio::test]
async fn readme_try_it_is_what_the_binary_answers_and_prints() {
    let readme = readme();
    let section = readme
        .split_once("\n## Try it\n")
        .and_then(|(_, rest)| rest.split_once("\n## "))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("README has no \"Try it\" section"));
    let blocks = fenced_blocks(section);
    let [
        ("console", accepted),
        ("json", printed),
        ("console", refused),
    ] = blocks.as_slice()
    else {
        panic!("\"Try it\" should hold a console, a json and a console block: {blocks:?}")
    };
    let mut process = BridgeProcess::spawn(&[]);
    process.wait_ready().await;

    // curl -si: the status line, the headers, a blank line, the body.
    let (reply, shown) = curl(process.addr, accepted).await;
    let mut shown = shown.into_iter();
    let status_line = format!(
        "HTTP/1.1 {} {}",
        reply.status,
        http::StatusCode::from_u16(reply.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or_default()
    );
    assert_eq!(shown.next(), Some(status_line.as_str()), "the status line");
    let mut shown_headers: Vec<String> = shown
        .by_ref()
        .take_while(|line| !line.is_empty())
        .map(|line| normalised_header(line, "the README"))
        .collect();
    let mut sent_headers: Vec<String> = reply
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
        .map(|line| normalised_header(&line, "the binary"))
        .collect();
    shown_headers.sort();
    sent_headers.sort();
    assert_eq!(shown_headers, sent_headers, "the headers");
    let shown_body: Vec<&str> = shown.collect();
    assert_eq!(shown_body, [reply.text().as_str()], "the body");

    // curl -s: the body alone, wrapped in the README.
    let (reply, shown) = curl(process.addr, refused).await;
    let shown: serde_json::Value = serde_json::from_str(&shown.join("\n"))
        .unwrap_or_else(|e| panic!("the README's answer to the invalid envelope: {e}"));
    assert_eq!(reply.json(), shown, "the answer to the invalid envelope");

    process.signal("TERM");
    let status = process.wait_exit().await;
    assert!(status.success(), "{status}");
    let lines = process.stdout_lines();
    let [line] = lines.as_slice() else {
        panic!(
            "the binary printed {} lines, not one: {lines:?}",
            lines.len()
        )
    };
    let binary: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the printed message is not JSON ({e}): {line}"));
    let shown: serde_json::Value = serde_json::from_str(&printed.join("\n"))
        .unwrap_or_else(|e| panic!("the README's printed message is not JSON: {e}"));
    assert_eq!(
        normalised(shown, "the README"),
        normalised(binary, "the binary"),
        "the printed message: the README's, then the binary's"
    );
}
