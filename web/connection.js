// The page's WebSocket to /ws (docs/PROTOCOL.md): connect, say hello, and after a drop reconnect with
// backoff: 0.5 s doubling to 10 s, each delay ±25 % jitter; after 6 failed attempts in a row (or when the
// browser reports it is offline) the indicator reads Offline and retries go on every ~10 s.
// What the frames mean is not decided here: they go to the handlers given to setHandlers().
// The socket of a known chat is opened at /ws?session=ID: in a cluster (docs/SCALING.md) the balancer reads
// the id there (a browser cannot set headers on a WebSocket) and sends the socket to the replica serving it.
import { ui } from "./dom.js";
import { state } from "./state.js";

const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
let handlers = { frame() {}, opened() {}, dropped() {}, changed() {} };
let retryTimer = 0, retryAt = 0, countdown = 0;
let nextDelay = null;  // ms: the next reconnect waits this long, not the backoff (the server said when)

/** frame(f): every frame; opened(): the socket is open (say hello); dropped(): it closed;
 *  changed(): the connection state changed (redraw what depends on it). */
export function setHandlers(h) { handlers = { ...handlers, ...h }; }

export const isOpen = () => state.ws !== null && state.ws.readyState === WebSocket.OPEN;

export function connect() {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  if (state.ws) return;
  setConn(state.attempt ? "reconnecting" : "connecting");
  const routedFor = state.wanted ? state.wanted.session_id : null;
  const sock = new WebSocket(routedFor ? `${wsBase}?session=${encodeURIComponent(routedFor)}` : wsBase);
  sock.routedFor = routedFor;
  state.ws = sock;
  sock.onopen = () => {
    if (state.ws !== sock) return;
    state.attempt = 0;
    setConn("connected");
    handlers.opened();
  };
  sock.onmessage = (event) => {
    if (state.ws !== sock) return;
    let f;
    try { f = JSON.parse(event.data); } catch { return; }
    if (f && typeof f === "object") handlers.frame(f);
  };
  sock.onclose = () => { if (state.ws === sock) dropped(); };
}

/** The socket closed (or is given up): forget what it was attached to, then connect again. */
export function dropped() {
  state.ws = null;
  state.sendWhenReady = false;
  state.helloSent = null;
  state.current = null;  // the next connection must say hello again (to `wanted`)
  state.attachedId = null;
  handlers.dropped();
  if (state.gone) {  // the session was deleted: a new chat, now, not a retry of the dead one
    state.gone = false;
    state.attempt = 0;
    connect();
  } else {
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  const base = Math.min(10000, 500 * 2 ** state.attempt);  // 0.5 s doubling to 10 s ...
  let delay = Math.min(10000, base * (0.75 + Math.random() * 0.5));  // ... with jitter
  if (nextDelay !== null) { delay = nextDelay; nextDelay = null; }
  state.attempt++;
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(connect, delay);
  setConn(navigator.onLine === false || state.attempt > 6 ? "offline" : "reconnecting");
  countdown = setInterval(updateBanner, 1000);
}

/** Try now instead of waiting for the backoff timer ("Retry now", the browser back online). */
export function reconnectNow() {
  state.attempt = Math.min(state.attempt, 1);
  connect();
}

function setConn(s) {
  ui.conn.dataset.state = s;
  ui.connText.textContent = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" }[s];
  updateBanner();
  handlers.changed();
}

function updateBanner() {
  const s = ui.conn.dataset.state;
  ui.banner.hidden = s === "connected" || s === "connecting";
  if (ui.banner.hidden) return;
  const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
  ui.banner.dataset.state = s;
  ui.bannerText.textContent = (s === "offline" ? "You are offline or the server is down." : "Connection lost.")
    + (state.ws ? " Reconnecting…" : ` Reconnecting in ${secs} s.`);
}

export function send(frame) {
  if (!isOpen()) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

/** Say hello to chat `target` ({session_id, resume_token}, or null for a new chat). Resuming the chat whose
 *  answer a drop cut off carries that turn's last seq, so only the missed frames follow (unless `resume`
 *  is false: after the server refused that last_seq). */
export function hello(target, resume = true) {
  const frame = target ? { type: "hello", session_id: target.session_id, resume_token: target.resume_token } : { type: "hello" };
  const cut = resume && target && state.resumable && state.resumable.session_id === target.session_id && state.resumable.turnId
    ? state.resumable : null;
  if (cut) frame.last_seq = { turn_id: cut.turnId, seq: cut.seq };
  state.helloSent = { target, withSeq: !!cut };
  send(frame);
  handlers.changed();
}

/** The chat `wanted` is served elsewhere (session_elsewhere: another replica of a cluster has it; or
 *  session_moved: it moved there): drop this socket and open one at /ws?session=<wanted>, which the
 *  balancer routes to the replica serving it, after `seconds` (at once when this socket was not opened for
 *  that chat: the balancer may well route the new one right). */
export function reconnectElsewhere(seconds) {
  const sock = state.ws;
  const routedRight = sock && state.wanted && sock.routedFor === state.wanted.session_id;
  nextDelay = routedRight ? Math.min(30000, Math.max(0, (Number(seconds) || 1) * 1000)) : 0;
  if (sock) { dropped(); sock.close(); } else scheduleReconnect();
}

/** The browser went offline: drop the socket now rather than wait for it to time out. */
export function goneOffline() {
  if (state.ws) { const sock = state.ws; dropped(); sock.close(); } else setConn("offline");
}
