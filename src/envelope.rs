//! The webhook envelope: raw bytes in, a validated [`Envelope`] or an
//! [`EnvelopeError`] out. Pure, no I/O.
//!
//! The platform's envelope is `{"event","time","object","objectId","props"}`
//! (see `shared/spec/apizee-webhooks.md`). We check what the spec promises and
//! nothing more: extra fields pass through untouched, because the message we
//! publish is the received body itself, not a re-serialisation of this type.
//!
//! Validation collects *every* problem instead of stopping at the first, so a
//! sender fixing its payload sees the whole list in one 422.
//!
//! One exception: an object that has the same key twice, at any depth, is
//! refused with that one problem. JSON parsers disagree on which value wins
//! (serde_json keeps the last, others the first or refuse), and we publish
//! the raw body, so a consumer could read another event than the topic and
//! headers announce; checking the other fields of such a document would only
//! check one reading of it. Duplicates are found while the body is parsed,
//! in the same single pass (`UniqueKeys`).
//!
//! Enum values the spec does not list (a new ticket state, say) are a
//! judgement call: the platform may ship new values before we learn of them,
//! and refusing them would lose events. By default they are accepted and
//! reported in [`Envelope::unknown_values`] so they can be counted; with
//! [`Rules::strict`] they become problems.

use std::fmt;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

named_enum! {
    /// What happened to the object.
    pub enum Event {
        Create => "create",
        Update => "update",
        Delete => "delete",
    }
}

named_enum! {
    /// The kind of platform object the event is about.
    pub enum ObjectKind {
        Ticket => "ticket",
        Media => "media",
        Conversation => "conversation",
        SmsMessage => "smsmessage",
        ConversationEvent => "conversationevent",
    }
}

/// Longest string objectId we accept. Conversation uids are 32-36 characters;
/// the bound keeps keys, headers and topic names small.
pub const MAX_OBJECT_ID_CHARS: usize = 128;

/// The identifier of the object: a database id for most objects, a public uid
/// for conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectId {
    Number(u64),
    Uid(String),
}

impl ObjectId {
    /// True when every character is allowed in a NATS subject token and in a
    /// Kafka topic name, so the id can be placed in a topic as it is.
    pub fn is_topic_safe(&self) -> bool {
        match self {
            ObjectId::Number(_) => true,
            ObjectId::Uid(uid) => uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        }
    }
}

/// Formats as the plain key: `100`, never `"100"`.
impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectId::Number(n) => write!(f, "{n}"),
            ObjectId::Uid(uid) => f.write_str(uid),
        }
    }
}

/// An enum value that the spec does not list, kept so it can be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue {
    pub object: ObjectKind,
    /// The prop's name as the spec writes it (`state`, `_parent.name`, ...):
    /// a fixed, bounded set, safe as a metric label.
    pub field: &'static str,
}

/// A prop whose values the spec lists.
#[derive(Debug, PartialEq, Eq)]
pub struct EnumField {
    pub object: ObjectKind,
    /// As the spec writes it, and as [`UnknownValue::field`] reports it.
    pub field: &'static str,
    pub values: &'static [&'static str],
}

/// Every prop whose values are checked against a list from the spec: the
/// one definition of those lists, and the whole label space of the
/// unknown-values metric. The validator finds its fields here by name
/// (`enum_field`), so it cannot check one this list leaves out.
pub const ENUM_FIELDS: [EnumField; 4] = [
    EnumField {
        object: ObjectKind::Ticket,
        field: "state",
        values: &[
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
        ],
    },
    EnumField {
        object: ObjectKind::Media,
        field: "state",
        values: &["inprogress", "uncompleted", "completed", "error"],
    },
    EnumField {
        object: ObjectKind::Media,
        field: "_parent.name",
        values: &["ticket", "conference", "conversation"],
    },
    EnumField {
        object: ObjectKind::Conversation,
        field: "eventType",
        values: &["conversationEnded"],
    },
];

/// The entry of [`ENUM_FIELDS`] for `object` and `field`; evaluated at
/// compile time, where a missing one fails the build.
const fn enum_field(object: ObjectKind, field: &str) -> &'static EnumField {
    let mut i = 0;
    while i < ENUM_FIELDS.len() {
        let entry = &ENUM_FIELDS[i];
        if entry.object as usize == object as usize
            && bytes_equal(entry.field.as_bytes(), field.as_bytes())
        {
            return entry;
        }
        i += 1;
    }
    panic!("not in ENUM_FIELDS");
}

const fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const TICKET_STATE: &EnumField = enum_field(ObjectKind::Ticket, "state");
const MEDIA_STATE: &EnumField = enum_field(ObjectKind::Media, "state");
const MEDIA_PARENT_NAME: &EnumField = enum_field(ObjectKind::Media, "_parent.name");
const CONVERSATION_EVENT_TYPE: &EnumField = enum_field(ObjectKind::Conversation, "eventType");

/// A valid envelope: what routing needs, and what was unusual about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event: Event,
    /// UNIX seconds, as sent.
    pub time: i64,
    pub object: ObjectKind,
    pub object_id: ObjectId,
    pub unknown_values: Vec<UnknownValue>,
}

/// One thing wrong with an envelope, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `event`, `props.geoloc.lat`, `props["geoloc.lat"]`, or `$` for the
    /// document itself.
    pub field: String,
    pub problem: String,
}

impl Problem {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all (or not UTF-8): the parser's own message.
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    /// JSON, but not an envelope the spec allows.
    #[error("envelope is invalid ({} problem(s))", .0.len())]
    Invalid(Vec<Problem>),
}

/// How strict validation is; fixed at start-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// Refuse enum values the spec does not list instead of counting them.
    pub strict: bool,
    /// The topic template contains `{objectId}`, so the id must be usable in
    /// a topic name as it is: we never rewrite it.
    pub object_id_in_topic: bool,
}

/// Parses and validates one webhook body.
pub fn parse(body: &[u8], rules: Rules) -> Result<Envelope, EnvelopeError> {
    let document = read_document(body)?;
    let Value::Object(root) = document else {
        return Err(EnvelopeError::Invalid(vec![Problem::new(
            "$",
            format!("must be a JSON object, found {}", type_name(&document)),
        )]));
    };
    Checker {
        rules,
        problems: Vec::new(),
        unknown: Vec::new(),
    }
    .check(&root)
}

/// Reads the body as `serde_json::from_slice::<Value>` would, in one pass,
/// and refuses a document in which an object has the same key twice.
///
/// A body that is not JSON is `Malformed` even when a duplicate came first:
/// a 422 always means "JSON, but not an envelope".
fn read_document(body: &[u8]) -> Result<Value, EnvelopeError> {
    let mut duplicate = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let read = UniqueKeys {
        depth: 0,
        duplicate: &mut duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|document| deserializer.end().map(|()| document));
    match (read, duplicate) {
        (Err(e), _) => Err(EnvelopeError::Malformed(e.to_string())),
        (Ok(_), Some(duplicate)) => Err(EnvelopeError::Invalid(vec![duplicate.problem()])),
        (Ok(document), None) => Ok(document),
    }
}

/// Longest attacker-chosen key shown whole in a problem, in its text or in
/// its path; longer ones are cut, and say so.
const MAX_KEY_CHARS_SHOWN: usize = 64;

/// The first repeated key of a document, and where it is.
struct Duplicate {
    key: String,
    /// Nesting depth of the object holding the key (the root is 0): the
    /// number of steps its path will have.
    depth: usize,
    /// The path to that object, innermost step first: filled in as the
    /// containers around it finish, since a container learns of the
    /// duplicate only once its child is done.
    steps: Vec<Step>,
}

enum Step {
    Key(String),
    Index(usize),
}

impl Duplicate {
    fn problem(&self) -> Problem {
        let mut field = String::from("$");
        for (n, step) in self.steps.iter().rev().enumerate() {
            match step {
                // `props.state`, as in every other problem, and no `$.`.
                Step::Key(key) if is_identifier(key) => {
                    if n == 0 {
                        field.clear();
                    } else {
                        field.push('.');
                    }
                    field.push_str(key);
                }
                // `props["geoloc.lat"]`, or `$["a b"]` at the root; escaped
                // as the problems escape values.
                Step::Key(key) => {
                    let (shown, cut) = shorten(key);
                    field.push('[');
                    field.push_str(&format!("{shown:?}"));
                    // Outside the quotes, so a shortened key cannot be read
                    // as a real one ending in an ellipsis.
                    if cut {
                        field.push('…');
                    }
                    field.push(']');
                }
                Step::Index(index) => field.push_str(&format!("[{index}]")),
            }
        }
        let (shown, cut) = shorten(&self.key);
        let problem = if cut {
            format!(
                "has the key starting with {shown:?} ({} characters) more than once",
                self.key.chars().count()
            )
        } else {
            format!("has the key {shown:?} more than once")
        };
        Problem::new(field, problem)
    }
}

