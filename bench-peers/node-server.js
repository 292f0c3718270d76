// Node peer for benches/relay.rs: the classic tutorial relay, kept as it was except
// where noted.
//   node node-server.js --port P [--echo] [--deflate]
//   (or WSCHAT_PEER_ECHO=1, WSCHAT_PEER_DEFLATE=1)
// Tutorial logic: one `ws` WebSocketServer; on message, send to every client
// except the sender that is OPEN. Differences from the tutorial, for fairness:
//  - `send(data, { binary: isBinary })`, so a text message stays text (the tutorial
//    sends the raw Buffer, which always goes out as binary);
//  - `--echo` delivers to every OPEN client, sender included (the echo scenario);
//  - `--deflate` turns on `perMessageDeflate: true` (ws's defaults: messages of 1 KiB and
//    more compressed, per connection, with context takeover unless the client declines);
//  - an HTTP server in front answers GET /healthz with 200 so the harness can tell
//    when it is ready; express is not used;
//  - with --tls-cert FILE --tls-key FILE --tls-port N (as wschat), the WebSocket server
//    sits on an `https` server on port N instead; --port stays plain for /healthz.
// All clients share one room, as in the tutorial: the URL path is ignored.
"use strict";
const fs = require("fs");
const http = require("http");
const https = require("https");
const { WebSocketServer, WebSocket } = require("ws");

const args = process.argv.slice(2);
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

function routes(req, res) {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
  } else {
    res.writeHead(404);
    res.end();
  }
}
const server = http.createServer(routes);
const tlsServer = tlsPort
  ? https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) }, routes)
  : null;
const wss = new WebSocketServer({ server: tlsServer || server, perMessageDeflate: deflate });

wss.on("connection", (ws) => {
  ws.on("error", console.error);
  ws.on("message", (data, isBinary) => {
    wss.clients.forEach((client) => {
      if ((echo || client !== ws) && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

if (tlsServer) {
  // Plain last: the harness's probe of --port then finds the TLS port listening too.
  tlsServer.listen(tlsPort, "127.0.0.1", () => server.listen(port, "127.0.0.1"));
} else {
  server.listen(port, "127.0.0.1");
}
process.on("SIGTERM", () => process.exit(0));
