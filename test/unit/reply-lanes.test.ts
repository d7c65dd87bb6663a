import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReplyLane, ReplyLanes, type LaneConnection } from '../../src/reply-lanes.js';

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
    lane.send('a', new Uint8Array());
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
    lane.send('c', new Uint8Array());
    assert.equal(lane.delayMs(h.clock()), 400, 'the last measured delay applies to answers not yet probed');
  });

  it('keeps one PING in flight while answers keep flowing', async () => {
    const h = harness();
    const c = fakeConnection();
    const lane = new ReplyLane(c.conn, '0', h.clock, h.schedule);
    lane.send('a', new Uint8Array());
    await h.run();
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

  it('picks the lane least behind, round-robin among equals, none when all are down', async () => {
    const h = harness();
    const [a, b] = [fakeConnection(), fakeConnection()];
    const lanes = new ReplyLanes([new ReplyLane(a.conn, 'a', h.clock, h.schedule), new ReplyLane(b.conn, 'b', h.clock, h.schedule)]);
    const names = [0, 1, 2, 3].map(() => lanes.pick(h.clock())!.lane.name);
    assert.deepEqual(names.sort(), ['a', 'a', 'b', 'b']);
    lanes.lanes[0]!.send('x', new Uint8Array());
    await h.run();
    h.advance(200);
    assert.equal(lanes.pick(h.clock())!.lane.name, 'b');
    assert.equal(lanes.pick(h.clock())!.lane.name, 'b');
    for (const l of lanes.lanes) l.setConnected(false);
    assert.equal(lanes.pick(h.clock()), undefined);
  });

  it('holds a lane whose window of unconfirmed answers is full until its PING comes back', async () => {
    const h = harness();
    const [a, b] = [fakeConnection(), fakeConnection()];
    let probed = 0;
    const lane = (c: ReturnType<typeof fakeConnection>, name: string) => new ReplyLane(c.conn, name, h.clock, h.schedule, () => probed++);
    const lanes = new ReplyLanes([lane(a, 'a'), lane(b, 'b')], 2);
    for (let i = 0; i < 4; i++) lanes.pick(h.clock())!.lane.send(`r${i}`, new Uint8Array());
    assert.deepEqual([lanes.lanes[0]!.outstanding, lanes.lanes[1]!.outstanding], [2, 2]);
    assert.equal(lanes.pick(h.clock()), undefined, 'both windows full');
    await h.run();
    assert.equal(lanes.lanes[0]!.outstanding, 2, 'a PING in flight does not confirm anything yet');
    a.pongs[0]!.resolve();
    await h.run();
    assert.equal(probed, 1, 'the PONG is reported');
    assert.equal(lanes.lanes[0]!.outstanding, 0);
    assert.equal(lanes.pick(h.clock())!.lane.name, 'a');
  });
});
