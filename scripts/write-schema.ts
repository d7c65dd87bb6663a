/**
 * `npm run schema`: writes conf/oidc-callout.schema.json, the JSON Schema of the configuration
 * file, from the schema the service validates with (src/config-json-schema.ts). Editors read it
 * through the `# yaml-language-server: $schema=...` line of conf/oidc-callout.yaml. Also writes
 * conf/audit-event.schema.json, the JSON Schema of an audit event (src/audit/event.ts).
 */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { auditEventJsonSchemaText } from '../src/audit/event.js';
import { configJsonSchemaText } from '../src/config-json-schema.js';

// dist/scripts/write-schema.js -> the repository root.
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const file = join(root, 'conf', 'oidc-callout.schema.json');
writeFileSync(file, configJsonSchemaText());
process.stdout.write(`wrote ${file}\n`);
const eventFile = join(root, 'conf', 'audit-event.schema.json');
writeFileSync(eventFile, auditEventJsonSchemaText());
process.stdout.write(`wrote ${eventFile}\n`);