/// A key written `.key` in a path: short, ASCII, not starting with a digit.
fn is_identifier(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && key.len() <= MAX_KEY_CHARS_SHOWN
}

/// The first [`MAX_KEY_CHARS_SHOWN`] characters of `key`, and whether that
/// is not all of it.
fn shorten(key: &str) -> (&str, bool) {
    match key.char_indices().nth(MAX_KEY_CHARS_SHOWN) {
        Some((end, _)) => (&key[..end], true),
        None => (key, false),
    }
}

/// Builds the same [`Value`] as serde_json's own `Deserialize`, and notes the
/// first object that has a key twice (keys compare after unescaping, so
/// `"a"` and `"\u0061"` are the same key) instead of letting the last value
/// win. It keeps parsing after that: only a complete parse tells a 422 from
/// a 400.
///
/// Costs the same as `Value`'s own: one `Map` entry per key, so n keys are
/// O(n log n), never quadratic, and no hash to flood (a `BTreeMap`; an
/// `IndexMap` with std's random hasher if serde_json's `preserve_order` is
/// ever turned on).
/// Nesting stays bounded by serde_json's recursion limit (128 levels), which
/// its deserializer applies to every visitor, this one included.
struct UniqueKeys<'a> {
    /// Depth of the value being read: the root is 0.
    depth: usize,
    duplicate: &'a mut Option<Duplicate>,
}

impl UniqueKeys<'_> {
    /// Called by a container once its child at `step` is read: adds `step`
    /// to the duplicate's path if the duplicate is inside that child and the
    /// path has not gone past this level yet.
    fn after_child(&mut self, step: impl FnOnce() -> Step) {
        if let Some(duplicate) = self.duplicate.as_mut()
            && duplicate.steps.len() + self.depth + 1 == duplicate.depth
        {
            duplicate.steps.push(step());
        }
    }

    fn child(&mut self) -> UniqueKeys<'_> {
        UniqueKeys {
            depth: self.depth + 1,
            duplicate: &mut *self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number; Value's own visitor
        // makes the same choice if one came.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child())? {
            let index = items.len();
            self.after_child(|| Step::Index(index));
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.child())?;
            self.after_child(|| Step::Key(key.clone()));
            match object.entry(key) {
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                Entry::Occupied(entry) => {
                    if self.duplicate.is_none() {
                        *self.duplicate = Some(Duplicate {
                            key: entry.key().clone(),
                            depth: self.depth,
                            steps: Vec::new(),
                        });
                    }
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// Checks one prop value found at the given path.
type PropCheck = fn(&mut Checker, PropPath<'_>, &Value);

/// Where a checked prop is. Formatted only for a problem: most webhooks
/// have none, and a path string per checked prop would cost an allocation
/// each on every request.
#[derive(Clone, Copy)]
enum PropPath<'a> {
    /// `props.state`
    Prop(&'a str),
    /// `props.geoloc.lat`
    Nested(&'a str, &'a str),
    /// `props["geoloc.lat"]`: the platform sends some props with a dotted
    /// key instead of nested.
    Flat(&'a str, &'a str),
}

impl fmt::Display for PropPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropPath::Prop(name) => write!(f, "props.{name}"),
            PropPath::Nested(parent, child) => write!(f, "props.{parent}.{child}"),
            PropPath::Flat(parent, child) => write!(f, "props[\"{parent}.{child}\"]"),
        }
    }
}

/// A prop the platform may send nested (`{"geoloc":{"lat":1}}`) or flat
/// (`{"geoloc.lat":1}`).
struct DottedProp {
    child: &'static str,
    /// `<parent>.<child>`, spelled out so looking it up allocates nothing.
    flat: &'static str,
    check: PropCheck,
}

