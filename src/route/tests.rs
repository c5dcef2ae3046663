use super::*;

use std::time::{Duration, UNIX_EPOCH};

use crate::envelope::ObjectId;

/// The ticket example from the spec, byte for byte.
const SPEC_TICKET: &[u8] = include_bytes!("../../tests/samples/spec-ticket.json");

const CONVERSATION_UID: &str = "734e3a7b-eb17-4d3f-901d-bcff178b";

fn parsed(text: &str) -> TopicTemplate {
    template_with_prefix(text, "apizee")
}

fn template_with_prefix(text: &str, prefix: &str) -> TopicTemplate {
    TopicTemplate::parse(text, prefix)
        .unwrap_or_else(|e| panic!("{text:?} with prefix {prefix:?}: {e}"))
}

fn envelope(object: ObjectKind, event: Event, object_id: ObjectId) -> Envelope {
    Envelope {
        event,
        time: 1575976413,
        object,
        object_id,
        unknown_values: vec![],
    }
}

fn ticket_update() -> Envelope {
    envelope(ObjectKind::Ticket, Event::Update, ObjectId::Number(100))
}

// ---------------------------------------------------------------------------
// TopicTemplate::parse and render

#[test]
fn default_template_renders_prefix_object_event() {
    let template = parsed(DEFAULT_TEMPLATE);
    assert_eq!(DEFAULT_TEMPLATE, "{prefix}.{object}.{event}");
    assert_eq!(
        template.render(ObjectKind::Ticket, Event::Update, "100"),
        "apizee.ticket.update"
    );
    assert_eq!(
        template.render(ObjectKind::ConversationEvent, Event::Delete, "x"),
        "apizee.conversationevent.delete"
    );
    assert!(!template.uses_object_id());
    assert_eq!(template.to_string(), "apizee.{object}.{event}");
}

#[test]
fn prefix_is_substituted_once_at_parse_time() {
    let template = template_with_prefix(DEFAULT_TEMPLATE, "acme.prod");
    assert_eq!(
        template.render(ObjectKind::Media, Event::Create, "1"),
        "acme.prod.media.create"
    );
    assert_eq!(template.to_string(), "acme.prod.{object}.{event}");
    let twice = template_with_prefix("{prefix}.{object}.{prefix}", "p-1");
    assert_eq!(
        twice.render(ObjectKind::SmsMessage, Event::Delete, "1"),
        "p-1.smsmessage.p-1"
    );
    assert_eq!(
        template_with_prefix(DEFAULT_TEMPLATE, "apizee"),
        parsed("apizee.{object}.{event}")
    );
}

#[test]
fn object_id_placeholder_is_rendered_verbatim() {
    let template = parsed("{prefix}.{object}.{objectId}");
    assert!(template.uses_object_id());
    assert_eq!(
        template.render(ObjectKind::Conversation, Event::Delete, CONVERSATION_UID),
        format!("apizee.conversation.{CONVERSATION_UID}")
    );
    assert_eq!(template.to_string(), "apizee.{object}.{objectId}");
    assert!(template_with_prefix("{objectId}", "apizee").uses_object_id());
}

#[test]
fn placeholders_may_share_a_token_with_literals() {
    let template = parsed("events-{object}_{event}.v1");
    assert_eq!(
        template.render(ObjectKind::Ticket, Event::Create, "1"),
        "events-ticket_create.v1"
    );
    let glued = parsed("{object}{event}{objectId}");
    assert_eq!(
        glued.render(ObjectKind::Media, Event::Update, "9"),
        "mediaupdate9"
    );
    assert_eq!(glued.to_string(), "{object}{event}{objectId}");
}

#[test]
fn a_template_without_placeholders_is_one_topic() {
    let template = parsed("apizee.webhooks");
    assert_eq!(
        template.render(ObjectKind::Ticket, Event::Create, "1"),
        "apizee.webhooks"
    );
    assert_eq!(template.to_string(), "apizee.webhooks");
    assert_eq!(
        template.all_topics(),
        Some(vec!["apizee.webhooks".to_owned(); 15])
    );
}

#[test]
fn unknown_placeholders_are_refused() {
    for (text, name) in [
        ("{prefix}.{nope}", "nope"),
        ("{prefix}.{objectid}", "objectid"),
        ("{prefix}.{Object}.{event}", "Object"),
        ("{prefix}.{ object }", " object "),
        ("{}", ""),
        ("{prefix}.{{object}}", "{object"),
    ] {
        assert_eq!(
            TopicTemplate::parse(text, "apizee"),
            Err(TemplateError::UnknownPlaceholder(name.to_owned())),
            "{text:?}"
        );
    }
    assert_eq!(
        TemplateError::UnknownPlaceholder("nope".to_owned()).to_string(),
        "unknown placeholder {nope}; use {prefix}, {object}, {event} or {objectId}"
    );
}

