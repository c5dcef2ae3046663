use super::*;

use clap::CommandFactory;
use clap::error::ErrorKind;
use http::{HeaderMap, HeaderValue};

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::route::TemplateError;
use crate::sink::kafka::config::KafkaSettings;
use crate::sink::nats::config::{NatsAuth, NatsSettings, StreamSettings};

// These tests never set environment variables: the environment is shared by
// every test thread, so clap's env support is checked through the command's
// metadata instead (see `every_flag_has_its_env_var`).

/// The service's flags as `apizee-bridge` parses them without a subcommand
/// (the binary's whole command line is `commands::Cli`, above this part).
#[derive(Debug, Parser)]
#[command(name = "apizee-bridge", max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("apizee-bridge").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("clap refused {args:?}: {e}"))
}

fn settings(args: &[&str]) -> Settings {
    Settings::from_args(cli(args).service).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn error(args: &[&str]) -> ConfigError {
    match Settings::from_args(cli(args).service) {
        Err(e) => e,
        Ok(settings) => panic!("{args:?} should be refused, got {settings:?}"),
    }
}

fn nats(args: &[&str]) -> NatsSettings {
    let args: Vec<&str> = ["--sink", "nats"].iter().chain(args).copied().collect();
    match settings(&args).sink {
        SinkSettings::Nats(nats) => *nats,
        other => panic!("{args:?} chose {other:?}"),
    }
}

fn kafka(args: &[&str]) -> KafkaSettings {
    let args: Vec<&str> = ["--sink", "kafka"].iter().chain(args).copied().collect();
    match settings(&args).sink {
        SinkSettings::Kafka(kafka) => *kafka,
        other => panic!("{args:?} chose {other:?}"),
    }
}

#[test]
fn kafka_defaults() {
    let kafka = kafka(&[]);
    assert_eq!(kafka.brokers, "127.0.0.1:9092");
    assert!(kafka.options.is_empty());
    assert!(kafka.create_topics.is_none());
    assert_eq!(kafka.publish_timeout, Duration::from_secs(5));
    assert_eq!(kafka.probe_topic.as_deref(), Some("apizee.ticket.create"));
    let per_object = self::kafka(&["--topic-template", "{prefix}.{object}.{objectId}"]);
    assert_eq!(per_object.probe_topic, None);
}

#[test]
fn kafka_options_are_key_value_pairs() {
    let kafka = kafka(&[
        "--kafka-brokers",
        " k1:9092 , k2:9092 ",
        "--kafka-option",
        "security.protocol=SASL_SSL",
        "--kafka-option",
        "sasl.password=p=ss;linger.ms=5",
    ]);
    assert_eq!(kafka.brokers, "k1:9092,k2:9092");
    let pairs: Vec<(&str, &str)> = kafka
        .options
        .iter()
        .map(|o| (o.key.as_str(), o.value.expose()))
        .collect();
    // ';' separates options (for the env var); '=' inside a value is kept.
    assert_eq!(
        pairs,
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "p=ss"),
            ("linger.ms", "5"),
        ]
    );
    assert!(!format!("{kafka:?}").contains("p=ss"));
}

#[test]
fn kafka_option_errors_name_the_flag_not_the_value() {
    for option in ["no-equals-secret", "=secret"] {
        let error = error(&["--sink", "kafka", "--kafka-option", option]);
        assert_eq!(error.flag, "--kafka-option");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}

#[test]
fn kafka_topic_creation() {
    let creation = kafka(&[
        "--kafka-create-topics",
        "--kafka-partitions",
        "6",
        "--kafka-replication-factor",
        "1",
    ])
    .create_topics
    .expect("topic creation");
    assert_eq!(creation.topics.len(), 15);
    assert!(creation.topics.contains(&"apizee.ticket.update".to_owned()));
    assert_eq!((creation.partitions, creation.replication_factor), (6, 1));

    for (args, flag) in [
        (vec!["--kafka-partitions", "0"], "--kafka-partitions"),
        (
            vec!["--kafka-replication-factor", "0"],
            "--kafka-replication-factor",
        ),
        (
            vec!["--topic-template", "{prefix}.{objectId}"],
            "--kafka-create-topics",
        ),
    ] {
        let args: Vec<&str> = ["--sink", "kafka", "--kafka-create-topics"]
            .into_iter()
            .chain(args)
            .collect();
        assert_eq!(error(&args).flag, flag, "{args:?}");
    }
}

fn nats_error(args: &[&str]) -> ConfigError {
    let args: Vec<&str> = ["--sink", "nats"].iter().chain(args).copied().collect();
    error(&args)
}

fn clap_error(args: &[&str]) -> ErrorKind {
    match Cli::try_parse_from(std::iter::once("apizee-bridge").chain(args.iter().copied())) {
        Err(e) => e.kind(),
        Ok(cli) => panic!("clap should refuse {args:?}, got {cli:?}"),
    }
}

fn headers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, HeaderValue::from_static(value));
    map
}

