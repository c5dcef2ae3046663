use super::*;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;

use crate::envelope::{Event, ObjectId, ObjectKind};
use crate::route::{DEFAULT_TEMPLATE, TopicTemplate, build_message, event_id};

const SPEC_TICKET: &[u8] = include_bytes!("../../../tests/samples/spec-ticket.json");

fn envelope(object: ObjectKind, event: Event, object_id: ObjectId, time: i64) -> Envelope {
    Envelope {
        event,
        time,
        object,
        object_id,
        unknown_values: vec![],
    }
}

fn ticket_update() -> Envelope {
    envelope(
        ObjectKind::Ticket,
        Event::Update,
        ObjectId::Number(100),
        1575976413,
    )
}

fn settings(binding: Binding) -> CloudEvents {
    CloudEvents {
        source: DEFAULT_SOURCE.to_owned(),
        binding,
    }
}

fn value<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// The attributes

#[test]
fn kafka_headers_are_every_attribute_with_the_ce_underscore_prefix() {
    let headers = settings(Binding::Kafka).headers(&ticket_update(), "0123abcd");
    assert_eq!(
        headers,
        vec![
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", "0123abcd".to_owned()),
            ("ce_source", "/apizee-bridge".to_owned()),
            ("ce_type", "com.apizee.ticket.update".to_owned()),
            ("ce_subject", "100".to_owned()),
            ("ce_time", "2019-12-10T11:13:33Z".to_owned()),
        ],
        "datacontenttype is the content-type header on Kafka, never ce_datacontenttype"
    );
}

#[test]
fn nats_headers_are_every_attribute_with_the_ce_dash_prefix() {
    let headers = settings(Binding::Nats).headers(&ticket_update(), "0123abcd");
    assert_eq!(
        headers,
        vec![
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", "0123abcd".to_owned()),
            ("ce-source", "/apizee-bridge".to_owned()),
            ("ce-type", "com.apizee.ticket.update".to_owned()),
            ("ce-subject", "100".to_owned()),
            ("ce-time", "2019-12-10T11:13:33Z".to_owned()),
            ("ce-datacontenttype", "application/json".to_owned()),
        ]
    );
}

#[test]
fn type_names_every_object_and_event() {
    for object in ObjectKind::ALL {
        for event in Event::ALL {
            let env = envelope(object, event, ObjectId::Number(1), 0);
            let headers = settings(Binding::Kafka).headers(&env, "id");
            assert_eq!(
                value(&headers, "ce_type"),
                Some(format!("com.apizee.{}.{}", object.as_str(), event.as_str()).as_str())
            );
        }
    }
}

#[test]
fn time_is_rfc3339_utc_in_whole_seconds() {
    assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
    assert_eq!(rfc3339(1632144306).as_deref(), Some("2021-09-20T13:25:06Z"));
    // The last second RFC 3339 can write (four-digit years).
    assert_eq!(
        rfc3339(253_402_300_799).as_deref(),
        Some("9999-12-31T23:59:59Z")
    );
    assert_eq!(rfc3339(253_402_300_800), None);
    let parsed = time::OffsetDateTime::parse("2019-12-10T11:13:33Z", &Rfc3339)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.unix_timestamp(), 1575976413);
}

#[test]
fn a_time_past_year_9999_leaves_the_optional_time_out() {
    let env = envelope(
        ObjectKind::Ticket,
        Event::Create,
        ObjectId::Number(1),
        i64::MAX,
    );
    for binding in [Binding::Kafka, Binding::Nats] {
        let headers = settings(binding).headers(&env, "id");
        assert!(
            headers.iter().all(|(n, _)| !n.ends_with("time")),
            "{headers:?}"
        );
        assert!(
            headers.iter().any(|(n, _)| n.ends_with("specversion")),
            "the rest is there: {headers:?}"
        );
    }
}

#[test]
fn subject_is_the_object_id_as_a_plain_string() {
    let cases = [
        (ObjectId::Number(0), "0", "0"),
        (
            ObjectId::Number(u64::MAX),
            "18446744073709551615",
            "18446744073709551615",
        ),
        (
            ObjectId::Uid("734e3a7b-eb17-4d3f-901d-bcff178b".to_owned()),
            "734e3a7b-eb17-4d3f-901d-bcff178b",
            "734e3a7b-eb17-4d3f-901d-bcff178b",
        ),
        // Kafka headers are UTF-8; NATS headers are printable ASCII, so the
        // binding percent-encodes.
        (
            ObjectId::Uid("a b\"50%é".to_owned()),
            "a b\"50%é",
            "a%20b%2250%25%C3%A9",
        ),
    ];
    for (id, kafka, nats) in cases {
        let env = envelope(ObjectKind::Conversation, Event::Delete, id, 0);
        let headers = settings(Binding::Kafka).headers(&env, "id");
        assert_eq!(value(&headers, "ce_subject"), Some(kafka));
        let headers = settings(Binding::Nats).headers(&env, "id");
        assert_eq!(value(&headers, "ce-subject"), Some(nats));
    }
}

