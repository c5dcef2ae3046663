use super::*;

use serde_json::json;

/// The ticket example from the spec, byte for byte.
const SPEC_TICKET: &str = include_str!("../../tests/samples/spec-ticket.json");

/// The conversation example from the spec, byte for byte.
const SPEC_CONVERSATION: &str = include_str!("../../tests/samples/spec-conversation.json");

const STRICT: Rules = Rules {
    strict: true,
    object_id_in_topic: false,
};

const IN_TOPIC: Rules = Rules {
    strict: false,
    object_id_in_topic: true,
};

fn parse_value(doc: &Value, rules: Rules) -> Result<Envelope, EnvelopeError> {
    let body = serde_json::to_vec(doc).expect("a Value always serialises");
    parse(&body, rules)
}

fn accept_with(doc: Value, rules: Rules) -> Envelope {
    match parse_value(&doc, rules) {
        Ok(envelope) => envelope,
        Err(e) => panic!("expected {doc} to be valid, got {e:?}"),
    }
}

fn accept(doc: Value) -> Envelope {
    accept_with(doc, Rules::default())
}

fn reject_with(doc: Value, rules: Rules) -> Vec<Problem> {
    match parse_value(&doc, rules) {
        Err(EnvelopeError::Invalid(problems)) => problems,
        other => panic!("expected {doc} to be invalid, got {other:?}"),
    }
}

fn reject(doc: Value) -> Vec<Problem> {
    reject_with(doc, Rules::default())
}

