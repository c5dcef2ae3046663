"""Reads every case of tests/contract/models.rs with the Python models
Modelina generated, as a consumer would: the body with the model of its
object, the headers with the headers model. Prints one line per problem,
naming the case and the field, and exits 1 if there is any.

    python read_samples.py MODELS_DIR CASES_JSON
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
from apizee_models.conversation_event_webhook import ConversationEventWebhook  # noqa: E402
from apizee_models.conversation_webhook import ConversationWebhook  # noqa: E402
from apizee_models.dead_letter_headers import DeadLetterHeaders  # noqa: E402
from apizee_models.media_webhook import MediaWebhook  # noqa: E402
from apizee_models.sms_message_webhook import SmsMessageWebhook  # noqa: E402
from apizee_models.ticket_webhook import TicketWebhook  # noqa: E402
from apizee_models.webhook_headers import WebhookHeaders  # noqa: E402

MODELS = {
    "ticket": TicketWebhook,
    "media": MediaWebhook,
    "conversation": ConversationWebhook,
    "smsmessage": SmsMessageWebhook,
    "conversationevent": ConversationEventWebhook,
}
HEADERS = {"webhook": WebhookHeaders, "dead-letter": DeadLetterHeaders}

problems = []


def expect(case, field, found, wanted):
    if found != wanted:
        problems.append(f"{case}: {field} is {found!r}, expected {wanted!r}")


def read(case, what, model, text):
    try:
        return model.model_validate_json(text)
    except Exception as e:  # pydantic.ValidationError, or a bug in a model
        problems.append(f"{case}: {what}: {model.__name__} refuses it: {e}")
        return None


with open(sys.argv[2], encoding="utf-8") as f:
    cases = json.load(f)
for case in cases:
    name = case["name"]
    if "body" in case:
        document = json.loads(case["body"])
        model = read(name, "body", MODELS[document["object"]], case["body"])
        if model is not None:
            expect(name, "event", model.event.value, document["event"])
            expect(name, "time", model.time, document["time"])
            expect(name, "object", model.object, document["object"])
            expect(name, "object_id", model.object_id, document["objectId"])
            # Every field, props and unknown ones included, under its wire name.
            expect(name, "the whole body", model.model_dump(mode="json", by_alias=True, exclude_unset=True), document)
    headers = case["headers"]
    model = read(name, "headers", HEADERS[case["kind"]], json.dumps(headers))
    if model is not None:
        for wire, value in headers.items():
            python_name = wire.replace("-", "_").lower()
            found = getattr(model, python_name)
            expect(name, f"header {wire} ({python_name})", getattr(found, "value", found), value)

for problem in problems:
    print(problem)
print(f"python: {len(cases)} cases, {len(problems)} problems", file=sys.stderr)
sys.exit(1 if problems else 0)
