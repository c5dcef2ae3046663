// Validates docs/asyncapi.yaml with the AsyncAPI parser (the one behind the
// AsyncAPI CLI and Studio): the document against the AsyncAPI 3.0 schema,
// $refs resolved (docs/schema/*.json included), and the parser's rules.
// Exits 1 on any error or warning.
//
//   npm ci --prefix docs/check && node docs/check/check.mjs
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Parser, fromFile } from '@asyncapi/parser';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = path.resolve(here, '..', 'asyncapi.yaml');

const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, file).parse();

const names = ['error', 'warning', 'info', 'hint'];
let failed = false;
for (const d of diagnostics) {
  const level = names[d.severity] ?? String(d.severity);
  if (d.severity <= 1) failed = true;
  console.log(`${level}: ${d.code}: ${d.message} at ${d.path.join('.') || '(root)'}`);
}
if (!document || failed) {
  console.error(`${file}: not a valid AsyncAPI document`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.components().messages().all().map((m) => m.id());
console.log(
  `${path.relative(process.cwd(), file)}: AsyncAPI ${document.version()}, ` +
    `${channels.length} channels, ${document.operations().length} operations, ` +
    `messages ${messages.join(', ')}`,
);
