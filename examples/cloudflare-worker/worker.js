// A Cloudflare Worker that publishes to NATS with its own OIDC access token: nats-server's auth
// callout (oidc-callout) turns the token into a NATS user with the permissions its policy grants.
// POST /?subject=SUBJECT publishes the request body; the answer says whether the server took it.
import { wsconnect } from '@nats-io/nats-core';

export default {
  async fetch(request, env) {
    const subject = new URL(request.url).searchParams.get('subject');
    if (request.method !== 'POST' || !subject) {
      return Response.json({ error: 'POST /?subject=SUBJECT with the message as the body' }, { status: 400 });
    }
    let nc;
    try {
      // One connection per request: a Worker cannot keep a socket across requests. The token
      // is a secret binding (`wrangler secret put NATS_TOKEN`); it travels in CONNECT.
      nc = await wsconnect({ servers: env.NATS_URL, token: env.NATS_TOKEN, name: 'cloudflare-worker', reconnect: false });
    } catch (err) {
      // A refused token surfaces here as "Authorization Violation"; the reason is in the callout's log.
      return Response.json({ subject, published: false, error: `connect: ${err.message}` }, { status: 502 });
    }
    try {
      const refusals = [];
      (async () => {
        for await (const s of nc.status()) {
          if (s.type === 'error' && s.error.operation === 'publish') refusals.push(s.error);
        }
      })();
      nc.publish(subject, new Uint8Array(await request.arrayBuffer()));
      // The server reports a publish it refuses before it answers the PING of this flush.
      await nc.flush();
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the status loop take it
      const refusal = refusals.find((e) => e.subject === subject);
      if (refusal) return Response.json({ subject, published: false, error: refusal.message }, { status: 403 });
      return Response.json({ subject, published: true });
    } finally {
      await nc.close();
    }
  },
};
