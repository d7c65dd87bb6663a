/**
 * The service on a 3-node nats-server cluster: three nodes routed to each other on 127.0.0.1,
 * each with the same auth_callout block (issuer key, xkey), and three replicas of the service as
 * real processes (`run --config FILE`), each connected to a node of its own, in one queue group.
 *
 * What it shows: clients of every node are authorized; a node without a local replica has its
 * requests answered by the replicas of the other nodes; and under a bounded stream of connects to
 * every node (each client with a retry budget, like a real one), these faults cost no client its
 * connection:
 *   a) a node stopped: clients of the surviving nodes are never refused; the replica connections
 *      that were on it move to surviving nodes listed in the replica's configuration and serve;
 *   b) nats-server restarted under a replica: it reconnects, resubscribes, /readyz 503 then 200;
 *   c) a replica stopped with SIGTERM: it drains, nothing is lost;
 *   d) a replica killed with SIGKILL: at most the requests it held fail, and those clients
 *      succeed on retry.
 * The assertions are invariants (no refusal where none may happen, every client authorized
 * within its retries), never timings. The counts per fault are printed as test diagnostics.
 *
 * The cluster runs with `no_advertise`: nats-server then does not gossip the other nodes' client
 * URLs, so a replica can only go to the servers its configuration lists (with gossip, nats.js
 * would add every node to its pool and a single-URL replica would fail over as well, which makes
 * "restarted under a replica" race with "moved to another node").
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { calloutServerConfig, seedOf, watchErrors, within } from '../helpers/callout-fixture.js';
import { startCalloutProcess, type CalloutProcess, type ServiceLogRecord } from '../helpers/callout-process.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { connections, startNatsCluster, type ClusterNode, type NatsCluster } from '../helpers/nats-cluster.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';

const AUTH_SUBJECT = '$SYS.REQ.USER.AUTH';
/** authorization.timeout of every node: how long a client waits for an unanswered callout. */
const AUTH_TIMEOUT_S = 2;
/** nats.connections of every replica (the default). */
const LANES = 8;
/** The load during each fault: connects per second, for how long, and when the fault strikes. */
const RATE = 20;
const STREAM_MS = 3_000;
const FAULT_AT_MS = 1_000;
/** A client's retry budget: attempts, each on the next node (a real client has the server list). */
const ATTEMPTS = 5;

const binaries = await newestAndOldest();
const now = (): number => Math.floor(Date.now() / 1000);

/** What a stream of connects saw. Refusals ("Authorization Violation") and other failures per node. */
interface StreamCounts {
  clients: number;
  authorizedFirstTry: number;
  authorizedAfterRetry: number;
  failed: number;
  attempts: number;
  refused: Record<string, number>;
  unreachable: Record<string, number>;
  /** A few of the other failures' messages, for assertion messages. */
  samples: string[];
}

const isRefusal = (err: unknown): boolean => /authorization violation/i.test(String((err as Error)?.message ?? err));

/** The replica a connection belongs to, by its name (`r1`, `r1#2`, ...). */
const replicaOf = (connectionName: string | undefined): string => (connectionName ?? '').split('#')[0]!;

