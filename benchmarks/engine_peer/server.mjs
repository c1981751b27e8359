// rivetkit's own runtime, as the baseline of `python -m benchmarks engine`: an actor `peer`
// with a raw WebSocket that echoes, and answers actorcore's JSON action frame for `increment`
// (a state change and a reply, as actorcore's /connect does), connected as an envoy to the
// engine at $RIVET_ENDPOINT, pool $RIVET_POOL. Run from a folder where rivetkit@2.3.19 is
// installed (see benchmarks/engine.py).
import { actor, setup } from "rivetkit";

const SLEEP_MS = parseInt(process.env.SLEEP_MS ?? "1000", 10);

const peer = actor({
  options: { sleepTimeout: SLEEP_MS },
  state: { count: 0 },
  onWebSocket: (c, ws) => {
    ws.addEventListener("message", (ev) => {
      const data = ev.data;
      if (typeof data === "string" && data.startsWith("{")) {
        const frame = JSON.parse(data);
        c.state.count += frame.args[0];
        ws.send(JSON.stringify({ type: "action_result", id: frame.id, output: c.state.count }));
      } else {
        ws.send(data);
      }
    });
  },
  actions: {
    increment: (c, by = 1) => { c.state.count += by; return c.state.count; },
  },
});

export const registry = setup({ use: { peer } });
registry.start();
