//! docs/schema/*.json and docs/asyncapi.yaml describe what the bridge accepts
//! and publishes. These tests hold them to the code: every sample in
//! tests/samples/valid must pass the schemas and the bridge's own validator,
//! every sample in tests/samples/invalid must fail both, and the AsyncAPI
//! document must name the topics, headers and key that `route` produces.
//!
//! Schemas are loaded from disk and resolved offline: their `$id`s are
//! relative (`ticket.json`), registered here under one base URI, and nothing
//! is ever fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use apizee_bridge::envelope::{self, ENUM_FIELDS, EnvelopeError, Event, ObjectKind, Rules};
use apizee_bridge::http::rejection::{Kind, Rejection};
use apizee_bridge::route::{self, DEFAULT_TEMPLATE, Message, TopicTemplate, header};
use bytes::Bytes;
use jsonschema::error::ValidationErrorKind;
use jsonschema::{Registry, Retrieve, Uri, Validator};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the schema files are registered; their relative `$id`s and `$ref`s
/// resolve against it. Never fetched.
const BASE: &str = "json-schema:///docs/schema/";

const SCHEMA_FILES: [&str; 6] = [
    "envelope.json",
    "ticket.json",
    "media.json",
    "conversation.json",
    "smsmessage.json",
    "conversationevent.json",
];

/// The two examples of the platform's spec, shared with the unit tests.
const SPEC_SAMPLES: [&str; 2] = ["spec-ticket.json", "spec-conversation.json"];

/// The header JetStream messages also carry (async-nats's name for it),
/// equal to `apizee-event-id`; optional, as Kafka and core NATS have none.
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Every header `route::build_message` sets.
const HEADERS: [&str; 7] = [
    header::CONTENT_TYPE,
    header::EVENT,
    header::OBJECT,
    header::OBJECT_ID,
    header::TIME,
    header::RECEIVED_AT,
    header::EVENT_ID,
];

fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `.json` files of a directory, sorted, as (file name, path).
fn json_files(dir: &str) -> Vec<(String, PathBuf)> {
    let dir = path(dir);
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no .json file", dir.display());
    files
}

/// Refuses every retrieval: a `$ref` that is not one of the registered
/// schema files must fail the build, not reach the disk or the network.
struct NoRetrieval;

impl Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is not a file of docs/schema/; nothing is fetched").into())
    }
}

struct Schemas {
    envelope: Validator,
    objects: BTreeMap<&'static str, Validator>,
    /// The parsed files, by file name.
    documents: BTreeMap<&'static str, Value>,
}

impl Schemas {
    fn object(&self, object: &str) -> &Validator {
        self.objects
            .get(object)
            .unwrap_or_else(|| panic!("no schema for object {object:?}"))
    }
}

/// A validator that asserts `format` (only an annotation by default in
/// draft 2020-12) and resolves against the registered files only.
fn build(registry: &Registry<'_>, uri: &str) -> Validator {
    jsonschema::options()
        .with_registry(registry)
        .with_retriever(NoRetrieval)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .build(&json!({ "$ref": uri }))
        .unwrap_or_else(|e| panic!("{uri}: {e}"))
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let documents: BTreeMap<&'static str, Value> = SCHEMA_FILES
            .iter()
            .map(|name| (*name, read_json(&path(&format!("docs/schema/{name}")))))
            .collect();
        let registry = Registry::new()
            .retriever(NoRetrieval)
            .extend(
                documents
                    .iter()
                    .map(|(name, schema)| (format!("{BASE}{name}"), schema.clone())),
            )
            .expect("schema URIs")
            .prepare()
            .unwrap_or_else(|e| panic!("docs/schema: {e}"));
        let objects = ObjectKind::ALL
            .iter()
            .map(|o| {
                let name = o.as_str();
                (name, build(&registry, &format!("{BASE}{name}.json")))
            })
            .collect();
        Schemas {
            envelope: build(&registry, &format!("{BASE}envelope.json")),
            objects,
            documents,
        }
    })
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {:?}", e, e.instance_path().as_str()))
        .collect()
}

fn object_of(document: &Value) -> &str {
    document["object"].as_str().unwrap_or("")
}

/// Every invalid sample, as (file name, bytes).
pub fn invalid_samples() -> Vec<(String, Vec<u8>)> {
    json_files("tests/samples/invalid")
        .into_iter()
        .map(|(name, p)| (name, read(&p)))
        .collect()
}

/// Every valid sample and both spec samples, as (name, bytes).
pub fn valid_samples() -> Vec<(String, Vec<u8>)> {
    let mut samples: Vec<(String, Vec<u8>)> = SPEC_SAMPLES
        .iter()
        .map(|name| {
            (
                name.to_string(),
                read(&path(&format!("tests/samples/{name}"))),
            )
        })
        .collect();
    samples.extend(
        json_files("tests/samples/valid")
            .into_iter()
            .map(|(name, p)| (format!("valid/{name}"), read(&p))),
    );
    samples
}

