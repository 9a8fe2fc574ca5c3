// Browser client of docs/PROTOCOL.md. Model output is rendered by markdown.js with DOM APIs only;
// user text goes in with textContent. Nothing here assigns innerHTML.
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"), sidebar: $("sidebar"), sessions: $("sessions"), noSessions: $("no-sessions"), newChat: $("new-chat"),
  backdrop: $("backdrop"), menu: $("menu"), title: $("chat-title"), conn: $("conn"), connText: $("conn-text"),
  banner: $("banner"), bannerText: $("banner-text"), retry: $("retry"), scroller: $("scroller"), empty: $("empty"),
  messages: $("messages"), composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  jump: $("jump"), announce: $("announce"),
};

// ---- hidden settings: sampling fields from the query string, e.g. /?max_tokens=64&temperature=0
const settings = {};
const query = new URLSearchParams(location.search);
for (const [key, isInt] of [["max_tokens", 1], ["temperature", 0], ["top_p", 0], ["top_k", 1], ["seed", 1]]) {
  const value = query.get(key) === null || query.get(key) === "" ? NaN : Number(query.get(key));
  if (Number.isFinite(value) && (!isInt || Number.isInteger(value))) settings[key] = value;
}

// ---- this browser's sessions: [{session_id, resume_token, title, updated, notes: {turnNo: note}}]
const STORE = "chatserver.chat.sessions", CURRENT = "chatserver.current";

function loadSessions() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(list) ? list.filter((s) => s && typeof s.session_id === "string" && typeof s.resume_token === "string") : [];
  } catch { return []; }
}
/** Read-modify-write, so that two tabs do not undo each other's changes. */
function updateSessions(change) {
  const list = loadSessions();
  const result = change(list);
  try { localStorage.setItem(STORE, JSON.stringify(list)); } catch { /* storage full or disabled */ }
  renderSidebar(list);
  return result;
}
const findSession = (id, list = loadSessions()) => list.find((s) => s.session_id === id);

(function migrateOldPage() {  // the previous page kept one session under this key
  try {
    const old = JSON.parse(localStorage.getItem("chatserver.session") || "null");
    if (old && old.session_id && old.resume_token && !findSession(old.session_id)) {
      updateSessions((list) => list.push({ ...old, title: "Earlier chat", updated: Date.now(), notes: {} }));
    }
    localStorage.removeItem("chatserver.session");
  } catch { /* ignore */ }
})();

// ---- state
let ws = null;              // the open (or opening) WebSocket
let attempt = 0;            // failed connection attempts in a row
let retryTimer = 0, retryAt = 0, countdown = 0;
let wanted = null;          // the session to show: {session_id, resume_token} or null for a new one
let current = null;         // the session the server attached us to
let helloSent = null;       // the hello awaiting its session frame: {target}
let turns = 0;              // user messages in the displayed transcript
let turn = null;            // running turn: {session_id, turnNo, view, text, userView, content, turnId, seq}
let resumable = null;       // the turn a dropped connection cut off: resumed from its last seq on reconnect
let lastCancelAt = 0;
let sendWhenReady = false;  // Enter pressed while the hello was still unanswered: send once it is
let pendingNotice = null;   // shown once the next transcript is rendered
let stick = true, lastTop = 0, frame = 0;

// ---- connection
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
const isOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;

function connect() {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  if (ws) return;
  setConn(attempt ? "reconnecting" : "connecting");
  const sock = new WebSocket(wsUrl);
  ws = sock;
  sock.onopen = () => {
    if (ws !== sock) return;
    attempt = 0;
    setConn("connected");
    hello(wanted);
  };
  sock.onmessage = (event) => {
    if (ws !== sock) return;
    let f;
    try { f = JSON.parse(event.data); } catch { return; }
    if (f.type === "session") onSession(f);
    else if (f.type === "turn") onTurnStarted(f);
    else if (f.type === "token") onToken(f);
    else if (f.type === "done") onDone(f);
    else if (f.type === "error") onError(f);
  };
  sock.onclose = () => { if (ws === sock) dropped(); };
}

function dropped() {
  ws = null;
  sendWhenReady = false;
  helloSent = null;
  current = null;  // the next connection must say hello again (to `wanted`)
  if (turn) suspendTurn();
  scheduleReconnect();
}

