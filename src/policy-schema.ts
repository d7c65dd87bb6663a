import { z } from 'zod';

/**
 * The shape of the `policy` section and of the policy keys of an issuer, as written in the
 * configuration file. The configuration schema embeds these; the policy compiler
 * (policy-compile.ts) checks everything a shape cannot say.
 */

/** Connection types as nats-server names them in a user JWT's `allowed_connection_types`. */
export const CONNECTION_TYPES = ['STANDARD', 'WEBSOCKET', 'LEAFNODE', 'LEAFNODE_WS', 'MQTT', 'MQTT_WS', 'IN_PROCESS'] as const;
export type ConnectionType = (typeof CONNECTION_TYPES)[number];

const duration = z.union([z.string(), z.number().nonnegative()]);
const scalar = z.union([z.string(), z.number(), z.boolean()]);
const oneOrMore = <T extends z.ZodType>(t: T) => z.union([t, z.array(t).min(1)]);
const subjectList = z.array(z.string().min(1));
const direction = z.strictObject({ allow: subjectList.optional(), deny: subjectList.optional() });

export const permissionsSchema = z.strictObject({
  pub: direction.optional().describe('publish permissions: only allow entries grant; deny entries subtract'),
  sub: direction.optional().describe('subscribe permissions: only allow entries grant; deny entries subtract'),
  resp: z
    .strictObject({ max: z.number().int().positive(), ttl: duration.optional() })
    .optional()
    .describe('publish up to max responses to each request received, within ttl'),
});

/** `claim: value` or `claim: [values]`: the claim (or one of its values) equals one of them. */
export const claimMatchSchema = z.record(z.string().min(1), oneOrMore(scalar));

export type ConditionInput = {
  claim?: string | undefined;
  equals?: z.infer<typeof scalar> | z.infer<typeof scalar>[] | undefined;
  glob?: string | string[] | undefined;
  regex?: string | string[] | undefined;
  present?: boolean | undefined;
  all?: ConditionInput[] | undefined;
  any?: ConditionInput[] | undefined;
  not?: ConditionInput | undefined;
  connection_type?: ConnectionType | ConnectionType[] | undefined;
  source_network?: string | string[] | undefined;
};

export const conditionSchema: z.ZodType<ConditionInput> = z.lazy(() =>
  z
    .strictObject({
      claim: z.string().min(1).optional().describe('dotted claim path; with exactly one of equals, glob, regex, present'),
      equals: oneOrMore(scalar).optional(),
      glob: oneOrMore(z.string().min(1)).optional().describe('whole-value glob: * any run of characters, ? one character'),
      regex: oneOrMore(z.string().min(1)).optional().describe('whole-value RE2 regular expression (linear time)'),
      present: z.boolean().optional(),
      all: z.array(conditionSchema).min(1).optional(),
      any: z.array(conditionSchema).min(1).optional(),
      not: conditionSchema.optional(),
      connection_type: oneOrMore(z.enum(CONNECTION_TYPES)).optional(),
      source_network: oneOrMore(z.string().min(1)).optional().describe('the client address is in one of these CIDR networks'),
    })
    .describe('one condition: a claim test, a combination (all, any, not) or a connection test'),
);

const accountSchema = z.union([
  z.string().min(1),
  z.strictObject({
    claim: z.string().min(1).describe('a claim holding exactly one value'),
    map: z.record(z.string().min(1), z.string().min(1)).describe('claim value -> account; any other value refuses'),
  }),
]);

export const ruleSchema = z.strictObject({
  name: z.string().min(1),
  issuer: oneOrMore(z.string().min(1)).optional(),
  match: claimMatchSchema.optional(),
  when: z.array(conditionSchema).min(1).optional().describe('conditions that must all hold (besides match)'),
  allow_broad: z.boolean().optional().describe('required for a rule that every token of its issuers would match'),
  account: accountSchema,
  roles: z.array(z.string().min(1)).min(1).optional(),
  roles_from: z
    .strictObject({
      claim: z.string().min(1),
      map: z.record(z.string().min(1), oneOrMore(z.string().min(1))).describe('claim value -> role(s); other values grant nothing'),
    })
    .optional(),
  permissions: permissionsSchema.optional(),
  user_name_claim: z.string().min(1).optional(),
  max_lifetime: duration.optional(),
  connection_types: z.array(z.enum(CONNECTION_TYPES)).min(1).optional(),
  source_networks: z.array(z.string().min(1)).min(1).optional(),
  times: z
    .array(z.strictObject({ start: z.string(), end: z.string() }))
    .min(1)
    .optional(),
  times_location: z.string().min(1).optional(),
  tags: z.array(z.string().min(1)).min(1).optional(),
  proxy_required: z.boolean().optional().describe('nats-server (2.12+) admits the user only through a trusted NATS protocol-aware proxy (its proxies.trusted)'),
});

export const policySchema = z.strictObject({
  roles: z.record(z.string().min(1), permissionsSchema).optional().describe('named permission sets that rules grant'),
  rules: z.array(ruleSchema).min(1),
});

/** The policy keys of one issuer. */
export const issuerPolicySchema = {
  required_claims: z
    .union([claimMatchSchema, z.array(conditionSchema).min(1)])
    .optional()
    .describe('conditions every token of this issuer must meet before any rule is tried'),
  claim_delimiters: z
    .record(z.string().min(1), z.string().min(1).max(4))
    .optional()
    .describe('claims this issuer writes as one delimited string (scope and scp are space-separated by default)'),
};

export type PermissionsInput = z.infer<typeof permissionsSchema>;
export type RuleInput = z.infer<typeof ruleSchema>;
export type PolicyInput = z.infer<typeof policySchema>;
export type ClaimMatchInput = z.infer<typeof claimMatchSchema>;