fn config_error(flag: &'static str, reason: &str) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Defaults and overrides

#[test]
fn defaults() {
    let settings = settings(&[]);
    assert_eq!(settings.http.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        settings.http.metrics_listen,
        "0.0.0.0:9090".parse().unwrap()
    );
    assert_eq!(settings.http.path, "/webhooks");
    assert_eq!(settings.http.max_body_bytes, 262_144);
    assert_eq!(settings.delivery.publish_timeout, Duration::from_secs(5));
    assert_eq!(settings.http.retry_after_secs, 5);
    assert!(!settings.routing.rules.strict);
    assert!(!settings.routing.rules.object_id_in_topic);
    assert_eq!(
        settings.routing.template.to_string(),
        "apizee.{object}.{event}"
    );
    let guard = &settings.guard;
    assert!(guard.shared_secret.is_none() && guard.basic.is_none() && guard.signature.is_none());
    assert!(guard.source.is_none() && guard.user_agent.is_none());
    assert_eq!(settings.http.drain.timeout, Duration::from_secs(20));
    assert_eq!(settings.http.drain.delay, Duration::from_secs(5));
    assert_eq!(settings.delivery.startup_timeout, Duration::from_secs(10));
    assert!(matches!(settings.sink, SinkSettings::Stdout));
    assert_eq!(settings.log_format, LogFormat::Text);
    assert_eq!(settings.log_level, "info");
}

#[test]
fn nats_defaults() {
    let nats = nats(&[]);
    assert_eq!(nats.urls, vec!["nats://127.0.0.1:4222"]);
    assert!(!nats.jetstream);
    assert_eq!(nats.stream, None);
    assert!(matches!(nats.auth, NatsAuth::None));
    assert_eq!(nats.ca_file, None);
    assert_eq!(nats.client_cert, None);
    assert_eq!(nats.publish_timeout, Duration::from_secs(5));
}

#[test]
fn every_plain_flag_is_applied() {
    let settings = settings(&[
        "--listen",
        "127.0.0.1:8081",
        "--path",
        "/apizeehooks/",
        "--metrics-listen",
        "[::1]:9091",
        "--max-body-bytes",
        "1",
        "--publish-timeout",
        "750ms",
        "--retry-after",
        "2s",
        "--shutdown-timeout",
        "1m",
        "--strict",
        "--topic-prefix",
        "acme",
        "--topic-template",
        "{prefix}.{object}.{objectId}",
        "--log-format",
        "json",
        "--log-level",
        "apizee_bridge=debug",
    ]);
    assert_eq!(settings.http.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(settings.http.metrics_listen, "[::1]:9091".parse().unwrap());
    assert_eq!(settings.http.path, "/apizeehooks/");
    assert_eq!(settings.http.max_body_bytes, 1);
    assert_eq!(
        settings.delivery.publish_timeout,
        Duration::from_millis(750)
    );
    assert_eq!(settings.http.retry_after_secs, 2);
    assert_eq!(settings.http.drain.timeout, Duration::from_secs(60));
    assert!(settings.routing.rules.strict);
    assert!(settings.routing.rules.object_id_in_topic);
    assert_eq!(
        settings.routing.template.to_string(),
        "acme.{object}.{objectId}"
    );
    assert_eq!(settings.log_format, LogFormat::Json);
    assert_eq!(settings.log_level, "apizee_bridge=debug");
}

#[test]
fn retry_after_is_rounded_up_to_whole_seconds_and_at_least_one() {
    for (flag, secs) in [
        ("0s", 1),
        ("100ms", 1),
        ("1s", 1),
        ("1001ms", 2),
        ("1500ms", 2),
        ("2m", 120),
    ] {
        assert_eq!(
            settings(&["--retry-after", flag]).http.retry_after_secs,
            secs,
            "{flag}"
        );
    }
}

#[test]
fn nats_publish_timeout_follows_the_flag() {
    assert_eq!(
        nats(&["--publish-timeout", "2s"]).publish_timeout,
        Duration::from_secs(2)
    );
}

// ---------------------------------------------------------------------------
// What clap refuses before Settings sees it

#[test]
fn clap_refuses_values_of_the_wrong_type() {
    for (args, kind) in [
        (
            &["--listen", "not-an-address"][..],
            ErrorKind::ValueValidation,
        ),
        (&["--listen", "8080"], ErrorKind::ValueValidation),
        (
            &["--metrics-listen", "localhost"],
            ErrorKind::ValueValidation,
        ),
        (&["--max-body-bytes=-1"], ErrorKind::ValueValidation),
        (&["--max-body-bytes", "1k"], ErrorKind::ValueValidation),
        (&["--publish-timeout", "5"], ErrorKind::ValueValidation),
        (&["--publish-timeout", "soon"], ErrorKind::ValueValidation),
        (&["--retry-after=-1s"], ErrorKind::ValueValidation),
        (&["--shutdown-timeout", ""], ErrorKind::ValueValidation),
        (&["--sink", "pulsar"], ErrorKind::InvalidValue),
        (&["--kafka-partitions", "many"], ErrorKind::ValueValidation),
        (&["--log-format", "xml"], ErrorKind::InvalidValue),
        (&["--no-such-flag"], ErrorKind::UnknownArgument),
    ] {
        assert_eq!(clap_error(args), kind, "{args:?}");
    }
}

#[test]
fn duration_errors_show_examples() {
    let error = Cli::try_parse_from(["apizee-bridge", "--publish-timeout", "5"])
        .expect_err("no unit")
        .to_string();
    assert!(error.contains("--publish-timeout"), "{error}");
    assert!(error.contains("(examples: 500ms, 5s, 1m)"), "{error}");
}

// ---------------------------------------------------------------------------
// ConfigError: one per rule, each naming its flag

#[test]
fn path_must_start_with_a_slash() {
    for path in ["webhooks", "", "webhooks/"] {
        assert_eq!(
            error(&["--path", path]),
            config_error("--path", "must start with '/'"),
            "{path:?}"
        );
    }
    assert_eq!(
        error(&["--path", "webhooks"]).to_string(),
        "invalid --path: must start with '/'"
    );
}

#[test]
fn dead_letter_topic() {
    assert_eq!(settings(&[]).dead_letter, None);
    let dead = settings(&[
        "--dead-letter-topic",
        "apizee.dlq",
        "--dead-letter-malformed",
    ])
    .dead_letter
    .expect("dead letters configured");
    assert_eq!((dead.topic.as_str(), dead.malformed), ("apizee.dlq", true));
    assert_eq!(
        error(&["--dead-letter-topic", "bad topic"]).flag,
        "--dead-letter-topic"
    );
    assert_eq!(
        error(&["--dead-letter-malformed"]).flag,
        "--dead-letter-malformed"
    );
}

#[test]
fn client_limits() {
    let limits = settings(&[]).http.limits;
    assert_eq!(limits.max_connections, 4096);
    assert_eq!(limits.max_header_bytes, 16 * 1024);
    assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(limits.body_read_timeout, Duration::from_secs(30));
    for (args, flag) in [
        (["--max-connections", "0"], "--max-connections"),
        (["--max-header-bytes", "100"], "--max-header-bytes"),
        (["--header-read-timeout", "0s"], "--header-read-timeout"),
        (["--body-read-timeout", "0s"], "--body-read-timeout"),
    ] {
        assert_eq!(error(&args).flag, flag);
    }
}

#[test]
fn spool_settings() {
    assert_eq!(settings(&[]).spool, None);
    let spool = settings(&["--spool-dir", "/var/lib/x", "--spool-max-bytes", "1000"]).spool;
    assert_eq!(
        spool,
        Some(crate::spool::SpoolSettings {
            dir: "/var/lib/x".into(),
            max_bytes: 1000
        })
    );
    assert_eq!(
        error(&["--spool-dir", "/x", "--spool-max-bytes", "0"]).flag,
        "--spool-max-bytes"
    );
}

#[test]
fn max_in_flight_must_be_positive() {
    assert_eq!(error(&["--max-in-flight", "0"]).flag, "--max-in-flight");
    assert_eq!(settings(&[]).http.max_in_flight, 1024);
    assert_eq!(settings(&["--max-in-flight", "7"]).http.max_in_flight, 7);
}

#[test]
fn max_body_bytes_must_be_positive() {
    assert_eq!(
        error(&["--max-body-bytes", "0"]),
        config_error("--max-body-bytes", "must be at least 1")
    );
}

#[test]
fn publish_timeout_must_be_positive() {
    assert_eq!(
        error(&["--publish-timeout", "0s"]),
        config_error("--publish-timeout", "must be more than 0")
    );
}

#[test]
fn bad_templates_name_the_template_flag_with_the_reason() {
    for (template, reason) in [
        (
            "{prefix}.{nope}",
            TemplateError::UnknownPlaceholder("nope".into()),
        ),
        ("{prefix}.{object", TemplateError::Unclosed),
        (
            "{prefix}.*.{event}",
            TemplateError::InvalidTopic("apizee.*.create".into()),
        ),
        (
            "{prefix}..{event}",
            TemplateError::InvalidTopic("apizee..create".into()),
        ),
    ] {
        assert_eq!(
            error(&["--topic-template", template]),
            config_error("--topic-template", &reason.to_string()),
            "{template:?}"
        );
    }
}

#[test]
fn bad_prefixes_name_the_prefix_flag() {
    for (prefix, produced) in [
        ("my app", "my app.ticket.create"),
        ("", ".ticket.create"),
        ("apizee.>", "apizee.>.ticket.create"),
    ] {
        assert_eq!(
            error(&["--topic-prefix", prefix]),
            config_error(
                "--topic-prefix",
                &TemplateError::InvalidTopic(produced.into()).to_string()
            ),
            "{prefix:?}"
        );
    }
    // A template that is wrong on its own is still the template's fault.
    assert_eq!(
        error(&[
            "--topic-prefix",
            "my app",
            "--topic-template",
            "{prefix}.{x}"
        ])
        .flag,
        "--topic-template"
    );
}

#[test]
fn template_without_prefix_placeholder_ignores_the_prefix() {
    let settings = settings(&[
        "--topic-template",
        "hooks.{object}",
        "--topic-prefix",
        "a b",
    ]);
    assert_eq!(settings.routing.template.to_string(), "hooks.{object}");
}

// ---------------------------------------------------------------------------
// Webhook authentication

#[test]
fn auth_token_needs_auth_header() {
    assert_eq!(
        error(&["--auth-token", "s3cret"]),
        config_error(
            "--auth-header",
            "is required with --auth-token or --auth-token-file: name the header that \
             carries the secret"
        )
    );
}

#[test]
fn auth_header_needs_a_token() {
    let expected = config_error(
        "--auth-token",
        "no token given for --auth-header: set --auth-token or --auth-token-file",
    );
    assert_eq!(error(&["--auth-header", "X-Apizee-Secret"]), expected);
    // Empty tokens do not count.
    assert_eq!(
        error(&["--auth-header", "X-Apizee-Secret", "--auth-token", ""]),
        expected
    );
    assert_eq!(
        error(&["--auth-header", "X-Apizee-Secret", "--auth-token", ",,"]),
        expected
    );
}

#[test]
fn auth_header_must_be_a_valid_header_name() {
    assert_eq!(
        error(&["--auth-header", "X Secret", "--auth-token", "s3cret"]),
        config_error(
            "--auth-header",
            "\"X Secret\" is not a valid HTTP header name"
        )
    );
}

#[test]
fn auth_tokens_from_commas_and_repeated_flags() {
    let settings = settings(&[
        "--auth-header",
        "X-Apizee-Secret",
        "--auth-token",
        "old,new",
        "--auth-token",
        "newest",
    ]);
    let auth = settings.guard.shared_secret.expect("auth configured");
    assert_eq!(auth.header().as_str(), "x-apizee-secret");
    for token in ["old", "new", "newest"] {
        assert!(auth.allows(&headers("x-apizee-secret", token)), "{token}");
    }
    for token in ["old,new", "", "other"] {
        assert!(!auth.allows(&headers("x-apizee-secret", token)), "{token}");
    }
    assert_eq!(
        format!("{auth:?}"),
        r#"SharedSecret { header: "x-apizee-secret", tokens: 3 }"#
    );
}

#[test]
fn auth_token_file_skips_comments_and_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "# rotated 2024-05\n\n   \n  first-token  \nsecond-token\r\n#third-token\n\tthird\t\n",
    )
    .unwrap();
    let settings = settings(&[
        "--auth-header",
        "Authorization",
        "--auth-token-file",
        file.to_str().unwrap(),
    ]);
    let auth = settings.guard.shared_secret.expect("auth configured");
    assert_eq!(
        format!("{auth:?}"),
        r#"SharedSecret { header: "authorization", tokens: 3 }"#
    );
    for token in ["first-token", "second-token", "third", "Bearer third"] {
        assert!(auth.allows(&headers("authorization", token)), "{token}");
    }
    for token in [
        "# rotated 2024-05",
        "#third-token",
        "third-token",
        "  first-token  ",
        "second-token\r",
    ] {
        // Some of these cannot even be header values; skip those.
        if let Ok(value) = HeaderValue::from_str(token) {
            let mut map = HeaderMap::new();
            map.insert("authorization", value);
            assert!(!auth.allows(&map), "{token:?}");
        }
    }
}

