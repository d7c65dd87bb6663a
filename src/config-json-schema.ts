import { z } from 'zod';
import { configSchema } from './config.js';
import { claimMatchSchema, conditionSchema, permissionsSchema, ruleSchema } from './policy-schema.js';

/**
 * The JSON Schema of the configuration file, generated from the zod schema the loader
 * validates with (conf/oidc-callout.schema.json is this, written by `npm run schema`). It
 * describes the shape only: what the loader checks beyond it (durations, URLs, keys, the
 * policy's load-time checks) an editor cannot know.
 */

export const CONFIG_SCHEMA_ID = 'urn:oidc-callout:config';

/** Parts of the schema that appear more than once (or recursively), by their `$defs` name. */
function namedParts(): ReadonlyMap<z.core.$ZodType, string> {
  const shape = configSchema.shape;
  return new Map<z.core.$ZodType, string>([
    [conditionSchema, 'condition'],
    [claimMatchSchema, 'claim_match'],
    [permissionsSchema, 'permissions'],
    [ruleSchema, 'rule'],
    [shape.callout.shape.issuer_seed, 'secret'],
    [shape.issuers.element, 'issuer'],
  ]);
}

/** The global registry's metadata (the `.describe()` texts), plus a `$defs` name for the named parts. */
class NamedRegistry extends z.core.$ZodRegistry<z.core.GlobalMeta> {
  readonly #names: ReadonlyMap<z.core.$ZodType, string>;

  constructor(names: ReadonlyMap<z.core.$ZodType, string>) {
    super();
    this.#names = names;
  }

  override get<S extends z.core.$ZodType>(schema: S): z.core.GlobalMeta | undefined {
    const meta = z.globalRegistry.get(schema);
    const id = this.#names.get(schema);
    return id === undefined ? meta : { ...meta, id };
  }
}

/** The configuration's JSON Schema (draft 2020-12), as plain data. */
export function configJsonSchema(): Record<string, unknown> {
  const generated = z.toJSONSchema(configSchema, {
    target: 'draft-2020-12',
    // The file is the schema's input: keys with a default may be left out.
    io: 'input',
    // Conditions nest (all, any, not): recursive parts become $defs.
    cycles: 'ref',
    reused: 'inline',
    unrepresentable: 'throw',
    metadata: new NamedRegistry(namedParts()),
  }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: CONFIG_SCHEMA_ID,
    title: 'oidc-callout configuration',
    description:
      'The configuration file of oidc-callout, a NATS auth callout service that maps OpenID Connect token claims to NATS users. ' +
      'Unknown keys are errors. Generated from the schema the service validates with; the service checks more at load ' +
      '(durations, URLs, keys, and the policy: roles, templates, shadowed and broad rules).',
    ...rest,
  };
}

/** The schema as the shipped file holds it: 2-space JSON with a trailing newline. */
export function configJsonSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}