function scheduleReconnect() {
  const base = Math.min(10000, 500 * 2 ** attempt);  // 0.5 s doubling to 10 s ...
  const delay = Math.min(10000, base * (0.75 + Math.random() * 0.5));  // ... with jitter
  attempt++;
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(connect, delay);
  setConn(navigator.onLine === false || attempt > 6 ? "offline" : "reconnecting");
  countdown = setInterval(updateBanner, 1000);
}

function setConn(state) {
  ui.conn.dataset.state = state;
  ui.connText.textContent = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" }[state];
  updateBanner();
  updateComposer();
}

function updateBanner() {
  const state = ui.conn.dataset.state;
  ui.banner.hidden = state === "connected" || state === "connecting";
  if (ui.banner.hidden) return;
  const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
  ui.banner.dataset.state = state;
  ui.bannerText.textContent = (state === "offline" ? "You are offline or the server is down." : "Connection lost.")
    + (ws ? " Reconnecting…" : ` Reconnecting in ${secs} s.`);
}

function send(frame) {
  if (!isOpen()) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function hello(target, resume = true) {
  const frame = target ? { type: "hello", session_id: target.session_id, resume_token: target.resume_token } : { type: "hello" };
  const cut = resume && target && resumable && resumable.session_id === target.session_id && resumable.turnId ? resumable : null;
  if (cut) frame.last_seq = { turn_id: cut.turnId, seq: cut.seq };  // the frames after it follow the session frame
  helloSent = { target, withSeq: !!cut };
  send(frame);
  updateComposer();
}

// ---- frames
function onSession(f) {
  helloSent = null;
  current = wanted = { session_id: f.session_id, resume_token: f.resume_token };
  try { localStorage.setItem(CURRENT, f.session_id); } catch { /* ignore */ }
  const cut = resumable && resumable.session_id === f.session_id ? resumable : null;
  if (cut) resumable = null;
  if (cut && !(f.turn && f.turn.turn_id === cut.turnId)) noteEndedAway(f.messages, cut);
  const entry = findSession(f.session_id);
  renderTranscript(f.messages, entry ? entry.notes || {} : {});  // the server's transcript is authoritative
  if (f.turn) followTurn(f.turn, f.messages, cut);  // its answer is not in messages: its frames follow
  renderSidebar();
  updateComposer();
  if (sendWhenReady) { sendWhenReady = false; sendMessage(); }
}

/** The answer `cut` was streaming ended while the page was away (it is in the transcript): keep how it
 *  ended with the chat; "cancelled" by the server (a shutdown), not by this page, reads as interrupted. */
function noteEndedAway(messages, cut) {
  let n = -1;
  const m = messages.find((x) => (x.role === "user" ? (n++, false) : x.role === "assistant" && n === cut.turnNo));
  if (!m) return;
  const note = { finish: m.finish_reason === "cancelled" && !cut.cancelled ? "interrupted" : m.finish_reason };
  updateSessions((list) => {
    const entry = findSession(cut.session_id, list);
    if (entry) (entry.notes ||= {})[cut.turnNo] = note;
  });
}

/** A turn of this session runs (or ended since `cut` was streaming): show its answer as its frames come,
 *  continuing the text `cut` already holds when it is the same turn (the server sends only what follows). */
function followTurn(t, messages, cut) {
  const same = cut && cut.turnId === t.turn_id;
  const users = ui.messages.querySelectorAll(".msg.user");
  const asked = messages.filter((m) => m.role === "user");
  hideEmpty();
  const view = addAssistant("streaming");
  turn = { session_id: current.session_id, turnNo: turns - 1, view, userView: users[users.length - 1] || null,
           content: asked.length ? asked[asked.length - 1].content : "", text: same ? cut.text : "",
           turnId: t.turn_id, seq: same ? cut.seq : -1 };
  if (turn.text) renderAnswer(view, turn.text);
  if (cut) announce("Reconnected: the answer continues.");
  stick = true;
  followBottom();
}

/** Another connection of this session (another tab) started a turn: follow it here too. */
function onTurnStarted(f) {
  if (turn || !current || helloSent) return;
  hideEmpty();
  const userView = addUser(f.content);
  const view = addAssistant("streaming");
  turn = { session_id: current.session_id, turnNo: turns++, view, text: "", userView, content: f.content,
           turnId: f.turn_id, seq: -1 };
  followBottom();
  updateComposer();
}

function onToken(f) {
  if (!turn || (turn.turnId && f.turn_id !== turn.turnId) || f.seq <= turn.seq) return;  // not ours, or shown
  turn.turnId = f.turn_id;
  turn.seq = f.seq;
  turn.text += f.text;
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; if (turn) { renderAnswer(turn.view, turn.text); followBottom(); } });
}

