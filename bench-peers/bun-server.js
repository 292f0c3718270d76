// Bun peer for benches/relay.rs: Bun.serve with the built-in WebSocket pub/sub.
//   bun bun-server.js --port P [--echo] [--deflate]
//   (or WSCHAT_PEER_ECHO=1, WSCHAT_PEER_DEFLATE=1)
// --deflate: `perMessageDeflate: true` (Bun's shared compressor) and every publish asks for
// compression (`publish(room, msg, true)`): Bun then deflates once per subscriber.
// On open the socket subscribes to the room named by the URL path; on message
// `ws.publish(room, msg)` reaches every other subscriber (sender excluded), and in
// echo mode `server.publish(room, msg)` reaches all of them. Text stays text.
// GET /healthz answers 200 so the harness can tell when it is ready.
// With --tls-cert FILE --tls-key FILE --tls-port N (as wschat), a second Bun.serve speaks
// TLS on port N with the same handlers; --port stays plain (the harness's readiness probe).
// Each Bun.serve has its own topics, so a room lives on one port: the harness puts every
// client of a run on the TLS port.
const args = Bun.argv.slice(2);
let port = 6969;
let echo = process.env.WSCHAT_PEER_ECHO === "1";
let deflate = process.env.WSCHAT_PEER_DEFLATE === "1";
let tlsCert, tlsKey, tlsPort;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--port") port = Number(args[++i]);
  else if (args[i] === "--echo") echo = true;
  else if (args[i] === "--deflate") deflate = true;
  else if (args[i] === "--tls-cert") tlsCert = args[++i];
  else if (args[i] === "--tls-key") tlsKey = args[++i];
  else if (args[i] === "--tls-port") tlsPort = Number(args[++i]);
}

const handlers = {
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return new Response("ok\n");
    if (server.upgrade(req, { data: { room: url.pathname, server } })) return undefined;
    return new Response("expected a WebSocket upgrade\n", { status: 400 });
  },
  websocket: {
    // The harness holds idle connections for 60 s; keep Bun's idle timeout out of it.
    idleTimeout: 960,
    perMessageDeflate: deflate,
    open(ws) {
      ws.subscribe(ws.data.room);
    },
    message(ws, msg) {
      // The server the socket came through (plain or TLS) publishes to its own topics.
      if (echo) ws.data.server.publish(ws.data.room, msg, deflate);
      else ws.publish(ws.data.room, msg, deflate);
    },
  },
};
if (tlsPort) {
  Bun.serve({
    hostname: "127.0.0.1",
    port: tlsPort,
    tls: { cert: Bun.file(tlsCert), key: Bun.file(tlsKey) },
    ...handlers,
  });
}
Bun.serve({ hostname: "127.0.0.1", port, ...handlers });
process.on("SIGTERM", () => process.exit(0));