struct Checker {
    rules: Rules,
    problems: Vec<Problem>,
    unknown: Vec<UnknownValue>,
}

impl Checker {
    fn check(mut self, root: &Map<String, Value>) -> Result<Envelope, EnvelopeError> {
        let event = self.event(root.get("event"));
        let time = self.time(root.get("time"));
        let object = self.object(root.get("object"));
        let object_id = self.object_id(root.get("objectId"));
        if let Some(object) = object {
            self.props(object, root.get("props"));
        }
        match (event, time, object, object_id) {
            (Some(event), Some(time), Some(object), Some(object_id))
                if self.problems.is_empty() =>
            {
                Ok(Envelope {
                    event,
                    time,
                    object,
                    object_id,
                    unknown_values: self.unknown,
                })
            }
            _ => Err(EnvelopeError::Invalid(self.problems)),
        }
    }

    fn problem(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem::new(field, problem));
    }

    fn event(&mut self, value: Option<&Value>) -> Option<Event> {
        match value {
            None => self.problem("event", "is required"),
            Some(Value::String(s)) => match Event::parse(s) {
                Some(event) => return Some(event),
                None => self.problem(
                    "event",
                    format!("must be one of {}, found {s:?}", Event::names()),
                ),
            },
            Some(other) => self.problem(
                "event",
                format!("must be a string, found {}", type_name(other)),
            ),
        }
        None
    }

    fn time(&mut self, value: Option<&Value>) -> Option<i64> {
        match value {
            None => self.problem("time", "is required"),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(t) if t >= 0 => return Some(t),
                _ => self.problem(
                    "time",
                    format!("must be a non-negative integer (UNIX seconds), found {n}"),
                ),
            },
            Some(other) => self.problem(
                "time",
                format!(
                    "must be an integer (UNIX seconds), found {}",
                    type_name(other)
                ),
            ),
        }
        None
    }

    fn object(&mut self, value: Option<&Value>) -> Option<ObjectKind> {
        match value {
            None => self.problem("object", "is required"),
            Some(Value::String(s)) => match ObjectKind::parse(s) {
                Some(object) => return Some(object),
                None => self.problem(
                    "object",
                    format!("must be one of {}, found {s:?}", ObjectKind::names()),
                ),
            },
            Some(other) => self.problem(
                "object",
                format!("must be a string, found {}", type_name(other)),
            ),
        }
        None
    }

    fn object_id(&mut self, value: Option<&Value>) -> Option<ObjectId> {
        let id = match value {
            None => {
                self.problem("objectId", "is required");
                return None;
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => ObjectId::Number(n),
                None => {
                    self.problem(
                        "objectId",
                        format!("must be a non-negative integer or a string, found {n}"),
                    );
                    return None;
                }
            },
            Some(Value::String(s)) => {
                if s.is_empty() {
                    self.problem("objectId", "must not be an empty string");
                    return None;
                }
                if s.chars().count() > MAX_OBJECT_ID_CHARS {
                    self.problem(
                        "objectId",
                        format!("must be at most {MAX_OBJECT_ID_CHARS} characters long"),
                    );
                    return None;
                }
                // The id is the Kafka key and travels in a message header:
                // control characters would break the NATS header block, and
                // invisible ones would make two keys look the same to a
                // person (or reorder the text around them, U+202E).
                if let Some((c, what)) = s.chars().find_map(|c| invisible(c).map(|w| (c, w))) {
                    self.problem(
                        "objectId",
                        format!("contains U+{:04X}, {what}", u32::from(c)),
                    );
                    return None;
                }
                ObjectId::Uid(s.clone())
            }
            Some(other) => {
                self.problem(
                    "objectId",
                    format!(
                        "must be a non-negative integer or a string, found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        if self.rules.object_id_in_topic && !id.is_topic_safe() {
            self.problem(
                "objectId",
                "is part of the topic name, so it may only contain ASCII letters, digits, \
                 '-' and '_'",
            );
            return None;
        }
        Some(id)
    }

    fn props(&mut self, object: ObjectKind, value: Option<&Value>) {
        let props = match value {
            Some(Value::Object(props)) => props,
            // The spec attaches no property to SMS events.
            None | Some(Value::Null) if object == ObjectKind::SmsMessage => return,
            None => return self.problem("props", "is required"),
            Some(other) => {
                return self.problem(
                    "props",
                    format!("must be an object, found {}", type_name(other)),
                );
            }
        };
        match object {
            ObjectKind::Ticket => self.ticket_props(props),
            ObjectKind::Media => self.media_props(props),
            ObjectKind::Conversation => self.conversation_props(props),
            ObjectKind::SmsMessage => {}
            ObjectKind::ConversationEvent => self.conversation_event_props(props),
        }
    }

    fn ticket_props(&mut self, props: &Map<String, Value>) {
        self.enum_prop(props, TICKET_STATE);
        self.nested_or_flat(
            props,
            "geoloc",
            &[
                DottedProp {
                    child: "lat",
                    flat: "geoloc.lat",
                    check: |c, path, v| c.number_in_range(path, v, -90.0, 90.0),
                },
                DottedProp {
                    child: "lng",
                    flat: "geoloc.lng",
                    check: |c, path, v| c.number_in_range(path, v, -180.0, 180.0),
                },
            ],
        );
    }

    fn media_props(&mut self, props: &Map<String, Value>) {
        self.enum_prop(props, MEDIA_STATE);
        self.nested_or_flat(
            props,
            "_parent",
            &[
                DottedProp {
                    child: "name",
                    flat: "_parent.name",
                    check: |c, path, v| c.enum_value(MEDIA_PARENT_NAME, path, v),
                },
                DottedProp {
                    child: "id",
                    flat: "_parent.id",
                    check: |c, path, v| c.integer(path, v),
                },
            ],
        );
    }

    fn conversation_props(&mut self, props: &Map<String, Value>) {
        self.enum_prop(props, CONVERSATION_EVENT_TYPE);
        if let Some(v) = props.get("name") {
            self.string(PropPath::Prop("name"), v);
        }
        if let Some(v) = props.get("finishedAt") {
            self.rfc3339(PropPath::Prop("finishedAt"), v);
        }
    }

    fn conversation_event_props(&mut self, props: &Map<String, Value>) {
        // eventType is an open list (the Session Events API keeps adding
        // types), so only its type is checked.
        if let Some(v) = props.get("eventType") {
            self.string(PropPath::Prop("eventType"), v);
        }
        for name in ["eventCode", "ticketId", "conversationId"] {
            if let Some(v) = props.get(name) {
                self.integer(PropPath::Prop(name), v);
            }
        }
    }

    /// Checks dotted props the platform may send nested (`{"geoloc":{"lat":1}}`)
    /// or flat (`{"geoloc.lat":1}`); both forms are accepted and checked.
    fn nested_or_flat(
        &mut self,
        props: &Map<String, Value>,
        parent: &'static str,
        children: &[DottedProp],
    ) {
        match props.get(parent) {
            None | Some(Value::Null) => {}
            Some(Value::Object(inner)) => {
                for DottedProp { child, check, .. } in children {
                    if let Some(v) = inner.get(*child) {
                        check(self, PropPath::Nested(parent, child), v);
                    }
                }
            }
            Some(other) => self.problem(
                format!("props.{parent}"),
                format!("must be an object, found {}", type_name(other)),
            ),
        }
        for DottedProp { child, flat, check } in children {
            debug_assert_eq!(*flat, format!("{parent}.{child}"));
            if let Some(v) = props.get(*flat) {
                check(self, PropPath::Flat(parent, child), v);
            }
        }
    }

    fn enum_prop(&mut self, props: &Map<String, Value>, field: &'static EnumField) {
        if let Some(v) = props.get(field.field) {
            self.enum_value(field, PropPath::Prop(field.field), v);
        }
    }

    fn enum_value(&mut self, field: &'static EnumField, path: PropPath<'_>, value: &Value) {
        match value {
            Value::Null => {}
            Value::String(s) if field.values.contains(&s.as_str()) => {}
            Value::String(s) if self.rules.strict => self.problem(
                path.to_string(),
                format!("must be one of {}, found {s:?}", field.values.join(", ")),
            ),
            Value::String(_) => self.unknown.push(UnknownValue {
                object: field.object,
                field: field.field,
            }),
            other => self.problem(
                path.to_string(),
                format!("must be a string, found {}", type_name(other)),
            ),
        }
    }

    fn number_in_range(&mut self, path: PropPath<'_>, value: &Value, min: f64, max: f64) {
        match value {
            Value::Null => {}
            Value::Number(n) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => {}
                _ => self.problem(
                    path.to_string(),
                    format!("must be between {min} and {max}, found {n}"),
                ),
            },
            other => self.problem(
                path.to_string(),
                format!("must be a number, found {}", type_name(other)),
            ),
        }
    }

    fn integer(&mut self, path: PropPath<'_>, value: &Value) {
        match value {
            Value::Null => {}
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            Value::Number(n) => {
                self.problem(path.to_string(), format!("must be an integer, found {n}"))
            }
            other => self.problem(
                path.to_string(),
                format!("must be an integer, found {}", type_name(other)),
            ),
        }
    }

    fn string(&mut self, path: PropPath<'_>, value: &Value) {
        match value {
            Value::Null | Value::String(_) => {}
            other => self.problem(
                path.to_string(),
                format!("must be a string, found {}", type_name(other)),
            ),
        }
    }

    fn rfc3339(&mut self, path: PropPath<'_>, value: &Value) {
        use time::format_description::well_known::Rfc3339;
        match value {
            Value::Null => {}
            Value::String(s) => {
                if time::OffsetDateTime::parse(s, &Rfc3339).is_err() {
                    self.problem(
                        path.to_string(),
                        format!(
                            "must be an RFC 3339 date-time such as \
                             \"2021-08-03T15:05:50+00:00\", found {s:?}"
                        ),
                    );
                }
            }
            other => self.problem(
                path.to_string(),
                format!("must be a string, found {}", type_name(other)),
            ),
        }
    }
}

/// What `c` is, if it is a character a string objectId may not hold: a
/// control character (general category Cc), a line or paragraph separator
/// (Zl, Zp), or a format character (Cf), which renders as nothing or
/// changes how the text around it is shown.
fn invisible(c: char) -> Option<&'static str> {
    match c {
        ' '..='~' => None,
        '\u{2028}' => Some("a line separator"),
        '\u{2029}' => Some("a paragraph separator"),
        _ if c.is_control() => Some("a control character"),
        _ if FORMAT_CHARACTERS.iter().any(|range| range.contains(&c)) => {
            Some("an invisible formatting character")
        }
        _ => None,
    }
}