#[test]
fn auth_token_file_adds_to_auth_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "from-file\n").unwrap();
    let settings = settings(&[
        "--auth-header",
        "X-Token",
        "--auth-token",
        "from-flag",
        "--auth-token-file",
        file.to_str().unwrap(),
    ]);
    let auth = settings.guard.shared_secret.expect("auth configured");
    assert!(auth.allows(&headers("x-token", "from-flag")));
    assert!(auth.allows(&headers("x-token", "from-file")));
}

#[test]
fn auth_token_file_with_only_comments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# nothing yet\n\n").unwrap();
    let path = file.to_str().unwrap();
    // An empty file must never mean "no authentication", with or without a
    // header, and even when --auth-token gives other tokens.
    for args in [
        vec!["--auth-header", "X-Token", "--auth-token-file", path],
        vec!["--auth-token-file", path],
        vec![
            "--auth-header",
            "X-Token",
            "--auth-token",
            "t",
            "--auth-token-file",
            path,
        ],
    ] {
        let error = error(&args);
        assert_eq!(error.flag, "--auth-token-file", "{args:?}");
        assert!(error.reason.contains("holds no token"), "{}", error.reason);
    }
}

#[test]
fn auth_token_file_without_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "tok\n").unwrap();
    assert_eq!(
        error(&["--auth-token-file", file.to_str().unwrap()]).flag,
        "--auth-header"
    );
}

