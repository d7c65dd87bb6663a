import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReplyLane, type LaneConnection } from '../../src/reply-lanes.js';

/** A connection whose PINGs are answered when the test says so. */
function fakeConnection() {
  const sent: string[] = [];
  const pongs: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const conn: LaneConnection = {
    publish: (subject) => void sent.push(subject),
    probe: () => new Promise<void>((resolve, reject) => pongs.push({ resolve, reject })),
  };
  return { conn, sent, pongs };
}

function harness() {
  let now = 0;
  const tasks: (() => void)[] = [];
  const run = async () => {
    while (tasks.length) tasks.shift()!();
    await new Promise((r) => setImmediate(r));
  };
  return { clock: () => now, advance: (ms: number) => (now += ms), schedule: (fn: () => void) => void tasks.push(fn), run };
}

describe('reply lanes', () => {
  it('is not behind while idle, and measures the PING sent after a batch of answers', async () => {
    const h = harness();
    const c = fakeConnection();
    const lane = new ReplyLane(c.conn, '0', h.clock, h.schedule);
    assert.equal(lane.delayMs(h.clock()), 0);
    lane.reserve();
    lane.send('a', new Uint8Array());
    lane.reserve();
    lane.send('b', new Uint8Array());
    await h.run();
    assert.equal(c.pongs.length, 1, 'one PING for the batch');
    h.advance(300);
    assert.equal(lane.delayMs(h.clock()), 300, 'the outstanding PING is 300 ms old');
    c.pongs[0]!.resolve();
    h.advance(100);
    await h.run();
    // Back and nothing sent since: the server has processed everything.
    assert.equal(lane.delayMs(h.clock()), 0);
    lane.reserve();
    lane.send('c', new Uint8Array());
    assert.equal(lane.delayMs(h.clock()), 400, 'the last measured delay applies to answers not yet probed');
  });

  it('keeps one PING in flight while answers keep flowing', async () => {
    const h = harness();
    const c = fakeConnection();
    const lane = new ReplyLane(c.conn, '0', h.clock, h.schedule);
    lane.reserve();
    lane.send('a', new Uint8Array());
    await h.run();
    lane.reserve();
    lane.send('b', new Uint8Array());
    await h.run();
    assert.equal(c.pongs.length, 1);
    h.advance(50);
    c.pongs[0]!.resolve();
    await h.run();
    await h.run();
    assert.equal(c.pongs.length, 2, 'the next PING covers the answer sent meanwhile');
  });

  it('is infinitely behind while disconnected and forgets the old PING on reconnect', async () => {
    const h = harness();
    const c = fakeConnection();
    const lane = new ReplyLane(c.conn, '0', h.clock, h.schedule);
    lane.reserve();
    lane.send('a', new Uint8Array());
    await h.run();
    lane.setConnected(false);
    assert.equal(lane.delayMs(h.clock()), Number.POSITIVE_INFINITY);
    lane.setConnected(true);
    h.advance(5000);
    assert.equal(lane.delayMs(h.clock()), 0);
    c.pongs[0]!.reject(new Error('disconnected'));
    await h.run();
    assert.equal(lane.delayMs(h.clock()), 0);
  });

  it('counts reserved and sent answers until a PONG confirms them; a released reservation frees its place', async () => {
    const h = harness();
    const c = fakeConnection();
    let probed = 0;
    const lane = new ReplyLane(c.conn, 'a', h.clock, h.schedule, () => probed++);
    lane.reserve();
    lane.reserve();
    lane.reserve();
    assert.equal(lane.outstanding, 3, 'reserved before any work is done');
    lane.release();
    assert.equal(lane.outstanding, 2);
    lane.send('r0', new Uint8Array());
    lane.send('r1', new Uint8Array());
    await h.run();
    assert.equal(c.pongs.length, 1);
    assert.equal(lane.outstanding, 2, 'a PING in flight confirms nothing yet');
    c.pongs[0]!.resolve();
    await h.run();
    assert.equal(probed, 1, 'the PONG is reported');
    assert.equal(lane.outstanding, 0);
  });
});
