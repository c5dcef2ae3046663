// Reads every case of tests/contract/models.rs with the TypeScript models
// Modelina generated, as a consumer would: unmarshal() the body with the
// model of its object, the headers with the headers model. Compiled with the
// models by tsc; prints one line per problem, naming the case and the
// field, and exits 1 if there is any.
//
//   node read_samples.js CASES_JSON
import { ConversationEventWebhook } from './ConversationEventWebhook';
import { ConversationWebhook } from './ConversationWebhook';
import { DeadLetterHeaders } from './DeadLetterHeaders';
import { MediaWebhook } from './MediaWebhook';
import { SmsMessageWebhook } from './SmsMessageWebhook';
import { TicketWebhook } from './TicketWebhook';
import { WebhookHeaders } from './WebhookHeaders';

// No @types/node: only these are used.
declare const require: (module: string) => any;
declare const process: { argv: string[]; exitCode: number };
declare const console: { log(line: string): void; error(line: string): void };
const { readFileSync } = require('node:fs');
const { isDeepStrictEqual } = require('node:util');

interface Model {
  marshal(): string;
}
const MODELS: Record<string, (json: object) => Model & Record<string, any>> = {
  ticket: (json) => TicketWebhook.unmarshal(json),
  media: (json) => MediaWebhook.unmarshal(json),
  conversation: (json) => ConversationWebhook.unmarshal(json),
  smsmessage: (json) => SmsMessageWebhook.unmarshal(json),
  conversationevent: (json) => ConversationEventWebhook.unmarshal(json),
};
const HEADERS: Record<string, (json: object) => Record<string, any>> = {
  webhook: (json) => WebhookHeaders.unmarshal(json),
  'dead-letter': (json) => DeadLetterHeaders.unmarshal(json),
};

const problems: string[] = [];
const expect = (name: string, field: string, found: unknown, wanted: unknown) => {
  if (!isDeepStrictEqual(found, wanted)) {
    problems.push(`${name}: ${field} is ${JSON.stringify(found)}, expected ${JSON.stringify(wanted)}`);
  }
};
// `apizee-event-id` -> `apizeeEventId`, `Nats-Msg-Id` -> `natsMsgId`.
const camel = (wire: string) =>
  wire.toLowerCase().replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'));
for (const c of cases) {
  try {
    if (c.body !== undefined) {
      const document = JSON.parse(c.body);
      const model = MODELS[document.object](JSON.parse(c.body));
      expect(c.name, 'event', model.event, document.event);
      expect(c.name, 'time', model.time, document.time);
      expect(c.name, 'object', model.object, document.object);
      expect(c.name, 'objectId', model.objectId, document.objectId);
      // Every field, props and unknown ones included, under its wire name.
      expect(c.name, 'the whole body', JSON.parse(model.marshal()), document);
    }
    const headers = HEADERS[c.kind](c.headers);
    for (const [wire, value] of Object.entries(c.headers)) {
      expect(c.name, `header ${wire} (${camel(wire)})`, headers[camel(wire)], value);
    }
  } catch (e) {
    problems.push(`${c.name}: ${e}`);
  }
}
for (const problem of problems) console.log(problem);
console.error(`typescript: ${cases.length} cases, ${problems.length} problems`);
process.exitCode = problems.length ? 1 : 0;
