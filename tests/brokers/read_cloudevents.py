"""(Not named cloudevents.py, which would hide the SDK from itself.)

Reads the bridge's messages back as CloudEvents with the official SDK
(PyPI `cloudevents`), for tests/brokers/cloudevents.rs, and checks every
attribute against what the test posted.

    python read_cloudevents.py kafka BOOTSTRAP < cases.json
    python read_cloudevents.py nats < cases.json

cases.json is a list of {"expect": {...}} (Kafka: "topic" too; NATS: the
"headers" as [name, value] pairs and the "payload", base64, as the test
fetched them with the Rust client). "expect" holds id, type, source, time
(UNIX seconds), subject and data (base64). Prints one `ok` line per event;
the first mismatch is one line on stderr and exit status 1.

Kafka: confluent-kafka consumes the topic and the SDK's Kafka binding
(`from_binary`) reads the record. NATS: the SDK has no NATS binding; its
NATS header rules (`ce-` prefix, percent-encoding, section 3.1.3) are the
HTTP binding's, so the HTTP binding's `from_binary` reads the message given
only its `ce-` headers: `datacontenttype` must then come from
`ce-datacontenttype`, as the NATS binding wants, not from `content-type`.
The SDK's CloudEvent validates the attributes either way.
"""

import base64
import json
import re
import sys
import time
from datetime import datetime, timezone

from cloudevents.core.bindings import http, kafka
from cloudevents.core.formats.json import JSONFormat


class RawData(JSONFormat):
    """The data as the bytes on the wire, so the check is byte for byte
    rather than of the JSON the SDK would parse."""

    def read_data(self, body, datacontenttype):
        return body


RFC3339_UTC_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def fail(message):
    print(f"read_cloudevents.py: {message}", file=sys.stderr)
    sys.exit(1)


def check(event, expect, headers, prefix):
    # The SDK fills in a missing specversion: the header itself must be there.
    for name in ("specversion", "id", "source", "type", "subject", "time"):
        if prefix + name not in headers:
            fail(f"{expect['type']}: no {prefix + name} header in {sorted(headers)}")
    time_header = headers[prefix + "time"]
    data = base64.b64decode(expect["data"])
    want = {
        "specversion": "1.0",
        "id": expect["id"],
        "type": expect["type"],
        "source": expect["source"],
        "subject": expect["subject"],
        "datacontenttype": "application/json",
        "time": datetime.fromtimestamp(expect["time"], tz=timezone.utc),
    }
    got = {
        "specversion": event.get_specversion(),
        "id": event.get_id(),
        "type": event.get_type(),
        "source": event.get_source(),
        "subject": event.get_subject(),
        "datacontenttype": event.get_datacontenttype(),
        "time": event.get_time(),
    }
    for name, value in want.items():
        if got[name] != value:
            fail(f"{expect['type']}: {name} is {got[name]!r}, expected {value!r}")
    if headers.get("apizee-event-id") != event.get_id():
        fail(f"id {event.get_id()!r} is not the apizee-event-id header {headers.get('apizee-event-id')!r}")
    if not RFC3339_UTC_SECONDS.match(time_header):
        fail(f"the time header {time_header!r} is not RFC 3339 UTC")
    if event.get_data() != data:
        fail(f"{expect['type']}: data {event.get_data()!r} is not the body posted {data!r}")
    print(f"ok {event.get_type()} {event.get_id()} {time_header}")


def read_kafka(bootstrap, cases):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cloudevents-sdk-check",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    for case in cases:
        topic = case["topic"]
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + 20
        record = None
        while record is None and time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is not None and record.error():
                fail(f"reading {topic}: {record.error()}")
        if record is None:
            fail(f"no message on {topic}")
        headers = {name: value for name, value in record.headers() or []}
        message = kafka.KafkaMessage(headers=headers, key=record.key(), value=record.value())
        event = kafka.from_binary(message, RawData())
        # The binding reads the record key as the partitionkey extension.
        if event.get_extension("partitionkey") != case["expect"]["subject"]:
            fail(f"{topic}: key {record.key()!r} is not the objectId")
        strings = {name: value.decode() for name, value in headers.items()}
        check(event, case["expect"], strings, kafka.CE_PREFIX)
    consumer.close()


def read_nats(cases):
    for case in cases:
        headers = {name.lower(): value for name, value in case["headers"]}
        attributes = {name: value for name, value in headers.items() if name.startswith("ce-")}
        payload = base64.b64decode(case["payload"])
        event = http.from_binary(http.HTTPMessage(headers=attributes, body=payload), RawData())
        check(event, case["expect"], headers, http.CE_PREFIX)


def main():
    cases = json.load(sys.stdin)
    if sys.argv[1:2] == ["kafka"]:
        read_kafka(sys.argv[2], cases)
    elif sys.argv[1:] == ["nats"]:
        read_nats(cases)
    else:
        fail("usage: read_cloudevents.py kafka BOOTSTRAP | nats  (cases on stdin)")


if __name__ == "__main__":
    main()