#[test]
fn schema_files_are_valid_json_schema_and_refer_only_to_each_other() {
    let listed: BTreeSet<String> = json_files("docs/schema")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let expected: BTreeSet<String> = SCHEMA_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected, "docs/schema/ holds other files");
    for (name, schema) in &schemas().documents {
        if let Err(e) = jsonschema::meta::validate(schema) {
            panic!("docs/schema/{name} is not a valid JSON Schema: {e}");
        }
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert_eq!(schema["$id"], *name, "{name}: $id must be its file name");
        let mut refs = Vec::new();
        collect_refs(schema, &mut refs);
        for reference in refs {
            let (file, pointer) = reference.split_once('#').unwrap_or((&reference, ""));
            let target = if file.is_empty() {
                schema
            } else {
                schemas()
                    .documents
                    .get(file)
                    .unwrap_or_else(|| panic!("{name}: $ref {reference:?} is not in docs/schema"))
            };
            assert!(
                target.pointer(pointer).is_some(),
                "{name}: $ref {reference:?} points at nothing"
            );
        }
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn valid_samples_pass_the_schemas_and_the_bridge() {
    let schemas = schemas();
    let mut covered = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut failures = Vec::new();
    for (name, bytes) in valid_samples() {
        let document: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        match envelope::parse(&bytes, Rules::default()) {
            Ok(env) => {
                covered.insert((env.object.as_str(), env.event.as_str()));
                unknown.extend(
                    env.unknown_values
                        .iter()
                        .map(|u| (u.object.as_str(), u.field)),
                );
            }
            Err(e) => failures.push(format!("{name}: the bridge refuses it: {e:?}")),
        }
        for e in errors(&schemas.envelope, &document) {
            failures.push(format!("{name}: envelope.json: {e}"));
        }
        let object = object_of(&document);
        for e in errors(schemas.object(object), &document) {
            failures.push(format!("{name}: {object}.json: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let all: BTreeSet<(&str, &str)> = ObjectKind::ALL
        .iter()
        .flat_map(|o| Event::ALL.iter().map(|e| (o.as_str(), e.as_str())))
        .collect();
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(missing.is_empty(), "no valid sample for {missing:?}");
    let every_enum: BTreeSet<(&str, &str)> = ENUM_FIELDS
        .iter()
        .map(|e| (e.object.as_str(), e.field))
        .collect();
    let untried: Vec<_> = every_enum.difference(&unknown).collect();
    assert!(
        untried.is_empty(),
        "no valid sample has a value the spec does not list for {untried:?}"
    );
}

/// The fields the bridge must name for each invalid sample, so that each one
/// fails for the reason its file name gives, and the schema must find fault
/// at the same places.
fn expected_problems(sample: &str) -> &'static [&'static str] {
    match sample {
        "conversation-eventtype-object.json" => &["props.eventType"],
        "conversation-finishedat-impossible-date.json" => &["props.finishedAt"],
        "conversation-finishedat-no-offset.json" => &["props.finishedAt"],
        "conversation-finishedat-not-rfc3339.json" => &["props.finishedAt"],
        "conversation-finishedat-unix-time.json" => &["props.finishedAt"],
        "conversation-name-number.json" => &["props.name"],
        "conversationevent-conversationid-too-large.json" => &["props.conversationId"],
        "conversationevent-eventcode-string.json" => &["props.eventCode"],
        "conversationevent-eventtype-number.json" => &["props.eventType"],
        "conversationevent-ticketid-fraction.json" => &["props.ticketId"],
        "event-missing.json" => &["event"],
        "event-unknown.json" => &["event"],
        "event-uppercase.json" => &["event"],
        "media-parent-flat-id-string.json" => &["props[\"_parent.id\"]"],
        "media-parent-id-fraction.json" => &["props._parent.id"],
        "media-parent-name-number.json" => &["props._parent.name"],
        "media-parent-not-an-object.json" => &["props._parent"],
        "media-state-boolean.json" => &["props.state"],
        "not-an-object.json" => &["$"],
        "object-missing.json" => &["object"],
        "object-unknown.json" => &["object"],
        "object-wrong-case.json" => &["object"],
        "objectid-boolean.json" => &["objectId"],
        "objectid-c1-control-character.json" => &["objectId"],
        "objectid-control-character.json" => &["objectId"],
        "objectid-empty.json" => &["objectId"],
        "objectid-format-character.json" => &["objectId"],
        "objectid-line-separator.json" => &["objectId"],
        "objectid-missing.json" => &["objectId"],
        "objectid-negative.json" => &["objectId"],
        "objectid-null.json" => &["objectId"],
        "objectid-too-long.json" => &["objectId"],
        "props-array-conversation.json" => &["props"],
        "props-missing-conversationevent.json" => &["props"],
        "props-missing-ticket.json" => &["props"],
        "props-null-media.json" => &["props"],
        "props-string-smsmessage.json" => &["props"],
        "readme-three-problems.json" => &["time", "objectId", "props[\"geoloc.lat\"]"],
        "ticket-geoloc-flat-lat-string.json" => &["props[\"geoloc.lat\"]"],
        "ticket-geoloc-flat-lng-out-of-range.json" => &["props[\"geoloc.lng\"]"],
        "ticket-geoloc-lat-out-of-range.json" => &["props.geoloc.lat"],
        "ticket-geoloc-not-an-object.json" => &["props.geoloc"],
        "ticket-state-number.json" => &["props.state"],
        "time-fraction.json" => &["time"],
        "time-missing.json" => &["time"],
        "time-negative.json" => &["time"],
        "time-string.json" => &["time"],
        "time-too-large.json" => &["time"],
        other => panic!("tests/samples/invalid/{other}: say here which fields it gets wrong"),
    }
}

/// The bridge's field name (`props.geoloc.lat`, `props["geoloc.lat"]`, `$`)
/// as a JSON pointer (`/props/geoloc/lat`, `/props/geoloc.lat`, ``).
fn pointer(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field.strip_prefix('$').unwrap_or(field);
    while !rest.is_empty() {
        let token = if let Some(quoted) = rest.strip_prefix("[\"") {
            let end = quoted.find("\"]").expect("closing \"]");
            rest = &quoted[end + 2..];
            &quoted[..end]
        } else {
            let plain = rest.strip_prefix('.').unwrap_or(rest);
            let end = plain.find(['.', '[']).unwrap_or(plain.len());
            rest = &plain[end..];
            &plain[..end]
        };
        out.push('/');
        out.push_str(&token.replace('~', "~0").replace('/', "~1"));
    }
    out
}

#[test]
fn invalid_samples_fail_the_bridge_and_the_schema_at_the_same_place() {
    let schemas = schemas();
    let mut failures = Vec::new();
    for (name, file) in json_files("tests/samples/invalid") {
        let fields = expected_problems(&name);
        let bytes = read(&file);
        let problems = match envelope::parse(&bytes, Rules::default()) {
            Err(EnvelopeError::Invalid(problems)) => problems,
            other => {
                failures.push(format!("{name}: the bridge answers {other:?}, not Invalid"));
                continue;
            }
        };
        let found: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        if found != fields {
            failures.push(format!(
                "{name}: the bridge names {found:?}, expected {fields:?}"
            ));
        }
        let document: Value = serde_json::from_slice(&bytes).expect("JSON");
        let schema_errors: Vec<_> = schemas.envelope.iter_errors(&document).collect();
        if schema_errors.is_empty() {
            failures.push(format!("{name}: envelope.json accepts it"));
            continue;
        }
        // Each problem the bridge reports is reported by the schema too: at
        // the same place, or, for a missing field, as `required` on its parent.
        for problem in &problems {
            let at = pointer(&problem.field);
            let (parent, last) = at.rsplit_once('/').unwrap_or(("", ""));
            let seen = schema_errors.iter().any(|e| {
                let path = e.instance_path().as_str();
                path == at
                    || (path == parent
                        && matches!(e.kind(), ValidationErrorKind::Required { property }
                            if property == last))
            });
            if !seen {
                let reported: Vec<String> = schema_errors
                    .iter()
                    .map(|e| format!("{e} at {:?}", e.instance_path().as_str()))
                    .collect();
                failures.push(format!(
                    "{name}: the bridge says {} {}; the schema says nothing at {at:?}: {reported:?}",
                    problem.field, problem.problem
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn schema_examples_pass_the_schemas_and_the_bridge() {
    let schemas = schemas();
    for (name, schema) in &schemas.documents {
        let Some(examples) = schema.get("examples") else {
            assert_eq!(*name, "envelope.json", "{name} has no examples");
            continue;
        };
        for example in examples.as_array().expect("examples is an array") {
            let bytes = serde_json::to_vec(example).unwrap();
            let object = object_of(example);
            assert_eq!(format!("{object}.json"), *name, "an example of {name}");
            envelope::parse(&bytes, Rules::default())
                .unwrap_or_else(|e| panic!("{name}: the bridge refuses an example: {e:?}"));
            for validator in [&schemas.envelope, schemas.object(object)] {
                let errors = errors(validator, example);
                assert!(errors.is_empty(), "{name}: example fails: {errors:?}");
            }
        }
    }
}

/// Where each prop whose values the spec lists is described, as
/// (file, `$defs` entry), for every entry of `envelope::ENUM_FIELDS`.
fn enum_def(object: ObjectKind, field: &str) -> (&'static str, &'static str) {
    match (object, field) {
        (ObjectKind::Ticket, "state") => ("ticket.json", "state"),
        (ObjectKind::Media, "state") => ("media.json", "state"),
        (ObjectKind::Media, "_parent.name") => ("media.json", "parentName"),
        (ObjectKind::Conversation, "eventType") => ("conversation.json", "eventType"),
        other => panic!("ENUM_FIELDS has {other:?}: describe it in docs/schema and here"),
    }
}

/// An envelope of this object whose prop `field` is `value`.
fn with_prop(object: ObjectKind, field: &str, value: &str) -> Value {
    let props = match field.split_once('.') {
        Some((parent, child)) => json!({ parent: { child: value } }),
        None => json!({ field: value }),
    };
    json!({"event": "update", "time": 1, "object": object.as_str(), "objectId": 1, "props": props})
}

/// Counts the open enums in a schema: `anyOf` of a list, any string and null.
fn open_enums(value: &Value) -> usize {
    match value {
        Value::Object(map) => {
            let own = map
                .get("anyOf")
                .and_then(Value::as_array)
                .is_some_and(|branches| {
                    branches.len() == 3
                        && branches[0].get("enum").is_some()
                        && branches[1] == json!({"type": "string"})
                        && branches[2] == json!({"type": "null"})
                });
            usize::from(own) + map.values().map(open_enums).sum::<usize>()
        }
        Value::Array(items) => items.iter().map(open_enums).sum(),
        _ => 0,
    }
}

#[test]
fn listed_enum_values_are_the_ones_strict_mode_accepts() {
    let schemas = schemas();
    let strict = Rules {
        strict: true,
        ..Rules::default()
    };
    let described: usize = schemas.documents.values().map(open_enums).sum();
    assert_eq!(
        described,
        ENUM_FIELDS.len(),
        "the schemas describe {described} open enums, envelope::ENUM_FIELDS has {}",
        ENUM_FIELDS.len()
    );
    for &envelope::EnumField {
        object,
        field,
        values,
    } in &ENUM_FIELDS
    {
        let (file, def) = enum_def(object, field);
        let listed = schemas.documents[file]["$defs"][def]["anyOf"][0]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{file} $defs/{def} has no list"));
        assert!(!listed.is_empty());
        let listed_names: Vec<&str> = listed.iter().filter_map(Value::as_str).collect();
        assert_eq!(
            listed_names, values,
            "{file} $defs/{def} against ENUM_FIELDS"
        );
        for value in listed {
            let value = value.as_str().expect("listed values are strings");
            let document = with_prop(object, field, value);
            let bytes = serde_json::to_vec(&document).unwrap();
            let env = envelope::parse(&bytes, strict).unwrap_or_else(|e| {
                panic!("{file}: {field} = {value:?} is listed, but --strict refuses it: {e:?}")
            });
            assert!(env.unknown_values.is_empty());
            assert!(schemas.envelope.is_valid(&document));
        }
        // A value the spec does not list: forwarded and counted by default,
        // refused with --strict, and allowed by the schema.
        let document = with_prop(object, field, "not-in-the-spec");
        let bytes = serde_json::to_vec(&document).unwrap();
        let env = envelope::parse(&bytes, Rules::default()).expect("accepted by default");
        assert_eq!(env.unknown_values.len(), 1, "{object:?} {field}");
        assert!(
            envelope::parse(&bytes, strict).is_err(),
            "{object:?} {field}"
        );
        let errors = errors(&schemas.envelope, &document);
        assert!(errors.is_empty(), "{object:?} {field}: {errors:?}");
    }
}

/// What the bridge and the schema make of an edge case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Both accept it.
    Accept,
    /// Both refuse it.
    Refuse,
    /// The schema accepts what the bridge refuses: a known limit of JSON
    /// Schema, written in the schema's `$comment`. The reverse, the bridge
    /// accepting what the schema refuses, is never allowed.
    SchemaOnly,
}

use Expect::{Accept, Refuse, SchemaOnly};

fn envelope_text(time: &str, object: &str, object_id: &str, props: &str) -> String {
    format!(
        r#"{{"event":"update","time":{time},"object":"{object}","objectId":{object_id},"props":{props}}}"#
    )
}

fn edge_cases() -> Vec<(String, Expect)> {
    let mut cases = Vec::new();
    let ticket = |props: &str| envelope_text("1", "ticket", "1", props);
    for (time, expect) in [
        ("0", Accept),
        ("9223372036854775807", Accept),
        ("9223372036854775808", Refuse),
        ("-1", Refuse),
        ("1575976413.5", Refuse),
        ("1575976413.0", SchemaOnly),
        ("1e3", SchemaOnly),
    ] {
        cases.push((envelope_text(time, "ticket", "1", "{}"), expect));
    }
    let long = |c: &str, n: usize| format!("\"{}\"", c.repeat(n));
    for (id, expect) in [
        ("0".to_owned(), Accept),
        ("18446744073709551615".to_owned(), Accept),
        ("18446744073709551616".to_owned(), Refuse),
        ("-1".to_owned(), Refuse),
        ("100.0".to_owned(), SchemaOnly),
        (long("a", 128), Accept),
        (long("a", 129), Refuse),
        (long("é", 128), Accept),
        (long("é", 129), Refuse),
        (long("😀", 128), Accept),
        (long("😀", 129), Refuse),
        (r#"" ""#.to_owned(), Accept),
        (r#""a\u001fb""#.to_owned(), Refuse),
        (r#""a\u007fb""#.to_owned(), Refuse),
        (r#""a\u009fb""#.to_owned(), Refuse),
        (r#""a\u00a0b""#.to_owned(), Accept),
        (r#""a\u00adb""#.to_owned(), Refuse),
        (r#""a\u200ab""#.to_owned(), Accept),
        (r#""a\u200bb""#.to_owned(), Refuse),
        (r#""a\u202eb""#.to_owned(), Refuse),
        (r#""a\u2028b""#.to_owned(), Refuse),
        (r#""a\u2029b""#.to_owned(), Refuse),
        (r#""\ufeffa""#.to_owned(), Refuse),
        (r#""a\ufffcb""#.to_owned(), Accept),
        // Format characters above the BMP: left out of the pattern.
        (r#""a\udb40\udc41b""#.to_owned(), SchemaOnly),
        (r#""a/b c.d""#.to_owned(), Accept),
    ] {
        cases.push((envelope_text("1", "conversation", &id, "{}"), expect));
    }
    for (props, expect) in [
        (r#"{"geoloc":{"lat":90,"lng":-180}}"#, Accept),
        (r#"{"geoloc":{"lat":90.0000001}}"#, Refuse),
        (r#"{"geoloc":{"lng":-180.0000001}}"#, Refuse),
        (r#"{"geoloc.lat":-90.0,"geoloc.lng":1.8e2}"#, Accept),
        (r#"{"geoloc.lat":1e2}"#, Refuse),
        (r#"{"geoloc":{"lat":null,"lng":null,"alt":"high"}}"#, Accept),
        (r#"{"geoloc":[47.8,-3.8]}"#, Refuse),
        (r#"{"geoloc.lat":true}"#, Refuse),
        (r#"{"geoloc":{},"geoloc.lat":95}"#, Refuse),
    ] {
        cases.push((ticket(props), expect));
    }
    for (id, expect) in [
        ("-9223372036854775808", Accept),
        // Below the i64 range, so serde_json reads it as a float, which
        // rounds to -2^63: the minimum itself.
        ("-9223372036854775809", SchemaOnly),
        ("18446744073709551615", Accept),
        ("18446744073709551616", Refuse),
        ("100.0", SchemaOnly),
        ("1e2", SchemaOnly),
    ] {
        cases.push((
            envelope_text("1", "media", "1", &format!(r#"{{"_parent.id":{id}}}"#)),
            expect,
        ));
        cases.push((
            envelope_text(
                "1",
                "conversationevent",
                "1",
                &format!(r#"{{"eventCode":{id}}}"#),
            ),
            expect,
        ));
    }
    for (at, expect) in [
        ("2021-09-20T13:25:06+00:00", Accept),
        ("2021-09-20t13:25:06z", Accept),
        ("2021-09-20T13:25:06-00:00", Accept),
        ("2021-09-20T13:25:06.123456789123Z", Accept),
        ("2021-09-20T13:25:06+23:59", Accept),
        ("2021-09-20T13:25:06-23:59", Accept),
        ("2024-02-29T00:00:00Z", Accept),
        ("0000-01-01T00:00:00Z", Accept),
        ("2016-12-31T23:59:60Z", Accept),
        ("2016-12-31T22:59:60-01:00", Accept),
        // RFC 3339 section 5.6 lets a space, or another character, stand for `T`.
        ("2021-09-20 13:25:06Z", Accept),
        ("2021-09-20_13:25:06+02:00", Accept),
        ("2021-09-20\t13:25:06Z", Accept),
        ("2021-09-20 13:25:06.5z", Accept),
        ("2021-09-20 24:00:00Z", Refuse),
        ("2021-09-20 13:25:06+24:00", Refuse),
        ("2021-09-20 13:25:06", Refuse),
        ("2021-13-20 13:25:06Z", Refuse),
        ("2021-09-20é13:25:06Z", Refuse),
        ("2021-09-20T13:25:06", Refuse),
        ("2021-09-20T13:25:06+0000", Refuse),
        ("2021-09-20T13:25Z", Refuse),
        ("2021-09-20T13:25:06.Z", Refuse),
        ("2021-09-20T13:25:06+00:60", Refuse),
        ("2021-09-20T13:25:06+24:00", Refuse),
        ("2021-02-30T00:00:00Z", Refuse),
        ("2023-02-29T00:00:00Z", Refuse),
        ("21-09-20T13:25:06Z", Refuse),
        ("2021-09-20T13:25:06Z ", Refuse),
        ("", Refuse),
        // Leap seconds: the bridge only allows them at the end of a month.
        ("2021-09-20T23:59:60Z", SchemaOnly),
        // Beyond the calendar, the space form is checked for shape only.
        ("2021-02-30 00:00:00Z", SchemaOnly),
    ] {
        let props = json!({ "finishedAt": at }).to_string();
        cases.push((envelope_text("1", "conversation", "\"c\"", &props), expect));
    }
    for (props, expect) in [
        ("null", Accept),
        ("{}", Accept),
        (r#"{"anything":[1,2]}"#, Accept),
        ("[]", Refuse),
        ("false", Refuse),
    ] {
        cases.push((envelope_text("1", "smsmessage", "1", props), expect));
    }
    cases.push((
        r#"{"event":"create","time":1,"object":"smsmessage","objectId":1}"#.to_owned(),
        Accept,
    ));
    cases.push((
        r#"{"event":"create","time":1,"object":"media","objectId":1}"#.to_owned(),
        Refuse,
    ));
    cases
}

#[test]
fn bridge_and_schema_agree_on_edge_cases() {
    let schemas = schemas();
    let mut failures = Vec::new();
    for (text, expect) in edge_cases() {
        let bridge = envelope::parse(text.as_bytes(), Rules::default()).is_ok();
        let document: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let schema = schemas.envelope.is_valid(&document);
        let object = schemas.object(object_of(&document)).is_valid(&document);
        let found = match (bridge, schema) {
            (true, true) => Accept,
            (false, false) => Refuse,
            (false, true) => SchemaOnly,
            (true, false) => {
                failures.push(format!(
                    "the bridge accepts what envelope.json refuses: {text}\n  {:?}",
                    errors(&schemas.envelope, &document)
                ));
                continue;
            }
        };
        if schema != object {
            failures.push(format!(
                "envelope.json and the object's schema differ on {text}"
            ));
        }
        if found != expect {
            failures.push(format!("{text}: expected {expect:?}, found {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// docs/asyncapi.yaml

fn asyncapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let file = path("docs/asyncapi.yaml");
        let yaml: serde_yaml::Value = serde_yaml::from_slice(&read(&file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    })
}

/// Follows `#/...` references inside docs/asyncapi.yaml.
fn deref(value: &Value) -> &Value {
    let mut value = value;
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference:?} is not inside asyncapi.yaml"));
        value = asyncapi()
            .pointer(pointer)
            .unwrap_or_else(|| panic!("asyncapi.yaml: $ref {reference:?} points at nothing"));
    }
    value
}

fn entries<'a>(value: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("asyncapi.yaml: {what} is not a map"))
}

/// A draft-07 validator (the dialect AsyncAPI schemas build on) for a schema
/// written inline in asyncapi.yaml.
fn inline_validator(schema: &Value) -> Validator {
    jsonschema::draft7::meta::validate(schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
    jsonschema::draft7::options()
        .with_retriever(NoRetrieval)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{schema}: {e}"))
}

#[test]
fn asyncapi_is_version_3_and_its_references_resolve() {
    let doc = asyncapi();
    let version = doc["asyncapi"].as_str().expect("asyncapi: a string");
    assert!(version.starts_with("3."), "asyncapi: {version}");
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let (file, pointer) = reference.split_once('#').unwrap_or((&reference, ""));
        if file.is_empty() {
            assert!(
                doc.pointer(pointer).is_some(),
                "asyncapi.yaml: $ref {reference:?} points at nothing"
            );
            continue;
        }
        let target = path("docs").join(file);
        assert!(
            target.is_file(),
            "asyncapi.yaml: $ref {reference:?}: no such file"
        );
        let target = read_json(&target);
        assert!(
            target.pointer(pointer).is_some(),
            "asyncapi.yaml: $ref {reference:?} points at nothing"
        );
    }
    for server in ["kafka", "nats"] {
        assert_eq!(doc["servers"][server]["protocol"], server);
    }
}

/// The webhook channels: every address they stand for, once their
/// parameters are replaced by each value of their enums, and the objects of
/// the messages a topic carries. The dead-letter channel is left out.
fn channels() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (id, channel) in entries(&asyncapi()["channels"], "channels") {
        if id == DEAD_LETTER_CHANNEL {
            continue;
        }
        let address = channel["address"]
            .as_str()
            .unwrap_or_else(|| panic!("channel {id} has no address"));
        let mut addresses = vec![address.to_owned()];
        let parameters = channel
            .get("parameters")
            .map_or_else(serde_json::Map::new, |p| {
                entries(p, "channel parameters").clone()
            });
        for (name, parameter) in &parameters {
            let parameter = deref(parameter);
            let values = parameter["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("channel {id}: parameter {name} has no enum"));
            assert_eq!(
                parameter["location"],
                format!("$message.payload#/{name}"),
                "channel {id}: parameter {name} is the payload's field"
            );
            addresses = addresses
                .iter()
                .flat_map(|a| {
                    values.iter().map(move |v| {
                        a.replace(&format!("{{{name}}}"), v.as_str().expect("a string"))
                    })
                })
                .collect();
        }
        for address in addresses {
            // A message belongs on a topic when its payload's `object` is the
            // topic's: each schema pins `object` to one value.
            let objects = entries(&channel["messages"], "channel messages")
                .values()
                .map(|m| message_object(deref(m)))
                .filter(|object| address.split('.').any(|token| token == object))
                .collect();
            assert!(
                out.insert(address.clone(), objects).is_none(),
                "two channels on {address}"
            );
        }
    }
    out
}

/// The id of the dead-letter channel and of its message.
const DEAD_LETTER_CHANNEL: &str = "deadLetters";
const DEAD_LETTER_MESSAGE: &str = "deadLetter";

/// The format every webhook payload declares: docs/schema is written in
/// draft 2020-12, but only with keywords that mean the same in draft-07,
/// which the AsyncAPI tooling reads (checked below).
const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-07";

/// The object a message carries, from its payload's schema file.
fn message_object(message: &Value) -> String {
    assert_eq!(
        message["payload"]["schemaFormat"], SCHEMA_FORMAT,
        "message {}: payload schemaFormat",
        message["name"]
    );
    let payload = message["payload"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("message {} has no payload $ref", message["name"]));
    let object = payload
        .strip_prefix("./schema/")
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("payload {payload:?} is not ./schema/<object>.json"));
    assert_eq!(message["name"], object, "message name and payload differ");
    object.to_owned()
}

#[test]
fn asyncapi_has_a_channel_and_a_send_operation_for_every_topic() {
    let template = TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").unwrap();
    let channels = channels();
    let mut expected = BTreeMap::new();
    for object in ObjectKind::ALL {
        for event in Event::ALL {
            let topic = template.render(object, event, "");
            expected.insert(topic, BTreeSet::from([object.as_str().to_owned()]));
        }
    }
    assert_eq!(expected.len(), 15);
    assert_eq!(channels, expected);
    assert_eq!(
        template
            .all_topics()
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        channels.keys().cloned().collect()
    );

    // One send operation per channel, listing every message of its channel.
    let mut operated = BTreeSet::new();
    for (id, operation) in entries(&asyncapi()["operations"], "operations") {
        assert_eq!(
            operation["action"], "send",
            "operation {id}: the bridge produces"
        );
        let reference = operation["channel"]["$ref"].as_str().expect("a $ref");
        let channel_id = reference
            .strip_prefix("#/channels/")
            .unwrap_or_else(|| panic!("operation {id}: channel {reference}"));
        assert!(
            operated.insert(channel_id.to_owned()),
            "two operations on {channel_id}"
        );
        let listed: BTreeSet<&str> = operation["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["$ref"].as_str().expect("a $ref"))
            .collect();
        let own: BTreeSet<String> = entries(&deref(&operation["channel"])["messages"], "messages")
            .keys()
            .map(|k| format!("{reference}/messages/{k}"))
            .collect();
        assert_eq!(
            listed,
            own.iter().map(String::as_str).collect(),
            "operation {id}: the messages of its channel"
        );
    }
    let ids: BTreeSet<String> = entries(&asyncapi()["channels"], "channels")
        .keys()
        .cloned()
        .collect();
    assert_eq!(operated, ids);
}

#[test]
fn asyncapi_headers_and_key_match_what_the_bridge_publishes() {
    let doc = asyncapi();
    let documented: BTreeSet<&str> = HEADERS.iter().copied().collect();
    let template = TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").unwrap();
    let channels = channels();
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_632_144_306_730);

    let messages = entries(&doc["components"]["messages"], "components.messages");
    assert_eq!(messages.len(), ObjectKind::ALL.len() + 1);
    let mut validators = BTreeMap::new();
    for (id, message) in messages {
        if id == DEAD_LETTER_MESSAGE {
            continue;
        }
        let headers = deref(&message["headers"]);
        let names: BTreeSet<&str> = entries(&headers["properties"], "headers.properties")
            .keys()
            .map(String::as_str)
            .collect();
        // Set on the way out by the HTTP edge, not by route: optional here.
        let mut with_jetstream = documented.clone();
        with_jetstream.extend([
            NATS_MSG_ID,
            apizee_bridge::trace::TRACEPARENT,
            apizee_bridge::trace::TRACESTATE,
        ]);
        assert_eq!(names, with_jetstream, "message {id}: header names");
        let required: BTreeSet<&str> = headers["required"]
            .as_array()
            .expect("headers.required")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, documented, "message {id}: required headers");
        assert_eq!(
            deref(&message["correlationId"])["location"],
            format!("$message.header#/{}", header::EVENT_ID),
            "message {id}: correlationId"
        );
        let key = deref(&message["bindings"]["kafka"]["key"]);
        assert_eq!(key["type"], "string", "message {id}: the Kafka key");
        validators.insert(
            message_object(message),
            (inline_validator(headers), inline_validator(key)),
        );

        // The examples are what the bridge would publish for their payload.
        for example in message["examples"].as_array().expect("message examples") {
            let payload = serde_json::to_vec(&example["payload"]).unwrap();
            let env = envelope::parse(&payload, Rules::default())
                .unwrap_or_else(|e| panic!("message {id}: example refused: {e:?}"));
            let built =
                route::build_message(&env, Bytes::from(payload), &template, None, received_at)
                    .unwrap();
            for (name, value) in &built.headers {
                if *name == header::RECEIVED_AT || *name == header::EVENT_ID {
                    continue; // when it arrived, and the exact bytes: not in the example
                }
                assert_eq!(
                    example["headers"][name], *value,
                    "message {id}: example {name}"
                );
            }
            let (headers, _) = &validators[env.object.as_str()];
            let example_headers = &example["headers"];
            assert!(
                headers.is_valid(example_headers),
                "message {id}: example headers"
            );
        }
    }

    for (name, bytes) in valid_samples() {
        let env = envelope::parse(&bytes, Rules::default()).unwrap();
        let message = route::build_message(&env, Bytes::from(bytes), &template, None, received_at)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let names: BTreeSet<&str> = message.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, documented, "{name}: headers the bridge sets");
        let headers: Value = message
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), Value::from(v.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let (header_schema, key_schema) = &validators[env.object.as_str()];
        let errors = errors(header_schema, &headers);
        assert!(errors.is_empty(), "{name}: headers {headers}: {errors:?}");
        assert!(
            key_schema.is_valid(&Value::from(message.key.as_str())),
            "{name}: key {:?}",
            message.key
        );
        assert!(
            channels
                .get(&message.topic)
                .is_some_and(|objects| objects.contains(env.object.as_str())),
            "{name}: no channel {} carrying {} messages",
            message.topic,
            env.object.as_str()
        );
    }
}

#[test]
fn asyncapi_dead_letters_match_what_the_bridge_publishes() {
    let doc = asyncapi();
    let channel = &doc["channels"][DEAD_LETTER_CHANNEL];
    assert_eq!(channel["address"], "{deadLetterTopic}");
    let message = deref(&channel["messages"][DEAD_LETTER_MESSAGE]);
    let headers = deref(&message["headers"]);
    let header_schema = inline_validator(headers);
    let key_schema = inline_validator(deref(&message["bindings"]["kafka"]["key"]));
    let names: BTreeSet<&str> = entries(&headers["properties"], "headers.properties")
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = headers["required"]
        .as_array()
        .expect("headers.required")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let reasons: BTreeSet<&str> = headers["properties"][header::REJECTION_REASON]["enum"]
        .as_array()
        .expect("the reasons")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([Kind::InvalidEnvelope.code(), Kind::MalformedJson.code()]),
        "the refusals that are dead-lettered"
    );
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_632_144_306_730);
    let dead_letter = |rejection: Rejection, body: Vec<u8>| {
        let details = serde_json::to_string(&rejection.details()).unwrap();
        route::dead_letter_message(
            "apizee.dlq",
            Bytes::from(body),
            rejection.code(),
            &details,
            received_at,
        )
    };

    let mut letters: Vec<(String, Message)> = invalid_samples()
        .into_iter()
        .filter_map(
            |(name, bytes)| match envelope::parse(&bytes, Rules::default()) {
                Err(EnvelopeError::Invalid(problems)) => Some((
                    name,
                    dead_letter(Rejection::InvalidEnvelope(problems), bytes),
                )),
                _ => None,
            },
        )
        .collect();
    assert!(!letters.is_empty());
    letters.push((
        "not JSON".to_owned(),
        dead_letter(
            Rejection::MalformedJson("expected value".to_owned()),
            b"a=1".to_vec(),
        ),
    ));
    for (name, message) in &letters {
        let set: BTreeSet<&str> = message.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(set, required, "{name}: the headers a dead letter has");
        let mut with_jetstream = required.clone();
        with_jetstream.insert(NATS_MSG_ID);
        assert_eq!(names, with_jetstream, "dead-letter header names");
        let mut values: serde_json::Map<String, Value> = message
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), Value::from(v.as_str())))
            .collect();
        values.insert(NATS_MSG_ID.to_owned(), message.event_id.clone().into());
        let errors = errors(&header_schema, &Value::from(values));
        assert!(errors.is_empty(), "{name}: dead-letter headers: {errors:?}");
        assert!(
            key_schema.is_valid(&Value::from(message.key.as_str())),
            "{name}: key"
        );
    }

    // The example is what the bridge publishes for its body.
    for example in message["examples"].as_array().expect("examples") {
        let body = example["payload"].as_str().expect("the body, as text");
        let problems = match envelope::parse(body.as_bytes(), Rules::default()) {
            Err(EnvelopeError::Invalid(problems)) => problems,
            other => panic!("the dead-letter example is not refused as invalid: {other:?}"),
        };
        let built = dead_letter(
            Rejection::InvalidEnvelope(problems),
            body.as_bytes().to_vec(),
        );
        for (name, value) in &built.headers {
            if *name == header::RECEIVED_AT {
                continue;
            }
            assert_eq!(
                example["headers"][name], *value,
                "dead-letter example {name}"
            );
        }
        assert!(
            header_schema.is_valid(&example["headers"]),
            "dead-letter example headers"
        );
    }
}

/// The keywords that only annotate: next to a `$ref`, draft-07 ignores
/// them, as 2020-12 would not, and no validation hangs on them either way.
const ANNOTATIONS: [&str; 4] = ["title", "description", "examples", "$comment"];

fn refs_have_only_annotations_beside(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("$ref") {
                for key in map.keys() {
                    if key != "$ref" && !ANNOTATIONS.contains(&key.as_str()) {
                        out.push(format!("{at}: {key} beside $ref"));
                    }
                }
            }
            for (key, v) in map {
                refs_have_only_annotations_beside(v, &format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs_have_only_annotations_beside(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The payloads declare draft-07 (what the AsyncAPI tools read) for files
/// written in 2020-12: true as long as they mean the same in both. Where
/// they could differ is a validating keyword beside a `$ref` (ignored in
/// draft-07) and `$defs` (a plain location in draft-07, which `$ref`
/// pointers still reach).
#[test]
fn schema_files_mean_the_same_read_as_draft_07() {
    let mut found = Vec::new();
    for (name, schema) in &schemas().documents {
        refs_have_only_annotations_beside(schema, name, &mut found);
        for keyword in [
            "$anchor",
            "$dynamicRef",
            "prefixItems",
            "unevaluatedProperties",
            "dependentSchemas",
        ] {
            assert!(
                !schema.to_string().contains(&format!("\"{keyword}\"")),
                "{name}: {keyword}"
            );
        }
    }
    assert!(found.is_empty(), "{found:?}");
}
