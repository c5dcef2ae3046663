//! docs/asyncapi.yaml as a consumer team uses it: models generated with
//! Modelina (tests/contract/modelina/generate.mjs, pinned by its
//! package-lock.json), then every valid sample and the headers the bridge
//! would publish for it, and every dead letter the invalid samples would
//! make, read with them: the Python models (pydantic) and the TypeScript
//! ones (compiled with tsc, run with node). Each must parse, with every
//! field under its own name and with its value; a failure names the sample
//! and the field. Rust consumers validate with the docs/schema JSON Schemas
//! themselves: schemas.rs does that over the same samples.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use apizee_bridge::envelope::{self, EnvelopeError, Rules};
use apizee_bridge::http::rejection::Rejection;
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, Message, TopicTemplate};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::schemas::{invalid_samples, valid_samples};
use crate::support::process::output_within;
use crate::support::{missing_tool, tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Samples the TypeScript models cannot read, a Modelina 5.10.1 bug: a
/// nullable nested object (`"type": ["object", "null"]`) gets a class whose
/// `unmarshal` reads the null as an object (`Cannot read properties of
/// null`). The schema cannot say it otherwise without moving where it
/// reports errors (an `anyOf` reports at the parent). Checked to still fail,
/// so the list goes when the bug does.
const KNOWN_TYPESCRIPT_FAILURES: [&str; 2] = [
    "valid/media-delete-null-parent.json:",
    "valid/ticket-update-null-props.json:",
];

/// Where `.ci/tools/modelina.sh` installs the npm packages and pydantic.
fn tools() -> (PathBuf, PathBuf) {
    let root = Path::new(ROOT).join("target/tools");
    let npm = root.join("modelina");
    let python = root.join("modelina-python/bin/python");
    let installed = ["@asyncapi/modelina", "@asyncapi/parser", "typescript"]
        .iter()
        .all(|package| npm.join("node_modules").join(package).is_dir());
    if !installed || !python.is_file() {
        missing_tool(format!(
            "Modelina, TypeScript (npm) or pydantic (PyPI) not found in {}: install them \
             with `bash .ci/tools/modelina.sh` (bash .ci/test does)",
            root.display()
        ));
    }
    (npm, python)
}

fn headers_of(message: &Message) -> Value {
    message
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), Value::from(value.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// What the models read: each valid sample with the headers the bridge
/// publishes it with (and `Nats-Msg-Id`, as JetStream adds it), and the
/// headers of the dead letter each invalid sample, and a body that is not
/// JSON, would make.
fn cases() -> Vec<Value> {
    let template = TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").unwrap();
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_632_144_306_730);
    let mut cases = Vec::new();
    for (name, bytes) in valid_samples() {
        let env = envelope::parse(&bytes, Rules::default()).unwrap();
        let body = String::from_utf8(bytes.clone()).expect("samples are UTF-8");
        let message = route::build_message(&env, Bytes::from(bytes), &template, None, received_at)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut headers = headers_of(&message);
        headers["Nats-Msg-Id"] = message.event_id.clone().into();
        cases.push(json!({"name": name, "kind": "webhook", "body": body, "headers": headers}));
    }
    let mut refused: Vec<(String, Rejection, Vec<u8>)> = invalid_samples()
        .into_iter()
        .filter_map(
            |(name, bytes)| match envelope::parse(&bytes, Rules::default()) {
                Err(EnvelopeError::Invalid(problems)) => {
                    Some((name, Rejection::InvalidEnvelope(problems), bytes))
                }
                _ => None,
            },
        )
        .collect();
    refused.push((
        "not JSON".to_owned(),
        Rejection::MalformedJson("expected value at line 1 column 1".to_owned()),
        b"event=update".to_vec(),
    ));
    for (name, rejection, bytes) in refused {
        let details = serde_json::to_string(&rejection.details()).unwrap();
        let message = route::dead_letter_message(
            "apizee.dead-letter",
            Bytes::from(bytes),
            rejection.code(),
            &details,
            received_at,
        );
        cases.push(json!({
            "name": format!("dead letter of {name}"),
            "kind": "dead-letter",
            "headers": headers_of(&message),
        }));
    }
    cases
}

/// How long one step (generating the models, compiling them, reading the
/// samples) may take: a hang guard; each takes seconds.
const STEP_DEADLINE: Duration = Duration::from_secs(180);

/// Runs `command`; its output, or a failure that shows it. A hang fails the
/// test with what it printed.
fn run(what: &str, command: &mut Command) -> Result<String, String> {
    let out = output_within(command, STEP_DEADLINE);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({}):\n{text}", out.status))
    }
}

