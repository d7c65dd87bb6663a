import type { Policy } from '../../src/policy.js';
import { compilePolicy, type PolicySource } from '../../src/policy-compile.js';
import type { PolicyInput } from '../../src/policy-schema.js';

/** The issuer policy tests use unless they name others. */
export const TEST_ISSUER = 'https://idp.example.com';

/**
 * Compiles rules (and roles) as the configuration loader would, for one issuer (or `issuers`),
 * with AUTH and SYS reserved as in server_config mode.
 */
export function policyOf(
  rules: readonly Record<string, unknown>[],
  options: { roles?: Record<string, unknown>; issuers?: PolicySource['issuers']; accounts?: readonly string[]; indexed?: boolean } = {},
): Policy {
  return compilePolicy(
    {
      policy: { rules, ...(options.roles ? { roles: options.roles } : {}) } as PolicyInput,
      issuers: options.issuers ?? [{ issuer: TEST_ISSUER }],
      accounts: options.accounts ? new Set(options.accounts) : undefined,
      reserved: new Map([
        ['AUTH', 'the callout account'],
        ['SYS', 'the system account'],
        ['$SYS', 'the system account'],
      ]),
      defaults: { maxLifetime: '1h', userNameClaim: 'sub', connectionTypes: ['STANDARD', 'WEBSOCKET'] },
    },
    { indexed: options.indexed ?? true },
  );
}