fn problem(field: &str, problem: &str) -> Problem {
    Problem {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

/// A valid envelope for `object`, so each test changes one thing.
fn envelope(object: &str, object_id: Value, props: Value) -> Value {
    json!({
        "event": "update",
        "time": 1575976413,
        "object": object,
        "objectId": object_id,
        "props": props,
    })
}

fn ticket(props: Value) -> Value {
    envelope("ticket", json!(100), props)
}

fn media(props: Value) -> Value {
    envelope("media", json!(7), props)
}

fn conversation(props: Value) -> Value {
    envelope(
        "conversation",
        json!("734e3a7b-eb17-4d3f-901d-bcff178b"),
        props,
    )
}

fn conversation_event(props: Value) -> Value {
    envelope("conversationevent", json!(42), props)
}

fn with(mut doc: Value, key: &str, value: Value) -> Value {
    doc[key] = value;
    doc
}

fn without(mut doc: Value, key: &str) -> Value {
    doc.as_object_mut()
        .expect("test envelopes are objects")
        .remove(key);
    doc
}

fn unknown(object: ObjectKind, field: &'static str) -> UnknownValue {
    UnknownValue { object, field }
}

// ---------------------------------------------------------------------------
// Valid envelopes

#[test]
fn spec_ticket_sample_is_valid() {
    let envelope = parse(SPEC_TICKET.as_bytes(), Rules::default()).expect("spec sample");
    assert_eq!(
        envelope,
        Envelope {
            event: Event::Update,
            time: 1575976413,
            object: ObjectKind::Ticket,
            object_id: ObjectId::Number(100),
            unknown_values: vec![],
        }
    );
}

#[test]
fn spec_conversation_sample_is_valid() {
    let envelope = parse(SPEC_CONVERSATION.as_bytes(), Rules::default()).expect("spec sample");
    assert_eq!(
        envelope,
        Envelope {
            event: Event::Update,
            time: 1632144306,
            object: ObjectKind::Conversation,
            object_id: ObjectId::Uid("734e3a7b-eb17-4d3f-901d-bcff178b".to_owned()),
            unknown_values: vec![],
        }
    );
}

#[test]
fn spec_samples_are_valid_under_every_rule_set() {
    for rules in [Rules::default(), STRICT, IN_TOPIC] {
        assert!(parse(SPEC_TICKET.as_bytes(), rules).is_ok(), "{rules:?}");
        assert!(
            parse(SPEC_CONVERSATION.as_bytes(), rules).is_ok(),
            "{rules:?}"
        );
    }
}

#[test]
fn every_event_is_accepted() {
    for (name, expected) in [
        ("create", Event::Create),
        ("update", Event::Update),
        ("delete", Event::Delete),
    ] {
        let envelope = accept(with(ticket(json!({})), "event", json!(name)));
        assert_eq!(envelope.event, expected);
        assert_eq!(expected.as_str(), name);
    }
}

#[test]
fn every_object_kind_is_accepted_and_named_as_on_the_wire() {
    let samples = [
        (
            ticket(json!({"state": "new"})),
            ObjectKind::Ticket,
            "ticket",
        ),
        (
            media(json!({"state": "completed"})),
            ObjectKind::Media,
            "media",
        ),
        (
            conversation(json!({"eventType": "conversationEnded"})),
            ObjectKind::Conversation,
            "conversation",
        ),
        (
            envelope("smsmessage", json!(3), json!({})),
            ObjectKind::SmsMessage,
            "smsmessage",
        ),
        (
            conversation_event(json!({"eventType": "ticket.new"})),
            ObjectKind::ConversationEvent,
            "conversationevent",
        ),
    ];
    assert_eq!(samples.len(), ObjectKind::ALL.len());
    for (doc, kind, name) in samples {
        assert_eq!(accept(doc).object, kind);
        assert_eq!(kind.as_str(), name);
    }
}

#[test]
fn ticket_accepts_every_state_of_the_spec_as_known() {
    for state in [
        "new",
        "open",
        "opened",
        "invited",
        "inprogress",
        "updated",
        "expired",
        "declined",
        "rejected",
        "done",
        "closed",
    ] {
        let envelope = accept_with(ticket(json!({ "state": state })), STRICT);
        assert_eq!(envelope.unknown_values, vec![], "{state}");
    }
}

#[test]
fn ticket_accepts_the_spec_geoloc_nested_and_flat() {
    let nested = ticket(json!({
        "state": "inprogress",
        "geoloc": {"lat": 47.866675, "lng": -3.865805},
    }));
    let flat = ticket(json!({
        "state": "inprogress",
        "geoloc.lat": 47.866675,
        "geoloc.lng": -3.865805,
    }));
    for doc in [nested, flat] {
        assert_eq!(accept_with(doc, STRICT).unknown_values, vec![]);
    }
}

#[test]
fn geoloc_bounds_are_inclusive_and_integers_count_as_numbers() {
    for (lat, lng) in [
        (json!(90), json!(180)),
        (json!(-90), json!(-180)),
        (json!(90.0), json!(-180.0)),
        (json!(0), json!(0)),
    ] {
        accept(ticket(json!({"geoloc": {"lat": lat, "lng": lng}})));
        accept(ticket(json!({"geoloc.lat": lat, "geoloc.lng": lng})));
    }
}

#[test]
fn geoloc_may_be_null_empty_or_partial() {
    accept(ticket(json!({"geoloc": null})));
    accept(ticket(json!({"geoloc": {}})));
    accept(ticket(json!({"geoloc": {"lat": 1.5}})));
    accept(ticket(json!({"geoloc": {"lat": null, "lng": null}})));
    accept(ticket(json!({"geoloc.lng": 1.5})));
    accept(ticket(json!({"geoloc.lat": null})));
}

#[test]
fn media_accepts_every_state_and_parent_of_the_spec_as_known() {
    for state in ["inprogress", "uncompleted", "completed", "error"] {
        for parent in ["ticket", "conference", "conversation"] {
            let nested = media(json!({
                "state": state,
                "_parent": {"name": parent, "id": 12},
            }));
            let flat = media(json!({
                "state": state,
                "_parent.name": parent,
                "_parent.id": 12,
            }));
            assert_eq!(accept_with(nested, STRICT).unknown_values, vec![]);
            assert_eq!(accept_with(flat, STRICT).unknown_values, vec![]);
        }
    }
}

#[test]
fn media_parent_id_may_be_any_integer_or_null() {
    for id in [json!(0), json!(-3), json!(u64::MAX), json!(null)] {
        accept(media(json!({"_parent": {"id": id}})));
        accept(media(json!({"_parent.id": id})));
    }
}

#[test]
fn conversation_finished_at_accepts_rfc3339_with_offset_or_z() {
    for finished_at in [
        "2021-09-20T13:25:06+00:00",
        "2021-09-20T13:25:06Z",
        "2021-09-20T15:25:06+02:00",
        "2021-09-20T08:25:06-05:00",
        "2021-09-20T13:25:06.123Z",
    ] {
        accept_with(
            conversation(json!({
                "eventType": "conversationEnded",
                "name": "TEST",
                "finishedAt": finished_at,
            })),
            STRICT,
        );
    }
}

#[test]
fn conversation_props_may_be_null_or_absent() {
    accept_with(conversation(json!({})), STRICT);
    accept_with(
        conversation(json!({"eventType": null, "name": null, "finishedAt": null})),
        STRICT,
    );
}

#[test]
fn smsmessage_props_may_be_absent_null_or_any_object() {
    let sms = envelope("smsmessage", json!(3), json!({}));
    accept(without(sms.clone(), "props"));
    accept(with(sms.clone(), "props", json!(null)));
    accept(sms.clone());
    // Nothing is specified for SMS, so nothing inside props is checked.
    accept_with(
        with(sms, "props", json!({"state": 5, "geoloc": "x"})),
        STRICT,
    );
}

#[test]
fn conversationevent_accepts_any_event_type_string_and_integer_ids() {
    let envelope = accept_with(
        conversation_event(json!({
            "eventType": "media.OCRDone",
            "eventCode": 12,
            "ticketId": 100,
            "conversationId": 200,
            "data": {"text": "ABC-123", "confidence": 0.93},
        })),
        STRICT,
    );
    assert_eq!(envelope.unknown_values, vec![]);
    // The event type list is open: a brand-new type is not even "unknown".
    let envelope = accept_with(
        conversation_event(json!({"eventType": "something.new", "eventCode": -1})),
        STRICT,
    );
    assert_eq!(envelope.unknown_values, vec![]);
    accept(conversation_event(json!({})));
    accept(conversation_event(json!({
        "eventType": null, "eventCode": null, "ticketId": null, "conversationId": null,
    })));
}

#[test]
fn extra_fields_pass_through() {
    let doc = json!({
        "event": "create",
        "time": 0,
        "object": "ticket",
        "objectId": 1,
        "props": {
            "state": "new",
            "assignee": {"id": 4, "name": "Ann"},
            "geoloc": {"lat": 1.0, "lng": 2.0, "accuracy": "high"},
            "_parent": "not checked for tickets",
        },
        "version": [1, 2],
        "source": null,
    });
    let envelope = accept_with(doc, STRICT);
    assert_eq!(envelope.time, 0);
    assert_eq!(envelope.object_id, ObjectId::Number(1));
    assert_eq!(envelope.unknown_values, vec![]);
}

#[test]
fn largest_values_are_accepted() {
    let envelope = accept(with(
        with(ticket(json!({})), "time", json!(i64::MAX)),
        "objectId",
        json!(u64::MAX),
    ));
    assert_eq!(envelope.time, i64::MAX);
    assert_eq!(envelope.object_id, ObjectId::Number(u64::MAX));
}

// ---------------------------------------------------------------------------
// Top-level fields

#[test]
fn empty_object_lists_every_required_field() {
    assert_eq!(
        reject(json!({})),
        vec![
            problem("event", "is required"),
            problem("time", "is required"),
            problem("object", "is required"),
            problem("objectId", "is required"),
        ]
    );
}

#[test]
fn event_must_be_a_known_string() {
    for (value, message) in [
        (
            json!("created"),
            r#"must be one of create, update, delete, found "created""#,
        ),
        (
            json!("Update"),
            r#"must be one of create, update, delete, found "Update""#,
        ),
        (
            json!(""),
            r#"must be one of create, update, delete, found """#,
        ),
        (json!(1), "must be a string, found a number"),
        (json!(null), "must be a string, found null"),
        (json!(true), "must be a string, found a boolean"),
        (json!(["update"]), "must be a string, found an array"),
        (
            json!({"name": "update"}),
            "must be a string, found an object",
        ),
    ] {
        assert_eq!(
            reject(with(ticket(json!({})), "event", value.clone())),
            vec![problem("event", message)],
            "{value}"
        );
    }
    assert_eq!(
        reject(without(ticket(json!({})), "event")),
        vec![problem("event", "is required")]
    );
}

#[test]
fn time_must_be_a_non_negative_integer() {
    for (value, message) in [
        (
            json!("1575976413"),
            "must be an integer (UNIX seconds), found a string",
        ),
        (
            json!(1575976413.5),
            "must be a non-negative integer (UNIX seconds), found 1575976413.5",
        ),
        (
            json!(1575976413.0),
            "must be a non-negative integer (UNIX seconds), found 1575976413.0",
        ),
        (
            json!(-1),
            "must be a non-negative integer (UNIX seconds), found -1",
        ),
        (
            json!(u64::MAX),
            "must be a non-negative integer (UNIX seconds), found 18446744073709551615",
        ),
        (json!(null), "must be an integer (UNIX seconds), found null"),
        (
            json!(true),
            "must be an integer (UNIX seconds), found a boolean",
        ),
        (
            json!([1]),
            "must be an integer (UNIX seconds), found an array",
        ),
    ] {
        assert_eq!(
            reject(with(ticket(json!({})), "time", value.clone())),
            vec![problem("time", message)],
            "{value}"
        );
    }
    assert_eq!(
        reject(without(ticket(json!({})), "time")),
        vec![problem("time", "is required")]
    );
}

#[test]
fn object_must_be_a_known_string() {
    let listed = "must be one of ticket, media, conversation, smsmessage, conversationevent";
    for (value, message) in [
        (json!("Ticket"), format!(r#"{listed}, found "Ticket""#)),
        (json!("sms"), format!(r#"{listed}, found "sms""#)),
        (
            json!("conversation_event"),
            format!(r#"{listed}, found "conversation_event""#),
        ),
        (json!(1), "must be a string, found a number".to_owned()),
        (json!(null), "must be a string, found null".to_owned()),
        (json!(false), "must be a string, found a boolean".to_owned()),
    ] {
        assert_eq!(
            reject(with(ticket(json!({})), "object", value.clone())),
            vec![problem("object", &message)],
            "{value}"
        );
    }
}

#[test]
fn props_are_not_checked_when_the_object_is_unknown() {
    // Without a known object there is no way to know which props apply.
    let doc = without(with(ticket(json!({})), "object", json!("robot")), "props");
    let problems = reject(doc);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "object");
}

#[test]
fn object_id_rejections() {
    let too_long = "a".repeat(MAX_OBJECT_ID_CHARS + 1);
    let any = "must be a non-negative integer or a string";
    for (value, message) in [
        (json!(-1), format!("{any}, found -1")),
        (json!(1.5), format!("{any}, found 1.5")),
        (json!(100.0), format!("{any}, found 100.0")),
        (json!(true), format!("{any}, found a boolean")),
        (json!([100]), format!("{any}, found an array")),
        (json!({"id": 100}), format!("{any}, found an object")),
        (json!(null), format!("{any}, found null")),
        (json!(""), "must not be an empty string".to_owned()),
        (
            json!(too_long),
            "must be at most 128 characters long".to_owned(),
        ),
        (
            json!("abc\ndef"),
            "contains U+000A, a control character".to_owned(),
        ),
        (
            json!("abc\rdef"),
            "contains U+000D, a control character".to_owned(),
        ),
        (
            json!("\t"),
            "contains U+0009, a control character".to_owned(),
        ),
        (
            json!("nul\u{0}"),
            "contains U+0000, a control character".to_owned(),
        ),
        (
            json!("del\u{7f}"),
            "contains U+007F, a control character".to_owned(),
        ),
        (
            json!("c1\u{85}"),
            "contains U+0085, a control character".to_owned(),
        ),
    ] {
        assert_eq!(
            reject(with(ticket(json!({})), "objectId", value.clone())),
            vec![problem("objectId", &message)],
            "{value}"
        );
    }
    assert_eq!(
        reject(without(ticket(json!({})), "objectId")),
        vec![problem("objectId", "is required")]
    );
}

#[test]
fn object_id_refuses_invisible_characters_naming_the_first() {
    let formatting = "an invisible formatting character";
    for (id, message) in [
        (
            "a\u{200B}b".to_owned(),
            format!("contains U+200B, {formatting}"),
        ),
        (
            "\u{200C}".to_owned(),
            format!("contains U+200C, {formatting}"),
        ),
        (
            "a\u{200D}".to_owned(),
            format!("contains U+200D, {formatting}"),
        ),
        (
            "a\u{200E}b".to_owned(),
            format!("contains U+200E, {formatting}"),
        ),
        (
            "a\u{200F}b".to_owned(),
            format!("contains U+200F, {formatting}"),
        ),
        (
            "abc\u{202E}fdp.exe".to_owned(),
            format!("contains U+202E, {formatting}"),
        ),
        (
            "\u{202A}a".to_owned(),
            format!("contains U+202A, {formatting}"),
        ),
        (
            "a\u{2060}b".to_owned(),
            format!("contains U+2060, {formatting}"),
        ),
        (
            "a\u{2064}b".to_owned(),
            format!("contains U+2064, {formatting}"),
        ),
        (
            "a\u{2066}b\u{2069}".to_owned(),
            format!("contains U+2066, {formatting}"),
        ),
        (
            "\u{FEFF}734e3a7b".to_owned(),
            format!("contains U+FEFF, {formatting}"),
        ),
        (
            "soft\u{AD}hyphen".to_owned(),
            format!("contains U+00AD, {formatting}"),
        ),
        (
            "a\u{61C}b".to_owned(),
            format!("contains U+061C, {formatting}"),
        ),
        (
            "a\u{180E}b".to_owned(),
            format!("contains U+180E, {formatting}"),
        ),
        (
            "a\u{600}".to_owned(),
            format!("contains U+0600, {formatting}"),
        ),
        (
            "a\u{FFFB}".to_owned(),
            format!("contains U+FFFB, {formatting}"),
        ),
        // Outside the BMP: tag characters can spell hidden ASCII.
        (
            "id\u{E0041}\u{E0042}".to_owned(),
            format!("contains U+E0041, {formatting}"),
        ),
        (
            "a\u{E0001}".to_owned(),
            format!("contains U+E0001, {formatting}"),
        ),
        (
            "a\u{1D173}".to_owned(),
            format!("contains U+1D173, {formatting}"),
        ),
        (
            "a\u{1343F}".to_owned(),
            format!("contains U+1343F, {formatting}"),
        ),
        (
            "a\u{2028}b".to_owned(),
            "contains U+2028, a line separator".to_owned(),
        ),
        (
            "a\u{2029}b".to_owned(),
            "contains U+2029, a paragraph separator".to_owned(),
        ),
        // The first one found is named.
        (
            "a\u{202E}b\nc".to_owned(),
            format!("contains U+202E, {formatting}"),
        ),
        (
            "a\nb\u{202E}c".to_owned(),
            "contains U+000A, a control character".to_owned(),
        ),
    ] {
        assert_eq!(
            reject(with(ticket(json!({})), "objectId", json!(id))),
            vec![problem("objectId", &message)],
            "{id:?}"
        );
    }
}

#[test]
fn object_id_invisible_characters_are_one_problem_even_in_a_topic() {
    // The character is named; the topic rule, which would refuse it too,
    // adds nothing.
    assert_eq!(
        reject_with(
            with(ticket(json!({})), "objectId", json!("a\u{200B}b")),
            IN_TOPIC
        ),
        vec![problem(
            "objectId",
            "contains U+200B, an invisible formatting character"
        )]
    );
}

/// A conversation whose `objectId` and `name` are spliced in as raw bytes,
/// so that escapes reach the parser as they came.
fn conversation_body(object_id: &[u8], name: &[u8]) -> Vec<u8> {
    let mut body = br#"{"event":"update","time":1,"object":"conversation","objectId":""#.to_vec();
    body.extend_from_slice(object_id);
    body.extend_from_slice(br#"","props":{"name":""#);
    body.extend_from_slice(name);
    body.extend_from_slice(br#""}}"#);
    body
}

#[test]
fn object_id_escapes_are_undone_before_invisible_characters_are_refused() {
    for (case, id) in [
        ("escaped NUL", r"\u0000".as_bytes()),
        ("escaped NUL inside", br"a\u0000b"),
        ("unit separator", br"a\u001fb"),
        ("DEL", br"a\u007fb"),
        ("C1 NEL", br"a\u0085b"),
        ("CR LF", br"line\r\nbreak"),
        ("tab", br"a\tb"),
        ("escape", br"a\u001b[31mred"),
        ("right-to-left override", br"a\u202eb"),
        ("raw right-to-left override", "a\u{202e}b".as_bytes()),
        ("line separator", br"a\u2028b"),
        ("paragraph separator", br"a\u2029b"),
        ("zero width space", br"a\u200bb"),
        ("byte order mark in front", br"\ufeffc-1"),
        ("soft hyphen", br"c\u00ad1"),
        ("tag characters", br"c-1\udb40\udc41"),
    ] {
        one_problem(&conversation_body(id, b"n"), "objectId", case);
    }
    assert_eq!(
        one_problem(
            &conversation_body(br"abc\u202egpj.exe", b"n"),
            "objectId",
            "spoofed extension"
        )
        .problem,
        "contains U+202E, an invisible formatting character"
    );
    one_problem(
        br#"{"event":"update\u0000","time":1,"object":"ticket","objectId":1,"props":{}}"#,
        "event",
        "NUL after the event name",
    );
    // As the README says: an escaped NUL or an invisible character in a prop
    // the bridge only type-checks is passed through; an objectId may hold
    // any visible character, including a surrogate pair. The key is the
    // objectId as displayed.
    for (case, id, name, key) in [
        ("escaped NUL in name", &b"c-1"[..], &br"a\u0000b"[..], "c-1"),
        (
            "right-to-left override in name",
            b"c-1",
            br"a\u202eb",
            "c-1",
        ),
        ("surrogate pair in objectId", br"\ud83d\ude00", b"n", "😀"),
        ("raw UTF-8 in objectId", "café".as_bytes(), b"n", "café"),
        ("no-break space in objectId", br"a\u00a0b", b"n", "a\u{a0}b"),
    ] {
        match parse(&conversation_body(id, name), Rules::default()) {
            Ok(envelope) => assert_eq!(envelope.object_id.to_string(), key, "{case}"),
            Err(e) => panic!("{case}: expected valid, got {e:?}"),
        }
    }
}

#[test]
fn object_id_keeps_visible_unicode_next_to_the_refused_ranges() {
    // Neighbours of the refused code points, and characters that look like
    // spaces but are visible separators (Zs) or letters.
    for id in [
        "café",
        "a\u{A0}b",
        "a\u{200A}b",
        "a\u{2010}b",
        "a\u{2027}b",
        "a\u{202F}b",
        "a\u{205F}b",
        "a\u{2065}b",
        "a\u{2070}",
        "a\u{3000}b",
        "a\u{FEFE}",
        "a\u{FFF8}",
        "a\u{FFFC}",
        "a\u{AC}\u{AE}",
        "a\u{5FF}\u{606}",
        "a\u{E0000}",
        "a\u{E0002}",
        "a\u{E0080}",
        "a\u{1D172}\u{1D17B}",
        "😀",
        "日本語",
    ] {
        assert_eq!(
            accept(with(ticket(json!({})), "objectId", json!(id))).object_id,
            ObjectId::Uid(id.to_owned()),
            "{id:?}"
        );
    }
}

#[test]
fn format_character_table_is_sorted_and_counts_170_code_points() {
    // 170: the size of general category Cf in Unicode 15.0 to 17.0
    // (DerivedGeneralCategory.txt). Sorted and disjoint, so a range typed
    // wrong or twice shows as a wrong count.
    let mut count = 0;
    for pair in FORMAT_CHARACTERS.windows(2) {
        assert!(pair[0].end() < pair[1].start(), "{pair:?}");
    }
    for range in &FORMAT_CHARACTERS {
        assert!(range.start() <= range.end(), "{range:?}");
        count += u32::from(*range.end()) - u32::from(*range.start()) + 1;
    }
    assert_eq!(count, 170);
}

#[test]
fn object_id_length_is_counted_in_characters() {
    let ascii = "a".repeat(MAX_OBJECT_ID_CHARS);
    let envelope = accept(with(ticket(json!({})), "objectId", json!(ascii)));
    assert_eq!(envelope.object_id, ObjectId::Uid(ascii));
    // 128 characters, 256 bytes: still within the bound.
    let accented = "é".repeat(MAX_OBJECT_ID_CHARS);
    let envelope = accept(with(ticket(json!({})), "objectId", json!(accented)));
    assert_eq!(envelope.object_id, ObjectId::Uid(accented));
    let too_long = "é".repeat(MAX_OBJECT_ID_CHARS + 1);
    assert_eq!(
        reject(with(ticket(json!({})), "objectId", json!(too_long))),
        vec![problem("objectId", "must be at most 128 characters long")]
    );
    // A huge objectId is refused as too long like any other, and the
    // bound is the same in a conversation.
    let id = |id: &str| {
        format!(
            r#"{{"event":"update","time":1,"object":"conversation","objectId":"{id}","props":{{}}}}"#
        )
    };
    for (case, body) in [
        ("200 KiB objectId", id(&"x".repeat(200 * 1024))),
        ("129 two-byte characters", id(&"é".repeat(129))),
    ] {
        assert_eq!(
            one_problem(body.as_bytes(), "objectId", case).problem,
            "must be at most 128 characters long"
        );
    }
    let parsed = parse(id(&"é".repeat(128)).as_bytes(), Rules::default());
    assert!(parsed.is_ok(), "128 characters: {parsed:?}");
}

#[test]
fn object_id_numbers_and_strings_are_kept_apart() {
    assert_eq!(
        accept(with(ticket(json!({})), "objectId", json!(0))).object_id,
        ObjectId::Number(0)
    );
    assert_eq!(
        accept(with(ticket(json!({})), "objectId", json!("100"))).object_id,
        ObjectId::Uid("100".to_owned())
    );
}

#[test]
fn object_id_displays_as_the_plain_key() {
    assert_eq!(ObjectId::Number(100).to_string(), "100");
    assert_eq!(ObjectId::Number(0).to_string(), "0");
    assert_eq!(
        ObjectId::Number(u64::MAX).to_string(),
        "18446744073709551615"
    );
    assert_eq!(
        ObjectId::Uid("734e3a7b-eb17-4d3f-901d-bcff178b".to_owned()).to_string(),
        "734e3a7b-eb17-4d3f-901d-bcff178b"
    );
    assert_eq!(ObjectId::Uid("100".to_owned()).to_string(), "100");
    assert_eq!(ObjectId::Uid("a\"b".to_owned()).to_string(), "a\"b");
    let parsed = parse(SPEC_TICKET.as_bytes(), Rules::default()).expect("spec sample");
    assert_eq!(parsed.object_id.to_string(), "100");
}

#[test]
fn object_id_in_topic_accepts_numbers_uuids_and_safe_uids() {
    for (value, expected) in [
        (json!(100), ObjectId::Number(100)),
        (
            json!("734e3a7b-eb17-4d3f-901d-bcff178b"),
            ObjectId::Uid("734e3a7b-eb17-4d3f-901d-bcff178b".to_owned()),
        ),
        (
            json!("0F8FAD5B-D9CB-469F-A165-70867728950E"),
            ObjectId::Uid("0F8FAD5B-D9CB-469F-A165-70867728950E".to_owned()),
        ),
        (
            json!("abc_DEF-123"),
            ObjectId::Uid("abc_DEF-123".to_owned()),
        ),
        (json!("100"), ObjectId::Uid("100".to_owned())),
    ] {
        let envelope = accept_with(with(ticket(json!({})), "objectId", value), IN_TOPIC);
        assert!(envelope.object_id.is_topic_safe());
        assert_eq!(envelope.object_id, expected);
    }
}

#[test]
fn object_id_in_topic_rejects_what_a_topic_cannot_hold() {
    let message = "is part of the topic name, so it may only contain ASCII letters, digits, \
                   '-' and '_'";
    for id in [
        "a.b", "a*", "*", ">", "a>", "a b", " a", "a/b", "a:b", "é", "a,b", "a{b}",
    ] {
        let doc = with(ticket(json!({})), "objectId", json!(id));
        assert_eq!(
            reject_with(doc.clone(), IN_TOPIC),
            vec![problem("objectId", message)],
            "{id:?}"
        );
        assert!(!ObjectId::Uid(id.to_owned()).is_topic_safe(), "{id:?}");
        // Outside a topic the same id is fine.
        assert_eq!(accept(doc).object_id, ObjectId::Uid(id.to_owned()));
    }
}

// ---------------------------------------------------------------------------
// props

#[test]
fn props_are_required_for_every_object_but_smsmessage() {
    for object in ["ticket", "media", "conversation", "conversationevent"] {
        let doc = without(envelope(object, json!(1), json!({})), "props");
        assert_eq!(
            reject(doc),
            vec![problem("props", "is required")],
            "{object}"
        );
        let doc = envelope(object, json!(1), json!(null));
        assert_eq!(
            reject(doc),
            vec![problem("props", "must be an object, found null")],
            "{object}"
        );
    }
}

#[test]
fn props_must_be_an_object_for_every_object() {
    for object in ObjectKind::ALL {
        for (value, found) in [
            (json!("x"), "a string"),
            (json!([]), "an array"),
            (json!(1), "a number"),
            (json!(false), "a boolean"),
        ] {
            let doc = envelope(object.as_str(), json!(1), value);
            assert_eq!(
                reject(doc),
                vec![problem(
                    "props",
                    &format!("must be an object, found {found}")
                )],
                "{object:?} {found}"
            );
        }
    }
}

#[test]
fn unknown_ticket_state_is_counted_by_default() {
    let envelope = accept(ticket(json!({"state": "archived"})));
    assert_eq!(
        envelope.unknown_values,
        vec![unknown(ObjectKind::Ticket, "state")]
    );
    // Case matters: "Closed" is not a listed state.
    let envelope = accept(ticket(json!({"state": "Closed"})));
    assert_eq!(
        envelope.unknown_values,
        vec![unknown(ObjectKind::Ticket, "state")]
    );
}

#[test]
fn unknown_ticket_state_is_a_problem_when_strict() {
    assert_eq!(
        reject_with(ticket(json!({"state": "archived"})), STRICT),
        vec![problem(
            "props.state",
            "must be one of new, open, opened, invited, inprogress, updated, expired, \
             declined, rejected, done, closed, found \"archived\""
        )]
    );
}

#[test]
fn ticket_state_must_be_a_string_in_every_mode() {
    for rules in [Rules::default(), STRICT] {
        assert_eq!(
            reject_with(ticket(json!({"state": 3})), rules),
            vec![problem("props.state", "must be a string, found a number")]
        );
        assert_eq!(
            reject_with(ticket(json!({"state": ["new"]})), rules),
            vec![problem("props.state", "must be a string, found an array")]
        );
    }
    assert_eq!(
        accept_with(ticket(json!({"state": null})), STRICT).unknown_values,
        vec![]
    );
}

#[test]
fn geoloc_out_of_range_nested_and_flat() {
    assert_eq!(
        reject(ticket(json!({"geoloc": {"lat": 90.5, "lng": -180.1}}))),
        vec![
            problem("props.geoloc.lat", "must be between -90 and 90, found 90.5"),
            problem(
                "props.geoloc.lng",
                "must be between -180 and 180, found -180.1"
            ),
        ]
    );
    assert_eq!(
        reject(ticket(json!({"geoloc.lat": -91, "geoloc.lng": 181}))),
        vec![
            problem(
                "props[\"geoloc.lat\"]",
                "must be between -90 and 90, found -91"
            ),
            problem(
                "props[\"geoloc.lng\"]",
                "must be between -180 and 180, found 181"
            ),
        ]
    );
}

#[test]
fn geoloc_must_be_numbers_nested_and_flat() {
    assert_eq!(
        reject(ticket(json!({
            "geoloc": {"lat": "47.866675", "lng": true},
            "geoloc.lat": [47],
            "geoloc.lng": {"deg": -3},
        }))),
        vec![
            problem("props.geoloc.lat", "must be a number, found a string"),
            problem("props.geoloc.lng", "must be a number, found a boolean"),
            problem("props[\"geoloc.lat\"]", "must be a number, found an array"),
            problem("props[\"geoloc.lng\"]", "must be a number, found an object"),
        ]
    );
}

#[test]
fn geoloc_must_be_an_object_when_nested() {
    for (value, found) in [
        (json!("47.8,-3.8"), "a string"),
        (json!([47.8, -3.8]), "an array"),
        (json!(47.8), "a number"),
    ] {
        assert_eq!(
            reject(ticket(json!({ "geoloc": value }))),
            vec![problem(
                "props.geoloc",
                &format!("must be an object, found {found}")
            )]
        );
    }
}

#[test]
fn geoloc_nested_and_flat_are_both_checked_in_one_envelope() {
    assert_eq!(
        reject(ticket(json!({
            "geoloc": {"lat": 1.0, "lng": 200},
            "geoloc.lat": 100,
            "geoloc.lng": 2.0,
        }))),
        vec![
            problem(
                "props.geoloc.lng",
                "must be between -180 and 180, found 200"
            ),
            problem(
                "props[\"geoloc.lat\"]",
                "must be between -90 and 90, found 100"
            ),
        ]
    );
}

#[test]
fn unknown_media_values_are_counted_by_default() {
    let envelope = accept(media(json!({
        "state": "paused",
        "_parent": {"name": "room", "id": 1},
        "_parent.name": "booth",
    })));
    assert_eq!(
        envelope.unknown_values,
        vec![
            unknown(ObjectKind::Media, "state"),
            unknown(ObjectKind::Media, "_parent.name"),
            unknown(ObjectKind::Media, "_parent.name"),
        ]
    );
}

#[test]
fn unknown_media_values_are_problems_when_strict() {
    assert_eq!(
        reject_with(
            media(json!({
                "state": "paused",
                "_parent": {"name": "room"},
                "_parent.name": "booth",
            })),
            STRICT
        ),
        vec![
            problem(
                "props.state",
                "must be one of inprogress, uncompleted, completed, error, found \"paused\""
            ),
            problem(
                "props._parent.name",
                "must be one of ticket, conference, conversation, found \"room\""
            ),
            problem(
                "props[\"_parent.name\"]",
                "must be one of ticket, conference, conversation, found \"booth\""
            ),
        ]
    );
}

#[test]
fn media_type_errors_nested_and_flat() {
    assert_eq!(
        reject(media(json!({
            "state": false,
            "_parent": {"name": 1, "id": "12"},
            "_parent.name": null,
            "_parent.id": 1.5,
        }))),
        vec![
            problem("props.state", "must be a string, found a boolean"),
            problem("props._parent.name", "must be a string, found a number"),
            problem("props._parent.id", "must be an integer, found a string"),
            problem("props[\"_parent.id\"]", "must be an integer, found 1.5"),
        ]
    );
    assert_eq!(
        reject(media(json!({"_parent": [1], "_parent.name": ["ticket"]}))),
        vec![
            problem("props._parent", "must be an object, found an array"),
            problem(
                "props[\"_parent.name\"]",
                "must be a string, found an array"
            ),
        ]
    );
    assert_eq!(
        reject(media(json!({"_parent.id": "12"}))),
        vec![problem(
            "props[\"_parent.id\"]",
            "must be an integer, found a string"
        )]
    );
}

#[test]
fn unknown_conversation_event_type_is_counted_or_refused() {
    let doc = conversation(json!({"eventType": "conversationStarted"}));
    assert_eq!(
        accept(doc.clone()).unknown_values,
        vec![unknown(ObjectKind::Conversation, "eventType")]
    );
    assert_eq!(
        reject_with(doc, STRICT),
        vec![problem(
            "props.eventType",
            "must be one of conversationEnded, found \"conversationStarted\""
        )]
    );
}

#[test]
fn conversation_type_errors() {
    assert_eq!(
        reject(conversation(json!({
            "eventType": 1,
            "name": 42,
            "finishedAt": 1632144306,
        }))),
        vec![
            problem("props.eventType", "must be a string, found a number"),
            problem("props.name", "must be a string, found a number"),
            problem("props.finishedAt", "must be a string, found a number"),
        ]
    );
    assert_eq!(
        reject(conversation(json!({"name": {"first": "T"}}))),
        vec![problem("props.name", "must be a string, found an object")]
    );
}

#[test]
fn conversation_finished_at_rejects_what_is_not_rfc3339() {
    for finished_at in [
        "2021-09-20T13:25:06",
        "2021-09-20",
        "13:25:06",
        "2021-09-20T13:25:06+0000",
        "2021-09-20T13:25Z",
        "20/09/2021 13:25:06",
        "Mon, 20 Sep 2021 13:25:06 GMT",
        "2021-13-20T13:25:06Z",
        "1632144306",
        "",
    ] {
        assert_eq!(
            reject(conversation(json!({ "finishedAt": finished_at }))),
            vec![problem(
                "props.finishedAt",
                &format!(
                    "must be an RFC 3339 date-time such as \"2021-08-03T15:05:50+00:00\", \
                     found {finished_at:?}"
                )
            )],
            "{finished_at:?}"
        );
    }
}

#[test]
fn conversationevent_type_errors() {
    assert_eq!(
        reject(conversation_event(json!({
            "eventType": 5,
            "eventCode": "12",
            "ticketId": 1.5,
            "conversationId": true,
        }))),
        vec![
            problem("props.eventType", "must be a string, found a number"),
            problem("props.eventCode", "must be an integer, found a string"),
            problem("props.ticketId", "must be an integer, found 1.5"),
            problem(
                "props.conversationId",
                "must be an integer, found a boolean"
            ),
        ]
    );
    assert_eq!(
        reject(conversation_event(json!({
            "eventType": ["a"],
            "eventCode": 12.0,
            "ticketId": "100",
            "conversationId": [1],
        }))),
        vec![
            problem("props.eventType", "must be a string, found an array"),
            problem("props.eventCode", "must be an integer, found 12.0"),
            problem("props.ticketId", "must be an integer, found a string"),
            problem("props.conversationId", "must be an integer, found an array"),
        ]
    );
}

/// A valid envelope per object, with every known prop present and valid.
fn complete_envelope(object: &str) -> Value {
    let props = match object {
        "ticket" => json!({"state": "open", "geoloc": {"lat": 1.5, "lng": 2.5}}),
        "media" => json!({"state": "completed", "_parent": {"name": "ticket", "id": 3}}),
        "conversation" => json!({
            "eventType": "conversationEnded",
            "name": "n",
            "finishedAt": "2021-09-20T13:25:06+00:00"
        }),
        "conversationevent" => json!({
            "eventType": "media.OCRDone",
            "eventCode": 1,
            "ticketId": 2,
            "conversationId": 3
        }),
        _ => json!({}),
    };
    json!({"event": "update", "time": 1632144306, "object": object, "objectId": 100, "props": props})
}

/// Sets `path` (keys from the root; a dotted key is one flat key) to `value`.
fn set(document: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *document = value;
        return;
    };
    let mut at = document;
    for key in parents {
        at = &mut at[*key];
    }
    at[*last] = value;
}

#[test]
fn wrong_types_in_every_field_are_one_problem_naming_that_field() {
    let kinds = [
        ("null", json!(null)),
        ("boolean", json!(true)),
        ("integer", json!(7)),
        ("negative", json!(-7)),
        ("fraction", json!(1.5)),
        ("string", json!("s")),
        ("array", json!([])),
        ("object", json!({})),
    ];
    const NUMBER: &[&str] = &["null", "integer", "negative", "fraction"];
    const INTEGER: &[&str] = &["null", "integer", "negative"];
    const STRING: &[&str] = &["null", "string"];
    const OBJECT: &[&str] = &["null", "object"];
    // (object, path, field named in the problem, kinds accepted). A string
    // that is not a listed enum value is accepted (and counted) outside
    // strict mode.
    let fields: &[(&str, &[&str], &str, &[&str])] = &[
        ("ticket", &[], "$", &["object"]),
        ("ticket", &["event"], "event", &[]),
        ("ticket", &["time"], "time", &["integer"]),
        ("ticket", &["object"], "object", &[]),
        ("ticket", &["objectId"], "objectId", &["integer", "string"]),
        ("ticket", &["props"], "props", &["object"]),
        ("smsmessage", &["props"], "props", OBJECT),
        ("ticket", &["props", "state"], "props.state", STRING),
        ("ticket", &["props", "geoloc"], "props.geoloc", OBJECT),
        (
            "ticket",
            &["props", "geoloc", "lat"],
            "props.geoloc.lat",
            NUMBER,
        ),
        (
            "ticket",
            &["props", "geoloc", "lng"],
            "props.geoloc.lng",
            NUMBER,
        ),
        (
            "ticket",
            &["props", "geoloc.lat"],
            r#"props["geoloc.lat"]"#,
            NUMBER,
        ),
        (
            "ticket",
            &["props", "geoloc.lng"],
            r#"props["geoloc.lng"]"#,
            NUMBER,
        ),
        ("media", &["props", "state"], "props.state", STRING),
        ("media", &["props", "_parent"], "props._parent", OBJECT),
        (
            "media",
            &["props", "_parent", "name"],
            "props._parent.name",
            STRING,
        ),
        (
            "media",
            &["props", "_parent", "id"],
            "props._parent.id",
            INTEGER,
        ),
        (
            "media",
            &["props", "_parent.name"],
            r#"props["_parent.name"]"#,
            STRING,
        ),
        (
            "media",
            &["props", "_parent.id"],
            r#"props["_parent.id"]"#,
            INTEGER,
        ),
        (
            "conversation",
            &["props", "eventType"],
            "props.eventType",
            STRING,
        ),
        ("conversation", &["props", "name"], "props.name", STRING),
        // "s" is a string but not an RFC 3339 date.
        (
            "conversation",
            &["props", "finishedAt"],
            "props.finishedAt",
            &["null"],
        ),
        (
            "conversationevent",
            &["props", "eventType"],
            "props.eventType",
            STRING,
        ),
        (
            "conversationevent",
            &["props", "eventCode"],
            "props.eventCode",
            INTEGER,
        ),
        (
            "conversationevent",
            &["props", "ticketId"],
            "props.ticketId",
            INTEGER,
        ),
        (
            "conversationevent",
            &["props", "conversationId"],
            "props.conversationId",
            INTEGER,
        ),
    ];
    for object in [
        "ticket",
        "media",
        "conversation",
        "smsmessage",
        "conversationevent",
    ] {
        accept(complete_envelope(object));
    }
    for (object, path, field, accepted) in fields {
        for (kind, value) in &kinds {
            // `{}` as the whole document is an object missing every field.
            if path.is_empty() && *kind == "object" {
                continue;
            }
            let mut document = complete_envelope(object);
            set(&mut document, path, value.clone());
            let body = serde_json::to_vec(&document).expect("a Value always serialises");
            let case = format!("{object} {field} = {value}");
            if accepted.contains(kind) {
                let parsed = parse(&body, Rules::default());
                assert!(parsed.is_ok(), "{case}: {parsed:?}");
            } else {
                one_problem(&body, field, &case);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The whole list, the whole document

#[test]
fn every_problem_is_listed_at_once_in_document_order() {
    let doc = json!({
        "event": "updated",
        "time": -5,
        "object": "ticket",
        "objectId": "",
        "props": {
            "state": "archived",
            "geoloc": {"lat": 91, "lng": "east"},
            "geoloc.lat": "north",
            "geoloc.lng": -181,
        },
    });
    assert_eq!(
        reject_with(doc, STRICT),
        vec![
            problem(
                "event",
                r#"must be one of create, update, delete, found "updated""#
            ),
            problem(
                "time",
                "must be a non-negative integer (UNIX seconds), found -5"
            ),
            problem("objectId", "must not be an empty string"),
            problem(
                "props.state",
                "must be one of new, open, opened, invited, inprogress, updated, expired, \
                 declined, rejected, done, closed, found \"archived\""
            ),
            problem("props.geoloc.lat", "must be between -90 and 90, found 91"),
            problem("props.geoloc.lng", "must be a number, found a string"),
            problem("props[\"geoloc.lat\"]", "must be a number, found a string"),
            problem(
                "props[\"geoloc.lng\"]",
                "must be between -180 and 180, found -181"
            ),
        ]
    );
}

#[test]
fn props_problems_are_listed_even_when_top_level_fields_are_bad() {
    let doc = json!({
        "object": "media",
        "objectId": [1],
        "props": {"_parent": {"id": "x"}},
    });
    assert_eq!(
        reject(doc),
        vec![
            problem("event", "is required"),
            problem("time", "is required"),
            problem(
                "objectId",
                "must be a non-negative integer or a string, found an array"
            ),
            problem("props._parent.id", "must be an integer, found a string"),
        ]
    );
}

#[test]
fn a_document_that_is_not_an_object_is_one_problem_at_the_root() {
    for (body, found) in [
        ("[]", "an array"),
        (r#"[{"event":"update"}]"#, "an array"),
        (r#""update""#, "a string"),
        ("1575976413", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        assert_eq!(
            parse(body.as_bytes(), Rules::default()),
            Err(EnvelopeError::Invalid(vec![problem(
                "$",
                &format!("must be a JSON object, found {found}")
            )])),
            "{body}"
        );
    }
}

#[test]
fn malformed_bodies_are_malformed_not_invalid() {
    let truncated = &SPEC_TICKET.as_bytes()[..SPEC_TICKET.len() - 3];
    for body in [
        &b""[..],
        b"   \n",
        truncated,
        b"{\"event\":\"update\"",
        b"{\"event\":\"\xff\xfe\"}",
        b"\xef\xbb\xbf{}",
        b"\xff",
        b"{} {}",
        b"{\"event\":\"update\",}",
        b"{'event':'update'}",
        b"{\"objectId\":\"\\ud800\"}",
        b"{\"event\":",
        b"not json",
        b"{\"a\":1}}",
    ] {
        match parse(body, Rules::default()) {
            Err(EnvelopeError::Malformed(message)) => {
                assert!(!message.is_empty(), "{body:?}");
            }
            other => panic!("{body:?}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn malformed_keeps_the_parser_message() {
    let Err(error) = parse(b"", Rules::default()) else {
        panic!("an empty body must not parse");
    };
    assert_eq!(
        error,
        EnvelopeError::Malformed("EOF while parsing a value at line 1 column 0".to_owned())
    );
    assert_eq!(
        error.to_string(),
        "body is not valid JSON: EOF while parsing a value at line 1 column 0"
    );
}

/// The refusal of a body that is not JSON, with the parser's message.
fn malformed_message(body: &[u8], case: &str) -> String {
    match parse(body, Rules::default()) {
        Err(EnvelopeError::Malformed(message)) => {
            assert!(!message.is_empty(), "{case}");
            message
        }
        other => panic!("{case}: expected Malformed, got {other:?}"),
    }
}

/// The problems of a body that must be refused with exactly one, at `field`.
fn one_problem(body: &[u8], field: &str, case: &str) -> Problem {
    match parse(body, Rules::default()) {
        Err(EnvelopeError::Invalid(mut problems)) => {
            assert_eq!(problems.len(), 1, "{case}: {problems:?}");
            let only = problems.remove(0);
            assert_eq!(only.field, field, "{case}: {only:?}");
            assert!(!only.problem.is_empty(), "{case}");
            only
        }
        other => panic!("{case}: expected one problem at {field}, got {other:?}"),
    }
}

/// A valid conversation envelope that exercises every kind of JSON token:
/// escapes, multi-byte UTF-8 (so some prefixes end inside a character),
/// `true`, `false`, `null`, exponents and nested containers.
const RICH_CONVERSATION: &str = r#"{"event":"create","time":1632144306,"object":"conversation","objectId":"c0ffee-\u00e9-é","props":{"eventType":"conversationEnded","name":"Caf\u00e9 \"quoted\" \\ ☕ 😀","finishedAt":"2021-09-20T13:25:06+00:00","extra":[1,-2.5e3,true,false,null,{},[]]}}"#;

#[test]
fn every_truncation_of_a_valid_body_is_malformed_and_only_the_whole_body_parses() {
    let mut whole = 0;
    for full in [SPEC_TICKET, SPEC_CONVERSATION, RICH_CONVERSATION] {
        let full = full.as_bytes();
        for length in 0..=full.len() {
            let prefix = &full[..length];
            let case = format!("prefix of {length}/{} bytes", full.len());
            // A sample that ends with a newline is still whole without it.
            if prefix.trim_ascii_end() == full.trim_ascii_end() {
                let parsed = parse(prefix, Rules::default());
                assert!(parsed.is_ok(), "{case}: {parsed:?}");
                whole += 1;
            } else if serde_json::from_slice::<Value>(prefix).is_ok() {
                // Impossible for a document that starts with `{`, but the
                // rule holds for any sample: complete JSON is at worst
                // invalid.
                let parsed = parse(prefix, Rules::default());
                assert!(
                    matches!(parsed, Err(EnvelopeError::Invalid(_))),
                    "{case}: {parsed:?}"
                );
            } else {
                malformed_message(prefix, &case);
            }
        }
    }
    // Per sample: the whole body, and each prefix that lacks only some of
    // its trailing whitespace.
    let expected: usize = [SPEC_TICKET, SPEC_CONVERSATION, RICH_CONVERSATION]
        .iter()
        .map(|s| 1 + s.len() - s.trim_end().len())
        .sum();
    assert_eq!(whole, expected);
}

#[test]
fn json_extensions_and_broken_syntax_are_malformed() {
    let valid =
        r#"{"event":"update","time":1,"object":"ticket","objectId":100,"props":{"state":"open"}}"#;
    let malformed: &[(&str, String)] = &[
        (
            "trailing comma in an object",
            valid.replace(r#""open"}"#, r#""open",}"#),
        ),
        ("trailing comma at the end", valid.replace("}}", "},}")),
        (
            "trailing comma in an array",
            valid.replace(r#""open""#, r#""open","list":[1,2,]"#),
        ),
        ("single-quoted string", valid.replace(r#""open""#, "'open'")),
        ("single-quoted key", valid.replace(r#""state""#, "'state'")),
        ("unquoted key", valid.replace(r#""state""#, "state")),
        (
            "line comment",
            valid.replace(r#","time""#, "// c\n,\"time\""),
        ),
        (
            "block comment",
            valid.replace(r#","time""#, r#"/* c */,"time""#),
        ),
        ("comment after the object", format!("{valid}/* c */")),
        ("hash comment", format!("# c\n{valid}")),
        ("NaN", valid.replace(r#""open""#, "NaN")),
        ("Infinity", valid.replace(r#""open""#, "Infinity")),
        ("-Infinity", valid.replace(r#""open""#, "-Infinity")),
        ("leading plus", valid.replace(":1,", ":+1,")),
        ("leading zero", valid.replace(":100,", ":0100,")),
        ("hex number", valid.replace(":100,", ":0x64,")),
        ("bare fraction", valid.replace(":1,", ":.5,")),
        ("dangling dot", valid.replace(":1,", ":1.,")),
        ("dangling exponent", valid.replace(":1,", ":1e,")),
        ("TRUE in capitals", valid.replace(r#""open""#, "TRUE")),
        ("undefined", valid.replace(r#""open""#, "undefined")),
        ("missing colon", valid.replace(r#""time":"#, r#""time""#)),
        (
            "missing comma",
            valid.replace(r#"1,"object""#, r#"1 "object""#),
        ),
        (
            "unterminated string",
            valid.replace(r#""open"}}"#, r#""open}}"#),
        ),
        ("invalid escape", valid.replace(r#""open""#, r#""\x41""#)),
        (
            "short unicode escape",
            valid.replace(r#""open""#, r#""\u41""#),
        ),
        (
            "unescaped newline",
            valid.replace(r#""open""#, "\"op\nen\""),
        ),
        ("unescaped tab", valid.replace(r#""open""#, "\"op\ten\"")),
        ("garbage after the object", format!("{valid} x")),
        ("a second object after the first", format!("{valid}{valid}")),
        ("newline-separated objects", format!("{valid}\n{valid}\n")),
        ("an extra closing brace", format!("{valid}}}")),
        ("an unclosed object", valid.trim_end_matches('}').to_owned()),
        ("empty body", String::new()),
        ("only whitespace", " \r\n\t ".to_owned()),
        ("JSONP", format!("callback({valid})")),
        ("form encoding", "event=update&time=1".to_owned()),
    ];
    for (case, body) in malformed {
        malformed_message(body.as_bytes(), case);
    }
    // Complete JSON that is not an object.
    for body in [
        "null",
        "true",
        "0",
        r#""text""#,
        "[]",
        &format!("[{valid}]"),
        &format!("  {}  ", serde_json::to_string(valid).unwrap_or_default()),
    ] {
        one_problem(body.as_bytes(), "$", body);
    }
    // Whitespace around a valid document is JSON whitespace.
    let padded = format!(" \r\n\t{valid} \r\n\t");
    let parsed = parse(padded.as_bytes(), Rules::default());
    assert!(parsed.is_ok(), "padded: {parsed:?}");
}

#[test]
fn deep_nesting_is_malformed_at_once_without_overflowing_the_stack() {
    let envelope_around = |inner: &str| {
        format!(
            r#"{{"event":"update","time":1,"object":"ticket","objectId":1,"props":{{"state":"open","deep":{inner}}}}}"#
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("100k unclosed [", "[".repeat(100_000)),
        (
            "100k balanced []",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        ("40k unclosed {\"a\":", r#"{"a":"#.repeat(40_000)),
        (
            "40k balanced {\"a\":}",
            format!("{}1{}", r#"{"a":"#.repeat(40_000), "}".repeat(40_000)),
        ),
        ("alternating [{", r#"[{"a":"#.repeat(20_000)),
        ("100k [ inside props", envelope_around(&"[".repeat(100_000))),
    ];
    // How long the refusal takes is measured by `cargo bench --bench
    // envelope` (refuse_deep_nesting), not timed here.
    for (case, body) in cases {
        let message = malformed_message(body.as_bytes(), case);
        assert!(message.contains("recursion limit"), "{case}: {message}");
    }
    // serde_json's limit is 128 levels in all: the root object and props
    // take two, so 125 arrays inside props still pass, and 126 do not.
    let nested =
        |depth: usize| envelope_around(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
    let parsed = parse(nested(125).as_bytes(), Rules::default());
    assert!(parsed.is_ok(), "125 levels in props: {parsed:?}");
    let message = malformed_message(nested(126).as_bytes(), "126 levels in props");
    assert!(message.contains("recursion limit"), "{message}");
}

/// What a number literal placed in a field leads to.
enum Outcome {
    /// Valid; the message key, if the literal is the objectId.
    Accepted(Option<&'static str>),
    /// One problem, naming this field.
    Invalid(&'static str),
    /// Not JSON: serde_json cannot represent it (out of f64 range).
    Malformed,
}

#[test]
fn huge_and_odd_number_literals_get_exact_outcomes() {
    use Outcome::*;
    let ten_to_400 = format!("1{}", "0".repeat(400));
    let ten_to_300 = format!("1{}", "0".repeat(300));
    let tiny = format!("0.{}1", "0".repeat(10_000));
    let time = r#"{"event":"update","time":@,"object":"ticket","objectId":1,"props":{}}"#;
    let object_id = r#"{"event":"update","time":1,"object":"ticket","objectId":@,"props":{}}"#;
    let lat = r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"geoloc":{"lat":@}}}"#;
    let parent_id =
        r#"{"event":"update","time":1,"object":"media","objectId":1,"props":{"_parent.id":@}}"#;
    let extra = r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"extra":@}}"#;
    let cases: Vec<(&str, &str, Outcome)> = vec![
        (time, "0", Accepted(None)),
        (time, "9223372036854775807", Accepted(None)),
        (time, "9223372036854775808", Invalid("time")),
        (time, "18446744073709551616", Invalid("time")),
        (time, "-1", Invalid("time")),
        // serde_json reads -0 as the float -0.0, not as the integer 0.
        (time, "-0", Invalid("time")),
        (time, "1.0", Invalid("time")),
        (time, "1e3", Invalid("time")),
        (time, "1e400", Malformed),
        (time, &ten_to_400, Malformed),
        (object_id, "0", Accepted(Some("0"))),
        (
            object_id,
            "18446744073709551615",
            Accepted(Some("18446744073709551615")),
        ),
        (object_id, "18446744073709551616", Invalid("objectId")),
        (object_id, "-0", Invalid("objectId")),
        (object_id, "1.0", Invalid("objectId")),
        (object_id, "1e2", Invalid("objectId")),
        (object_id, "-1e400", Malformed),
        (lat, "-0", Accepted(None)),
        (lat, "90", Accepted(None)),
        // Rounds to 90.0 when parsed: in range.
        (lat, "90.0000000000000001", Accepted(None)),
        (lat, "90.00000000000001", Invalid("props.geoloc.lat")),
        (lat, "1e-400", Accepted(None)),
        (lat, &tiny, Accepted(None)),
        (lat, "1e2", Invalid("props.geoloc.lat")),
        (lat, "1E400", Malformed),
        (parent_id, "-9223372036854775808", Accepted(None)),
        (parent_id, "18446744073709551615", Accepted(None)),
        (
            parent_id,
            "18446744073709551616",
            Invalid(r#"props["_parent.id"]"#),
        ),
        (
            parent_id,
            "-9223372036854775809",
            Invalid(r#"props["_parent.id"]"#),
        ),
        (parent_id, "1.0", Invalid(r#"props["_parent.id"]"#)),
        // Unknown fields pass through as received, digits and all...
        (extra, "18446744073709551616", Accepted(None)),
        (extra, &ten_to_300, Accepted(None)),
        (extra, "-0.0e-0", Accepted(None)),
        // ...unless serde_json cannot hold them at all: a number outside the
        // f64 range is refused even where the bridge does not look.
        (extra, "1e400", Malformed),
    ];
    for (template, literal, outcome) in cases {
        let body = template.replace('@', literal);
        let case = format!("{} in {template}", &literal[..literal.len().min(24)]);
        match outcome {
            Accepted(key) => match parse(body.as_bytes(), Rules::default()) {
                // The message key is the objectId as displayed (route).
                Ok(envelope) => {
                    if let Some(key) = key {
                        assert_eq!(envelope.object_id.to_string(), key, "{case}");
                    }
                }
                Err(e) => panic!("{case}: expected valid, got {e:?}"),
            },
            Invalid(field) => {
                one_problem(body.as_bytes(), field, &case);
            }
            Malformed => {
                let message = malformed_message(body.as_bytes(), &case);
                assert!(message.contains("out of range"), "{case}: {message}");
            }
        }
    }
}

#[test]
fn invalid_utf8_raw_nul_bytes_and_lone_surrogates_are_malformed() {
    // `name` and `objectId` of a conversation, spliced in as raw bytes.
    let body = |object_id: &[u8], name: &[u8]| {
        let mut body =
            br#"{"event":"update","time":1,"object":"conversation","objectId":""#.to_vec();
        body.extend_from_slice(object_id);
        body.extend_from_slice(br#"","props":{"name":""#);
        body.extend_from_slice(name);
        body.extend_from_slice(br#""}}"#);
        body
    };
    let valid = body(b"c-1", b"n");
    let with = |prefix: &[u8], suffix: &[u8]| [prefix, valid.as_slice(), suffix].concat();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("0xFF in objectId", body(b"c\xff1", b"n")),
        ("Latin-1 e-acute in name", body(b"c-1", b"caf\xe9")),
        ("overlong NUL in name", body(b"c-1", b"\xc0\x80")),
        (
            "UTF-8-encoded surrogate in name",
            body(b"c-1", b"\xed\xa0\x80"),
        ),
        (
            "code point above U+10FFFF",
            body(b"c-1", b"\xf4\x90\x80\x80"),
        ),
        ("truncated sequence in name", body(b"c-1", b"caf\xc3")),
        ("lone continuation byte", body(b"c-1", b"\x80")),
        ("0xFF between tokens", {
            let mut bytes = valid.clone();
            let comma = bytes.iter().position(|&b| b == b',').unwrap_or_default();
            bytes.insert(comma, 0xff);
            bytes
        }),
        ("0xFF after the object", with(b"", b"\xff")),
        ("UTF-8 byte order mark", with(b"\xef\xbb\xbf", b"")),
        ("UTF-16 byte order mark", with(b"\xff\xfe", b"")),
        ("raw NUL in objectId", body(b"c\x001", b"n")),
        ("raw NUL in name", body(b"c-1", b"a\x00b")),
        ("raw control character in name", body(b"c-1", b"a\x01b")),
        ("raw NUL before the object", with(b"\x00", b"")),
        ("raw NUL after the object", with(b"", b"\x00")),
        ("a lone NUL", b"\x00".to_vec()),
        (
            "C string terminator mid-body",
            valid[..20].iter().chain(b"\x00").copied().collect(),
        ),
        (
            "lone high surrogate escape in objectId",
            body(br"\ud800", b"n"),
        ),
        (
            "lone low surrogate escape in name",
            body(b"c-1", br"\udc00"),
        ),
        ("reversed surrogate pair", body(b"c-1", br"\ude00\ud83d")),
    ];
    for (case, body) in malformed {
        malformed_message(&body, case);
    }
}

#[test]
fn invalid_error_displays_the_problem_count() {
    let Err(error) = parse(b"{}", Rules::default()) else {
        panic!("an empty object must not be valid");
    };
    assert_eq!(error.to_string(), "envelope is invalid (4 problem(s))");
}

#[test]
fn problems_serialise_as_field_and_problem() {
    let shown = serde_json::to_value(problem("props[\"geoloc.lat\"]", "must be a number"))
        .expect("a Problem always serialises");
    assert_eq!(
        shown,
        json!({"field": "props[\"geoloc.lat\"]", "problem": "must be a number"})
    );
}

#[test]
fn whitespace_and_key_order_do_not_matter() {
    let compact = br#"{"props":{"state":"invited"},"objectId":100,"object":"ticket","time":1575976413,"event":"update"}"#;
    assert_eq!(
        parse(compact, Rules::default()),
        parse(SPEC_TICKET.as_bytes(), Rules::default())
    );
}

// ---------------------------------------------------------------------------
// Duplicate keys

/// The problems for a raw body, which `json!` could not hold: it has no
/// duplicate keys.
fn reject_body(body: &str) -> Vec<Problem> {
    match parse(body.as_bytes(), Rules::default()) {
        Err(EnvelopeError::Invalid(problems)) => problems,
        other => panic!("expected {body} to be invalid, got {other:?}"),
    }
}

/// A valid ticket envelope whose props are `props`, as raw text.
fn ticket_with_props(props: &str) -> String {
    format!(r#"{{"event":"update","time":1,"object":"ticket","objectId":100,"props":{props}}}"#)
}

fn duplicate(field: &str, key: &str) -> Vec<Problem> {
    vec![problem(
        field,
        &format!("has the key {key:?} more than once"),
    )]
}

#[test]
fn duplicate_top_level_key_is_one_problem_at_the_root() {
    for body in [
        r#"{"event":"update","event":"delete","time":1,"object":"ticket","objectId":100,"props":{}}"#,
        // The same value twice is still two keys.
        r#"{"event":"update","time":1,"object":"ticket","objectId":100,"props":{},"event":"update"}"#,
        // Whatever else is wrong is not checked: the document is ambiguous.
        r#"{"event":"nope","time":"x","event":"update","props":7}"#,
    ] {
        assert_eq!(reject_body(body), duplicate("$", "event"), "{body}");
    }
    for (body, key) in [
        (
            r#"{"event":"update","time":1,"object":"ticket","object":"media","objectId":1,"props":{}}"#,
            "object",
        ),
        (
            r#"{"event":"update","time":1,"object":"ticket","object":"media","objectId":100,"props":{}}"#,
            "object",
        ),
        // Either order, whichever value would be refused on its own.
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":7,"objectId":"bad\u0000id","props":{}}"#,
            "objectId",
        ),
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":"bad\u0000id","objectId":7,"props":{}}"#,
            "objectId",
        ),
        (
            r#"{"event":"update","time":1,"time":-1,"object":"ticket","objectId":1,"props":{}}"#,
            "time",
        ),
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":"none","props":{}}"#,
            "props",
        ),
        // Not a key the envelope knows: still ambiguous for a consumer.
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{},"x":1,"x":2}"#,
            "x",
        ),
    ] {
        assert_eq!(reject_body(body), duplicate("$", key), "{body}");
    }
}

#[test]
fn duplicate_key_inside_props_names_the_object_it_is_in() {
    for (props, field, key) in [
        (r#"{"state":"open","state":"closed"}"#, "props", "state"),
        (r#"{"state":5,"state":"open"}"#, "props", "state"),
        (
            r#"{"geoloc":{"lat":1,"lng":2,"lat":3}}"#,
            "props.geoloc",
            "lat",
        ),
        (
            r#"{"_parent":{"id":1},"geoloc.lat":1,"geoloc.lat":1}"#,
            "props",
            "geoloc.lat",
        ),
        (r#"{"geoloc.x":{"k":1,"k":1}}"#, r#"props["geoloc.x"]"#, "k"),
        (r#"{"0":{"k":1,"k":1}}"#, r#"props["0"]"#, "k"),
        (r#"{"a-b":{"k":1,"k":1}}"#, r#"props["a-b"]"#, "k"),
        (r#"{"a\"b":{"k":1,"k":1}}"#, r#"props["a\"b"]"#, "k"),
        (r#"{"":{"k":1,"k":1}}"#, r#"props[""]"#, "k"),
        (r#"{"_x9":{"k":1,"k":1}}"#, "props._x9", "k"),
        (r#"{"a":{"b":{"c":{"":1,"":2}}}}"#, "props.a.b.c", ""),
    ] {
        assert_eq!(
            reject_body(&ticket_with_props(props)),
            duplicate(field, key),
            "{props}"
        );
    }
    // Whichever value is valid, even when both are the same.
    for (body, field, key) in [
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"state":5,"state":"open"}}"#,
            "props",
            "state",
        ),
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"state":"open","state":"open"}}"#,
            "props",
            "state",
        ),
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"geoloc":{"lat":1,"lat":95}}}"#,
            "props.geoloc",
            "lat",
        ),
    ] {
        assert_eq!(reject_body(body), duplicate(field, key), "{body}");
    }
}

#[test]
fn duplicate_key_inside_arrays_of_objects_is_found_with_its_index() {
    for (props, field, key) in [
        (
            r#"{"items":[{"a":1},{"a":1,"a":2}]}"#,
            "props.items[1]",
            "a",
        ),
        (
            r#"{"items":[{"a":1},{"b":[0,[],{"c":1,"c":2}]}]}"#,
            "props.items[1].b[2]",
            "c",
        ),
        (r#"{"m":[[[{"c":1,"c":2}]]]}"#, "props.m[0][0][0]", "c"),
    ] {
        assert_eq!(
            reject_body(&ticket_with_props(props)),
            duplicate(field, key),
            "{props}"
        );
    }
    // In props the bridge does not check (an SMS) as well.
    assert_eq!(
        reject_body(
            r#"{"event":"update","time":1,"object":"smsmessage","objectId":1,"props":{"list":[{"a":1},{"a":1,"a":2}]}}"#
        ),
        duplicate("props.list[1]", "a")
    );
    for (body, field) in [
        (r#"[{"a":1,"a":2}]"#, "$[0]"),
        (r#"[1,[{"a":1},{"a":1,"a":2}]]"#, "$[1][1]"),
        (r#"{"a b":{"a":1,"a":1}}"#, r#"$["a b"]"#),
        (r#"{"a b":[{"a":1,"a":1}]}"#, r#"$["a b"][0]"#),
    ] {
        assert_eq!(reject_body(body), duplicate(field, "a"), "{body}");
    }
}

#[test]
fn the_path_ignores_what_comes_after_the_duplicate() {
    // Containers read after the duplicate, at every depth, leave the path
    // alone.
    let props =
        r#"{"x":{"k":1,"k":2,"after":{"deep":[{"q":1}]}},"y":{"z":[{"w":1}]},"state":"open"}"#;
    let body = format!(
        r#"{{"event":"update","time":1,"object":"ticket","objectId":1,"props":{props},"later":[1,{{"q":{{}}}}]}}"#
    );
    assert_eq!(reject_body(&body), duplicate("props.x", "k"));
}

#[test]
fn only_the_first_duplicate_is_named() {
    assert_eq!(
        reject_body(&ticket_with_props(
            r#"{"a":1,"a":2,"b":{"c":1,"c":1},"d":1,"d":1}"#
        )),
        duplicate("props", "a")
    );
    // An inner object is complete before its key is stored in the outer one.
    assert_eq!(
        reject_body(r#"{"a":1,"a":{"b":1,"b":2}}"#),
        duplicate("a", "b")
    );
}

#[test]
fn the_same_key_in_sibling_or_nested_objects_is_fine() {
    let envelope = parse(
        ticket_with_props(
            r#"{"state":"open","geoloc":{"lat":1,"lng":2},"other":{"lat":1,"lng":2},"list":[{"a":1},{"a":1}],"nested":{"state":{"state":1}}}"#,
        )
        .as_bytes(),
        STRICT,
    );
    assert!(envelope.is_ok(), "{envelope:?}");
    // `Event` and `event` are different keys.
    let body =
        r#"{"Event":"x","event":"update","time":1,"object":"ticket","objectId":1,"props":{}}"#;
    assert!(parse(body.as_bytes(), Rules::default()).is_ok());
    let body = r#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{"geoloc":{"lat":1},"other":{"lat":1},"list":[{"a":1},{"a":1}]}}"#;
    assert!(parse(body.as_bytes(), Rules::default()).is_ok());
}

#[test]
fn keys_equal_after_unescaping_are_duplicates() {
    for (props, key) in [
        (r#"{"a":1,"\u0061":2}"#, "a"),
        (r#"{"\u0061":1,"a":2}"#, "a"),
        (r#"{"\u0061":1,"\u0061":2}"#, "a"),
        (r#"{"st\u0061te":"open","state":"closed"}"#, "state"),
        (r#"{"é":1,"\u00e9":2}"#, "é"),
        (r#"{"😀":1,"\ud83d\ude00":2}"#, "😀"),
        (r#"{"a/b":1,"a\/b":2}"#, "a/b"),
        (r#"{"a\nb":1,"a\u000ab":2}"#, "a\nb"),
    ] {
        assert_eq!(
            reject_body(&ticket_with_props(props)),
            duplicate("props", key),
            "{props}"
        );
    }
    assert_eq!(
        reject_body(
            r#"{"event":"update","\u0065vent":"delete","time":1,"object":"ticket","objectId":1,"props":{}}"#
        ),
        duplicate("$", "event")
    );
    // Unicode normalisation is not applied: precomposed and decomposed é
    // are different keys, as in every JSON parser.
    assert!(
        parse(
            ticket_with_props(r#"{"é":1,"e\u0301":2}"#).as_bytes(),
            Rules::default()
        )
        .is_ok()
    );
}

#[test]
fn duplicate_keys_are_escaped_and_long_ones_cut() {
    // Control and invisible characters are escaped, as in other problems.
    assert_eq!(
        reject_body(&ticket_with_props(r#"{"a\nb\u202e":1,"a\nb\u202e":2}"#)),
        vec![problem(
            "props",
            r#"has the key "a\nb\u{202e}" more than once"#
        )]
    );
    let long = "k".repeat(10_000);
    let shown = "k".repeat(MAX_KEY_CHARS_SHOWN);
    assert_eq!(
        reject_body(&ticket_with_props(&format!(r#"{{"{long}":1,"{long}":2}}"#))),
        vec![problem(
            "props",
            &format!(r#"has the key starting with "{shown}" (10000 characters) more than once"#)
        )]
    );
    // So the answer that lists it stays small.
    let problems = reject_body(&format!(
        r#"{{"event":"update","time":1,"object":"ticket","objectId":1,"props":{{"{long}":1,"{long}":2}}}}"#
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "props");
    let listed = serde_json::to_string(&problems).expect("problems always serialise");
    assert!(listed.len() < 1024, "{listed}");
    // Characters, not bytes: 64 two-byte characters are shown whole.
    let accented = "é".repeat(MAX_KEY_CHARS_SHOWN);
    assert_eq!(
        reject_body(&ticket_with_props(&format!(
            r#"{{"{accented}":1,"{accented}":2}}"#
        ))),
        duplicate("props", &accented)
    );
    // In the path, a long key is cut too, with the cut outside the quotes.
    assert_eq!(
        reject_body(&ticket_with_props(&format!(
            r#"{{"{long}":{{"a":1,"a":2}}}}"#
        ))),
        vec![problem(
            &format!(r#"props["{shown}"…]"#),
            r#"has the key "a" more than once"#
        )]
    );
    let identifier = "x".repeat(MAX_KEY_CHARS_SHOWN);
    assert_eq!(
        reject_body(&ticket_with_props(&format!(
            r#"{{"{identifier}":{{"a":1,"a":2}}}}"#
        ))),
        duplicate(&format!("props.{identifier}"), "a")
    );
}

#[test]
fn a_path_stays_bounded_at_the_deepest_nesting() {
    // 126 objects under props, each under a 10 000-character key: the path
    // is cut per key, so it stays a few kilobytes.
    let long = "k".repeat(10_000);
    let depth = 126;
    let props = format!(
        "{}{{\"a\":1,\"a\":2}}{}",
        format!(r#"{{"{long}":"#).repeat(depth - 1),
        "}".repeat(depth - 1)
    );
    let problems = reject_body(&ticket_with_props(&props));
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].field.starts_with("props[\""),
        "{}",
        &problems[0].field[..80]
    );
    assert!(
        problems[0].field.len() < 10_000,
        "{}",
        problems[0].field.len()
    );
}

#[test]
fn a_body_that_is_not_json_is_malformed_even_after_a_duplicate() {
    for body in [
        r#"{"a":1,"a":2"#,
        r#"{"event":"update","event":"delete""#,
        r#"{"a":1,"a":2,"#,
        r#"{"a":1,"a":2} x"#,
        r#"{"a":1,"a":2,"b":1e400}"#,
        r#"{"a":1,"a":2,"b":"\ud800"}"#,
        "{\"a\":1,\"a\":2,\"b\":\"\u{1}\"}",
    ] {
        match parse(body.as_bytes(), Rules::default()) {
            Err(EnvelopeError::Malformed(_)) => {}
            other => panic!("{body}: expected Malformed, got {other:?}"),
        }
    }
    let mut invalid_utf8 = br#"{"a":1,"a":2,"b":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\"}");
    assert!(matches!(
        parse(&invalid_utf8, Rules::default()),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn nesting_is_still_limited_to_128_levels_with_or_without_duplicates() {
    let nested = |depth: usize, inner: &str| {
        ticket_with_props(&format!(
            r#"{{"deep":{}{inner}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ))
    };
    // The root and props take two levels.
    assert!(parse(nested(125, "").as_bytes(), Rules::default()).is_ok());
    assert!(parse(nested(124, "{}").as_bytes(), Rules::default()).is_ok());
    for body in [
        nested(126, ""),
        nested(125, "{}"),
        nested(125, r#"{"a":1,"a":2}"#),
        format!(r#"{{"a":1,"a":2,"b":{}}}"#, "[".repeat(200)),
        "[".repeat(100_000),
        format!("{}1{}", r#"{"a":"#.repeat(40_000), "}".repeat(40_000)),
    ] {
        match parse(body.as_bytes(), Rules::default()) {
            Err(EnvelopeError::Malformed(message)) => {
                assert!(message.contains("recursion limit"), "{message}");
            }
            other => panic!("expected the recursion limit, got {other:?}"),
        }
    }
    assert_eq!(
        reject_body(&nested(124, r#"{"a":1,"a":2}"#)),
        duplicate(&format!("props.deep{}", "[0]".repeat(124)), "a")
    );
}

#[test]
fn many_keys_are_checked_without_quadratic_cost() {
    // 50 000 distinct keys (about 600 KB): a quadratic check would take
    // minutes here, the map takes milliseconds.
    let keys: Vec<String> = (0..50_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let props = format!("{{{}}}", keys.join(","));
    assert!(parse(ticket_with_props(&props).as_bytes(), Rules::default()).is_ok());
    let props = format!(r#"{{{},"k0":0}}"#, keys.join(","));
    assert_eq!(
        reject_body(&ticket_with_props(&props)),
        duplicate("props", "k0")
    );
}

#[test]
fn parsed_documents_equal_serde_json_values() {
    // The duplicate-checking reader builds the same value as serde_json.
    for body in [
        SPEC_TICKET,
        SPEC_CONVERSATION,
        r#"{"a":[1,-2,3.5,1e300,-0.0,18446744073709551615,-9223372036854775808,18446744073709551616],"b":{"c":null,"d":true,"e":false,"f":"\u00e9\n\"","g":[]},"h":{}}"#,
        "[]",
        "\"x\"",
        "0",
        "null",
    ] {
        let expected: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(read_document(body.as_bytes()), Ok(expected), "{body}");
    }
}
