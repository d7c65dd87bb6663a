# workerd configuration to run worker.js locally, as Cloudflare would: the Worker may reach the
# loopback network only (nats-server's websocket listener) and nothing else.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "loopback", network = (allow = ["127.0.0.0/8", "::1/128"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:8787", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [ (name = "worker.js", esModule = embed "dist/worker.js") ],
  compatibilityDate = "2025-01-01",
  bindings = [
    (name = "NATS_URL", fromEnvironment = "NATS_URL"),
    (name = "NATS_TOKEN", fromEnvironment = "NATS_TOKEN"),
  ],
  # Every fetch() and WebSocket of the Worker goes through this service.
  globalOutbound = "loopback",
);
