/**
 * Sets of metrics as prom-client's getMetricsAsJSON() gives them, added up outside prom-client:
 * the main thread keeps the counts of workers that died (worker-pool.ts).
 */
import type { Registry } from 'prom-client';

/** One worker's metrics. */
export type MetricSet = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** Counters and histograms only: a gauge of a worker that died says nothing about the replica now. */
export function countsOnly(set: MetricSet): MetricSet {
  // prom-client's typings declare a numeric enum; at run time the type is the exposition name.
  return set.filter((m) => {
    const kind = m.type as unknown as string;
    return kind === 'counter' || kind === 'histogram';
  });
}

/** Two sets of counters and histograms added up, series by series (same name and labels). */
export function sumOf(a: MetricSet, b: MetricSet): MetricSet {
  const out = new Map<string, MetricSet[number]>();
  for (const m of [...a, ...b]) {
    const known = out.get(m.name);
    if (!known) {
      out.set(m.name, { ...m, values: m.values.map((v) => ({ ...v })) });
      continue;
    }
    for (const v of m.values) {
      const key = seriesKey(v);
      const same = known.values.find((k) => seriesKey(k) === key);
      if (same) (same as { value: number }).value += v.value;
      else known.values.push({ ...v });
    }
  }
  return [...out.values()] as MetricSet;
}

function seriesKey(v: { labels: object; metricName?: string }): string {
  return `${v.metricName ?? ''}${JSON.stringify(Object.entries(v.labels).sort(([x], [y]) => (x < y ? -1 : 1)))}`;
}
