/**
 * Summarizes a V8 .cpuprofile (from `npm run bench -- --only e2e --profile DIR`): self time by
 * function and by area (our src/ modules, jose, nats.js, tweetnacl, GC, idle...).
 *
 *   node dist/bench/profile-summary.js DIR/CPU.*.cpuprofile [--top 30]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function area(url: string, fn: string): string {
  if (fn === '(idle)') return 'idle';
  if (fn === '(garbage collector)') return 'GC';
  if (fn === '(program)') return 'V8/native (program)';
  if (fn === '(root)') return 'root';
  const m = /\/dist\/src\/([^/]+)\.js/.exec(url);
  if (m) return `src/${m[1]}`;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  if (!url) return 'native/builtin';
  return url;
}

function main(): void {
  const { values, positionals } = parseArgs({ options: { top: { type: 'string' } }, allowPositionals: true });
  const top = Number(values.top ?? 25);
  for (const file of positionals) {
    const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map<number, number>();
    let total = 0;
    for (let i = 0; i < p.samples.length; i++) {
      const dt = p.timeDeltas[i] ?? 0;
      self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt);
      total += dt;
    }
    const byFn = new Map<string, number>();
    const byArea = new Map<string, number>();
    for (const [id, us] of self) {
      const n = byId.get(id)!;
      const f = n.callFrame;
      const a = area(f.url, f.functionName);
      const key = `${f.functionName || '(anonymous)'}  ${a}${f.url ? `:${f.lineNumber + 1}` : ''}`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
      byArea.set(a, (byArea.get(a) ?? 0) + us);
    }
    const idle = byArea.get('idle') ?? 0;
    const busy = total - idle;
    const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)} %`;
    process.stdout.write(`\n${file}\n${(total / 1e6).toFixed(2)} s profiled, ${(busy / 1e6).toFixed(2)} s on the main thread (not idle); shares of that:\n`);
    process.stdout.write('\nby area\n');
    for (const [a, us] of [...byArea]
      .filter(([a]) => a !== 'idle')
      .sort((x, y) => y[1] - x[1])
      .slice(0, top))
      process.stdout.write(`  ${pct(us)}  ${a}\n`);
    process.stdout.write('\nby function (self time)\n');
    for (const [f, us] of [...byFn]
      .filter(([f]) => !f.startsWith('(idle)'))
      .sort((x, y) => y[1] - x[1])
      .slice(0, top))
      process.stdout.write(`  ${pct(us)}  ${f}\n`);
  }
}

main();
