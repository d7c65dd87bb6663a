import { subjectProblem } from '../subject.js';
import type { AuditEvent } from './event.js';

const PLACEHOLDERS = ['{result}', '{account}'] as const;
/** The `{account}` token of an event without an account, or whose account is no plain token. */
export const NO_ACCOUNT = '_';

/**
 * The subject an audit event is published on: a fixed prefix with `{result}` (allow, deny,
 * shed) and `{account}` as whole tokens, so consumers filter with ordinary wildcards
 * (`oidc-callout.audit.deny`, `oidc-callout.audit.*.APP`).
 */
export class AuditSubject {
  readonly template: string;
  /** The template with each placeholder as `*`: what the service user must be allowed to publish on. */
  readonly pattern: string;
  readonly #tokens: readonly string[];

  private constructor(template: string) {
    this.template = template;
    this.#tokens = template.split('.');
    this.pattern = this.#tokens.map((t) => ((PLACEHOLDERS as readonly string[]).includes(t) ? '*' : t)).join('.');
  }

  /** Throws an Error with the reason when `template` is not a plain subject with whole-token placeholders. */
  static compile(template: string): AuditSubject {
    const tokens = template.split('.');
    for (const t of tokens) {
      if (t.includes('{') || t.includes('}')) {
        if (!(PLACEHOLDERS as readonly string[]).includes(t))
          throw new Error(`${JSON.stringify(t)}: placeholders are {result} and {account}, each a whole token`);
      } else if (t.includes('*') || t.includes('>')) {
        throw new Error('an audit subject has no wildcards');
      }
    }
    const problem = subjectProblem(tokens.map((t) => (t.startsWith('{') ? 'x' : t)).join('.'));
    if (problem) throw new Error(problem);
    if (tokens[0]!.startsWith('$') || tokens[0] === '_INBOX') throw new Error(`${tokens[0]}: a reserved namespace`);
    return new AuditSubject(template);
  }

  render(event: Pick<AuditEvent, 'result' | 'account'>): string {
    return this.#tokens.map((t) => (t === '{result}' ? event.result : t === '{account}' ? accountToken(event.account) : t)).join('.');
  }

  /** Whether `subject` is one this template renders (a permission error names the subject). */
  matches(subject: string): boolean {
    const s = subject.split('.');
    return s.length === this.#tokens.length && this.#tokens.every((t, i) => (t.startsWith('{') ? s[i] !== '' : t === s[i]));
  }
}

function accountToken(account: string | null): string {
  if (!account || subjectProblem(account) !== undefined || account.includes('.') || account.includes('*') || account.includes('>')) return NO_ACCOUNT;
  return account;
}