#[test]
fn unclosed_braces_are_refused() {
    for text in ["{prefix}.{object", "{", "apizee.{", "{prefix.object.event"] {
        assert_eq!(
            TopicTemplate::parse(text, "apizee"),
            Err(TemplateError::Unclosed),
            "{text:?}"
        );
    }
    assert_eq!(TemplateError::Unclosed.to_string(), "unclosed '{'");
}

#[test]
fn invalid_literals_are_refused_with_the_topic_they_produce() {
    for (text, produced) in [
        ("apizee events.{object}", "apizee events.ticket"),
        ("apizee.*.{event}", "apizee.*.create"),
        ("apizee.>", "apizee.>"),
        ("apizee.{object}.>", "apizee.ticket.>"),
        ("a..{object}", "a..ticket"),
        (".{object}", ".ticket"),
        ("{object}.", "ticket."),
        ("{object}..{event}", "ticket..create"),
        ("apizee/{object}", "apizee/ticket"),
        ("apizee:{object}", "apizee:ticket"),
        ("apizée.{object}", "apizée.ticket"),
        ("a}.{object}", "a}.ticket"),
        ("", ""),
        (".", "."),
    ] {
        assert_eq!(
            TopicTemplate::parse(text, "apizee"),
            Err(TemplateError::InvalidTopic(produced.to_owned())),
            "{text:?}"
        );
    }
}

#[test]
fn invalid_prefixes_are_refused() {
    for (prefix, produced) in [
        ("", ".ticket.create"),
        ("my app", "my app.ticket.create"),
        ("apizee.", "apizee..ticket.create"),
        (".apizee", ".apizee.ticket.create"),
        ("apizee.*", "apizee.*.ticket.create"),
        ("{object}", "{object}.ticket.create"),
    ] {
        assert_eq!(
            TopicTemplate::parse(DEFAULT_TEMPLATE, prefix),
            Err(TemplateError::InvalidTopic(produced.to_owned())),
            "{prefix:?}"
        );
    }
}

#[test]
fn invalid_topic_error_names_the_topic_and_the_rules() {
    assert_eq!(
        TemplateError::InvalidTopic("a b.ticket.create".to_owned()).to_string(),
        "it produces \"a b.ticket.create\", which is not a valid topic: use ASCII letters, \
         digits, '-', '_' and '.' between non-empty parts, at most 249 characters"
    );
}

#[test]
fn the_longest_fixed_topic_must_fit_in_249_characters() {
    // The longest rendering is "<prefix>.conversationevent.create": 25 more.
    let longest_fitting = "p".repeat(MAX_TOPIC_LEN - 25);
    let template = template_with_prefix(DEFAULT_TEMPLATE, &longest_fitting);
    let longest = template.render(ObjectKind::ConversationEvent, Event::Create, "");
    assert_eq!(longest.len(), MAX_TOPIC_LEN);

    let one_more = "p".repeat(MAX_TOPIC_LEN - 24);
    assert_eq!(
        TopicTemplate::parse(DEFAULT_TEMPLATE, &one_more),
        Err(TemplateError::InvalidTopic(format!(
            "{one_more}.conversationevent.create"
        )))
    );
}

// ---------------------------------------------------------------------------
// all_topics and subject_filter

