/**
 * Summarizes a V8 .cpuprofile (from `npm run bench -- --only e2e --profile DIR`): self time by
 * function and by area (our src/ modules, jose, nats.js, tweetnacl, GC, idle...), and by stage
 * of an authorization (the mandatory crypto apart from what surrounds it); with `--per N`, the
 * stages in µs per authorization (N: the authorizations the profiled process answered).
 *
 *   node dist/bench/profile-summary.js DIR/CPU.*.cpuprofile [--top 30] [--per 6000]
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

/**
 * The stages of an authorization, each recognized by a function on the stack. A sample belongs
 * to the innermost one on its stack, so the crypto inside a JWT's encoding counts as crypto.
 */
const STAGES: readonly { readonly stage: string; readonly fn: RegExp; readonly where?: RegExp }[] = [
  { stage: 'crypto: Ed25519 verify (request)', fn: /^(crypto_sign_verify_detached|verifySignature)$/ },
  { stage: 'crypto: Ed25519 sign (2 JWTs)', fn: /^crypto_sign_detached$|^sign$/, where: /sodium-native|src\/nkey/ },
  { stage: 'crypto: xkey box open + seal', fn: /^crypto_secretbox_(open_)?easy$|^(open|seal)$/, where: /sodium-native|src\/xkey|tweetnacl/ },
  { stage: 'crypto: OIDC token signature (misses)', fn: /^(verifyJws|verifyOneShot)$/ },
  {
    stage: 'OIDC token: parse, claims, keys (misses)',
    fn: /^(verify|parseSegment|#verifySignature|#anyKeyVerifies|#verifyAndDecide)$/,
    where: /src\/(token|service)/,
  },
  { stage: 'user JWT: claims, JSON, hash, base64', fn: /^signUserJwt$/ },
  { stage: 'response JWT: JSON, hash, base64', fn: /^signResponse$/ },
  { stage: 'request: open, parse, deadline', fn: /^admit$/ },
  { stage: 'request: claim checks', fn: /^verify$/, where: /src\/request/ },
  { stage: 'decision log, metrics, audit', fn: /^#decided$/ },
  { stage: 'decision: cache, policy, revocations', fn: /^#authorize$/ },
  { stage: 'NATS client: socket writes', fn: /^(flushPending|writeBuffer|writeGeneric)$/ },
  { stage: 'NATS client: reading and parsing', fn: /^(parse|processMsg|push)$/, where: /nats-core/ },
  {
    stage: 'scheduler: queues, reply lanes',
    fn: /^(#slice|#serveNext|#serve|#receive|#probe|send|delayMs)$/,
    where: /src\/(runner|reply-lanes|request-queue)/,
  },
  { stage: 'start-up (modules, configuration, keys)', fn: /^(evaluate|run|compileSourceTextModule|loadAndTranslate|main|runService|warmIssuers|load)$/ },
  { stage: 'GC', fn: /^\(garbage collector\)$/ },
];

function stageOf(id: number, byId: Map<number, ProfileNode>, parent: Map<number, number>): string {
  for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
    const f = byId.get(at)!.callFrame;
    const found = STAGES.find((s) => s.fn.test(f.functionName) && (!s.where || s.where.test(f.url)));
    if (found) return found.stage;
  }
  return 'other (event loop, timers, sockets read)';
}

function main(): void {
  const usage = 'usage: node dist/bench/profile-summary.js FILE.cpuprofile... [--top N] [--per AUTHORIZATIONS]\n';
  let parsed: ReturnType<
    typeof parseArgs<{ options: { top: { type: 'string' }; per: { type: 'string' }; help: { type: 'boolean'; short: 'h' } }; allowPositionals: true }>
  >;
  try {
    parsed = parseArgs({ options: { top: { type: 'string' }, per: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}`);
    process.exit(2);
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    (values.help ? process.stdout : process.stderr).write(usage);
    process.exit(values.help ? 0 : 2);
  }
  const count = (name: string, v: string | undefined, fallback?: number): number | undefined => {
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) {
      process.stderr.write(`--${name} must be a positive whole number, got ${JSON.stringify(v)}\n${usage}`);
      process.exit(2);
    }
    return n;
  };
  const top = count('top', values.top, 25)!;
  // The profiled process's authorizations, warm-up included: its start-up shows as a stage of its own.
  const per = count('per', values.per);
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
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const byStage = new Map<string, number>();
    const byFn = new Map<string, number>();
    const byArea = new Map<string, number>();
    for (const [id, us] of self) {
      const n = byId.get(id)!;
      const f = n.callFrame;
      const a = area(f.url, f.functionName);
      const key = `${f.functionName || '(anonymous)'}  ${a}${f.url ? `:${f.lineNumber + 1}` : ''}`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
      byArea.set(a, (byArea.get(a) ?? 0) + us);
      if (a !== 'idle') {
        const stage = stageOf(id, byId, parent);
        byStage.set(stage, (byStage.get(stage) ?? 0) + us);
      }
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
    process.stdout.write(`\nby stage of an authorization${per ? ` (µs per authorization, ${per} authorizations)` : ''}\n`);
    for (const [stage, us] of [...byStage].sort((x, y) => y[1] - x[1]))
      process.stdout.write(`  ${pct(us)}  ${per ? `${(us / per).toFixed(1).padStart(7)} µs  ` : ''}${stage}\n`);
    process.stdout.write('\nby function (self time)\n');
    for (const [f, us] of [...byFn]
      .filter(([f]) => !f.startsWith('(idle)'))
      .sort((x, y) => y[1] - x[1])
      .slice(0, top))
      process.stdout.write(`  ${pct(us)}  ${f}\n`);
  }
}

main();
