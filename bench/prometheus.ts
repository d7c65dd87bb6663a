/**
 * Reads the service's Prometheus `/metrics`: every sample as `name{labels}` -> value, and the
 * difference of two scrapes, so a benchmark phase can report what the service counted in it.
 */
import { request } from 'node:http';

/** Samples of one scrape, keyed by the series exactly as exposed, e.g. `x_total{result="allow",code=""}`. */
export type MetricSamples = ReadonlyMap<string, number>;

/** Parses the Prometheus text format (comments skipped; timestamps, if any, ignored). */
export function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    // The value follows the series; label values may contain spaces, so split after the '}'.
    const close = line.lastIndexOf('}');
    const rest = (close >= 0 ? line.slice(close + 1) : line.slice(line.indexOf(' '))).trim().split(/\s+/);
    const series = close >= 0 ? line.slice(0, close + 1) : line.slice(0, line.indexOf(' '));
    const value = Number(rest[0]);
    if (series && Number.isFinite(value)) samples.set(series, value);
  }
  return samples;
}

/**
 * Scrapes `http://127.0.0.1:<port>/metrics`. Undefined when the service does not answer within
 * `timeoutMs`: in an overload its event loop may be that far behind, and the benchmark must go on.
 */
export function scrapeMetrics(port: number, timeoutMs = 15_000): Promise<MetricSamples | undefined> {
  return new Promise((resolve) => {
    // A fresh connection (no keep-alive agent) so a scrape never waits behind an earlier one.
    const req = request({ host: '127.0.0.1', port, path: '/metrics', agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 ? parseMetrics(body) : undefined));
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

/** `after - before` per series (a series absent before counts from 0); undefined if a scrape failed. */
export function metricsDelta(before: MetricSamples | undefined, after: MetricSamples | undefined): Map<string, number> | undefined {
  if (!before || !after) return undefined;
  const delta = new Map<string, number>();
  for (const [series, value] of after) delta.set(series, value - (before.get(series) ?? 0));
  return delta;
}

/** Sum of the series of metric `name` whose labels include every `label="value"` pair given. */
export function sumSeries(samples: ReadonlyMap<string, number>, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  let sum = 0;
  for (const [series, value] of samples) {
    const brace = series.indexOf('{');
    if ((brace < 0 ? series : series.slice(0, brace)) !== name) continue;
    if (wanted.every((pair) => series.includes(`{${pair}`) || series.includes(`,${pair}`))) sum += value;
  }
  return sum;
}