#[test]
fn nats_percent_encoding_follows_the_binding() {
    // The binding's own example, section 3.1.3.2.
    assert_eq!(
        percent_encode("Euro \u{20AC} \u{1F600}"),
        "Euro%20%E2%82%AC%20%F0%9F%98%80"
    );
    assert!(matches!(percent_encode("/apizee-bridge"), Cow::Borrowed(_)));
    assert_eq!(percent_encode("a\tb\u{7f}"), "a%09b%7F");
    let source = CloudEvents {
        source: "urn:x:a%20b".to_owned(),
        binding: Binding::Nats,
    };
    let headers = source.headers(&ticket_update(), "id");
    assert_eq!(value(&headers, "ce-source"), Some("urn:x:a%2520b"));
}

#[test]
fn every_attribute_header_is_known_to_the_spool_and_valid_for_nats() {
    for binding in [Binding::Kafka, Binding::Nats] {
        for (name, _) in settings(binding).headers(&ticket_update(), "id") {
            assert!(header::ALL.contains(&name), "{name}");
            assert_eq!(crate::route::header::canonical(name), Some(name));
            assert!(
                name.parse::<async_nats::HeaderName>().is_ok(),
                "{name} is not a NATS header name"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// build_message

#[test]
fn build_message_appends_the_attributes_and_changes_nothing_else() {
    let body = Bytes::from_static(SPEC_TICKET);
    let template = TopicTemplate::parse(DEFAULT_TEMPLATE, "apizee").expect("valid");
    let received_at = UNIX_EPOCH + Duration::from_secs(1_575_976_414);
    let plain =
        build_message(&ticket_update(), body.clone(), &template, None, received_at).expect("fits");
    let kafka = settings(Binding::Kafka);
    let event = build_message(
        &ticket_update(),
        body.clone(),
        &template,
        Some(&kafka),
        received_at,
    )
    .expect("fits");
    assert_eq!(event.topic, plain.topic);
    assert_eq!(event.key, "100", "the key stays the objectId");
    assert_eq!(event.event_id, plain.event_id);
    assert_eq!(event.payload, body, "the data is the body, byte for byte");
    assert_eq!(event.payload.as_ptr(), body.as_ptr());
    let (own, attributes) = event.headers.split_at(plain.headers.len());
    assert_eq!(own, plain.headers.as_slice());
    assert_eq!(attributes, kafka.headers(&ticket_update(), &plain.event_id));
    assert_eq!(
        value(attributes, "ce_id"),
        Some(event_id(SPEC_TICKET).as_str())
    );
    assert_eq!(
        value(&event.headers, "content-type"),
        Some(DATA_CONTENT_TYPE),
        "Kafka's datacontenttype"
    );
}

// ---------------------------------------------------------------------------
// The flags

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    cloudevents: CloudEventsArgs,
}

fn parse(args: &[&str], binding: Binding) -> Result<Option<CloudEvents>, String> {
    let cli = Cli::try_parse_from(std::iter::once("apizee-bridge").chain(args.iter().copied()))
        .map_err(|e| e.kind().to_string())?;
    cli.cloudevents.settings(binding).map_err(|e| e.to_string())
}

#[test]
fn off_by_default() {
    assert_eq!(parse(&[], Binding::Kafka), Ok(None));
}

#[test]
fn on_with_the_default_source_and_the_binding() {
    for binding in [Binding::Kafka, Binding::Nats] {
        assert_eq!(
            parse(&["--cloudevents"], binding),
            Ok(Some(CloudEvents {
                source: "/apizee-bridge".to_owned(),
                binding,
            }))
        );
    }
}

#[test]
fn source_accepts_uri_references() {
    for source in [
        "/apizee-bridge/eu",
        "urn:apizee:acme",
        "https://bridge.example.com/webhooks?tenant=a%20b",
        "bridge",
        "./a:b",
        "#x",
    ] {
        let parsed = parse(
            &["--cloudevents", "--cloudevents-source", source],
            Binding::Nats,
        );
        assert_eq!(
            parsed.map(|s| s.map(|s| s.source)),
            Ok(Some(source.to_owned())),
            "{source}"
        );
    }
}

#[test]
fn source_refuses_what_is_not_a_uri_reference_in_one_line_naming_the_flag() {
    for source in ["", "a b", "50%", "%zz", "é", "1x:y", "a\"b", "<x>"] {
        let error = parse(
            &["--cloudevents", "--cloudevents-source", source],
            Binding::Nats,
        )
        .expect_err(source);
        assert!(
            error.starts_with("invalid --cloudevents-source: "),
            "{source:?}: {error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }
}

#[test]
fn source_without_cloudevents_is_refused() {
    assert!(parse(&["--cloudevents-source", "/x"], Binding::Kafka).is_err());
}
