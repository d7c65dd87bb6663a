/** NATS subject syntax and the relations between subject patterns that the policy checks. */

/** Why `subject` is not a valid NATS subject (wildcards allowed), or undefined if it is. */
export function subjectProblem(subject: string): string | undefined {
  if (!subject) return 'empty subject';
  if (/[\p{White_Space}\p{Cc}]/u.test(subject)) return 'subjects cannot contain whitespace or control characters';
  const tokens = subject.split('.');
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!t) return 'empty token (leading, trailing or double dot)';
    if (t === '>' && i !== tokens.length - 1) return '">" must be the last token';
    if ((t.includes('*') || t.includes('>')) && t.length > 1) return 'wildcards must be whole tokens';
  }
  return undefined;
}

/** A template token (holds a placeholder, see SubjectTemplate.shape): one plain token, value unknown. */
function isTemplateToken(t: string): boolean {
  return t.includes('{{');
}

/**
 * Whether some subject matches both patterns (`*` one token, `>` one or more). Template tokens
 * may be any plain token, so for them "yes" means "maybe".
 */
export function subjectsIntersect(a: string, b: string): boolean {
  const x = a.split('.');
  const y = b.split('.');
  for (let i = 0; ; i++) {
    const s = x[i];
    const t = y[i];
    if (s === undefined || t === undefined) return s === t;
    if (s === '>' || t === '>') return true;
    if (s === '*' || t === '*' || isTemplateToken(s) || isTemplateToken(t)) continue;
    if (s !== t) return false;
  }
}

/**
 * Whether every subject matching `specific` also matches `general`, for every value of the
 * template tokens (a template token is covered by a wildcard or by the same template token).
 */
export function subjectCovers(general: string, specific: string): boolean {
  const g = general.split('.');
  const s = specific.split('.');
  for (let i = 0; ; i++) {
    const a = g[i];
    const b = s[i];
    if (a === undefined || b === undefined) return a === b;
    if (a === '>') return true;
    if (b === '>') return false;
    if (a === '*') continue;
    if (b === '*' || a !== b) return false;
  }
}
