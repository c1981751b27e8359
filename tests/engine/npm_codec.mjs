// The npm codec of the envoy protocol (@rivetkit/engine-envoy-protocol) as a reference for
// actorcore's: reads one JSON request per line on stdin, answers one JSON line each.
//   {"op": "encode", "type": "ToRivet", "value": V}  ->  {"hex": "..."}
//   {"op": "decode", "type": "ToRivet", "hex": "..."} ->  {"value": V} or {"error": "..."}
// V is JSON with tagged forms: {"$bytes": hex}, {"$big": "123"}, {"$u32": [...]} (a
// Uint32Array), {"$map": [[k, v], ...]}.
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const protocol = await import(pathToFileURL(process.env.ACTORCORE_ENVOY_PROTOCOL_JS).href);

function fromJson(v) {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(fromJson);
  if ("$bytes" in v) return Uint8Array.from(Buffer.from(v.$bytes, "hex")).buffer;
  if ("$big" in v) return BigInt(v.$big);
  if ("$u32" in v) return Uint32Array.from(v.$u32);
  if ("$map" in v) return new Map(v.$map.map(([k, x]) => [fromJson(k), fromJson(x)]));
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x)]));
}

function toJson(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "bigint") return { $big: v.toString() };
  if (v instanceof Uint32Array) return { $u32: Array.from(v) };
  if (v instanceof ArrayBuffer) return { $bytes: Buffer.from(v).toString("hex") };
  if (ArrayBuffer.isView(v)) return { $bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex") };
  if (v instanceof Map) return { $map: [...v.entries()].map(([k, x]) => [toJson(k), toJson(x)]) };
  if (Array.isArray(v)) return v.map(toJson);
  if (typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]));
  return v;
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const req = JSON.parse(line);
  let answer;
  try {
    if (req.op === "encode") {
      const bytes = protocol["encode" + req.type](fromJson(req.value));
      answer = { hex: Buffer.from(bytes).toString("hex") };
    } else {
      const value = protocol["decode" + req.type](Uint8Array.from(Buffer.from(req.hex, "hex")));
      answer = { value: toJson(value) };
    }
  } catch (err) {
    answer = { error: String(err && err.message ? err.message : err) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
