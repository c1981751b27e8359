// The rivetkit side of `python -m benchmarks engine`: rivetkit 2.3.19's own runtime (an envoy
// of the engine at $ENGINE_URL, pool $POOL), serving the same two actors as actorcore's side
// (benchmarks/engine.py):
//   echo:    a raw WebSocket (onWebSocket) that sends back every message; "__sleep" asks the
//            actor to sleep (c.sleep()), which closes the socket;
//   counter: the action `increment(by)` on a persisted count.
// rivetkit is loaded from $RIVETKIT_DIR (an npm folder holding rivetkit@2.3.19; the benchmark
// installs it next to the engine). Prints one JSON line {"ready": true, "pid": ...} once the
// engine lists this envoy's pool, then runs until SIGTERM.
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const { ENGINE_URL, POOL, RIVETKIT_DIR } = process.env;
if (!ENGINE_URL || !POOL || !RIVETKIT_DIR) {
  console.error("ENGINE_URL, POOL and RIVETKIT_DIR must be set");
  process.exit(2);
}
const require = createRequire(join(RIVETKIT_DIR, "package.json"));
const { actor, setup } = await import(pathToFileURL(require.resolve("rivetkit")).href);

const LONG = { sleepTimeout: 3_600_000 };

const echo = actor({
  options: LONG,
  state: {},
  onWebSocket: (c, ws) => {
    ws.addEventListener("message", (ev) => {
      if (ev.data === "__sleep") c.sleep();
      else ws.send(ev.data);
    });
  },
  actions: {},
});

const counter = actor({
  options: LONG,
  state: { count: 0 },
  actions: {
    increment: (c, by = 1) => {
      c.state.count += by;
      return c.state.count;
    },
  },
});

const registry = setup({
  use: { echo, counter },
  endpoint: ENGINE_URL,
  namespace: "default",
  startEngine: false,
  startServices: false,
  noWelcome: true,
  logging: { level: process.env.RIVETKIT_LOG_LEVEL ?? "warn" },
  envoy: { poolName: POOL },
});
registry.start();

// Ready once the engine lists an envoy of our pool.
const deadline = Date.now() + 60_000;
for (;;) {
  try {
    const res = await fetch(`${ENGINE_URL}/envoys?namespace=default`);
    if (res.ok) {
      const body = await res.json();
      const envoys = body.envoys ?? [];
      if (envoys.some((e) => e.pool_name === POOL)) break;
    }
  } catch {}
  if (Date.now() > deadline) {
    console.error("rivetkit did not register with the engine within 60 s");
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 100));
}
console.log(JSON.stringify({ ready: true, pid: process.pid }));
