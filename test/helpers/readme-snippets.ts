/**
 * The README's code blocks, read by the tests that run them: a snippet the README shows is the
 * text a test executes (with only the site-specific values, such as host names and paths,
 * replaced through {@link replaceOnce}, which fails when the README no longer holds them).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './provider-fixtures.js';

/** One fenced block: its info string (`yaml`, `sh`, or '') and its text, unindented. */
export interface Snippet {
  readonly lang: string;
  readonly text: string;
}

/** README from the heading line `heading` (e.g. `### Leaf nodes`) to the next heading of the same or a higher level. */
export function readmeSection(heading: string): string {
  const lines = readFileSync(join(ROOT, 'README.md'), 'utf8').split('\n');
  const level = /^#+/.exec(heading)?.[0].length ?? 0;
  const start = lines.indexOf(heading);
  assert.ok(start >= 0, `README has no heading ${JSON.stringify(heading)}`);
  const rest = lines.slice(start + 1);
  let inFence = false;
  const end = rest.findIndex((line) => {
    if (/^\s*```/.test(line)) inFence = !inFence;
    const m = /^(#+) /.exec(line);
    return !inFence && m !== null && m[1]!.length <= level;
  });
  return (end < 0 ? rest : rest.slice(0, end)).join('\n');
}

/** The fenced code blocks of `markdown`, in order; a block indented in a list loses that indent. */
export function codeBlocks(markdown: string): Snippet[] {
  const blocks: Snippet[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const indent = open[1]!.length;
    const body: string[] = [];
    for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]!); i++) body.push(lines[i]!.slice(indent));
    blocks.push({ lang: open[2]!, text: `${body.join('\n')}\n` });
  }
  return blocks;
}

/** The one block of `blocks` for which `pred` holds. */
export function oneBlock(blocks: readonly Snippet[], what: string, pred: (b: Snippet) => boolean): string {
  const found = blocks.filter(pred);
  assert.equal(found.length, 1, `exactly one README block is ${what}; found ${found.length}`);
  return found[0]!.text;
}

/** `text` with `from` replaced by `to`; fails unless `from` occurs exactly once. */
export function replaceOnce(text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  assert.ok(at >= 0 && text.indexOf(from, at + 1) < 0, `the snippet holds ${JSON.stringify(from)} exactly once:\n${text}`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}
