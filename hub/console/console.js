/*
 * Soko Live staff console. Plain JavaScript over the official socket.io-client bundle; no build step.
 *
 * It follows docs/protocol.md like the apps do:
 * - durable streams (chat, inboxes, inventory) are applied per (stream, seq) with a cursor per stream:
 *   seq <= cursor is ignored, seq == cursor + 1 is applied, a gap or a new epoch runs `catchup`;
 *   on every (re)connect `sync` + `catchup` resume from the cursors held, so nothing is lost or shown twice;
 * - messages go through an outbox: each gets its client_id once, is shown as queued while offline and is
 *   sent in order once connected; a resend after a lost ack is idempotent on the hub;
 * - stock keeps, per SKU, the state with the highest version.
 * All text from the hub is rendered with textContent, never as markup.
 */
"use strict";

(() => {
  const TOKEN_KEY = "soko.console.token";
  const NOTE_WINDOW = 50; // notifications loaded per inbox on first sign-in
  const HISTORY_PAGE = 30;
  const CATCHUP_PAGE = 200;
  const TYPING_SHOWN_MS = 4000;
  const TYPING_SEND_MS = 1500;
  const TOAST_MS = 7000;
  const CALL_TIMEOUT_MS = 10000;
  const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const CATEGORY_LABEL = {
    payment: "Paid order", order: "Order", device: "Sensor", stock: "Stock",
    delivery: "Delivery", chat: "Chat", system: "System",
  };

  const $ = (id) => document.getElementById(id);

  /** An element with properties (className, textContent, …), attributes ({attrs}) and children. */
  function h(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    const { attrs, ...rest } = props;
    Object.assign(node, rest);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  /** A ULID: 48-bit time + 80 random bits in Crockford base32; matches the protocol's id pattern. */
  function ulid() {
    let t = Date.now();
    let time = "";
    for (let i = 0; i < 10; i++) { time = CROCKFORD[t % 32] + time; t = Math.floor(t / 32); }
    let rand = "";
    for (const b of crypto.getRandomValues(new Uint8Array(16))) rand += CROCKFORD[b % 32];
    return time + rand;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function clock(ms) {
    const d = new Date(ms);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  class HubError extends Error {
    constructor(body) {
      super(body.message);
      this.code = body.code;
      this.name = body.name;
      this.temporary = body.temporary;
    }
  }
  class Offline extends Error {}

  // ------------------------------------------------------------------ state

  const state = {
    socket: null,
    me: null, // the welcome frame
    fatal: false, // the token was refused: do not reconnect
    hadSession: false, // this page has shown a signed-in session
    ready: false, // resume finished on the current connection
    generation: 0,
    early: [], // durable frames received while resuming
    streams: new Map(), // stream -> {epoch, seq, busy, buf}
    convs: new Map(), // chat stream -> conversation
    messages: new Map(), // chat stream -> Map(seq -> frame), for conversations opened
    hasOlder: new Map(), // chat stream -> bool
    open: null,
    typing: new Map(), // chat stream -> {user, until}
    lastTypingSent: 0,
    outbox: [], // {client_id, stream, text, state: queued|sending|failed, error}
    sent: new Map(), // client_id -> {stream, seq, text, ts}: acked, frame not applied yet
    flushing: false,
    stock: new Map(), // sku -> {sku, level, version, low, threshold, clear, updated_ts}
    notes: new Map(), // "stream:seq" -> notification frame
    inboxUnread: new Map(), // inbox stream -> unread count
    pendingAcks: new Map(), // inbox stream -> Set(seq)
    missed: 0, // notifications caught up after a reconnect
    reconnected: false,
  };

  const connected = () => state.socket !== null && state.socket.connected;
  const live = () => connected() && state.ready;
  const outboxKey = () => `soko.console.outbox:${state.me.boutique}:${state.me.user}`;
  const shopperOf = (stream) => stream.split(":")[3];
  const myParty = () => `boutique:${state.me.boutique}`;

  // ------------------------------------------------------------------ requests

  /** Emit with an ack; resolves with `data`, rejects with HubError (retrying rate limits) or Offline. */
  async function call(event, data) {
    for (let attempt = 0; ; attempt++) {
      if (!connected()) throw new Offline("not connected");
      let reply;
      try {
        reply = await state.socket.timeout(CALL_TIMEOUT_MS).emitWithAck(event, data);
      } catch {
        throw new Offline(`no answer to ${event}`);
      }
      if (reply.ok) return reply.data;
      if (reply.error.name === "rate_limited" && attempt < 6) { await sleep(250 * (attempt + 1)); continue; }
      throw new HubError(reply.error);
    }
  }

  // ------------------------------------------------------------------ sign-in and connection

  function tokenFromFragment() {
    if (!location.hash.startsWith("#")) return null;
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token === null) return null;
    history.replaceState(null, "", location.pathname + location.search);
    return token.trim();
  }

  function showSignIn(message) {
    $("signin").hidden = false;
    $("app").hidden = true;
    $("who").hidden = true;
    $("signout").hidden = true;
    $("offline").hidden = true;
    $("signin-error").textContent = message || "";
    setConn("signed-out", "Not signed in");
    $("token").focus();
  }

  function setConn(kind, text) {
    $("conn").dataset.state = kind;
    $("conn").textContent = text;
    $("offline").hidden = !(state.me && kind !== "online");
  }

  function fail(message) {
    state.fatal = true;
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.socket) { state.socket.disconnect(); state.socket = null; }
    state.me = null;
    showSignIn(message);
  }

  const REFUSALS = {
    token_expired: "This token has expired. Ask for a fresh staff token and sign in again.",
    unauthenticated: "The hub did not accept this token. Check that you pasted all of it.",
    forbidden: "This token may not use the console.",
  };

  function connect(token) {
    if (!/^[\w-]+\.[\w-]+\.[\w-]*$/.test(token)) {
      fail("That does not look like a token: a token has three parts separated by dots.");
      return;
    }
    state.fatal = false;
    setConn("connecting", "Connecting…");
    const socket = io({
      auth: { token },
      reconnectionDelay: 500,
      reconnectionDelayMax: 3000,
      timeout: CALL_TIMEOUT_MS,
    });
    state.socket = socket;
    socket.on("connect", () => setConn("connecting", "Connected; loading…"));
    socket.on("welcome", onWelcome);
    socket.on("disconnect", () => {
      state.ready = false;
      state.generation += 1;
      // Buffered frames are durable: the next resume fetches them again from the cursors.
      state.early = [];
      for (const s of state.streams.values()) { s.busy = false; s.buf = []; }
      if (!state.fatal) setConn("offline", "Offline: reconnecting…");
      renderOutboxStates();
      renderStockControls();
    });
    socket.on("connect_error", (err) => {
      const refusal = err && err.data && REFUSALS[err.data.name];
      if (refusal) { fail(refusal); return; }
      setConn(state.me ? "offline" : "connecting", "Cannot reach the hub: retrying…");
      // A CONNECT the hub refused (e.g. while it shuts down) is not retried by the client itself.
      if (!socket.active) setTimeout(() => { if (state.socket === socket) socket.connect(); }, 1000);
    });
    socket.on("session.closing", (frame) => {
      if (!frame.reconnect) { fail(`The hub closed the session: ${frame.error.message}`); return; }
      setConn("offline", frame.error.name === "token_expired" ? "Token expired" : "Reconnecting…");
      // The hub is closing this session. Over WebSocket the client ignores Engine.IO's CLOSE packet and
      // would only notice at the ping timeout, so close the transport now; the manager reconnects (a
      // fresh token is then needed for token_expired, which the refused CONNECT reports).
      socket.io.engine.close();
    });
    socket.on("chat.message", onDurable);
    socket.on("notification", onDurable);
    socket.on("stock", onDurable);
    socket.on("chat.read", onRead);
    socket.on("chat.typing", onTyping);
    socket.on("notify.badge", (f) => { state.inboxUnread.set(f.stream, f.badge); renderNotesCount(); });
    socket.on("resync", () => { if (state.ready) resume(); });
  }

  function onWelcome(welcome) {
    if (welcome.role !== "staff" || !welcome.boutique) {
      fail(`This console is for boutique staff; the token you used is for a ${welcome.role}.`);
      return;
    }
    if (state.me && (state.me.user !== welcome.user || state.me.boutique !== welcome.boutique)) {
      location.reload(); // another identity in this tab: start clean
      return;
    }
    const first = state.me === null;
    state.me = welcome;
    state.hadSession = true;
    if (first) {
      state.outbox = JSON.parse(sessionStorage.getItem(outboxKey()) || "[]");
      for (const item of state.outbox) if (item.state === "sending") item.state = "queued";
    }
    const until = new Date(welcome.token_expires_at * 1000);
    $("who").textContent = `${welcome.user} · staff of ${welcome.boutique} · until ${clock(until.getTime())}`;
    $("who").hidden = false;
    $("signout").hidden = false;
    $("signin").hidden = true;
    $("app").hidden = false;
    state.reconnected = !first;
    resume();
  }

  // ------------------------------------------------------------------ resuming: sync + catchup

  async function resume() {
    const generation = ++state.generation;
    state.ready = false;
    state.missed = 0;
    try {
      const cursors = [];
      for (const [stream, s] of state.streams) {
        if (!stream.startsWith("inv:") && s.epoch) cursors.push({ stream, epoch: s.epoch, seq: s.seq });
      }
      const reply = await call("sync", { cursors });
      const visible = new Set(reply.streams.map((st) => st.stream));
      for (const stream of [...state.streams.keys()]) {
        if (!stream.startsWith("inv:") && !visible.has(stream)) forget(stream);
      }
      const behind = [];
      for (const st of reply.streams) {
        const inbox = st.stream.startsWith("inbox:");
        if (inbox) state.inboxUnread.set(st.stream, st.unread);
        let s = state.streams.get(st.stream);
        if (!s) {
          if (!inbox) continue; // conversations are loaded when opened
          s = hold(st.stream);
          s.epoch = st.epoch || null;
          s.seq = Math.max(0, st.head - NOTE_WINDOW);
        } else if (!st.recovered) {
          reset(st.stream, st.epoch);
          if (inbox) s.seq = Math.max(0, st.head - NOTE_WINDOW);
        }
        if (st.head > s.seq) behind.push(st.stream);
      }
      for (const stream of behind) await catchUp(stream);
      await loadConversations();
      await watchStock();
      if (state.open && !state.streams.has(state.open)) await loadHistory(state.open);
      if (generation !== state.generation) return;
      state.ready = true;
      setConn("online", "Online");
      for (const frame of state.early.splice(0)) onDurable(frame);
      if (state.reconnected && state.missed > 0) {
        toast({ category: "system", title: `${state.missed} notification(s) arrived while you were offline` });
      }
      renderAll();
      flush();
      markRead();
      sendAcks();
      loadPreviews();
    } catch (err) {
      if (generation !== state.generation || err instanceof Offline) return;
      setConn("offline", `Could not load (${err.message}); retrying…`);
      setTimeout(() => { if (generation === state.generation && connected()) resume(); }, 2000);
    }
  }

  function hold(stream) {
    let s = state.streams.get(stream);
    if (!s) {
      s = { epoch: null, seq: 0, busy: false, buf: [] };
      state.streams.set(stream, s);
    }
    return s;
  }

  /** The hub does not continue our copy of `stream`: drop it and restart at seq 0 of `epoch`. */
  function reset(stream, epoch) {
    const s = hold(stream);
    s.epoch = epoch || null;
    s.seq = 0;
    if (stream.startsWith("chat:")) {
      state.messages.set(stream, new Map());
      renderMessages();
    } else if (stream.startsWith("inbox:")) {
      for (const key of [...state.notes.keys()]) if (key.startsWith(`${stream}:`)) state.notes.delete(key);
      renderNotes();
    }
  }

  function forget(stream) {
    state.streams.delete(stream);
    state.messages.delete(stream);
    state.convs.delete(stream);
    if (state.open === stream) state.open = null;
  }

  /** Live durable frame: apply in seq order; buffer while catching up; a gap or new epoch catches up. */
  function onDurable(frame) {
    if (!state.ready) { state.early.push(frame); return; }
    if (frame.kind === "stock") applyStock(frame);
    if (frame.kind === "notification") queueAck(frame.stream, frame.seq);
    const s = state.streams.get(frame.stream);
    if (!s) {
      if (frame.kind === "chat") noteUnheld(frame);
      return;
    }
    if (s.busy) { s.buf.push(frame); return; }
    if (s.epoch && frame.epoch !== s.epoch) { s.buf.push(frame); catchUp(frame.stream); return; }
    if (frame.seq <= s.seq) return;
    if (frame.seq === s.seq + 1) {
      s.epoch = frame.epoch;
      s.seq = frame.seq;
      apply(frame, true);
      return;
    }
    s.buf.push(frame);
    catchUp(frame.stream);
  }

  /** Page `catchup` from the cursor until the hub has nothing more, then drain the buffer. */
  async function catchUp(stream) {
    const s = state.streams.get(stream);
    if (!s || s.busy) return;
    s.busy = true;
    try {
      for (;;) {
        const page = await call("catchup", { stream, epoch: s.epoch, after: s.seq, limit: CATCHUP_PAGE });
        if (!page.recovered) reset(stream, page.epoch);
        if (page.epoch) s.epoch = page.epoch;
        for (const frame of page.entries) {
          if (frame.seq <= s.seq) continue;
          s.seq = frame.seq;
          apply(frame, false);
        }
        s.seq = Math.max(s.seq, page.next_after);
        if (!page.has_more) break;
      }
    } catch (err) {
      s.busy = false;
      if (!(err instanceof Offline)) toast({ category: "system", title: `Catch-up failed: ${err.message}` });
      return; // the buffer waits for the next resume
    }
    s.busy = false;
    const buffered = s.buf.splice(0).sort((a, b) => a.seq - b.seq);
    for (const frame of buffered) onDurable(frame);
  }

  function apply(frame, isLive) {
    if (frame.kind === "chat") applyChat(frame);
    else if (frame.kind === "notification") applyNote(frame, isLive);
    else if (frame.kind === "stock") applyStock(frame);
  }

  // ------------------------------------------------------------------ conversations

  function conv(stream) {
    let c = state.convs.get(stream);
    if (!c) {
      c = { stream, head: 0, last_ts: 0, unread: 0, read_seq: 0, peer_read_seq: 0, preview: "" };
      state.convs.set(stream, c);
    }
    return c;
  }

  async function loadConversations() {
    const list = await call("chat.list", { limit: 200 });
    for (const item of list.conversations) {
      const c = conv(item.stream);
      const preview = c.head === item.head ? c.preview : "";
      Object.assign(c, item, { preview });
    }
    renderInbox();
  }

  /** Last message of conversations shown without one (chat.list carries no text). */
  async function loadPreviews() {
    const missing = [...state.convs.values()].filter((c) => !c.preview && c.head > 0).slice(0, 10);
    for (const c of missing) {
      try {
        const page = await call("chat.history", { stream: c.stream, limit: 1 });
        const last = page.entries[page.entries.length - 1];
        if (last && last.seq >= c.head) c.preview = last.text;
      } catch {
        return;
      }
    }
    renderInbox();
  }

  /** A message of a conversation not opened yet: only its row in the inbox changes. */
  function noteUnheld(frame) {
    const c = conv(frame.stream);
    if (frame.seq <= c.head) return;
    c.head = frame.seq;
    c.last_ts = frame.ts;
    c.preview = frame.text;
    if (frame.author === shopperOf(frame.stream)) c.unread += 1;
    renderInbox();
  }

  function applyChat(frame) {
    const msgs = state.messages.get(frame.stream) || new Map();
    state.messages.set(frame.stream, msgs);
    msgs.set(frame.seq, frame);
    if (frame.author === state.me.user) settleOutbox(frame.client_id);
    const c = conv(frame.stream);
    if (frame.seq > c.head) {
      c.head = frame.seq;
      c.last_ts = frame.ts;
      c.preview = frame.text;
      if (frame.author === shopperOf(frame.stream) && frame.seq > c.read_seq) c.unread += 1;
    }
    recount(c);
    if (frame.author === shopperOf(frame.stream)) clearTyping(frame.stream);
    renderInbox();
    if (frame.stream === state.open) { renderMessages(); markRead(); }
  }

  /** Unread = the shopper's messages after the staff read position, counted from the messages held
   * when they cover that range; otherwise the hub's count (chat.list) plus live arrivals stands. */
  function recount(c) {
    const msgs = state.messages.get(c.stream);
    const s = state.streams.get(c.stream);
    if (!msgs || !msgs.size || !s || s.seq < c.head || Math.min(...msgs.keys()) > c.read_seq + 1) return;
    const shopper = shopperOf(c.stream);
    c.unread = [...msgs.values()].filter((m) => m.seq > c.read_seq && m.author === shopper).length;
  }

  async function openConversation(stream) {
    state.open = stream;
    $("message").disabled = false;
    $("send").disabled = false;
    renderInbox();
    renderChatHeader();
    renderMessages();
    if (live() && !state.streams.has(stream)) {
      try { await loadHistory(stream); } catch (err) { if (!(err instanceof Offline)) toast({ title: err.message }); }
    }
    markRead();
  }

  /** The newest page of a conversation; from then on its cursor follows live frames and catch-up. */
  async function loadHistory(stream) {
    const s = hold(stream);
    s.busy = true; // live frames meanwhile wait in the buffer
    try {
      const page = await call("chat.history", { stream, limit: HISTORY_PAGE });
      const msgs = new Map();
      for (const f of page.entries) msgs.set(f.seq, f);
      state.messages.set(stream, msgs);
      state.hasOlder.set(stream, page.has_more);
      s.epoch = page.epoch || null;
      s.seq = page.entries.length ? page.entries[page.entries.length - 1].seq : 0;
    } catch (err) {
      state.streams.delete(stream);
      throw err;
    } finally {
      s.busy = false;
    }
    for (const frame of s.buf.splice(0).sort((a, b) => a.seq - b.seq)) onDurable(frame);
    renderMessages(true);
  }

  async function loadOlder() {
    const stream = state.open;
    const msgs = state.messages.get(stream);
    if (!stream || !msgs || !msgs.size) return;
    const oldest = Math.min(...msgs.keys());
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    try {
      const page = await call("chat.history", { stream, before: oldest, limit: HISTORY_PAGE });
      for (const f of page.entries) if (!msgs.has(f.seq)) msgs.set(f.seq, f);
      state.hasOlder.set(stream, page.has_more);
    } catch (err) {
      if (!(err instanceof Offline)) toast({ title: err.message });
      return;
    }
    renderMessages();
    list.scrollTop = list.scrollHeight - fromBottom;
  }

  let readTimer = null;
  /** Tell the hub (and so the shopper) that staff have seen the open conversation up to its cursor. */
  function markRead() {
    clearTimeout(readTimer);
    readTimer = setTimeout(async () => {
      const stream = state.open;
      const s = stream && state.streams.get(stream);
      if (!s || !live() || document.visibilityState !== "visible") return;
      const c = conv(stream);
      if (s.seq <= c.read_seq && c.unread === 0) return;
      const seq = s.seq;
      try {
        await call("chat.read", { stream, seq });
        c.read_seq = Math.max(c.read_seq, seq);
        if (c.read_seq >= c.head) c.unread = 0;
        recount(c);
        renderInbox();
      } catch { /* retried on the next message, focus or reconnect */ }
    }, 250);
  }

  function onRead(frame) {
    const c = conv(frame.stream);
    if (frame.party === myParty()) {
      c.read_seq = Math.max(c.read_seq, frame.seq);
      if (c.read_seq >= c.head) c.unread = 0;
      recount(c);
      renderInbox();
    } else if (frame.seq > c.peer_read_seq) {
      c.peer_read_seq = frame.seq;
      if (frame.stream === state.open) renderMessages();
    }
  }

  function onTyping(frame) {
    if (frame.role === "staff") return;
    state.typing.set(frame.stream, { user: frame.user, until: Date.now() + TYPING_SHOWN_MS });
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
  }

  function clearTyping(stream) {
    state.typing.delete(stream);
    renderTyping();
  }

  function typingIn(stream) {
    const t = state.typing.get(stream);
    return t && t.until > Date.now() ? t : null;
  }

  function sendTyping() {
    const now = Date.now();
    if (!state.open || !live() || now - state.lastTypingSent < TYPING_SEND_MS) return;
    state.lastTypingSent = now;
    state.socket.emit("chat.typing", { stream: state.open }, () => {});
  }

  // ------------------------------------------------------------------ outbox

  function saveOutbox() {
    sessionStorage.setItem(outboxKey(), JSON.stringify(state.outbox));
  }

  function enqueue(stream, text) {
    state.outbox.push({ client_id: ulid(), stream, text, state: "queued", error: null, ts: Date.now() });
    saveOutbox();
    renderMessages(true);
    flush();
  }

  /** Send queued messages one at a time, oldest first, while connected. */
  async function flush() {
    if (state.flushing) return;
    state.flushing = true;
    try {
      while (live()) {
        const item = state.outbox.find((i) => i.state !== "failed");
        if (!item) break;
        item.state = "sending";
        renderOutboxStates();
        let ack;
        try {
          ack = await call("chat.send", { stream: item.stream, client_id: item.client_id, text: item.text });
        } catch (err) {
          if (err instanceof HubError && !err.temporary) {
            item.state = "failed";
            item.error = err.message;
            saveOutbox();
            renderMessages();
            continue;
          }
          item.state = "queued";
          renderOutboxStates();
          if (err instanceof HubError) setTimeout(flush, 2000);
          break;
        }
        const msgs = state.messages.get(item.stream);
        const shown = msgs && msgs.has(ack.seq);
        if (settleOutbox(item.client_id) && !shown) {
          state.sent.set(item.client_id, { stream: item.stream, seq: ack.seq, text: item.text });
        }
        if (item.stream === state.open) renderMessages();
      }
    } finally {
      state.flushing = false;
    }
  }

  /** The message is stored on the hub (acked, or seen as a frame): it leaves the outbox. */
  function settleOutbox(clientId) {
    state.sent.delete(clientId);
    const before = state.outbox.length;
    state.outbox = state.outbox.filter((i) => i.client_id !== clientId);
    if (state.outbox.length === before) return false;
    saveOutbox();
    return true;
  }

  function discard(clientId) {
    state.outbox = state.outbox.filter((i) => i.client_id !== clientId);
    saveOutbox();
    renderMessages();
  }

  // ------------------------------------------------------------------ stock

  async function watchStock() {
    const boutique = state.me.boutique;
    const stream = `inv:${boutique}`;
    let snap = await call("stock.watch", { boutique_id: boutique });
    const s = hold(stream);
    s.epoch = snap.epoch || null;
    s.seq = snap.head;
    for (;;) {
      for (const item of snap.items) mergeStockItem(item);
      if (!snap.has_more) break;
      snap = await call("stock.levels", { boutique_id: boutique, after: snap.next_after });
    }
    renderStock();
  }

  function mergeStockItem(item) {
    const old = state.stock.get(item.sku);
    if (old && old.version > item.version) return;
    state.stock.set(item.sku, { clear: old ? old.clear : null, ...item });
  }

  /** Keep, per SKU, the state with the highest version; the low flag follows the hub's hysteresis. */
  function applyStock(frame) {
    if (frame.boutique_id !== state.me.boutique) return;
    const item = state.stock.get(frame.sku)
      || { sku: frame.sku, level: 0, version: 0, low: false, threshold: null, clear: null, updated_ts: 0 };
    if (frame.version <= item.version) return;
    Object.assign(item, { level: frame.level, version: frame.version, updated_ts: frame.ts });
    if (item.threshold == null) item.low = false;
    else if (item.level <= item.threshold) item.low = true;
    else if (item.level >= (item.clear ?? item.threshold + Math.max(1, Math.floor(item.threshold / 5)))) {
      item.low = false;
    }
    state.stock.set(frame.sku, item);
    renderStock(frame.sku);
  }

  async function stockUpdate(update) {
    const event = { ...update, event_id: ulid(), boutique_id: state.me.boutique };
    try {
      const reply = await call("stock.update", { updates: [event] });
      const out = reply.results[0];
      const item = state.stock.get(out.sku);
      if (!item || out.version > item.version) {
        applyStock({ boutique_id: out.boutique_id, sku: out.sku, level: out.level, version: out.version, ts: Date.now() });
      }
    } catch (err) {
      toast({ category: "system", title: `Stock not changed: ${err.message}` });
    }
  }

  async function setThreshold(sku, raw) {
    const low = raw === "" ? null : Number(raw);
    try {
      const item = await call("stock.threshold", { boutique_id: state.me.boutique, sku, low });
      mergeStockItem(item);
      const kept = state.stock.get(sku);
      kept.threshold = item.threshold;
      kept.low = kept.version === item.version ? item.low : kept.low;
      renderStock();
    } catch (err) {
      toast({ category: "system", title: `Alert level not saved: ${err.message}` });
      renderStock();
    }
  }

  // ------------------------------------------------------------------ notifications

  function applyNote(frame, isLive) {
    const key = `${frame.stream}:${frame.seq}`;
    if (state.notes.has(key)) return;
    state.notes.set(key, frame);
    queueAck(frame.stream, frame.seq);
    if (isLive) {
      state.inboxUnread.set(frame.stream, frame.badge);
      if (frame.alert !== false) toast(frame);
    } else if (state.reconnected) {
      state.missed += 1;
    }
    renderNotes();
  }

  function queueAck(stream, seq) {
    if (!state.pendingAcks.has(stream)) state.pendingAcks.set(stream, new Set());
    state.pendingAcks.get(stream).add(seq);
    if (state.ready) sendAcks();
  }

  let ackTimer = null;
  /** notify.ack what this console has shown, so the hub stops redelivering it. */
  function sendAcks() {
    clearTimeout(ackTimer);
    ackTimer = setTimeout(async () => {
      for (const [stream, seqs] of state.pendingAcks) {
        if (!seqs.size) continue;
        const batch = [...seqs].slice(0, 500);
        try {
          await call("notify.ack", { stream, seqs: batch });
          for (const seq of batch) seqs.delete(seq);
        } catch { return; }
      }
    }, 300);
  }

  async function markNotesRead() {
    for (const stream of state.streams.keys()) {
      if (!stream.startsWith("inbox:")) continue;
      try {
        const badge = await call("notify.read", { stream, seq: state.streams.get(stream).seq });
        state.inboxUnread.set(stream, badge.badge);
      } catch (err) {
        if (!(err instanceof Offline)) toast({ category: "system", title: err.message });
      }
    }
    renderNotes();
  }

  function toast(note) {
    const category = note.category || "system";
    const close = h("button", { type: "button", textContent: "✕", attrs: { "aria-label": "Dismiss" } });
    const node = h("div", { className: "toast", attrs: { "data-category": category } },
      h("p", { className: "title" }, h("span", { className: "cat", textContent: CATEGORY_LABEL[category] || category }), note.title),
      close,
      note.body ? h("p", { className: "body", textContent: note.body }) : null);
    close.addEventListener("click", () => node.remove());
    $("toasts").append(node);
    setTimeout(() => node.remove(), TOAST_MS);
  }

  // ------------------------------------------------------------------ rendering

  function renderAll() {
    renderInbox();
    renderChatHeader();
    renderMessages();
    renderStock();
    renderNotes();
  }

  /** Replace `parent`'s children with `nodes` (reused elements), keeping keyboard focus where it was. */
  function placeChildren(parent, nodes) {
    const current = parent.children;
    if (current.length === nodes.length && nodes.every((n, i) => current[i] === n)) return;
    const focused = document.activeElement;
    parent.replaceChildren(...nodes);
    if (focused && focused !== document.body && parent.contains(focused)) focused.focus();
  }

  const convNodes = new Map(); // chat stream -> <li> with its button

  function renderInbox() {
    const convs = [...state.convs.values()].sort((a, b) => b.last_ts - a.last_ts || a.stream.localeCompare(b.stream));
    const rows = convs.map((c) => {
      let li = convNodes.get(c.stream);
      if (!li) {
        const button = h("button", { type: "button" });
        button.addEventListener("click", () => openConversation(c.stream));
        li = h("li", { attrs: { "data-stream": c.stream } }, button);
        convNodes.set(c.stream, li);
      }
      const button = li.firstChild;
      const typing = typingIn(c.stream);
      button.setAttribute("aria-current", String(c.stream === state.open));
      const parts = [
        h("span", { className: "name", textContent: shopperOf(c.stream) }),
        h("span", { className: "when", textContent: c.last_ts ? clock(c.last_ts) : "" }),
        typing ? h("span", { className: "typing-now", textContent: "typing…" })
          : h("span", { className: "preview", textContent: c.preview || " " }),
      ];
      if (c.unread > 0) {
        parts.push(h("span", { className: "count unread", textContent: String(c.unread), attrs: { "aria-label": `${c.unread} unread` } }));
      }
      button.replaceChildren(...parts);
      return li;
    });
    placeChildren($("conversations"), rows);
    $("no-conversations").hidden = rows.length > 0;
    const total = convs.reduce((n, c) => n + c.unread, 0);
    $("inbox-unread").hidden = total === 0;
    $("inbox-unread").textContent = String(total);
  }

  function renderChatHeader() {
    $("chat-title").textContent = state.open ? `Chat with ${shopperOf(state.open)}` : "Select a conversation";
    renderTyping();
  }

  function renderTyping() {
    const t = state.open && typingIn(state.open);
    $("typing").textContent = t ? `${t.user} is typing…` : "";
    renderInbox();
  }

  const messageNodes = new Map(); // DOM key -> <li>, reused across renders

  function messageNode(key, build) {
    let node = messageNodes.get(key);
    if (!node) { node = build(); messageNodes.set(key, node); }
    return node;
  }

  function receipt(seq) {
    const c = state.convs.get(state.open);
    return c && seq <= c.peer_read_seq ? "Seen" : "Sent";
  }

  /** One <li> per (stream, seq), then the acked-but-not-yet-applied and queued messages, in order. */
  function renderMessages(scrollToEnd = false) {
    const list = $("messages");
    const stream = state.open;
    $("older").hidden = !stream || !state.hasOlder.get(stream);
    if (!stream) { list.replaceChildren(); return; }
    const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    const msgs = [...(state.messages.get(stream) || new Map()).values()].sort((a, b) => a.seq - b.seq);
    const nodes = [];
    for (const m of msgs) {
      const mine = m.author_role === "staff";
      const node = messageNode(`${m.stream}:${m.seq}`, () => h("li", {
        className: mine ? "msg mine" : "msg",
        attrs: { "data-key": `${m.stream}:${m.seq}`, "data-client-id": m.client_id },
      }, h("p", { className: "text", textContent: m.text }),
      h("p", { className: "meta" }, `${mine ? m.author : shopperOf(m.stream)} · ${clock(m.ts)}`,
        mine ? h("span", { className: "receipt" }) : null)));
      const r = node.querySelector(".receipt");
      if (r) r.textContent = ` · ${receipt(m.seq)}`;
      nodes.push(node);
    }
    for (const [clientId, s] of state.sent) {
      if (s.stream !== stream) continue;
      const held = state.messages.get(stream);
      if (held && held.has(s.seq)) { state.sent.delete(clientId); continue; } // history now holds it
      nodes.push(messageNode(`sent:${clientId}`, () => h("li", {
        className: "msg mine", attrs: { "data-client-id": clientId, "data-state": "sent" },
      }, h("p", { className: "text", textContent: s.text }), h("p", { className: "meta", textContent: "Sent" }))));
    }
    for (const item of state.outbox) {
      if (item.stream !== stream) continue;
      nodes.push(messageNode(`out:${item.client_id}`, () => {
        const node = h("li", { className: "msg mine", attrs: { "data-client-id": item.client_id } },
          h("p", { className: "text", textContent: item.text }),
          h("p", { className: "meta" }, h("span", { className: "state" })));
        return node;
      }));
    }
    list.replaceChildren(...nodes);
    const keep = new Set(nodes);
    for (const [key, node] of messageNodes) if (!keep.has(node)) messageNodes.delete(key);
    renderOutboxStates();
    if (scrollToEnd || nearEnd) list.scrollTop = list.scrollHeight;
  }

  const OUTBOX_LABEL = {
    queued: "Queued: sends when online",
    sending: "Sending…",
    failed: "Not sent",
  };

  function renderOutboxStates() {
    for (const item of state.outbox) {
      const node = messageNodes.get(`out:${item.client_id}`);
      if (!node) continue;
      const shown = item.state === "sending" && !live() ? "queued" : item.state;
      node.className = `msg mine ${shown}`;
      node.dataset.state = shown;
      const label = node.querySelector(".state");
      label.textContent = item.error ? `${OUTBOX_LABEL[shown]}: ${item.error}` : OUTBOX_LABEL[shown];
      if (shown === "failed" && !node.querySelector("button")) {
        const button = h("button", { type: "button", className: "secondary", textContent: "Discard" });
        button.addEventListener("click", () => discard(item.client_id));
        label.after(" ", button);
      }
    }
  }

  const stockRows = new Map(); // sku -> {row, level, threshold}

  function stockRow(sku) {
    let r = stockRows.get(sku);
    if (r) return r;
    const minus = h("button", { type: "button", className: "secondary", textContent: "−1", attrs: { "aria-label": `Remove one ${sku}` } });
    const plus = h("button", { type: "button", className: "secondary", textContent: "+1", attrs: { "aria-label": `Add one ${sku}` } });
    const levelInput = h("input", { type: "number", min: "0", step: "1", attrs: { "aria-label": `New level for ${sku}` } });
    const set = h("button", { type: "button", textContent: "Set", attrs: { "aria-label": `Set level of ${sku}` } });
    const threshold = h("input", {
      type: "number", min: "0", step: "1",
      attrs: { "aria-label": `Low-stock alert level for ${sku}`, placeholder: "off" },
    });
    minus.addEventListener("click", () => stockUpdate({ type: "stock.adjust", sku, delta: -1 }));
    plus.addEventListener("click", () => stockUpdate({ type: "stock.adjust", sku, delta: 1 }));
    const doSet = () => {
      if (levelInput.value === "" || !levelInput.checkValidity()) return;
      stockUpdate({ type: "stock.set", sku, level: Number(levelInput.value) });
      levelInput.value = "";
    };
    set.addEventListener("click", doSet);
    levelInput.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); doSet(); } });
    threshold.addEventListener("change", () => { if (threshold.checkValidity()) setThreshold(sku, threshold.value); });
    const level = h("td", { className: "level" });
    const row = h("tr", { attrs: { "data-sku": sku } },
      h("th", { scope: "row", className: "sku", textContent: sku }),
      level,
      h("td", {}, threshold),
      h("td", {}, h("div", { className: "changes" }, minus, plus, levelInput, set)));
    r = { row, level, threshold };
    stockRows.set(sku, r);
    return r;
  }

  function renderStock(flashSku) {
    const items = [...state.stock.values()].sort((a, b) => a.sku.localeCompare(b.sku));
    const rows = items.map((item) => {
      const r = stockRow(item.sku);
      r.level.textContent = String(item.level);
      r.row.classList.toggle("low", item.low);
      if (document.activeElement !== r.threshold) r.threshold.value = item.threshold ?? "";
      if (item.sku === flashSku) {
        r.row.classList.remove("flash");
        void r.row.offsetWidth; // restart the animation
        r.row.classList.add("flash");
      }
      return r.row;
    });
    placeChildren($("stock-body"), rows);
    $("no-stock").hidden = rows.length > 0;
    const low = items.filter((i) => i.low);
    $("low-count").textContent = String(low.length);
    $("low-list").replaceChildren(...low.map((i) => h("li", {
      textContent: `${i.sku}: ${i.level} left (alert at ${i.threshold})`, attrs: { "data-sku": i.sku },
    })));
    renderStockControls();
  }

  function renderStockControls() {
    const off = !live();
    for (const node of document.querySelectorAll("#stock-body button, #stock-body input, #stock-add button")) {
      node.disabled = off;
    }
  }

  function renderNotes() {
    const notes = [...state.notes.values()].sort((a, b) => b.ts - a.ts || b.seq - a.seq).slice(0, 200);
    const items = notes.map((n) => {
      const s = state.streams.get(n.stream);
      const unread = (state.inboxUnread.get(n.stream) || 0) > 0 && s && n.seq > s.seq - (state.inboxUnread.get(n.stream) || 0);
      return h("li", {
        className: unread ? "note unread" : "note",
        attrs: { "data-key": `${n.stream}:${n.seq}`, "data-category": n.category },
      },
      h("p", { className: "title" }, h("span", { className: "cat", textContent: CATEGORY_LABEL[n.category] || n.category }), n.title),
      n.body ? h("p", { className: "body", textContent: n.body }) : null,
      h("p", { className: "meta", textContent: `${clock(n.ts)}${n.stream.startsWith("inbox:b:") ? " · boutique" : " · you"}` }));
    });
    $("notifications").replaceChildren(...items);
    $("no-notes").hidden = items.length > 0;
    renderNotesCount();
  }

  function renderNotesCount() {
    const total = [...state.inboxUnread.values()].reduce((a, b) => a + b, 0);
    $("notes-unread").hidden = total === 0;
    $("notes-unread").textContent = String(total);
  }

  // ------------------------------------------------------------------ wiring

  function start() {
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      // After a session ended (e.g. its token expired), start from a clean page with the new token;
      // messages still queued for the same user stay in sessionStorage and go out after sign-in.
      if (state.hadSession) location.reload();
      else connect(token);
    });
    $("signout").addEventListener("click", () => {
      if (state.outbox.length && !confirm(`${state.outbox.length} unsent message(s) will be discarded. Sign out?`)) return;
      if (state.me) sessionStorage.removeItem(outboxKey());
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("message").value;
      if (!state.open || !text.trim()) return;
      $("message").value = "";
      enqueue(state.open, text);
    });
    $("message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("message").addEventListener("input", sendTyping);
    $("older").addEventListener("click", loadOlder);
    $("notes-read").addEventListener("click", markNotesRead);
    $("stock-add").addEventListener("submit", (e) => {
      e.preventDefault();
      stockUpdate({ type: "stock.set", sku: $("new-sku").value.trim(), level: Number($("new-level").value) });
      $("new-sku").value = "";
      $("new-level").value = "";
    });
    document.addEventListener("visibilitychange", markRead);
    window.addEventListener("focus", markRead);

    const token = tokenFromFragment() ?? sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      connect(token);
    } else {
      showSignIn("");
    }
  }

  start();
})();