for (const { version, path } of binaries) {
  describe(`3-node cluster, nats-server ${version}, three replicas`, () => {
    let idp: LocalIssuer;
    let cluster: NatsCluster;
    let dir: string;
    const password = randomBytes(12).toString('hex');
    /** The current replica of each node (index = node index); undefined while stopped. */
    const replicas: (CalloutProcess | undefined)[] = [];
    /** Every replica process ever started, for after(). */
    const started: CalloutProcess[] = [];
    let clientSeq = 0;

    const nodes = (): readonly ClusterNode[] => cluster.nodes;
    const replica = (i: number): CalloutProcess => {
      const r = replicas[i];
      if (!r) throw new Error(`replica r${i + 1} is not running`);
      return r;
    };

    /** Writes the configuration of replica `r<i+1>` with these servers (mode 0600) and returns its path. */
    function replicaConfig(i: number, servers: readonly string[]): string {
      const file = join(dir, `r${i + 1}.yaml`);
      const yaml = `nats:
  servers: [${servers.join(', ')}]
  name: r${i + 1}
  connections: ${LANES}
  user: auth
  password: { file: nats-password }
callout:
  account: AUTH
  issuer_seed: { file: issuer.nk }
  xkey_seed: { file: xkey.nk }
issuers:
  - issuer: ${idp.issuer}
    audiences: [nats]
    allow_insecure_http: true
policy:
  rules:
    - name: dev
      match: { groups: dev }
      account: APP
      permissions:
        pub: { allow: ["app.>"] }
        sub: { allow: ["app.>", "_INBOX.{{sub}}.>"] }
http:
  listen: 127.0.0.1:0
`;
      writeFileSync(file, yaml, { mode: 0o600 });
      return file;
    }

    /** Starts replica `r<i+1>` with these servers (default: its own node only). */
    async function startReplica(i: number, servers: readonly string[] = [nodes()[i]!.url]): Promise<CalloutProcess> {
      const r = await startCalloutProcess(replicaConfig(i, servers), { name: `r${i + 1}`, monitoring: true });
      started.push(r);
      replicas[i] = r;
      return r;
    }

    async function stopReplica(i: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
      const r = replica(i);
      replicas[i] = undefined;
      return r.stop(signal);
    }

    /** Where each replica's connections subscribed to the callout subject are: replica -> node names (one per connection). */
    async function lanesByReplica(): Promise<Map<string, string[]>> {
      const out = new Map<string, string[]>();
      for (const node of nodes().filter((n) => n.running)) {
        for (const c of await connections(node)) {
          if (!c.subscriptions_list?.includes(AUTH_SUBJECT)) continue;
          const name = replicaOf(c.name);
          out.set(name, [...(out.get(name) ?? []), node.name]);
        }
      }
      return out;
    }

    /** Polls until `pred` holds for the lanes; rejects with the last picture after `timeoutMs`. */
    async function waitForLanes(pred: (lanes: Map<string, string[]>) => boolean, what: string, timeoutMs = 10_000): Promise<Map<string, string[]>> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const lanes = await lanesByReplica();
        if (pred(lanes)) return lanes;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; subscribed connections: ${JSON.stringify(Object.fromEntries(lanes))}`);
        await sleep(50);
      }
    }

    /** Polls /readyz until it answers `status`; returns the answer. */
    async function waitForReadyz(r: CalloutProcess, status: number, timeoutMs = 10_000): Promise<{ status: number; problems: string[] }> {
      const deadline = Date.now() + timeoutMs;
      let last: { status: number; problems: string[] } | undefined;
      for (;;) {
        last = await r.readyz();
        if (last?.status === status) return last;
        if (Date.now() > deadline) throw new Error(`${r.name} /readyz did not answer ${status} within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
        await sleep(20);
      }
    }

    const token = (sub: string): Promise<string> => idp.sign({ sub, aud: 'nats', exp: now() + 600, groups: ['dev'] });

    /** A client with a token connecting to one node only, no reconnects. */
    function connectTo(node: ClusterNode, tok: string, name: string): Promise<NatsConnection> {
      return connect({ servers: node.url, token: tok, name, reconnect: false, timeout: (AUTH_TIMEOUT_S + 4) * 1000 });
    }

    /** The authorization decisions a replica logged from record `from` on. */
    const decisions = (r: CalloutProcess, from = 0): ServiceLogRecord[] =>
      r
        .records()
        .slice(from)
        .filter((x) => x.msg === 'authorization');

    /**
     * Connects RATE clients a second for STREAM_MS, to the nodes in turn, and runs `fault` at
     * FAULT_AT_MS. Each client connects, publishes where its rule allows, flushes and closes; a
     * failed attempt is retried on the next node (up to ATTEMPTS), after a short pause.
     */
    async function stream(fault: () => Promise<void>): Promise<StreamCounts> {
      const names = nodes().map((n) => n.name);
      const counts: StreamCounts = {
        clients: 0,
        authorizedFirstTry: 0,
        authorizedAfterRetry: 0,
        failed: 0,
        attempts: 0,
        refused: Object.fromEntries(names.map((n) => [n, 0])),
        unreachable: Object.fromEntries(names.map((n) => [n, 0])),
        samples: [],
      };
      const client = async (home: number): Promise<void> => {
        const id = `client-${++clientSeq}`;
        const tok = await token(id);
        for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
          const node = nodes()[(home + attempt) % nodes().length]!;
          counts.attempts++;
          try {
            const nc = await connectTo(node, tok, id);
            try {
              nc.publish(`app.${node.name}.${id}`, 'hello');
              await nc.flush();
            } finally {
              await nc.close().catch(() => undefined);
            }
            if (attempt === 0) counts.authorizedFirstTry++;
            else counts.authorizedAfterRetry++;
            return;
          } catch (err) {
            if (isRefusal(err)) counts.refused[node.name]!++;
            else {
              counts.unreachable[node.name]!++;
              if (counts.samples.length < 5) counts.samples.push(`${node.name}: ${String((err as Error)?.message ?? err)}`);
            }
            await sleep(100 * (attempt + 1));
          }
        }
        counts.failed++;
      };

      const clients: Promise<void>[] = [];
      let faultRun: Promise<unknown> | undefined;
      const t0 = performance.now();
      const total = Math.round((STREAM_MS / 1000) * RATE);
      for (let i = 0; i < total; i++) {
        const due = t0 + (i * 1000) / RATE;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        // Started here, awaited below: its rejection is kept, not left unhandled meanwhile.
        if (!faultRun && performance.now() - t0 >= FAULT_AT_MS)
          faultRun = fault().then(
            () => undefined,
            (e: unknown) => ({ faultError: e }),
          );
        counts.clients++;
        clients.push(client(i % nodes().length));
      }
      const faultResult = await within(faultRun ?? fault(), 30_000, 'the fault to be injected and recovered from');
      if (faultResult && typeof faultResult === 'object' && 'faultError' in faultResult) throw faultResult.faultError;
      // Each client tries at most ATTEMPTS times, each bounded by its connect timeout.
      await within(Promise.all(clients), ATTEMPTS * (AUTH_TIMEOUT_S + 5) * 1000, 'the clients of the stream to finish');
      return counts;
    }

    const describeCounts = (label: string, c: StreamCounts): string =>
      `${label}: ${c.clients} clients (${c.attempts} attempts): ${c.authorizedFirstTry} authorized at once, ${c.authorizedAfterRetry} after a retry, ` +
      `${c.failed} never; refused ${JSON.stringify(c.refused)}; unreachable or lost ${JSON.stringify(c.unreachable)}`;

    const sumOver = (record: Record<string, number>, names: readonly string[]): number => names.reduce((s, n) => s + (record[n] ?? 0), 0);

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'oc-cluster-'));
      idp = await startLocalIssuer();
      const issuerKey = createAccount();
      const xkey = createCurve();
      writeFileSync(join(dir, 'issuer.nk'), `${seedOf(issuerKey)}\n`, { mode: 0o600 });
      writeFileSync(join(dir, 'xkey.nk'), `${seedOf(xkey)}\n`, { mode: 0o600 });
      writeFileSync(join(dir, 'nats-password'), `${password}\n`, { mode: 0o600 });
      cluster = await startNatsCluster({
        bin: path,
        config: calloutServerConfig({ issuer: issuerKey.getPublicKey(), xkey: xkey.getPublicKey(), password, authTimeoutSeconds: AUTH_TIMEOUT_S }),
      });
      await Promise.all(nodes().map((_, i) => startReplica(i)));
      // Every replica's connections are subscribed on its own node.
      await waitForLanes(
        (l) => [1, 2, 3].every((k) => l.get(`r${k}`)?.length === LANES && l.get(`r${k}`)!.every((n) => n === `n${k}`)),
        'every replica subscribed',
      );
    });

    after(async () => {
      // Every replica ever started, by its pid; then the nodes (by pid, in their helper).
      for (const r of started) {
        if (!r.running) continue;
        try {
          process.kill(r.pid, 'SIGKILL');
        } catch {
          // Gone meanwhile.
        }
      }
      await Promise.all(started.map((r) => within(r.exited, 5_000, `${r.name} (pid ${r.pid}) to exit`).catch(() => undefined)));
      await cluster?.stop();
      await idp?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('authorizes clients on every node, with the permissions of their rule, across the routes', { timeout: 30_000 }, async () => {
      const marks = replicas.map((r) => r!.records().length);
      const [n1] = nodes();
      const listener = await connectTo(n1!, await token('listener'), 'listener');
      try {
        const got = new Set<string>();
        const sub = listener.subscribe('app.>', {
          callback: (_e, m) => {
            got.add(m.subject);
          },
        });
        await listener.flush();
        for (const node of nodes()) {
          const nc = await connectTo(node, await token(`user-${node.name}`), `user-${node.name}`);
          try {
            const errors = watchErrors(nc);
            // The subscription's interest reaches the other nodes over the routes shortly after.
            const subject = `app.from.${node.name}`;
            for (let i = 0; i < 100 && !got.has(subject); i++) {
              nc.publish(subject, 'x');
              await nc.flush();
              await sleep(20);
            }
            assert.ok(got.has(subject), `a message published on ${node.name} reached the subscriber on n1`);
            // Outside the rule's permissions: the server refuses the publish.
            nc.publish('orders.new', 'x');
            await errors.waitFor((e) => /permissions violation/i.test(e.message));
          } finally {
            await nc.close();
          }
        }
        sub.unsubscribe();
      } finally {
        await listener.close();
      }
      // While every node has its replica, each node's requests went to its own (local) replica.
      for (const [i, r] of replicas.entries()) {
        const mine = decisions(r!, marks[i]);
        assert.ok(mine.length > 0, `${r!.name} answered`);
        assert.deepEqual(
          mine.filter((d) => d['server'] !== `n${i + 1}`).map((d) => d['server']),
          [],
          `${r!.name} answered only requests of n${i + 1}`,
        );
        assert.ok(
          mine.every((d) => d['result'] === 'allow'),
          JSON.stringify(mine),
        );
      }
    });

    it("answers the clients of a node whose replica is gone from the other nodes' replicas", { timeout: 30_000 }, async () => {
      const exit = await stopReplica(0);
      assert.deepEqual(exit, { code: 0, signal: null });
      await waitForLanes((l) => !l.has('r1'), 'r1 to be gone');
      const others = [replica(1), replica(2)];
      const marks = others.map((r) => r.records().length);
      const n1 = nodes()[0]!;
      const clients = 6;
      for (let i = 0; i < clients; i++) {
        const nc = await connectTo(n1, await token(`orphan-${i}`), `orphan-${i}`);
        nc.publish('app.orphan', 'x');
        await nc.flush();
        await nc.close();
      }
      const answered = others.flatMap((r, k) => decisions(r, marks[k]));
      assert.equal(answered.length, clients, 'every connect was answered by r2 or r3');
      assert.ok(
        answered.every((d) => d['server'] === 'n1' && d['result'] === 'allow'),
        JSON.stringify(answered),
      );
      await startReplica(0);
      await waitForLanes((l) => l.get('r1')?.length === LANES, 'r1 back');
    });

    it('fault c: a replica stopped with SIGTERM drains: no request is lost', { timeout: 60_000 }, async (t: TestContext) => {
      const victim = replica(0);
      let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      const counts = await stream(async () => {
        exit = await stopReplica(0, 'SIGTERM');
      });
      const stopping = victim.records().find((r) => r.msg === 'stopping');
      t.diagnostic(describeCounts('c) replica r1 SIGTERM', counts));
      t.diagnostic(`c) r1 had ${String(stopping?.['in_flight'])} request(s) in flight when it stopped; answered ${decisions(victim).length} in all`);
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(counts.failed, 0, describeCounts('c', counts));
      assert.equal(counts.authorizedFirstTry, counts.clients, `every client in at once: ${describeCounts('c', counts)}; ${counts.samples.join('; ')}`);
      assert.equal(sumOver(counts.refused, ['n1', 'n2', 'n3']), 0);
      // Nothing it had received was dropped: every decision it logged is an answer.
      assert.deepEqual(
        decisions(victim).filter((d) => d['result'] !== 'allow'),
        [],
      );
      assert.ok(!victim.records().some((r) => r.msg === 'stopped with requests still waiting'));
      await startReplica(0);
      await waitForLanes((l) => l.get('r1')?.length === LANES, 'r1 back');
    });

    it('fault d: a replica killed with SIGKILL: only the requests it held fail, and those clients succeed on retry', {
      timeout: 60_000,
    }, async (t: TestContext) => {
      const victim = replica(1);
      let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      const counts = await stream(async () => {
        exit = await stopReplica(1, 'SIGKILL');
      });
      t.diagnostic(describeCounts('d) replica r2 SIGKILL', counts));
      assert.deepEqual(exit, { code: null, signal: 'SIGKILL' });
      assert.equal(counts.failed, 0, describeCounts('d', counts));
      // Only requests of n2 went to r2 (n1 and n3 have their own replicas): nobody else is refused.
      assert.equal(sumOver(counts.refused, ['n1', 'n3']), 0, describeCounts('d', counts));
      assert.equal(sumOver(counts.unreachable, ['n1', 'n2', 'n3']), 0, `${describeCounts('d', counts)}; ${counts.samples.join('; ')}`);
      // Every refusal is a client that then got in on a retry.
      assert.ok(counts.authorizedAfterRetry >= counts.refused['n2']!, describeCounts('d', counts));
      assert.equal(counts.authorizedFirstTry + counts.authorizedAfterRetry, counts.clients);
      t.diagnostic(`d) r2 had answered ${decisions(victim).length} request(s) before it was killed`);
      await startReplica(1);
      await waitForLanes((l) => l.get('r2')?.length === LANES, 'r2 back');
    });

    it('fault b: nats-server restarted under a replica: it reconnects and resubscribes, /readyz goes 503 then 200', {
      timeout: 60_000,
    }, async (t: TestContext) => {
      const n2 = nodes()[1]!;
      const r2 = replica(1);
      const mark = r2.records().length;
      assert.equal((await r2.readyz())?.status, 200);
      let down: { status: number; problems: string[] } | undefined;
      let up: { status: number; problems: string[] } | undefined;
      const counts = await stream(async () => {
        await n2.stop();
        down = await waitForReadyz(r2, 503);
        // Clients of n2 meanwhile find it down and go to the next node.
        await sleep(500);
        await n2.start();
        up = await waitForReadyz(r2, 200);
      });
      t.diagnostic(describeCounts('b) nats-server n2 restarted under r2', counts));
      t.diagnostic(`b) r2 /readyz while n2 was down: 503 ${JSON.stringify(down?.problems)}; after the restart: ${up?.status}`);
      assert.equal(down?.status, 503);
      assert.ok(
        down!.problems.some((p) => /disconnected, reconnecting/.test(p)),
        JSON.stringify(down),
      );
      assert.deepEqual(up, { status: 200, problems: [] });
      assert.equal(counts.failed, 0, describeCounts('b', counts));
      assert.equal(sumOver(counts.refused, ['n1', 'n3']), 0, describeCounts('b', counts));
      assert.equal(counts.authorizedFirstTry + counts.authorizedAfterRetry, counts.clients);
      // Every connection of r2 reconnected to n2 and subscribed again.
      const reconnected = r2
        .records()
        .slice(mark)
        .filter((r) => r.msg === 'NATS reconnected');
      assert.equal(reconnected.length, LANES, JSON.stringify(reconnected));
      await waitForLanes((l) => l.get('r2')?.length === LANES && l.get('r2')!.every((n) => n === 'n2'), 'r2 subscribed on n2 again');
      await cluster.waitForRoutes();
      // And it serves n2's clients again.
      const before = r2.records().length;
      const nc = await connectTo(n2, await token('after-restart'), 'after-restart');
      await nc.close();
      assert.deepEqual(
        decisions(r2, before).map((d) => [d['server'], d['result']]),
        [['n2', 'allow']],
      );
    });

    it('fault a: a node stopped: surviving nodes refuse nobody; connections of a replica listing every node move to the survivors and serve', {
      timeout: 60_000,
    }, async (t: TestContext) => {
      const n3 = nodes()[2]!;
      // r3 lists every node, its own first. nats.js shuffles the list, so its connections spread
      // over the nodes; restart it until at least one is on n3 (each start: 1 - (2/3)^8 = 96%).
      let placed: string[] = [];
      for (let tries = 0; tries < 6 && !placed.includes('n3'); tries++) {
        await stopReplica(2);
        await startReplica(2, [n3.url, nodes()[0]!.url, nodes()[1]!.url]);
        placed = (await waitForLanes((l) => l.get('r3')?.length === LANES, 'r3 subscribed')).get('r3')!;
      }
      const onN3 = placed.filter((n) => n === 'n3').length;
      assert.ok(onN3 > 0, `r3 never got a connection on n3: ${placed.join(',')}`);
      t.diagnostic(`a) r3 (servers [n3, n1, n2]) had its ${LANES} connections on ${placed.sort().join(',')}`);
      const r3 = replica(2);
      const mark = r3.records().length;
      const counts = await stream(async () => {
        await n3.stop();
      });
      t.diagnostic(describeCounts('a) nats-server n3 stopped', counts));
      assert.equal(counts.failed, 0, describeCounts('a', counts));
      assert.equal(sumOver(counts.refused, ['n1', 'n2']), 0, describeCounts('a', counts));
      assert.equal(counts.authorizedFirstTry + counts.authorizedAfterRetry, counts.clients);
      // The connections that were on n3 reconnected to n1 or n2 and subscribed there.
      await r3.waitFor(
        () =>
          r3
            .records()
            .slice(mark)
            .filter((r) => r.msg === 'NATS reconnected').length >= onN3,
        { from: mark },
      );
      const moved = r3
        .records()
        .slice(mark)
        .filter((r) => r.msg === 'NATS reconnected');
      assert.equal(moved.length, onN3);
      assert.ok(
        moved.every((r) => r['server'] !== n3.url.replace('nats://', '') && r['server'] !== n3.url),
        JSON.stringify(moved),
      );
      await waitForLanes((l) => l.get('r3')?.length === LANES, 'every r3 connection subscribed on n1 or n2');
      assert.deepEqual(await r3.readyz(), { status: 200, problems: [] });
      // r3 alone now serves n1 and n2: stop their own replicas.
      assert.deepEqual(await stopReplica(0), { code: 0, signal: null });
      assert.deepEqual(await stopReplica(1), { code: 0, signal: null });
      await waitForLanes((l) => !l.has('r1') && !l.has('r2'), 'r1 and r2 gone');
      const before = r3.records().length;
      for (const node of nodes().slice(0, 2)) {
        const nc = await connectTo(node, await token(`survivor-${node.name}`), `survivor-${node.name}`);
        await nc.close();
      }
      assert.deepEqual(
        decisions(r3, before)
          .map((d) => `${String(d['server'])}:${String(d['result'])}`)
          .sort(),
        ['n1:allow', 'n2:allow'],
      );
      t.diagnostic(`a) ${moved.length} r3 connection(s) moved from n3 to ${moved.map((r) => String(r['server'])).join(', ')}`);
    });
  });
}