#[test]
fn all_topics_lists_the_fifteen_default_topics_in_order() {
    let expected: Vec<String> = [
        "apizee.ticket.create",
        "apizee.ticket.update",
        "apizee.ticket.delete",
        "apizee.media.create",
        "apizee.media.update",
        "apizee.media.delete",
        "apizee.conversation.create",
        "apizee.conversation.update",
        "apizee.conversation.delete",
        "apizee.smsmessage.create",
        "apizee.smsmessage.update",
        "apizee.smsmessage.delete",
        "apizee.conversationevent.create",
        "apizee.conversationevent.update",
        "apizee.conversationevent.delete",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(parsed(DEFAULT_TEMPLATE).all_topics(), Some(expected));
}

#[test]
fn all_topics_are_valid_topics() {
    for text in [
        DEFAULT_TEMPLATE,
        "{object}.{event}",
        "x.{event}",
        "{object}",
    ] {
        let topics = parsed(text).all_topics().expect("no objectId");
        assert_eq!(topics.len(), 15, "{text}");
        for topic in topics {
            assert!(is_valid_topic(&topic), "{text}: {topic}");
        }
    }
}

#[test]
fn all_topics_is_none_when_the_object_id_is_in_the_topic() {
    assert_eq!(parsed("{prefix}.{object}.{objectId}").all_topics(), None);
    assert_eq!(parsed("{objectId}").all_topics(), None);
}

#[test]
fn subject_filter_covers_the_fixed_head() {
    for (text, prefix, filter) in [
        (DEFAULT_TEMPLATE, "apizee", "apizee.>"),
        (DEFAULT_TEMPLATE, "acme.prod", "acme.prod.>"),
        ("{prefix}.{object}.{objectId}", "apizee", "apizee.>"),
        ("a.b.{object}", "apizee", "a.b.>"),
        // The token holding the placeholder is not fixed, only those before.
        ("apizee.x{object}.{event}", "apizee", "apizee.>"),
        ("a.b{object}", "apizee", "a.>"),
        // One literal: the filter is the topic itself.
        ("apizee.webhooks", "apizee", "apizee.webhooks"),
        ("{prefix}", "apizee", "apizee"),
    ] {
        assert_eq!(
            template_with_prefix(text, prefix).subject_filter(),
            Some(filter.to_owned()),
            "{text:?} with {prefix:?}"
        );
    }
}

#[test]
fn subject_filter_is_none_without_a_fixed_first_token() {
    for text in [
        "{object}.{event}",
        "{objectId}.{object}",
        "{event}",
        "apizee{object}.{event}",
        "x-{object}",
    ] {
        assert_eq!(parsed(text).subject_filter(), None, "{text:?}");
    }
}

#[test]
fn subject_filter_matches_every_topic_the_template_produces() {
    for text in [
        DEFAULT_TEMPLATE,
        "a.b.{object}",
        "apizee.x{object}.{event}",
        "a.b{object}",
        "apizee.webhooks",
        "{prefix}.{object}.{objectId}",
    ] {
        let template = parsed(text);
        let filter = template.subject_filter().expect("fixed head");
        for object in ObjectKind::ALL {
            for event in Event::ALL {
                let topic = template.render(object, event, "42");
                assert!(subject_matches(&filter, &topic), "{filter} misses {topic}");
            }
        }
    }
    // And the matcher used above is itself discriminating.
    assert!(!subject_matches("apizee.>", "apizee"));
    assert!(!subject_matches("apizee.>", "other.ticket.create"));
    assert!(!subject_matches("a.b", "a.b.c"));
    assert!(subject_matches("a.*.c", "a.b.c"));
    assert!(!subject_matches("a.*", "a"));
    assert!(!subject_matches("a.>", "b.c"));
    assert!(subject_matches("apizee.dead-letter", "apizee.dead-letter"));
}

// ---------------------------------------------------------------------------
// is_valid_topic

#[test]
fn valid_topics() {
    for topic in [
        "apizee",
        "apizee.ticket.update",
        "a-b_c.D9",
        "0",
        "x.734e3a7b-eb17-4d3f-901d-bcff178b",
    ] {
        assert!(is_valid_topic(topic), "{topic:?}");
    }
    assert!(is_valid_topic(&"a".repeat(MAX_TOPIC_LEN)));
    assert_eq!(MAX_TOPIC_LEN, 249);
}

#[test]
fn invalid_topics() {
    for topic in [
        "", ".", "a..b", ".a", "a.", "a b", " a", "a*", "*", "a.*.b", ">", "a.>", "a/b", "a:b",
        "a\tb", "a\nb", "é", "a,b", "a+b",
    ] {
        assert!(!is_valid_topic(topic), "{topic:?}");
    }
    assert!(!is_valid_topic(&"a".repeat(MAX_TOPIC_LEN + 1)));
}

// ---------------------------------------------------------------------------
// event_id

#[test]
fn event_id_is_the_first_128_bits_of_sha256_in_lowercase_hex() {
    // SHA-256("")    = e3b0c44298fc1c149afbf4c8996fb924 27ae41e4...
    // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a3...
    assert_eq!(event_id(b""), "e3b0c44298fc1c149afbf4c8996fb924");
    assert_eq!(event_id(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
}

#[test]
fn event_id_is_deterministic_and_32_lowercase_hex_characters() {
    let id = event_id(SPEC_TICKET);
    assert_eq!(id, event_id(SPEC_TICKET));
    assert_eq!(id, event_id(&Vec::from(SPEC_TICKET)));
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
}

#[test]
fn event_id_differs_for_different_bodies() {
    assert_ne!(
        event_id(br#"{"event":"update"}"#),
        event_id(br#"{"event":"delete"}"#)
    );
    // Same JSON value, one whitespace byte apart: a different body.
    assert_ne!(event_id(br#"{"a":1}"#), event_id(br#"{"a": 1}"#));
    assert_ne!(
        event_id(SPEC_TICKET),
        event_id(&[SPEC_TICKET, b"\n"].concat())
    );
}

// ---------------------------------------------------------------------------
// build_message

#[test]
fn build_message_for_the_spec_ticket() {
    let body = Bytes::from_static(SPEC_TICKET);
    let received_at = UNIX_EPOCH + Duration::from_millis(1_575_976_414_123);
    let message = build_message(
        &ticket_update(),
        body.clone(),
        &parsed(DEFAULT_TEMPLATE),
        None,
        received_at,
    )
    .expect("fits");
    let id = event_id(SPEC_TICKET);
    assert_eq!(
        message,
        Message {
            topic: "apizee.ticket.update".to_owned(),
            key: "100".to_owned(),
            event_id: id.clone(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("apizee-event", "update".to_owned()),
                ("apizee-object", "ticket".to_owned()),
                ("apizee-object-id", "100".to_owned()),
                ("apizee-time", "1575976413".to_owned()),
                ("apizee-received-at", "2019-12-10T11:13:34.123Z".to_owned()),
                ("apizee-event-id", id),
            ],
            payload: body.clone(),
        }
    );
    // The payload is the received buffer itself, not a copy.
    assert_eq!(message.payload.as_ptr(), body.as_ptr());
    assert_eq!(message.payload.len(), body.len());
}

#[test]
fn header_names_are_lower_case_constants() {
    assert_eq!(
        [
            header::CONTENT_TYPE,
            header::EVENT,
            header::OBJECT,
            header::OBJECT_ID,
            header::TIME,
            header::RECEIVED_AT,
            header::EVENT_ID,
        ],
        [
            "content-type",
            "apizee-event",
            "apizee-object",
            "apizee-object-id",
            "apizee-time",
            "apizee-received-at",
            "apizee-event-id",
        ]
    );
}

#[test]
fn build_message_keys_by_uid_and_places_it_in_the_topic() {
    let body = Bytes::from_static(br#"{"objectId":"734e3a7b-eb17-4d3f-901d-bcff178b"}"#);
    let message = build_message(
        &envelope(
            ObjectKind::Conversation,
            Event::Delete,
            ObjectId::Uid(CONVERSATION_UID.to_owned()),
        ),
        body.clone(),
        &parsed("{prefix}.{object}.{event}.{objectId}"),
        None,
        UNIX_EPOCH,
    )
    .expect("fits");
    assert_eq!(
        message.topic,
        format!("apizee.conversation.delete.{CONVERSATION_UID}")
    );
    assert_eq!(message.key, CONVERSATION_UID);
    assert_eq!(message.payload, body);
    assert_eq!(
        message.headers[3],
        ("apizee-object-id", CONVERSATION_UID.to_owned())
    );
    assert_eq!(
        message.headers[5],
        ("apizee-received-at", "1970-01-01T00:00:00.000Z".to_owned())
    );
}

#[test]
fn build_message_key_and_headers_use_plain_numbers() {
    let mut envelope = envelope(ObjectKind::Media, Event::Create, ObjectId::Number(u64::MAX));
    envelope.time = 0;
    let message = build_message(
        &envelope,
        Bytes::from_static(b"{}"),
        &parsed(DEFAULT_TEMPLATE),
        None,
        UNIX_EPOCH,
    )
    .expect("fits");
    assert_eq!(message.topic, "apizee.media.create");
    assert_eq!(message.key, "18446744073709551615");
    assert_eq!(
        &message.headers[1..5],
        &[
            ("apizee-event", "create".to_owned()),
            ("apizee-object", "media".to_owned()),
            ("apizee-object-id", "18446744073709551615".to_owned()),
            ("apizee-time", "0".to_owned()),
        ]
    );
}

#[test]
fn build_message_received_at_is_rfc3339() {
    use time::format_description::well_known::Rfc3339;
    let now = SystemTime::now();
    let message = build_message(
        &ticket_update(),
        Bytes::from_static(SPEC_TICKET),
        &parsed(DEFAULT_TEMPLATE),
        None,
        now,
    )
    .expect("fits");
    let (name, value) = &message.headers[5];
    assert_eq!(*name, "apizee-received-at");
    let parsed = time::OffsetDateTime::parse(value, &Rfc3339)
        .unwrap_or_else(|e| panic!("{value:?} is not RFC 3339: {e}"));
    let expected = time::OffsetDateTime::from(now);
    // Millisecond precision, truncated.
    let difference = expected - parsed;
    assert!(
        difference >= time::Duration::ZERO && difference < time::Duration::milliseconds(1),
        "{value} vs {expected}"
    );
    assert!(value.ends_with('Z'), "{value}");
}

#[test]
fn build_message_event_id_matches_the_header_and_the_body() {
    let body = Bytes::from_static(br#"{"a": 1}"#);
    let message = build_message(
        &ticket_update(),
        body,
        &parsed(DEFAULT_TEMPLATE),
        None,
        UNIX_EPOCH,
    )
    .expect("fits");
    assert_eq!(message.event_id, event_id(br#"{"a": 1}"#));
    assert_eq!(
        message.headers.last(),
        Some(&("apizee-event-id", message.event_id.clone()))
    );
}

#[test]
fn build_message_refuses_a_topic_made_too_long_by_the_object_id() {
    let prefix = "p".repeat(200);
    let template = template_with_prefix("{prefix}.{objectId}", &prefix);

    // 200 + '.' + 48 = 249: the longest accepted.
    let fits = "x".repeat(48);
    let message = build_message(
        &envelope(
            ObjectKind::Conversation,
            Event::Update,
            ObjectId::Uid(fits.clone()),
        ),
        Bytes::from_static(b"{}"),
        &template,
        None,
        UNIX_EPOCH,
    )
    .expect("249 characters fit");
    assert_eq!(message.topic.len(), MAX_TOPIC_LEN);
    assert_eq!(message.topic, format!("{prefix}.{fits}"));

    let too_long = "x".repeat(49);
    let result = build_message(
        &envelope(
            ObjectKind::Conversation,
            Event::Update,
            ObjectId::Uid(too_long.clone()),
        ),
        Bytes::from_static(b"{}"),
        &template,
        None,
        UNIX_EPOCH,
    );
    let expected = format!("{prefix}.{too_long}");
    assert_eq!(result, Err(TopicTooLong(expected.clone())));
    assert_eq!(
        TopicTooLong(expected.clone()).to_string(),
        format!("the topic {expected:?} built from the objectId is longer than 249 characters")
    );
}

#[test]
fn dead_letters_keep_the_body_and_bound_the_details_header() {
    let details = format!("[\"{}\n\"]", "é".repeat(3000));
    let body = Bytes::from_static(b"{\"event\":1}");
    let message = dead_letter_message(
        "apizee.dlq",
        body.clone(),
        "invalid_envelope",
        &details,
        UNIX_EPOCH + Duration::from_secs(1_575_976_413),
    );
    assert_eq!(message.topic, "apizee.dlq");
    assert_eq!(message.payload, body);
    assert_eq!(message.key, event_id(&body));
    let (_, shown) = message
        .headers
        .iter()
        .find(|(name, _)| *name == header::REJECTION_DETAILS)
        .expect("details header");
    assert!(shown.len() <= 4096, "{}", shown.len());
    assert!(!shown.contains('\n'));
    assert!(
        message
            .headers
            .contains(&(header::REJECTION_REASON, "invalid_envelope".to_owned()))
    );
    assert!(
        message
            .headers
            .contains(&(header::RECEIVED_AT, "2019-12-10T11:13:33.000Z".to_owned()))
    );
}

/// A dead letter and the webhook its body becomes once redriven share the
/// `apizee-event-id` header, but not the de-duplication id: JetStream would
/// drop the redriven webhook as a duplicate of its own dead letter.
#[test]
fn a_dead_letter_does_not_take_its_webhooks_deduplication_id() {
    let body = Bytes::from_static(b"{\"event\":1}");
    let message = dead_letter_message(
        "apizee.dlq",
        body.clone(),
        "invalid_envelope",
        "[]",
        UNIX_EPOCH,
    );
    let id = event_id(&body);
    assert_eq!(message.event_id, format!("{id}{DEAD_LETTER_ID_SUFFIX}"));
    assert!(message.headers.contains(&(header::EVENT_ID, id.clone())));
    assert_ne!(message.event_id, id);
}
