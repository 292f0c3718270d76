// Bun peer for benches/relay.rs: Bun.serve with the built-in WebSocket pub/sub.
//   bun bun-server.js --port P [--echo] [--deflate]
//   (or WSCHAT_PEER_ECHO=1, WSCHAT_PEER_DEFLATE=1)
// --deflate: `perMessageDeflate: true` (Bun's shared compressor) and every publish asks for
// compression (`publish(room, msg, true)`): Bun then deflates once per subscriber.
// On open the socket subscribes to the room named by the URL path; on message
// `ws.publish(room, msg)` reaches every other subscriber (sender excluded), and in
// echo mode `server.publish(room, msg)` reaches all of them. Text stays text.
// GET /healthz answers 200 so the harness can tell when it is ready.
const args = Bun.argv.slice(2);
let port = 6969;
let echo = process.env.WSCHAT_PEER_ECHO === "1";
let deflate = process.env.WSCHAT_PEER_DEFLATE === "1";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--port") port = Number(args[++i]);
  else if (args[i] === "--echo") echo = true;
  else if (args[i] === "--deflate") deflate = true;
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return new Response("ok\n");
    if (server.upgrade(req, { data: { room: url.pathname } })) return undefined;
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
      if (echo) server.publish(ws.data.room, msg, deflate);
      else ws.publish(ws.data.room, msg, deflate);
    },
  },
});
process.on("SIGTERM", () => process.exit(0));
