//! The README documents every flag, env var and metric the binary has, and
//! nothing it lacks.

use std::collections::BTreeSet;
use std::sync::Arc;

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
    // spool's, TLS's and Kafka's with theirs; the unauthenticated budget's
    // limit only while it is in force, with a signature as the only
    // credential.
    const UNAUTHENTICATED: &str = "apizee_bridge_max_unauthenticated_in_flight";
    let plain = exported_families(&[]).await;
    assert!(
        !plain.iter().any(|name| name.contains("dead_letter")),
        "dead-letter series without --dead-letter-topic: {plain:?}"
    );
    assert!(!plain.contains(UNAUTHENTICATED), "{plain:?}");
    let exported = exported_families(&[
        "--dead-letter-topic",
        "apizee.dead-letter",
        "--hmac-secret",
        "docs-key",
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
