import { ConfigError } from './errors.js';

/** Parses `90s`, `5m`, `1h`, `250ms`, `2d` or a number of seconds into milliseconds. */
export function parseDuration(value: string | number, path: string): number {
  if (typeof value === 'number') return Math.round(value * 1000);
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim());
  if (!m) throw new ConfigError(path, `invalid duration ${JSON.stringify(value)} (use e.g. 250ms, 30s, 5m, 1h)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Math.round(Number(m[1]) * unit);
}

/** Refuses durations outside [min, max] milliseconds, naming the key. */
export function bounded(ms: number, min: number, max: number, path: string): number {
  const show = (v: number) => (v >= 1000 ? `${v / 1000}s` : `${v}ms`);
  if (ms < min) throw new ConfigError(path, `must be at least ${show(min)}`);
  if (ms > max) throw new ConfigError(path, `must be at most ${show(max)}`);
  return ms;
}