/// General category Cf, complete as of Unicode 17.0 (170 code points; the
/// category grows rarely, U+13439..U+1343F in 15.0 being the last addition).
/// std has no general-category lookup, and one small table is cheaper than a
/// dependency.
const FORMAT_CHARACTERS: [std::ops::RangeInclusive<char>; 21] = [
    '\u{00AD}'..='\u{00AD}',   // soft hyphen
    '\u{0600}'..='\u{0605}',   // Arabic number signs
    '\u{061C}'..='\u{061C}',   // Arabic letter mark
    '\u{06DD}'..='\u{06DD}',   // Arabic end of ayah
    '\u{070F}'..='\u{070F}',   // Syriac abbreviation mark
    '\u{0890}'..='\u{0891}',   // Arabic pound and piastre marks above
    '\u{08E2}'..='\u{08E2}',   // Arabic disputed end of ayah
    '\u{180E}'..='\u{180E}',   // Mongolian vowel separator
    '\u{200B}'..='\u{200F}',   // zero width space, joiners, LRM, RLM
    '\u{202A}'..='\u{202E}',   // bidi embeddings and overrides
    '\u{2060}'..='\u{2064}',   // word joiner, invisible operators
    '\u{2066}'..='\u{206F}',   // bidi isolates, deprecated format characters
    '\u{FEFF}'..='\u{FEFF}',   // zero width no-break space (BOM)
    '\u{FFF9}'..='\u{FFFB}',   // interlinear annotation
    '\u{110BD}'..='\u{110BD}', // Kaithi number sign
    '\u{110CD}'..='\u{110CD}', // Kaithi number sign above
    '\u{13430}'..='\u{1343F}', // Egyptian hieroglyph format controls
    '\u{1BCA0}'..='\u{1BCA3}', // shorthand format controls
    '\u{1D173}'..='\u{1D17A}', // musical symbol beams and phrases
    '\u{E0001}'..='\u{E0001}', // language tag
    '\u{E0020}'..='\u{E007F}', // tag characters
];

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
