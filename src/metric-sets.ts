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

/**
 * Two sets of counters and histograms combined into one, series by series (same name and
 * labels), the way prom-client's aggregation would combine them: added up, or by the metric's
 * own aggregator. The replica's reloads are counted by every worker and taken as the largest
 * (`aggregator: 'max'`): added up, two sets of workers that died counted them twice.
 */
export function mergeCounts(a: MetricSet, b: MetricSet): MetricSet {
  const out = new Map<string, MetricSet[number]>();
  for (const m of [...a, ...b]) {
    const known = out.get(m.name);
    if (!known) {
      out.set(m.name, { ...m, values: m.values.map((v) => ({ ...v })) });
      continue;
    }
    const combine = combiner((known as { aggregator?: string }).aggregator);
    for (const v of m.values) {
      const key = seriesKey(v);
      const same = known.values.find((k) => seriesKey(k) === key) as { value: number } | undefined;
      if (same) same.value = combine(same.value, v.value);
      else known.values.push({ ...v });
    }
  }
  return [...out.values()] as MetricSet;
}

/** How prom-client's aggregators combine two values of one series ('sum' unless said otherwise). */
function combiner(aggregator: string | undefined): (x: number, y: number) => number {
  switch (aggregator) {
    case 'max':
      return Math.max;
    case 'min':
      return Math.min;
    case 'first':
      return (x) => x;
    default:
      return (x, y) => x + y;
  }
}

function seriesKey(v: { labels: object; metricName?: string }): string {
  return `${v.metricName ?? ''}${JSON.stringify(Object.entries(v.labels).sort(([x], [y]) => (x < y ? -1 : 1)))}`;
}
