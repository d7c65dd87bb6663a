import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { countsOnly, type MetricSet, mergeCounts } from '../../src/metric-sets.js';

/** A worker's metrics: a labelled counter, a histogram and a gauge, as a worker reports them. */
async function workerSet(allow: number, deny: number, latencies: number[], inFlight: number): Promise<MetricSet> {
  const registry = new Registry();
  const requests = new Counter({ name: 'requests_total', help: 'h', labelNames: ['result'], registers: [registry] });
  if (allow) requests.inc({ result: 'allow' }, allow);
  if (deny) requests.inc({ result: 'deny' }, deny);
  const latency = new Histogram({ name: 'latency_seconds', help: 'h', buckets: [0.01, 0.1], registers: [registry] });
  for (const l of latencies) latency.observe(l);
  new Gauge({ name: 'in_flight', help: 'h', registers: [registry] }).set(inFlight);
  return (await registry.getMetricsAsJSON()) as MetricSet;
}

describe('metric sets', () => {
  it('keeps counters and histograms only', async () => {
    const names = countsOnly(await workerSet(1, 0, [0.05], 7)).map((m) => m.name);
    assert.deepEqual(names.sort(), ['latency_seconds', 'requests_total']);
  });

  it('adds two sets series by series, as prom-client adds the sets of live workers', async () => {
    const a = countsOnly(await workerSet(3, 0, [0.005, 0.05], 1));
    const b = countsOnly(await workerSet(4, 2, [0.5], 2));
    const ours = await AggregatorRegistry.aggregate([mergeCounts(a, b)]).metrics();
    const theirs = await AggregatorRegistry.aggregate([a, b]).metrics();
    assert.equal(ours, theirs);
    assert.match(ours, /requests_total\{result="allow"\} 7/);
    assert.match(ours, /requests_total\{result="deny"\} 2/);
    assert.match(ours, /latency_seconds_count 3/);
    assert.match(ours, /latency_seconds_bucket\{le="0.01"\} 1/);
    // Inputs are left as they were (a set may still be summed again).
    assert.match(await AggregatorRegistry.aggregate([a]).metrics(), /requests_total\{result="allow"\} 3/);
  });

  it("adds two sets as prom-client would for a counter that is not summed (the replica's reloads are the largest worker's)", async () => {
    // Each worker counts every reload of the replica: the replica's count is the largest one,
    // whichever sets of workers that died are merged (a crash loop merges the oldest).
    const reloads = async (n: number): Promise<MetricSet> => {
      const registry = new Registry();
      new Counter({ name: 'reloads_total', help: 'h', labelNames: ['result'], aggregator: 'max', registers: [registry] }).inc({ result: 'ok' }, n);
      return countsOnly((await registry.getMetricsAsJSON()) as MetricSet);
    };
    const [a, b, c] = [await reloads(5), await reloads(5), await reloads(6)];
    const theirs = await AggregatorRegistry.aggregate([a, b, c]).metrics();
    assert.match(theirs, /reloads_total\{result="ok"\} 6/);
    assert.equal(await AggregatorRegistry.aggregate([mergeCounts(a, b), c]).metrics(), theirs);
    assert.equal(await AggregatorRegistry.aggregate([mergeCounts(mergeCounts(a, b), c)]).metrics(), theirs);
  });
});
