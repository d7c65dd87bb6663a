import { createServer, type Server } from 'node:http';
import type { Logger } from './log.js';

/** What keeps the service from being ready; empty when it can answer requests. */
export type ReadinessCheck = () => string[] | Promise<string[]>;

/** The Prometheus text of the replica (one registry, or its workers' added up). */
export type MetricsText = () => Promise<{ readonly text: string; readonly contentType: string }>;

/**
 * The operations endpoints: `/healthz` (the process is alive), `/readyz` (subscribed, NATS
 * connected, every issuer's keys loaded; 503 with the reasons otherwise) and `/metrics`
 * (Prometheus). Bound to the configured address only; serves nothing else.
 */
export async function startMonitoring(listen: { host: string; port: number }, metrics: MetricsText, readiness: ReadinessCheck, log: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      Promise.resolve(readiness()).then(
        (problems) =>
          res
            .writeHead(problems.length ? 503 : 200, { 'content-type': 'application/json' })
            .end(`${JSON.stringify({ ready: problems.length === 0, problems })}\n`),
        (err: Error) => res.writeHead(503, { 'content-type': 'application/json' }).end(`${JSON.stringify({ ready: false, problems: [err.message] })}\n`),
      );
    } else if (path === '/metrics') {
      metrics().then(
        ({ text, contentType }) => res.writeHead(200, { 'content-type': contentType }).end(text),
        (err: Error) => {
          log.error('metrics failed', { error: err.message });
          res.writeHead(500).end();
        },
      );
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  return server;
}
