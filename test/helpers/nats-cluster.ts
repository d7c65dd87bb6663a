/**
 * A cluster of real nats-server processes on 127.0.0.1 for integration tests.
 *
 * Every node gets fixed ports (client, cluster, monitoring), chosen free below the ephemeral
 * range, so a node can be stopped and started again where its peers and clients expect it. Each
 * node's `cluster` block lists the route URLs of all the others. `no_advertise` is on by default:
 * clients then only know the servers they were given, which keeps tests deterministic about where
 * a client (or a callout replica) can go when its server stops; without it nats-server gossips
 * every node's client URL to the clients (`connect_urls`) and nats.js adds them to its pool.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { freeServerPort } from './free-port.js';
import { startNatsServer, type RunningNats } from './nats-server.js';

/** Options for {@link startNatsCluster}. */
export interface NatsClusterOptions {
  /** Path of the nats-server binary. */
  bin: string;
  /** Configuration text every node shares (accounts, authorization, ...), without listeners. */
  config: string;
  /** Number of nodes. Default 3. */
  size?: number;
  /** `cluster.name`. Default "oc-test". */
  clusterName?: string;
  /** `cluster.no_advertise`. Default true (see the module comment). */
  noAdvertise?: boolean;
  /** How long to wait for every route to be up. Default 15 s. */
  routesTimeoutMs?: number;
}

/** One node of the cluster; `server` is undefined while the node is stopped. */
export interface ClusterNode {
  /** `server_name`, `n1`, `n2`, ... */
  readonly name: string;
  readonly index: number;
  /** Client URL, fixed for the node's life (also across restarts). */
  readonly url: string;
  readonly port: number;
  readonly clusterPort: number;
  /** Monitoring base URL, `http://127.0.0.1:PORT`. */
  readonly monitorUrl: string;
  readonly server: RunningNats | undefined;
  readonly running: boolean;
  /** The configuration text this node runs with (without the client listener). */
  readonly config: string;
  /** Stops the node (SIGTERM, then SIGKILL after 2 s). Idempotent. */
  stop(): Promise<void>;
  /** Starts the node again on the same ports (it must be stopped). */
  start(): Promise<void>;
  /** Everything this node's current (or last) process logged. */
  logs(): string;
}

/** A started cluster. Stop it with `stop()` or `await using`. */
export interface NatsCluster extends AsyncDisposable {
  readonly nodes: readonly ClusterNode[];
  /**
   * Resolves once every running node has a route to every other running node (by server name,
   * as nats-server 2.10+ pools several route connections per peer). Rejects after `timeoutMs`.
   */
  waitForRoutes(timeoutMs?: number): Promise<void>;
  /** Stops every node. Idempotent. */
  stop(): Promise<void>;
}

/** `GET` a monitoring endpoint of a node as JSON, or undefined when the node does not answer. */
export async function monitorJson<T>(node: ClusterNode, path: string, timeoutMs = 2_000): Promise<T | undefined> {
  try {
    const res = await fetch(`${node.monitorUrl}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) return undefined;
    return (await res.json()) as T;
  } catch {
    return undefined;
  }
}

/** The server names a node has routes to. */
export async function routedPeers(node: ClusterNode): Promise<Set<string>> {
  const routez = await monitorJson<{ routes?: { remote_name?: string }[] }>(node, '/routez');
  return new Set((routez?.routes ?? []).map((r) => r.remote_name ?? '').filter((n) => n !== ''));
}

/**
 * Whether `node` has a route from `peer` over which `peer` announced interest in `subject`
 * (`/routez?subs=1`: the subjects of the subscriptions behind each route connection). Once this
 * is false, `node` sends no more messages on `subject` to `peer`.
 */
export async function routeInterest(node: ClusterNode, peer: string, subject: string): Promise<boolean> {
  const routez = await monitorJson<{ routes?: { remote_name?: string; subscriptions_list?: string[] }[] }>(node, '/routez?subs=1');
  return (routez?.routes ?? []).some((r) => r.remote_name === peer && (r.subscriptions_list ?? []).includes(subject));
}

/** One client connection as `/connz?subs=1` reports it. */
export interface ConnzConnection {
  readonly cid: number;
  readonly name?: string;
  readonly subscriptions_list?: string[];
}

/** The client connections of a node (routes are not listed), with their subscriptions. */
export async function connections(node: ClusterNode): Promise<ConnzConnection[]> {
  const connz = await monitorJson<{ connections?: ConnzConnection[] }>(node, '/connz?subs=1&limit=4096');
  return connz?.connections ?? [];
}

/** Starts `size` clustered nodes and resolves once all routes are up. */
export async function startNatsCluster(opts: NatsClusterOptions): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  const taken: number[] = [];
  const port = async (): Promise<number> => {
    const p = await freeServerPort(taken);
    taken.push(p);
    return p;
  };
  const specs: { name: string; port: number; clusterPort: number; httpPort: number }[] = [];
  for (let i = 0; i < size; i++) specs.push({ name: `n${i + 1}`, port: await port(), clusterPort: await port(), httpPort: await port() });

  const nodes: NodeImpl[] = specs.map((spec, index) => {
    const routes = specs.filter((other) => other !== spec).map((other) => `nats-route://127.0.0.1:${other.clusterPort}`);
    const config = [
      opts.config,
      '',
      `server_name: ${spec.name}`,
      `http: "127.0.0.1:${spec.httpPort}"`,
      'cluster {',
      `  name: ${opts.clusterName ?? 'oc-test'}`,
      `  listen: "127.0.0.1:${spec.clusterPort}"`,
      `  no_advertise: ${opts.noAdvertise ?? true}`,
      `  routes: [ ${routes.join(', ')} ]`,
      '}',
    ].join('\n');
    return new NodeImpl(opts.bin, spec.name, index, spec.port, spec.clusterPort, spec.httpPort, config);
  });

  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.stop()));
  };
  const waitForRoutes = async (timeoutMs = opts.routesTimeoutMs ?? 15_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const running = nodes.filter((n) => n.running);
      const missing: string[] = [];
      for (const node of running) {
        const peers = await routedPeers(node);
        for (const other of running) if (other !== node && !peers.has(other.name)) missing.push(`${node.name}->${other.name}`);
      }
      if (missing.length === 0) return;
      if (Date.now() > deadline) throw new Error(`cluster routes not up within ${timeoutMs} ms: missing ${missing.join(', ')}`);
      await sleep(50);
    }
  };

  try {
    await Promise.all(nodes.map((n) => n.start()));
    await waitForRoutes();
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, waitForRoutes, stop, [Symbol.asyncDispose]: stop };
}

class NodeImpl implements ClusterNode {
  readonly url: string;
  readonly monitorUrl: string;
  #server: RunningNats | undefined;
  #lastLogs = '';

  constructor(
    readonly bin: string,
    readonly name: string,
    readonly index: number,
    readonly port: number,
    readonly clusterPort: number,
    readonly httpPort: number,
    readonly config: string,
  ) {
    this.url = `nats://127.0.0.1:${port}`;
    this.monitorUrl = `http://127.0.0.1:${httpPort}`;
  }

  get server(): RunningNats | undefined {
    return this.#server;
  }

  get running(): boolean {
    return this.#server !== undefined;
  }

  logs(): string {
    return this.#server?.logs() ?? this.#lastLogs;
  }

  async start(): Promise<void> {
    if (this.#server) throw new Error(`${this.name} is already running`);
    this.#server = await startNatsServer({ bin: this.bin, config: this.config, port: this.port });
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    this.#lastLogs = server.logs();
    await server.stop();
  }
}