#[test]
fn unreadable_auth_token_file_names_the_flag_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let error = error(&["--auth-header", "X-Token", "--auth-token-file", missing]);
    assert_eq!(error.flag, "--auth-token-file");
    assert!(
        error
            .reason
            .starts_with(&format!("cannot read {missing}: ")),
        "{}",
        error.reason
    );
    // A directory is not a file either.
    let error = super::tests::error(&[
        "--auth-header",
        "X-Token",
        "--auth-token-file",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(error.flag, "--auth-token-file");
}

#[test]
fn unreadable_auth_token_file_is_refused_even_without_header() {
    assert_eq!(
        error(&["--auth-token-file", "/nonexistent/apizee-bridge/tokens"]).flag,
        "--auth-token-file"
    );
}

// ---------------------------------------------------------------------------
// NATS

#[test]
fn nats_urls_are_split_trimmed_and_required() {
    assert_eq!(
        nats(&["--nats-url", "nats://a:4222, nats://b:4222 ,,"]).urls,
        vec!["nats://a:4222", "nats://b:4222"]
    );
    for urls in ["", " ", " , ,"] {
        assert_eq!(
            nats_error(&["--nats-url", urls]),
            config_error("--nats-url", "names no server"),
            "{urls:?}"
        );
    }
}

#[test]
fn nats_stream_needs_jetstream() {
    assert_eq!(
        nats_error(&["--nats-stream", "APIZEE"]),
        config_error(
            "--nats-stream",
            "needs --nats-jetstream: only JetStream publishes are stored"
        )
    );
}

#[test]
fn nats_stream_captures_the_template_head() {
    let js = nats(&["--nats-jetstream", "--nats-stream", "APIZEE"]);
    assert!(js.jetstream);
    assert_eq!(
        js.stream,
        Some(StreamSettings {
            name: "APIZEE".to_owned(),
            subjects: vec!["apizee.>".to_owned()],
        })
    );
    let js = nats(&[
        "--nats-jetstream",
        "--nats-stream",
        "ACME",
        "--topic-prefix",
        "acme.prod",
    ]);
    assert_eq!(
        js.stream,
        Some(StreamSettings {
            name: "ACME".to_owned(),
            subjects: vec!["acme.prod.>".to_owned()],
        })
    );
    // JetStream without a stream: publish to a stream managed elsewhere.
    let js = nats(&["--nats-jetstream"]);
    assert!(js.jetstream);
    assert_eq!(js.stream, None);
}

#[test]
fn nats_stream_needs_a_fixed_first_token() {
    let error = nats_error(&[
        "--nats-jetstream",
        "--nats-stream",
        "ALL",
        "--topic-template",
        "{object}.{event}",
    ]);
    assert_eq!(
        error,
        config_error(
            "--nats-stream",
            "the topic template {object}.{event} does not start with a fixed token, so no \
             stream subject can cover it without capturing every subject"
        )
    );
}

#[test]
fn nats_auth_methods() {
    assert!(matches!(
        nats(&["--nats-creds-file", "/etc/nats/bridge.creds"]).auth,
        NatsAuth::CredsFile(path) if path.as_os_str() == "/etc/nats/bridge.creds"
    ));
    assert!(matches!(
        nats(&["--nats-nkey-seed", "SUAEXAMPLESEED"]).auth,
        NatsAuth::NkeySeed(seed) if seed.expose() == "SUAEXAMPLESEED"
    ));
    assert!(matches!(
        nats(&["--nats-token", "tok"]).auth,
        NatsAuth::Token(token) if token.expose() == "tok"
    ));
    assert!(matches!(
        nats(&["--nats-user", "bridge", "--nats-password", "pw"]).auth,
        NatsAuth::UserPassword { user, password } if user == "bridge" && password.expose() == "pw"
    ));
}

#[test]
fn two_nats_auth_methods_are_refused_naming_a_flag_that_was_given() {
    let reason = "choose one NATS authentication: --nats-creds-file, --nats-nkey-seed, \
                  --nats-token, or --nats-user with --nats-password";
    let methods: [(&str, &[&str]); 5] = [
        ("--nats-creds-file", &["--nats-creds-file", "/c"]),
        ("--nats-nkey-seed", &["--nats-nkey-seed", "SU"]),
        ("--nats-token", &["--nats-token", "t"]),
        ("--nats-user", &["--nats-user", "u", "--nats-password", "p"]),
        ("--nats-password", &["--nats-password", "p"]),
    ];
    for (i, (first, first_args)) in methods.iter().enumerate() {
        for (second, second_args) in &methods[i + 1..] {
            if *first == "--nats-user" && *second == "--nats-password" {
                continue; // the same method
            }
            let args: Vec<&str> = first_args.iter().chain(*second_args).copied().collect();
            let error = nats_error(&args);
            // The first given, in the order the reason lists them.
            assert_eq!(error, config_error(first, reason), "{second} after {first}");
        }
    }
}

#[test]
fn nats_user_and_password_go_together() {
    assert_eq!(
        nats_error(&["--nats-user", "bridge"]),
        config_error("--nats-user", "needs --nats-password")
    );
    assert_eq!(
        nats_error(&["--nats-password", "pw"]),
        config_error("--nats-password", "needs --nats-user")
    );
}

#[test]
fn nats_tls_files() {
    let tls = nats(&[
        "--nats-ca-file",
        "/tls/ca.pem",
        "--nats-client-cert",
        "/tls/cert.pem",
        "--nats-client-key",
        "/tls/key.pem",
    ]);
    assert_eq!(tls.ca_file, Some(PathBuf::from("/tls/ca.pem")));
    assert_eq!(
        tls.client_cert,
        Some((
            PathBuf::from("/tls/cert.pem"),
            PathBuf::from("/tls/key.pem")
        ))
    );
    assert_eq!(nats(&["--nats-ca-file", "/tls/ca.pem"]).client_cert, None);
}

#[test]
fn nats_client_cert_and_key_go_together() {
    assert_eq!(
        nats_error(&["--nats-client-cert", "/tls/cert.pem"]),
        config_error("--nats-client-cert", "needs --nats-client-key")
    );
    assert_eq!(
        nats_error(&["--nats-client-key", "/tls/key.pem"]),
        config_error("--nats-client-key", "needs --nats-client-cert")
    );
}

// ---------------------------------------------------------------------------
// Secrets

#[test]
fn settings_debug_never_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "file-token-value\n").unwrap();
    let file = file.to_str().unwrap();
    let secrets = [
        "flag-token-value",
        "file-token-value",
        "nats-token-value",
        "nats-password-value",
        "SUNKEYSEEDVALUE",
    ];
    let webhook_auth = [
        "--auth-header",
        "X-Token",
        "--auth-token",
        "flag-token-value",
        "--auth-token-file",
        file,
        "--sink",
        "nats",
    ];
    for nats_auth in [
        &["--nats-token", "nats-token-value"][..],
        &[
            "--nats-user",
            "bridge",
            "--nats-password",
            "nats-password-value",
        ],
        &["--nats-nkey-seed", "SUNKEYSEEDVALUE"],
    ] {
        let args: Vec<&str> = webhook_auth.iter().chain(nats_auth).copied().collect();
        let settings = settings(&args);
        for shown in [format!("{settings:?}"), format!("{settings:#?}")] {
            for secret in secrets {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("Secret(..)"), "{shown}");
            assert!(shown.contains("tokens: 2"), "{shown}");
        }
    }
}

