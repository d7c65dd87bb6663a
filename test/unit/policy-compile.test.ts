import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { policyOf, TEST_ISSUER as ISS } from '../helpers/policy.js';

const CI = 'https://ci.example.com';
const perms = { pub: { allow: ['app.>'] } };

function configError(fn: () => unknown, path: string, message: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ConfigError && e.path === path && message.test(e.message), `${path} ${message}`);
}

describe('policy load-time checks', () => {
  it('asks a rule every token of its issuer would match to say so', () => {
    configError(() => policyOf([{ name: 'everyone', account: 'APP', permissions: perms }]), 'policy.rules[0]', /matches every token.*allow_broad: true/);
    policyOf([{ name: 'everyone', allow_broad: true, account: 'APP', permissions: perms }]);
    // Conditions that admit (nearly) every token do not count as narrowing.
    for (const when of [
      [{ claim: 'sub', present: true }],
      [{ not: { claim: 'groups', equals: 'banned' } }],
      [{ claim: 'email', glob: '*' }],
      [{ claim: 'email', regex: '.*' }],
      [{ connection_type: 'WEBSOCKET' }],
      [{ source_network: '10.0.0.0/8' }],
      [
        {
          any: [
            { claim: 'a', equals: 1 },
            { claim: 'b', present: true },
          ],
        },
      ],
    ]) {
      configError(() => policyOf([{ name: 'r', when, account: 'APP', permissions: perms }]), 'policy.rules[0]', /matches every token/);
    }
    // These narrow.
    for (const rule of [
      { when: [{ claim: 'email', glob: '*@example.com' }] },
      { when: [{ claim: 'sub', regex: 'svc-[0-9]+' }] },
      {
        when: [
          {
            any: [
              { claim: 'a', equals: 1 },
              { claim: 'b', glob: 'x*' },
            ],
          },
        ],
      },
      {
        when: [
          { claim: 'sub', present: true },
          { claim: 'groups', equals: 'dev' },
        ],
      },
      { account: { claim: 'tenant', map: { acme: 'ACME' } } },
    ]) {
      policyOf([{ name: 'r', account: 'APP', permissions: perms, ...rule }]);
    }
    policyOf([{ name: 'r', account: 'APP', roles_from: { claim: 'groups', map: { '/nats/w': 'writer' } } }], { roles: { writer: perms } });
  });

  it('reports a rule that can never match, naming the rule that shadows it', () => {
    configError(
      () =>
        policyOf([
          { name: 'devs', match: { groups: ['dev', 'ops'] }, account: 'APP', permissions: perms },
          { name: 'dev-leads', match: { groups: 'dev' }, when: [{ claim: 'lead', equals: true }], account: 'APP', permissions: perms },
        ]),
      'policy.rules[1]',
      /"dev-leads" can never match: rule "devs" \(policy.rules\[0\]\) comes first/,
    );
    configError(
      () =>
        policyOf([
          { name: 'all', allow_broad: true, account: 'APP', permissions: perms },
          { name: 'devs', match: { groups: 'dev' }, account: 'APP', permissions: perms },
        ]),
      'policy.rules[1]',
      /can never match/,
    );
    // Narrower first, wider second: fine. Different claims: fine.
    policyOf([
      { name: 'dev-leads', match: { groups: 'dev', lead: true }, account: 'APP', permissions: perms },
      { name: 'devs', match: { groups: 'dev' }, account: 'APP', permissions: perms },
      { name: 'ops', match: { team: 'ops' }, account: 'APP', permissions: perms },
    ]);
    // A first rule bound to one issuer does not shadow a rule for another.
    policyOf(
      [
        { name: 'a', issuer: ISS, allow_broad: true, account: 'APP', permissions: perms },
        { name: 'b', issuer: CI, allow_broad: true, account: 'APP', permissions: perms },
      ],
      { issuers: [{ issuer: ISS }, { issuer: CI }] },
    );
    // A rule whose roles come only from a claim lets unmapped tokens through: it shadows nothing.
    policyOf(
      [
        { name: 'mapped', allow_broad: true, account: 'APP', roles_from: { claim: 'groups', map: { w: 'writer' } } },
        { name: 'rest', allow_broad: true, account: 'APP', permissions: perms },
      ],
      { roles: { writer: perms } },
    );
  });

  it('requires every claim a template uses to be guaranteed by a condition', () => {
    const rule = { name: 't', match: { groups: 'dev' }, account: 'APP', permissions: { pub: { allow: ['orders.{{claims.tenant}}.>'] } } };
    configError(
      () => policyOf([rule]),
      'policy.rules[0]',
      /uses claims.tenant, which no condition of the rule guarantees; add \{claim: tenant, present: true\}/,
    );
    policyOf([{ ...rule, when: [{ claim: 'tenant', present: true }] }]);
    policyOf([{ ...rule, match: { groups: 'dev', tenant: ['acme', 'globex'] } }]);
    policyOf([
      {
        ...rule,
        when: [
          {
            any: [
              { claim: 'tenant', equals: 'a' },
              { claim: 'tenant', glob: 'b*' },
            ],
          },
        ],
      },
    ]);
    policyOf([{ ...rule, account: { claim: 'tenant', map: { acme: 'ACME' } } }]);
    policyOf([rule], { issuers: [{ issuer: ISS, required_claims: [{ claim: 'tenant', present: true }] }] });
    // Not guaranteed: only one branch of any, or under not, or absent.
    for (const when of [
      [
        {
          any: [
            { claim: 'tenant', present: true },
            { claim: 'x', equals: 1 },
          ],
        },
      ],
      [{ not: { claim: 'tenant', present: false } }],
      [{ claim: 'tenant', present: false }],
    ]) {
      configError(() => policyOf([{ ...rule, when }]), 'policy.rules[0]', /no condition of the rule guarantees/);
    }
    // Roles' templates are checked for every rule that grants them.
    configError(
      () =>
        policyOf([{ name: 'r', match: { groups: 'dev' }, account: 'APP', roles: ['tenant-writer'] }], {
          roles: { 'tenant-writer': { pub: { allow: ['t.{{claims.tenant}}'] } } },
        }),
      'policy.rules[0]',
      /role tenant-writer uses claims.tenant/,
    );
  });

  it('refuses roles that are not defined', () => {
    configError(() => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles: ['nope'] }]), 'policy.rules[0].roles[0]', /role "nope" is not defined/);
    configError(
      () =>
        policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles_from: { claim: 'groups', map: { '/a': ['writer', 'nope'] } } }], {
          roles: { writer: perms },
        }),
      'policy.rules[0].roles_from.map./a',
      /role "nope" is not defined/,
    );
  });

  it('refuses role sets whose union nats-server could not express', () => {
    const roles = {
      writer: { pub: { allow: ['orders.>'], deny: ['orders.admin.>'] } },
      admin: { pub: { allow: ['orders.admin.>'] } },
      reader: { sub: { allow: ['orders.>'] } },
      guarded: { pub: { allow: ['orders.>'], deny: ['orders.admin.>'] } },
    };
    configError(
      () => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles: ['writer', 'admin'] }], { roles }),
      'policy.rules[0]',
      /role writer denies pub "orders.admin.>", which role admin allows/,
    );
    // Through an alias table too: any two roles the rule can grant together.
    configError(
      () => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles_from: { claim: 'groups', map: { w: 'writer', a: 'admin' } } }], { roles }),
      'policy.rules[0]',
      /denies pub/,
    );
    // Different directions, or both sets denying it: the union is exact.
    policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles: ['writer', 'reader', 'guarded'] }], { roles });
    // A template deny meets a wildcard allow: maybe the same subject, so refused.
    configError(
      () =>
        policyOf(
          [{ name: 'r', match: { g: 1 }, when: [{ claim: 't', present: true }], account: 'APP', roles: ['x'], permissions: { pub: { allow: ['a.*.b'] } } }],
          {
            roles: { x: { pub: { allow: ['z'], deny: ['a.{{claims.t}}.b'] } } },
          },
        ),
      'policy.rules[0]',
      /role x denies pub "a.\{\{claims.t\}\}.b", which the rule's own permissions allows/,
    );
  });

  it('never places users into the callout or system account', () => {
    for (const account of ['AUTH', 'SYS', '$SYS']) {
      configError(() => policyOf([{ name: 'r', match: { g: 1 }, account, permissions: perms }]), 'policy.rules[0].account', /users can never be placed into/);
    }
    configError(
      () => policyOf([{ name: 'r', account: { claim: 'tenant', map: { acme: 'ACME', evil: 'AUTH' } }, permissions: perms }]),
      'policy.rules[0].account.map.evil',
      /callout account/,
    );
    configError(
      () => policyOf([{ name: 'r', match: { g: 1 }, account: 'OPS', permissions: perms }], { accounts: ['APP'] }),
      'policy.rules[0].account',
      /not listed under accounts/,
    );
    configError(() => policyOf([{ name: 'r', account: { claim: 't', map: {} }, permissions: perms }]), 'policy.rules[0].account.map', /empty account table/);
  });

  it('refuses rules that grant nothing, duplicate names, bad times and networks', () => {
    configError(() => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP' }]), 'policy.rules[0]', /grants nothing/);
    configError(
      () =>
        policyOf([
          { name: 'r', match: { g: 1 }, account: 'APP', permissions: perms },
          { name: 'r', match: { g: 2 }, account: 'APP', permissions: perms },
        ]),
      'policy.rules[1].name',
      /duplicate rule name/,
    );
    const base = { name: 'r', match: { g: 1 }, account: 'APP', permissions: perms };
    configError(() => policyOf([{ ...base, times: [{ start: '8:00', end: '17:00:00' }] }]), 'policy.rules[0].times[0].start', /HH:MM:SS/);
    configError(() => policyOf([{ ...base, times: [{ start: '08:00:00', end: '24:00:00' }] }]), 'policy.rules[0].times[0].end', /HH:MM:SS/);
    configError(
      () => policyOf([{ ...base, times: [{ start: '08:00:00', end: '17:00:00' }], times_location: 'Mars/Olympus' }]),
      'policy.rules[0].times_location',
      /IANA/,
    );
    configError(() => policyOf([{ ...base, times_location: 'UTC' }]), 'policy.rules[0].times_location', /only meaningful with times/);
    configError(() => policyOf([{ ...base, source_networks: ['10.0.0.0/8', '10.0.0.0/99'] }]), 'policy.rules[0].source_networks[1]', /not an IP network/);
    configError(() => policyOf([{ ...base, tags: ['a b'] }]), 'policy.rules[0].tags[0]', /without whitespace/);
    configError(() => policyOf([{ ...base, max_lifetime: '500ms' }]), 'policy.rules[0].max_lifetime', /at least 1s/);
    configError(() => policyOf([base], { roles: { permissions: perms } }), 'policy.roles.permissions', /choose another role name/);
  });

  it('refuses an allow that a deny of the same set covers entirely', () => {
    configError(
      () => policyOf([{ name: 'admins', match: { g: 1 }, account: 'APP', permissions: { sub: { allow: ['>', '_INBOX.{{sub}}.>'], deny: ['_INBOX.>'] } } }]),
      'policy.rules[0]',
      /allows sub "_INBOX.\{\{sub\}\}.>" but also denies all of it \("_INBOX.>"\)/,
    );
    configError(
      () => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', roles: ['x'] }], { roles: { x: { pub: { allow: ['a.b'], deny: ['a.*'] } } } }),
      'policy.rules[0]',
      /role x allows pub "a.b" but also denies all of it/,
    );
    // A deny inside an allow subtracts part of it: fine.
    policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', permissions: { pub: { allow: ['a.>'], deny: ['a.admin.>'] } } }]);
  });

  it('requires an issuer anyone can get tokens from to pin its owner', () => {
    const GITHUB = 'https://token.actions.githubusercontent.com';
    const rule = { name: 'ci', issuer: GITHUB, match: { ref: 'refs/heads/main' }, account: 'APP', permissions: perms };
    configError(() => policyOf([rule], { issuers: [{ issuer: GITHUB }] }), 'issuers[0].required_claims', /anyone on GitHub can mint/);
    configError(
      () => policyOf([rule], { issuers: [{ issuer: GITHUB, required_claims: { ref: 'refs/heads/main' } }] }),
      'issuers[0].required_claims',
      /pin your organization/,
    );
    configError(
      () => policyOf([rule], { issuers: [{ issuer: GITHUB, required_claims: [{ claim: 'repository', glob: '*' }] }] }),
      'issuers[0].required_claims',
      /pin/,
    );
    policyOf([rule], { issuers: [{ issuer: GITHUB, required_claims: { repository_owner_id: '1234' } }] });
    policyOf([rule], { issuers: [{ issuer: GITHUB, required_claims: [{ claim: 'repository', glob: 'acme/*' }] }] });
  });

  it('requires rules to name their issuers when several are configured', () => {
    const issuers = [{ issuer: ISS }, { issuer: CI }];
    configError(
      () => policyOf([{ name: 'r', match: { g: 1 }, account: 'APP', permissions: perms }], { issuers }),
      'policy.rules[0].issuer',
      /required when several issuers/,
    );
    configError(
      () => policyOf([{ name: 'r', issuer: 'https://nope', match: { g: 1 }, account: 'APP', permissions: perms }], { issuers }),
      'policy.rules[0].issuer',
      /not one of the configured issuers/,
    );
  });
});