#[test]
fn generated_models_read_every_sample_and_its_headers() {
    let (npm, python) = tools();
    let node = tool("node", "NODE", "nodejs");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path();
    let cases_file = out.join("cases.json");
    let cases = cases();
    std::fs::write(&cases_file, serde_json::to_vec(&cases).unwrap()).unwrap();

    let models = run(
        "generate.mjs",
        Command::new(&node)
            .arg(Path::new(ROOT).join("tests/contract/modelina/generate.mjs"))
            .arg(&npm)
            .arg(Path::new(ROOT).join("docs/asyncapi.yaml"))
            .arg(out),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A schema without a title gets a model named AnonymousSchema_<n>.
    let mut names: Vec<&str> = models.lines().collect();
    names.sort();
    assert!(!models.contains("Anonymous"), "untitled schemas: {names:?}");
    for expected in [
        "python TicketWebhook",
        "python WebhookHeaders",
        "python DeadLetterHeaders",
        "typescript ConversationEventWebhook",
        "typescript WebhookHeaders",
        "typescript DeadLetterHeaders",
    ] {
        assert!(names.contains(&expected), "no {expected} in {names:?}");
    }

    let mut failures = Vec::new();
    if let Err(e) = run(
        "read_samples.py",
        Command::new(&python)
            .arg(Path::new(ROOT).join("tests/contract/modelina/read_samples.py"))
            .arg(out.join("python"))
            .arg(&cases_file),
    ) {
        failures.push(e);
    }

    let typescript = out.join("typescript");
    std::fs::copy(
        Path::new(ROOT).join("tests/contract/modelina/read_samples.ts"),
        typescript.join("read_samples.ts"),
    )
    .unwrap();
    // Strict, but for null checks: Modelina 5.10.1 types a nullable object
    // (`"type": ["object", "null"]`: ticket geoloc, media _parent) as never
    // null, which tsc --strict refuses in its own marshal().
    let compiled = run(
        "tsc",
        Command::new(&node)
            .arg(npm.join("node_modules/typescript/bin/tsc"))
            .args(["--strict", "--strictNullChecks", "false"])
            .args([
                "--target", "es2022", "--module", "commonjs", "--lib", "es2022",
            ])
            .arg("--outDir")
            .arg(out.join("js"))
            .arg(typescript.join("read_samples.ts")),
    );
    if let Err(e) = compiled {
        failures.push(e);
    } else {
        let read = output_within(
            Command::new(&node)
                .arg(out.join("js/read_samples.js"))
                .arg(&cases_file),
            STEP_DEADLINE,
        );
        let problems = String::from_utf8_lossy(&read.stdout).into_owned();
        let (known, unknown): (Vec<&str>, Vec<&str>) = problems.lines().partition(|line| {
            KNOWN_TYPESCRIPT_FAILURES
                .iter()
                .any(|k| line.starts_with(k))
        });
        for sample in KNOWN_TYPESCRIPT_FAILURES {
            assert!(
                known.iter().any(|line| line.starts_with(sample)),
                "{sample} now reads with the TypeScript models: take it off KNOWN_TYPESCRIPT_FAILURES"
            );
        }
        if !unknown.is_empty() {
            failures.push(format!(
                "TypeScript models:\n{}\n{}",
                unknown.join("\n"),
                String::from_utf8_lossy(&read.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