// ---------------------------------------------------------------------------
// clap metadata: env vars for every flag

#[test]
fn every_flag_has_its_env_var() {
    let command = Cli::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("{id} has no long flag"));
        let expected = format!("APIZEE_BRIDGE_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().and_then(|env| env.to_str()),
            Some(expected.as_str()),
            "--{long}"
        );
        checked += 1;
    }
    assert_eq!(checked, 66);
}

#[test]
fn env_values_of_secret_flags_are_hidden_from_help() {
    let command = Cli::command();
    let secret_flags = [
        "nats-nkey-seed",
        "nats-token",
        "nats-password",
        "auth-token",
        "kafka-option",
        "basic-auth",
        "hmac-secret",
    ];
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        assert_eq!(
            arg.is_hide_env_values_set(),
            secret_flags.contains(&long),
            "--{long}"
        );
    }
}

#[test]
fn config_error_displays_as_one_line_naming_the_flag() {
    let error = config_error("--nats-url", "names no server");
    assert_eq!(error.to_string(), "invalid --nats-url: names no server");
    assert!(!error.to_string().contains('\n'));
}

// Basic, HMAC, source and User-Agent checks

fn written(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn basic_auth_from_flags_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = written(&dir, "users", "# ops\nfile-user:pass,with,commas\n");
    let settings = settings(&["--basic-auth", "a:1,b:2", "--basic-auth-file", &file]);
    let basic = settings.guard.basic.expect("basic configured");
    assert_eq!(format!("{basic:?}"), "BasicAuth { users: 3 }");
    assert_eq!(
        error(&["--basic-auth", "nocolon"]),
        ConfigError::new(
            "--basic-auth",
            "expected USER:PASSWORD, found no ':' in an entry"
        )
    );
    let empty = written(&dir, "empty", "# none\n");
    let refused = error(&["--basic-auth-file", &empty]);
    assert_eq!(refused.flag, "--basic-auth-file");
    assert!(
        refused.reason.contains("holds no USER:PASSWORD line"),
        "{}",
        refused.reason
    );
    // Both would need the Authorization header.
    let clash = error(&[
        "--basic-auth",
        "a:1",
        "--auth-header",
        "Authorization",
        "--auth-token",
        "t",
    ]);
    assert_eq!(clash.flag, "--basic-auth");
    assert!(
        clash.reason.contains("--auth-header Authorization"),
        "{}",
        clash.reason
    );
}

