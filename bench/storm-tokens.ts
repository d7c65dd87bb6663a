/**
 * Distinct RS256 access tokens for the reconnect storm, one per client, signed on worker threads.
 *
 * An RS256 signature costs ~0.3 ms of CPU here, so 50,000 tokens take ~15 s on one core; the
 * workers split that over the cores. They sign with the local issuer's key (startLocalIssuer
 * `privateKey`), with the same header and claims the issuer's own sign() would produce, and the
 * result is checked (count, kid, signature, expiry) before any client uses it.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { cpus } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { benchClaims } from './fixtures.js';

/** What a worker needs to sign tokens `first` .. `first + count - 1`. */
interface SignJob {
  readonly privateKeyPem: string;
  readonly kid: string;
  readonly issuer: string;
  readonly first: number;
  readonly count: number;
  readonly iat: number;
  readonly exp: number;
}

const b64json = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

function signRange(job: SignJob): string[] {
  // Parsed once: a PEM passed to every sign() call is parsed again each time (slower than signing).
  const key = createPrivateKey(job.privateKeyPem);
  const header = b64json({ alg: 'RS256', typ: 'at+jwt', kid: job.kid });
  const tokens: string[] = [];
  for (let i = job.first; i < job.first + job.count; i++) {
    const input = `${header}.${b64json({ iss: job.issuer, iat: job.iat, ...benchClaims(i), exp: job.exp })}`;
    tokens.push(`${input}.${sign('sha256', Buffer.from(input), key).toString('base64url')}`);
  }
  return tokens;
}

// Worker side: sign the range given and post the tokens back.
if (!isMainThread && (workerData as { stormTokens?: SignJob } | null)?.stormTokens) {
  parentPort!.postMessage(signRange((workerData as { stormTokens: SignJob }).stormTokens));
}

/** A fresh RSA key for the local issuer (`startLocalIssuer({ privateKey })`). */
export function newRsaKey(): KeyObject {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
}

export interface StormTokenOptions {
  readonly privateKey: KeyObject;
  /** The kid the issuer publishes the key under (`LocalIssuer.kid`). */
  readonly kid: string;
  readonly issuer: string;
  readonly count: number;
  readonly lifetimeSeconds: number;
  /** Tokens must stay valid at least this long after signing (checked). */
  readonly minValiditySeconds: number;
}

/** Signs tokens 0 .. count - 1 (claims `benchClaims(i)`) on up to one worker per core. */
export async function signStormTokens(o: StormTokenOptions): Promise<string[]> {
  const iat = Math.floor(Date.now() / 1000);
  const privateKeyPem = o.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const base = { privateKeyPem, kid: o.kid, issuer: o.issuer, iat, exp: iat + o.lifetimeSeconds };
  const workers = Math.max(1, Math.min(cpus().length, Math.ceil(o.count / 1000)));
  const per = Math.ceil(o.count / workers);
  const parts = await Promise.all(
    Array.from({ length: workers }, (_, w) => {
      const first = w * per;
      const job: SignJob = { ...base, first, count: Math.max(0, Math.min(per, o.count - first)) };
      return new Promise<string[]>((resolve, reject) => {
        const worker = new Worker(new URL(import.meta.url), { workerData: { stormTokens: job } });
        worker.once('message', (tokens: string[]) => resolve(tokens));
        worker.once('error', reject);
        worker.once('exit', (code) => reject(new Error(`token worker exited with code ${code} before answering`)));
      });
    }),
  );
  const tokens = parts.flat();
  checkTokens(tokens, o);
  return tokens;
}

/**
 * Refuses a token set a storm could not use: a wrong count, a kid the issuer does not publish, a
 * bad signature (first and last, which come from different workers), too little validity left.
 */
function checkTokens(tokens: readonly string[], o: StormTokenOptions): void {
  if (tokens.length !== o.count) throw new Error(`expected ${o.count} tokens, got ${tokens.length}`);
  const publicKey = createPublicKey(o.privateKey);
  const now = Math.floor(Date.now() / 1000);
  for (const token of [tokens[0]!, tokens.at(-1)!]) {
    const [h, p, s] = token.split('.');
    const header = JSON.parse(Buffer.from(h!, 'base64url').toString()) as { kid?: string };
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as { exp?: number; iss?: string };
    if (header.kid !== o.kid || claims.iss !== o.issuer) throw new Error(`token signed for kid ${header.kid} / iss ${claims.iss}, want ${o.kid} / ${o.issuer}`);
    if (!verify('sha256', Buffer.from(`${h}.${p}`), publicKey, Buffer.from(s!, 'base64url'))) throw new Error('a storm token does not verify');
    if ((claims.exp ?? 0) - now < o.minValiditySeconds) throw new Error(`storm tokens expire in ${(claims.exp ?? 0) - now} s, need ${o.minValiditySeconds} s`);
  }
}
