// Generates TypeScript and Python models from docs/asyncapi.yaml with
// Modelina, as a consumer team would, for tests/contract/models.rs:
//
//   node tests/contract/modelina/generate.mjs TOOLS ASYNCAPI OUT
//
// TOOLS is where `.ci/tools/modelina.sh` installed the pinned packages
// (target/tools/modelina); OUT gets typescript/*.ts and
// python/apizee_models/*.py, one file per model. Prints one line per model.
import { createRequire } from 'node:module';
import path from 'node:path';

const [tools, spec, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node generate.mjs TOOLS ASYNCAPI OUT');
  process.exit(2);
}
// The packages live under target/, not beside this script: resolve them there.
const require = createRequire(path.join(path.resolve(tools), 'package.json'));
const { Parser, fromFile } = require('@asyncapi/parser');
const modelina = require('@asyncapi/modelina');

const { document, diagnostics } = await fromFile(new Parser(), path.resolve(spec)).parse();
if (!document) {
  for (const d of diagnostics) console.error(`${d.code}: ${d.message} at ${d.path.join('.')}`);
  process.exit(1);
}

// The format every payload declares; the schemas are read as what it says.
const DRAFT_07 = 'application/schema+json;version=draft-07';

// Modelina 5's AsyncAPI input reads a v3 payload with a schemaFormat as the
// wrapper, not the schema in it, and names the model after its file
// (`TicketDotJson`) instead of its title; it also makes models of payloads
// only, not of headers. So the payload and headers schemas are handed to it
// one by one as JSON Schema, deduplicated by title (the five webhook
// messages share their headers).
const schemas = new Map();
const add = (what, json) => {
  const title = json.title;
  if (!title) throw new Error(`${what} has no title: its model would be AnonymousSchema`);
  schemas.set(title, { ...json, $schema: 'http://json-schema.org/draft-07/schema#' });
};
for (const message of document.messages()) {
  const payload = message.payload();
  const format = payload.schemaFormat();
  if (format !== DRAFT_07) throw new Error(`message ${message.id()}: payload schemaFormat ${format}, expected ${DRAFT_07}`);
  const wrapped = payload.json();
  add(`message ${message.id()} payload`, wrapped.schema ?? wrapped);
  if (message.hasHeaders()) add(`message ${message.id()} headers`, message.headers().json());
}

// `event` and `object` are the platform's field names and valid property
// names in TypeScript: keep them, where Modelina would make them
// `reservedEvent` and `reservedObject`. And let the camelCase formatter take
// `-` as a word break (`apizee-event` -> `apizeeEvent`), as it does for
// Python, instead of spelling it `apizeeMinusEvent`.
const keepNames = modelina.typeScriptDefaultPropertyKeyConstraints({
  NO_RESERVED_KEYWORDS: (name) => name,
  NO_SPECIAL_CHAR: (name) => modelina.FormatHelpers.replaceSpecialCharacters(name, { exclude: [' ', '_', '-', '$'], separator: '_' }),
});
const typescript = new modelina.TypeScriptFileGenerator({
  modelType: 'class',
  constraints: { propertyKey: keepNames },
  // marshal() and unmarshal(), which map the wire names to the properties.
  presets: [{ preset: modelina.TS_COMMON_PRESET, options: { marshalling: true } }],
});
// Pydantic: the default Python classes read `input['object_id']` (the
// Python name) from the JSON, a KeyError on every webhook; pydantic's field
// aliases carry the wire name (`objectId`).
// The preset quotes a const's default twice (`default=''ticket''`, a syntax
// error): its value is already a Python literal.
const constDefault = {
  class: {
    property: ({ content }) => content.replace(/default=''(.*?)'', frozen=True/, "default='$1', frozen=True"),
  },
};
const python = new modelina.PythonFileGenerator({ presets: [modelina.PYTHON_PYDANTIC_PRESET, constDefault] });

const seen = new Set();
for (const schema of schemas.values()) {
  const models = [
    ...(await typescript.generateToFiles(schema, path.join(out, 'typescript'), { exportType: 'named' })).map((m) => `typescript ${m.modelName}`),
    ...(await python.generateToFiles(schema, path.join(out, 'python', 'apizee_models'), { packageName: 'apizee_models' })).map((m) => `python ${m.modelName}`),
  ];
  for (const line of models) {
    if (!seen.has(line)) console.log(line);
    seen.add(line);
  }
}