function onDone(f) {
  if (!turn || (turn.turnId && f.turn_id !== turn.turnId)) return;
  // cancelled, not by this page: by the server (shutdown, nobody connected for too long) or another tab
  const finish = f.finish_reason === "cancelled" && !turn.cancelled ? "interrupted" : f.finish_reason;
  finishTurn({ finish, usage: f.usage, timings: f.timings, cache: f.cache });
}

function onError(f) {
  const code = f.code || "error", message = f.message || "";
  if (helloSent) {
    const target = helloSent.target, withSeq = helloSent.withSeq;
    helloSent = null;
    if (withSeq && code === "bad_request") { resumable = null; hello(target, false); return; }  // resume without it
    if (target && (code === "unauthorized" || code === "session_not_found")) {
      updateSessions((list) => { const i = list.findIndex((s) => s.session_id === target.session_id); if (i >= 0) list.splice(i, 1); });
      wanted = current = null;
      clearTranscript();
      pendingNotice = "That chat is no longer available on the server, so it was removed from your list. This is a new chat.";
      hello(null);
      return;
    }
  }
  if (turn && f.turn_id && turn.turnId && f.turn_id !== turn.turnId) return;  // another turn's
  if (turn) {
    const t = turn;
    if (!t.text && !t.turnId && code !== "internal_error") {  // refused before it started: nothing was stored
      t.view.el.remove();
      t.userView.classList.add("failed");
      t.userView.title = "Not sent";
      turns--;
      if (!ui.input.value) ui.input.value = t.content;
      turn = null;
      updateComposer();
    } else {
      finishTurn({ finish: "error" });
    }
  } else if (code === "bad_request" && Date.now() - lastCancelAt < 5000) {
    return;  // our cancel crossed the turn's done frame
  }
  showError(`${code}: ${message}`);
  updateComposer();
}

// ---- turns
function sendMessage() {
  const content = ui.input.value;
  if (!content.trim()) return;
  if (!canSend()) { sendWhenReady = isOpen() && helloSent !== null && turn === null; return; }
  const session = current;
  updateSessions((list) => {
    let entry = findSession(session.session_id, list);
    if (!entry) {
      entry = { ...session, title: titleOf(content), notes: {} };
      list.push(entry);
    }
    entry.updated = Date.now();
  });
  hideEmpty();
  const userView = addUser(content);
  const view = addAssistant("streaming");
  turn = { session_id: session.session_id, turnNo: turns++, view, text: "", userView, content };
  send({ type: "user", content, ...settings });
  ui.input.value = "";
  autosize();
  setTitle();
  stick = true;
  followBottom();
  updateComposer();
}

function canSend() {
  return isOpen() && current !== null && helloSent === null && turn === null;
}

function cancelTurn() {
  if (!turn || turn.cancelled) return;
  turn.cancelled = true;
  lastCancelAt = Date.now();
  send({ type: "cancel" });
  updateComposer();
}

function finishTurn(note) {
  const t = turn;
  turn = null;
  cancelAnimationFrame(frame);
  frame = 0;
  renderAnswer(t.view, t.text);
  applyNote(t.view, note);
  updateSessions((list) => {
    const entry = findSession(t.session_id, list);
    if (entry) { entry.updated = Date.now(); (entry.notes ||= {})[t.turnNo] = note; }
  });
  followBottom();
  announce(note.finish === "cancelled" ? "Answer stopped." : note.finish === "interrupted" ? "Answer interrupted." : "Answer complete.");
  updateComposer();
}

/** Another chat is opened while this answer streams: stop showing it here. */
function leaveTurn() {
  turn = null;
  cancelAnimationFrame(frame);
  frame = 0;
}

