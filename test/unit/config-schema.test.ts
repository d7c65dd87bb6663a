import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { z } from 'zod';
import { configSchema } from '../../src/config.js';
import { CONFIG_SCHEMA_ID, configJsonSchema, configJsonSchemaText } from '../../src/config-json-schema.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const shippedFile = join(root, 'conf', 'oidc-callout.schema.json');
const exampleFile = join(root, 'conf', 'oidc-callout.yaml');

/** The shipped JSON Schema read back into a validator (zod's own JSON Schema reader: no second implementation to trust). */
function shippedValidator(): z.ZodType {
  return z.fromJSONSchema(JSON.parse(readFileSync(shippedFile, 'utf8')));
}

const example = (): Record<string, any> => parse(readFileSync(exampleFile, 'utf8'));

describe('configuration JSON Schema', () => {
  it('is shipped as generated from the configuration schema', () => {
    const shipped = readFileSync(shippedFile, 'utf8');
    assert.ok(shipped === configJsonSchemaText(), 'conf/oidc-callout.schema.json differs from the schema generated from src/config.ts: run `npm run schema`');
  });

  it('names itself and keeps the recursive condition type in $defs', () => {
    const schema = configJsonSchema();
    assert.equal(schema['$schema'], 'https://json-schema.org/draft/2020-12/schema');
    assert.equal(schema['$id'], CONFIG_SCHEMA_ID);
    assert.equal(typeof schema['title'], 'string');
    assert.equal(typeof schema['description'], 'string');
    const defs = schema['$defs'] as Record<string, any>;
    assert.equal(defs['condition'].properties.not.$ref, '#/$defs/condition');
    assert.equal(defs['condition'].additionalProperties, false);
    // Only what the file must hold is required: everything else has a default.
    assert.deepEqual(schema['required'], ['callout', 'issuers', 'policy']);
    assert.deepEqual((schema['properties'] as Record<string, any>)['callout'].required, ['issuer_seed']);
  });

  it('is the first line of the example configuration', () => {
    const first = readFileSync(exampleFile, 'utf8').split('\n', 1)[0];
    assert.equal(first, '# yaml-language-server: $schema=./oidc-callout.schema.json');
  });

  it('accepts the example configuration', () => {
    const result = shippedValidator().safeParse(example());
    assert.ok(result.success, `conf/oidc-callout.yaml is refused by the schema: ${result.error?.message}`);
  });

  it('refuses unknown keys, at the top and inside nested conditions', () => {
    const validator = shippedValidator();
    const top = { ...example(), colour: 'blue' };
    assert.equal(validator.safeParse(top).success, false);

    const nested = example();
    nested.policy.rules[1].when = [{ not: { any: [{ claim: 'tenant', present: true, extra: 1 }] } }];
    assert.equal(validator.safeParse(nested).success, false);
    nested.policy.rules[1].when = [{ not: { any: [{ claim: 'tenant', present: true }] } }];
    assert.equal(validator.safeParse(nested).success, true);

    const inSecret = example();
    inSecret.callout.issuer_seed = { file: '/run/x', env: 'X' };
    assert.equal(validator.safeParse(inSecret).success, false);
  });

  it('agrees with the loader schema on valid and invalid documents', () => {
    const validator = shippedValidator();
    const variants: [string, (doc: Record<string, any>) => void][] = [
      ['as shipped', () => {}],
      [
        'no optional sections',
        (d) => {
          for (const k of ['nats', 'token', 'cache', 'log', 'http']) delete d[k];
        },
      ],
      ['no issuers', (d) => delete d.issuers],
      ['empty rule list', (d) => (d.policy.rules = [])],
      ['rule without account', (d) => delete d.policy.rules[0].account],
      ['account table', (d) => (d.policy.rules[0].account = { claim: 'tenant', map: { acme: 'APP' } })],
      ['unknown algorithm', (d) => (d.issuers[0].algorithms = ['HS256'])],
      ['too many connections', (d) => (d.nats.connections = 49)],
      ['fractional connections', (d) => (d.nats.connections = 1.5)],
      ['unknown connection type', (d) => (d.policy.rules[0].connection_types = ['TELNET'])],
      ['equals a list of scalars', (d) => (d.policy.rules[1].when = [{ claim: 'tier', equals: ['gold', 3, true] }])],
      ['equals an object', (d) => (d.policy.rules[1].when = [{ claim: 'tier', equals: { a: 1 } }])],
      ['empty any', (d) => (d.policy.rules[1].when = [{ any: [] }])],
      ['roles map to a role list', (d) => (d.policy.rules[0].roles_from = { claim: 'groups', map: { a: ['x', 'y'], b: 'z' } })],
      ['empty role name', (d) => (d.policy.roles = { '': {} })],
      ['secret from the environment', (d) => (d.nats.password = { env: 'NATS_PASSWORD' })],
      ['empty inline secret', (d) => (d.nats.password = '')],
      ['numeric duration', (d) => (d.cache.ttl = 30_000)],
      ['negative duration', (d) => (d.cache.ttl = -1)],
      ['log level', (d) => (d.log.level = 'trace')],
    ];
    for (const [name, change] of variants) {
      const doc = example();
      change(doc);
      assert.equal(validator.safeParse(doc).success, configSchema.safeParse(doc).success, `${name}: the JSON Schema and the loader disagree`);
    }
  });
});