#[test]
fn hmac_flags() {
    let settings = settings(&[
        "--hmac-secret",
        "k1,k2",
        "--hmac-encoding",
        "base64",
        "--hmac-timestamp-header",
        "X-Timestamp",
        "--hmac-tolerance",
        "2m",
    ]);
    let signature = settings.guard.signature.expect("signature configured");
    let shown = format!("{signature:?}");
    assert!(shown.contains(r#"header: "x-signature""#), "{shown}");
    assert!(shown.contains("keys: 2"), "{shown}");
    assert!(shown.contains("Base64"), "{shown}");
    assert!(shown.contains("120s"), "{shown}");
    assert!(!shown.contains("k1"), "{shown}");

    assert_eq!(
        error(&["--hmac-timestamp-header", "X-Timestamp"]),
        ConfigError::new(
            "--hmac-timestamp-header",
            "needs a key: set --hmac-secret or --hmac-secret-file"
        )
    );
    assert_eq!(
        error(&["--hmac-secret", "k", "--hmac-header", "bad header"]).flag,
        "--hmac-header"
    );
    assert_eq!(
        error(&[
            "--hmac-secret",
            "k",
            "--hmac-timestamp-header",
            "X-T",
            "--hmac-tolerance",
            "0s"
        ]),
        ConfigError::new("--hmac-tolerance", "must be more than 0")
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = written(&dir, "keys", "\n");
    assert_eq!(
        error(&["--hmac-secret-file", &empty]).flag,
        "--hmac-secret-file"
    );
}

#[test]
fn source_allow_list_flags() {
    let settings = settings(&[
        "--allow-cidr",
        "203.0.113.0/24, 2001:db8::/32",
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    let source = settings.guard.source.expect("source filter configured");
    let peer: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    assert!(source.allows(peer, &headers("x-forwarded-for", "203.0.113.9")));
    assert!(!source.allows(peer, &headers("x-forwarded-for", "198.51.100.9")));

    let bad = error(&["--allow-cidr", "10.1.2.3/8"]);
    assert_eq!(bad.flag, "--allow-cidr");
    assert!(
        bad.reason.contains("did you mean 10.0.0.0/8?"),
        "{}",
        bad.reason
    );
    assert_eq!(
        error(&["--allow-cidr", "10.0.0.0/8", "--trusted-proxy", "nope"]).flag,
        "--trusted-proxy"
    );
    assert_eq!(
        error(&["--trusted-proxy", "10.0.0.0/8"]),
        ConfigError::new(
            "--trusted-proxy",
            "only takes effect with --allow-cidr: add the client ranges to accept"
        )
    );
}

#[test]
fn user_agent_flag() {
    let settings = settings(&["--require-user-agent", "Cloud Apizee"]);
    assert_eq!(settings.guard.user_agent.as_deref(), Some("Cloud Apizee"));
    assert_eq!(
        error(&["--require-user-agent", ""]).flag,
        "--require-user-agent"
    );
}

#[test]
fn the_dead_letter_topic_is_created_with_the_template_topics() {
    let with = |extra: &[&str]| {
        let mut args = vec!["--kafka-create-topics"];
        args.extend_from_slice(extra);
        kafka(&args).create_topics.expect("topic creation").topics
    };
    let topics = with(&["--dead-letter-topic", "rejected"]);
    assert_eq!(topics.len(), 16);
    assert_eq!(topics.last().map(String::as_str), Some("rejected"));
    // Named like a template topic: made once.
    let topics = with(&["--dead-letter-topic", "apizee.ticket.update"]);
    assert_eq!(topics.len(), 15);
}

#[test]
fn the_managed_stream_captures_the_dead_letter_subject() {
    let subjects = |extra: &[&str]| {
        let mut args = vec!["--nats-jetstream", "--nats-stream", "APIZEE"];
        args.extend_from_slice(extra);
        nats(&args).stream.expect("a stream").subjects
    };
    // Inside the prefix, "apizee.>" captures it already; a stream refuses
    // overlapping subjects, so it is not listed twice.
    assert_eq!(
        subjects(&["--dead-letter-topic", "apizee.dead-letter"]),
        ["apizee.>"]
    );
    assert_eq!(
        subjects(&["--dead-letter-topic", "dead.apizee"]),
        ["apizee.>", "dead.apizee"]
    );
}

#[test]
fn refusal_budgets_must_hold_something() {
    for (args, flag) in [
        (
            &["--max-unauthenticated-in-flight", "0"][..],
            "--max-unauthenticated-in-flight",
        ),
        (
            &["--dead-letter-topic", "dlq", "--dead-letter-queue", "0"][..],
            "--dead-letter-queue",
        ),
    ] {
        assert_eq!(error(args).flag, flag);
    }
    let settings = settings(&["--dead-letter-topic", "dlq"]);
    assert_eq!(settings.http.max_unauthenticated_in_flight, 64);
    assert_eq!(settings.dead_letter.map(|d| d.queue), Some(128));
}

#[test]
fn otlp_export_is_off_unless_an_endpoint_is_given() {
    assert!(settings(&[]).otlp.is_none());
    let otlp = settings(&["--otlp-endpoint", "http://otel-collector:4318"])
        .otlp
        .unwrap_or_else(|| panic!("no OTLP settings"));
    assert_eq!(otlp.endpoint, "http://otel-collector:4318/v1/traces");
    assert_eq!(otlp.service_name, "apizee-bridge");
    assert!(otlp.roots.is_none());
    let named = settings(&[
        "--otlp-endpoint",
        "http://127.0.0.1:4318/v1/traces",
        "--otlp-service-name",
        "bridge-eu",
    ]);
    assert_eq!(
        named.otlp.map(|o| o.service_name).as_deref(),
        Some("bridge-eu")
    );
    // A service name alone would export nowhere: refused, not ignored.
    assert_eq!(
        clap_error(&["--otlp-service-name", "bridge-eu"]),
        ErrorKind::MissingRequiredArgument
    );
    let refused = error(&["--otlp-endpoint", "collector:4318"]);
    assert_eq!(refused.flag, "--otlp-endpoint");
    // A CA is for https, and must be a CA file.
    let plain = error(&[
        "--otlp-endpoint",
        "http://c:4318",
        "--otlp-ca-file",
        "/dev/null",
    ]);
    assert_eq!(plain.flag, "--otlp-ca-file");
    let missing = error(&[
        "--otlp-endpoint",
        "https://c:4318",
        "--otlp-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(missing.flag, "--otlp-ca-file");
    assert!(missing.reason.contains("cannot be read"), "{missing}");
    let not_pem = error(&[
        "--otlp-endpoint",
        "https://c:4318",
        "--otlp-ca-file",
        "/dev/null",
    ]);
    assert!(not_pem.reason.contains("no PEM certificate"), "{not_pem}");
    let empty = error(&[
        "--otlp-endpoint",
        "http://c:4318",
        "--otlp-service-name",
        " ",
    ]);
    assert_eq!(empty.flag, "--otlp-service-name");
}