/** The connection dropped mid-answer: show the answer as interrupted until the reconnect resumes it. */
function suspendTurn() {
  resumable = turn;
  turn = null;
  cancelAnimationFrame(frame);
  frame = 0;
  renderAnswer(resumable.view, resumable.text);
  applyNote(resumable.view, { finish: "interrupted" });
  announce("Connection lost.");
  updateComposer();
}


// ---- opening, creating and deleting chats
function openChat(target) {
  closeNav();
  if (target && current && target.session_id === current.session_id && !helloSent) return;
  if (!target && current && !findSession(current.session_id) && !turn && !helloSent) { ui.input.focus(); return; }  // already new
  wanted = target;
  current = null;
  clearTranscript();
  setTitle(target);
  renderSidebar();
  if (turn) leaveTurn();  // it goes on in its chat on the server, which stores it
  if (isOpen()) hello(target);
  ui.input.focus();
}

function deleteChat(id) {
  updateSessions((list) => { const i = list.findIndex((s) => s.session_id === id); if (i >= 0) list.splice(i, 1); });
  if ((current && current.session_id === id) || (wanted && wanted.session_id === id)) {
    current = null;  // not "already a new chat": it just lost its list entry
    openChat(null);
  }
  announce("Chat removed from this browser.");
}

// ---- rendering: transcript
function clearTranscript() {
  ui.messages.replaceChildren();
  turns = 0;
  ui.empty.hidden = false;
}
const hideEmpty = () => { ui.empty.hidden = true; };

function renderTranscript(messages, notes) {
  ui.messages.replaceChildren();
  turns = 0;
  for (const m of messages) {
    if (m.role === "user") {
      addUser(m.content);
      turns++;
    } else if (m.role === "assistant") {
      const view = addAssistant("done");
      renderAnswer(view, m.content);
      const note = notes[turns - 1] || (m.finish_reason ? { finish: m.finish_reason } : null);
      if (note) applyNote(view, note);
    }
  }
  ui.empty.hidden = messages.some((m) => m.role !== "system");
  if (pendingNotice) { showError(pendingNotice, "notice"); pendingNotice = null; }
  setTitle();
  stick = true;
  followBottom();
}

function addUser(text) {
  const el = document.createElement("div");
  el.className = "msg user";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  el.appendChild(bubble);
  ui.messages.appendChild(el);
  return el;
}

function addAssistant(state) {
  const el = document.createElement("div");
  el.className = "msg assistant";
  el.dataset.state = state;
  const body = document.createElement("div");
  body.className = "body md";
  const meta = document.createElement("div");
  meta.className = "meta";
  el.append(body, meta);
  ui.messages.appendChild(el);
  return { el, body, meta };
}

function renderAnswer(view, text) {
  view.body.replaceChildren(renderMarkdown(text));
}

const STATUS = { cancelled: "Stopped", interrupted: "Interrupted", length: "Reached the length limit", error: "Failed" };

function applyNote(view, note) {
  const state = note.finish === "stop" || note.finish === "length" ? "done" : note.finish;
  view.el.dataset.state = state;
  const parts = [];
  if (STATUS[note.finish]) parts.push([STATUS[note.finish], "status"]);
  if (note.usage) parts.push([`${note.usage.cached_tokens}/${note.usage.prompt_tokens} prompt tokens cached`, "cached"]);
  if (note.cache) parts.push([`cache: ${note.cache}`, "cache"]);
  if (note.timings) parts.push([`TTFT ${formatMs(note.timings.ttft_ms)}`, "ttft"]);
  view.meta.replaceChildren(...parts.map(([text, cls]) => {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    return span;
  }));
  if (note.usage) view.meta.title = `${note.usage.completion_tokens} tokens generated; prompt ${note.usage.prompt_tokens} tokens, `
    + `${note.usage.cached_tokens} of them reused from the session's KV cache (${note.cache})`;
}

const formatMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);

function showError(text, kind = "error") {
  hideEmpty();
  const el = document.createElement("div");
  el.className = "msg " + kind;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.textContent = text;
  ui.messages.appendChild(el);
  followBottom();
}

// ---- rendering: sidebar, title, composer
const titleOf = (text) => {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 48 ? line.slice(0, 47).trimEnd() + "…" : line;
};

