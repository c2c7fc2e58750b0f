// Node's official socket.io-client chats with a Soko Live hub as a shopper.
//
// Usage: node chat_roundtrip.mjs <hub url> <shopper token> <stream> <default|websocket> <peer text>
//
// 1. connects (default transports: polling then upgrade; or websocket only) and waits for `welcome`;
// 2. sends one chat message with an ack and checks the ack envelope ({ok: true, data: {seq: 1, ...}});
// 3. waits for the peer's message (text <peer text>) as a live `chat.message` with seq 2.
// Prints one JSON line with everything it saw to stdout; exits 0 when every check passed, 1 otherwise.

import { io } from "socket.io-client";
import { createRequire } from "node:module";

const [url, token, stream, transportMode, peerText] = process.argv.slice(2);
const TIMEOUT_MS = 30000;
const MY_TEXT = "hello from node";

const require = createRequire(import.meta.url);
const result = {
  client_version: require("socket.io-client/package.json").version,
  welcome: null,
  ack: null,
  messages: [],
  transport: null,
  errors: [],
  checks: {},
};

function finish(code) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

if (!url || !token || !stream || !peerText) {
  result.errors.push("usage: node chat_roundtrip.mjs <url> <token> <stream> <default|websocket> <peer text>");
  finish(1);
}

const timer = setTimeout(() => {
  result.errors.push(`timed out after ${TIMEOUT_MS} ms`);
  finish(1);
}, TIMEOUT_MS);

const options = { auth: { token }, reconnection: false, timeout: 10000 };
if (transportMode === "websocket") options.transports = ["websocket"];
const socket = io(url, options);

let peerSeen;
const peerMessage = new Promise((resolve) => (peerSeen = resolve));
let welcomed;
const welcome = new Promise((resolve) => (welcomed = resolve));

socket.on("connect_error", (err) => {
  result.errors.push(`connect_error: ${err.message} ${JSON.stringify(err.data ?? null)}`);
  clearTimeout(timer);
  finish(1);
});
socket.on("welcome", (data) => {
  result.welcome = data;
  welcomed(data);
});
socket.on("chat.message", (frame) => {
  result.messages.push(frame);
  if (frame.text === peerText) peerSeen(frame);
});
socket.on("session.closing", (data) => result.errors.push(`session.closing: ${JSON.stringify(data)}`));

try {
  await welcome;
  const clientId = `node-${Date.now()}`;
  result.ack = await socket.timeout(10000).emitWithAck("chat.send", { stream, client_id: clientId, text: MY_TEXT });
  const peer = await peerMessage;
  result.transport = socket.io.engine.transport.name;
  const own = result.messages.find((m) => m.text === MY_TEXT);
  result.checks = {
    welcome_is_me: result.welcome.role === "shopper",
    ack_ok: result.ack?.ok === true,
    ack_seq_1: result.ack?.data?.seq === 1 && result.ack?.data?.stream === stream,
    ack_client_id: result.ack?.data?.client_id === clientId && result.ack?.data?.duplicate === false,
    own_echo_seq_1: own !== undefined && own.seq === 1 && own.client_id === clientId,
    peer_seq_2: peer.seq === 2 && peer.stream === stream && peer.author_role === "staff",
    same_epoch: own !== undefined && own.epoch === peer.epoch && own.epoch === result.ack?.data?.epoch,
  };
} catch (err) {
  result.errors.push(`error: ${err && err.stack ? err.stack : err}`);
}
clearTimeout(timer);
socket.close();
const passed = result.errors.length === 0 && Object.values(result.checks).length > 0 &&
  Object.values(result.checks).every(Boolean);
finish(passed ? 0 : 1);