function renderSidebar(list = loadSessions()) {
  list.sort((a, b) => (b.updated || 0) - (a.updated || 0));
  ui.noSessions.hidden = list.length > 0;
  const active = (current || wanted || {}).session_id;
  ui.sessions.replaceChildren(...list.map((s) => {
    const li = document.createElement("li");
    li.className = "session";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    if (s.session_id === active) { open.setAttribute("aria-current", "page"); li.classList.add("active"); }
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = s.title || "Untitled chat";
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = ago(s.updated);
    open.append(title, time);
    open.onclick = () => openChat({ session_id: s.session_id, resume_token: s.resume_token });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.setAttribute("aria-label", `Delete chat: ${s.title || "Untitled chat"}`);
    del.textContent = "×";
    del.onclick = () => {  // first click asks, second click deletes
      if (del.classList.contains("confirm")) return deleteChat(s.session_id);
      del.classList.add("confirm");
      del.textContent = "Delete";
      setTimeout(() => { del.classList.remove("confirm"); del.textContent = "×"; }, 3000);
    };
    li.append(open, del);
    return li;
  }));
}

function ago(t) {
  const s = (Date.now() - (t || 0)) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

function setTitle(target = current || wanted) {
  const entry = target && findSession(target.session_id);
  const title = entry ? entry.title : "New chat";
  ui.title.textContent = title;
  document.title = entry ? `${title} · chatserver` : "chatserver";
}

function updateComposer() {
  const running = turn !== null;
  ui.send.hidden = running;
  ui.stop.hidden = !running;
  ui.stop.disabled = running && !!turn.cancelled;
  ui.send.disabled = !canSend() || !ui.input.value.trim();
  ui.composer.setAttribute("aria-busy", String(running));
  updateJump();
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = Math.min(ui.input.scrollHeight, 200) + "px";
}

// ---- scrolling: follow the answer unless the person scrolled up
const nearBottom = () => ui.scroller.scrollHeight - ui.scroller.scrollTop - ui.scroller.clientHeight < 40;

function followBottom() {
  if (stick) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  lastTop = ui.scroller.scrollTop;
  updateJump();
}

function updateJump() {
  ui.jump.hidden = stick || nearBottom();
}

ui.scroller.addEventListener("scroll", () => {
  const top = ui.scroller.scrollTop;
  if (nearBottom()) stick = true;
  else if (top < lastTop - 2) stick = false;  // content growth never lowers scrollTop: the person scrolled up
  lastTop = top;
  updateJump();
}, { passive: true });

// ---- misc
function announce(text) { ui.announce.textContent = text; }

function closeNav() {
  ui.app.classList.remove("nav-open");
  ui.menu.setAttribute("aria-expanded", "false");
}

// ---- events
ui.composer.addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendMessage(); }
  else if (e.key === "Escape" && turn) cancelTurn();
});
ui.input.addEventListener("input", () => { autosize(); updateComposer(); });
ui.stop.addEventListener("click", cancelTurn);
ui.newChat.addEventListener("click", () => openChat(null));
ui.jump.addEventListener("click", () => { stick = true; followBottom(); });
ui.retry.addEventListener("click", () => { attempt = Math.min(attempt, 1); connect(); });
ui.menu.addEventListener("click", () => {
  const open = ui.app.classList.toggle("nav-open");
  ui.menu.setAttribute("aria-expanded", String(open));
});
ui.backdrop.addEventListener("click", closeNav);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeNav(); });
ui.messages.addEventListener("click", (e) => {
  const button = e.target.closest("button.copy");
  if (!button) return;
  const code = button.closest(".code").querySelector("pre").textContent;
  navigator.clipboard?.writeText(code).then(() => {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }, () => {});
});
window.addEventListener("online", () => { if (!ws) { attempt = Math.min(attempt, 1); connect(); } });
window.addEventListener("offline", () => {  // do not wait for a dead socket to time out
  if (ws) { const sock = ws; dropped(); sock.close(); } else setConn("offline");
});
window.addEventListener("storage", (e) => { if (e.key === STORE) { renderSidebar(); setTitle(); } });
setInterval(() => renderSidebar(), 60000);

// ---- start
const startId = (() => { try { return localStorage.getItem(CURRENT); } catch { return null; } })();
const start = startId && findSession(startId);
wanted = start ? { session_id: start.session_id, resume_token: start.resume_token } : null;
setTitle(wanted);
renderSidebar();
connect();
