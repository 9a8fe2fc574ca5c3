// Answers as they stream: sending a message, following a turn (this page's, another tab's, or one a
// dropped connection cut off), its end, its errors, Stop, and the composer's state.
// A turn is shown in state.turn = {session_id, turnNo, view, text, userView, content, turnId, seq, cancelled}:
// token frames of its turn_id with a seq above the last one shown are appended, others ignored.
import { announce, ui } from "./dom.js";
import { hello, isOpen, send } from "./connection.js";
import { sampling, systemPrompt } from "./settings.js";
import { state } from "./state.js";
import { findSession, saveNote, setCurrentId, updateSessions } from "./store.js";
import { addAssistant, addUser, applyNote, hideEmpty, noteKey, refreshActions, renderAnswer, renderTranscript, setIds, showError,
  viewOf } from "./transcript.js";
import { followBottom, stickToBottom, updateJump } from "./scroll.js";

let frame = 0;  // requestAnimationFrame id: the answer is re-rendered at most once per frame
let onIdleChange = () => {};
/** fn(): the page became busy or idle (redraw what depends on it, e.g. the title or the export button). */
export function onComposerChange(fn) { onIdleChange = fn; }

// ---- frames
export function onSession(f) {
  state.helloSent = null;
  state.current = state.wanted = { session_id: f.session_id, resume_token: f.resume_token };
  state.attachedId = f.session_id;
  setCurrentId(f.session_id);
  const cut = state.resumable && state.resumable.session_id === f.session_id ? state.resumable : null;
  if (cut) state.resumable = null;
  if (cut && !(f.turn && f.turn.turn_id === cut.turnId)) noteEndedAway(f.messages, cut);
  const entry = findSession(f.session_id);
  renderTranscript(f.messages, entry ? entry.notes || {} : {});  // the server's transcript is authoritative
  if (f.turn) followTurn(f.turn.turn_id, f.messages, cut && cut.turnId === f.turn.turn_id ? cut : null);
  if (cut && f.turn) announce("Reconnected: the answer continues.");
  updateComposer();
  if (state.sendWhenReady) { state.sendWhenReady = false; sendMessage(); }
}

/** The answer `cut` was streaming ended while the page was away (it is in the transcript): keep how it
 *  ended with the chat; "cancelled" by the server (a shutdown), not by this page, reads as interrupted. */
function noteEndedAway(messages, cut) {
  let n = -1;
  const m = messages.find((x) => (x.role === "user" ? (n++, false) : x.role === "assistant" && n === cut.turnNo));
  if (!m) return;
  saveNote(cut.session_id, noteKey(m.id, cut.turnNo), { finish: m.finish_reason === "cancelled" && !cut.cancelled ? "interrupted" : m.finish_reason });
}

/** Turn `turnId` of this session runs (or ended since `cut` was streaming it): show its answer as its
 *  frames come, after the transcript's last user message, continuing the text `cut` already holds. */
export function followTurn(turnId, messages, cut = null) {
  const users = ui.messages.querySelectorAll(".msg.user");
  const asked = messages.filter((m) => m.role === "user");
  hideEmpty();
  const view = addAssistant("streaming");
  state.turn = { session_id: state.current.session_id, turnNo: state.turns - 1, view,
                 userView: users.length ? viewOf(users[users.length - 1]) : null,
                 content: asked.length ? asked[asked.length - 1].content : "", text: cut ? cut.text : "",
                 turnId, seq: cut ? cut.seq : -1, cancelled: false };
  if (state.turn.text) renderAnswer(view, state.turn.text);
  stickToBottom();
  updateComposer();
}

/** Another connection of this session (another tab) started a plain turn: follow it here too. */
export function onTurnStarted(f) {
  if (state.turn || !state.current || state.helloSent) return;
  hideEmpty();
  const userView = addUser(f.content, { id: f.user_message_id });
  const view = addAssistant("streaming");
  state.turn = { session_id: state.current.session_id, turnNo: state.turns++, view, text: "", userView, content: f.content,
                 turnId: f.turn_id, seq: -1, cancelled: false };
  followBottom();
  updateComposer();
}

export function onToken(f) {
  const t = state.turn;
  if (!t || (t.turnId && f.turn_id !== t.turnId) || f.seq <= t.seq) return;  // not ours, or shown
  t.turnId = f.turn_id;
  t.seq = f.seq;
  t.text += f.text;
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; if (state.turn) { renderAnswer(state.turn.view, state.turn.text); followBottom(); } });
}

export function onDone(f) {
  const t = state.turn;
  if (!t || (t.turnId && f.turn_id !== t.turnId)) return;
  if (Number.isInteger(f.message_id)) {  // the server stored the answer: name it, and the message it answers
    setIds(t.view, f.message_id, f.siblings);
    if (t.userView && t.userView.role === "user" && t.userView.id == null && Number.isInteger(f.user_message_id)) {
      setIds(t.userView, f.user_message_id, [f.user_message_id]);
    }
  }
  // cancelled, not by this page: by the server (shutdown, nobody connected for too long) or another tab
  const finish = f.finish_reason === "cancelled" && !t.cancelled ? "interrupted" : f.finish_reason;
  finishTurn({ finish, usage: f.usage, timings: f.timings, cache: f.cache });
}

/** An error frame about a running turn (or a message refused before it started); true if it was one. */
export function onTurnError(f, code) {
  const t = state.turn;
  if (!t) {
    return code === "bad_request" && Date.now() - state.lastCancelAt < 5000;  // our cancel crossed the turn's done
  }
  if (f.turn_id && t.turnId && f.turn_id !== t.turnId) return true;  // another turn's
  if (!t.text && !t.turnId && code !== "internal_error") {  // refused before it started: nothing was stored
    t.view.el.remove();
    t.userView.el.classList.add("failed");
    t.userView.el.title = "Not sent";
    state.turns--;
    if (!ui.input.value) ui.input.value = t.content;
    state.turn = null;
    updateComposer();
  } else {
    finishTurn({ finish: "error" });
  }
  return false;
}

// ---- this page's actions
export function sendMessage() {
  const content = ui.input.value;
  if (!content.trim()) return;
  if (!canSend()) { state.sendWhenReady = isOpen() && state.helloSent !== null && state.turn === null; return; }
  const session = state.current;
  const first = state.turns === 0 && !ui.messages.querySelector(".msg.user, .msg.assistant, .msg.system");
  updateSessions((list) => {
    let entry = findSession(session.session_id, list);
    if (!entry) list.push(entry = { ...session, title: titleOf(content), notes: {} });
    entry.updated = Date.now();
  });
  hideEmpty();
  const userView = addUser(content);
  const view = addAssistant("streaming");
  state.turn = { session_id: session.session_id, turnNo: state.turns++, view, text: "", userView, content, cancelled: false };
  const system = first ? systemPrompt() : "";
  if (system) send({ type: "system", content: system });  // a new chat's system prompt goes before its first turn
  send({ type: "user", content, ...sampling() });
  ui.input.value = "";
  autosize();
  stickToBottom();
  updateComposer();
}

export const titleOf = (text) => {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 48 ? line.slice(0, 47).trimEnd() + "…" : line;
};

/** Connected to a chat, nothing streaming and no regenerate/edit/switch awaiting its answer. */
export const isIdle = () => isOpen() && state.current !== null && state.helloSent === null && state.turn === null && state.pending === null;
export const canSend = isIdle;

export function cancelTurn() {
  const t = state.turn;
  if (!t || t.cancelled) return;
  t.cancelled = true;
  state.lastCancelAt = Date.now();
  send({ type: "cancel" });
  updateComposer();
}

function finishTurn(note) {
  const t = state.turn;
  state.turn = null;
  cancelAnimationFrame(frame);
  frame = 0;
  renderAnswer(t.view, t.text);
  applyNote(t.view, note);
  saveNote(t.session_id, noteKey(t.view.id, t.turnNo), note);
  followBottom();
  announce(note.finish === "cancelled" ? "Answer stopped." : note.finish === "interrupted" ? "Answer interrupted." : "Answer complete.");
  updateComposer();
}

/** Stop showing the running answer here (another chat is opened; it goes on on the server). */
export function leaveTurn() {
  state.turn = null;
  cancelAnimationFrame(frame);
  frame = 0;
}

/** The connection dropped mid-answer: show the answer as interrupted until the reconnect resumes it. */
export function suspendTurn() {
  const t = state.turn;
  leaveTurn();
  state.resumable = t;
  renderAnswer(t.view, t.text);
  applyNote(t.view, { finish: "interrupted" });
  announce("Connection lost.");
  updateComposer();
}

/** Say hello again after a refused last_seq (resume without it). */
export function resumeWithoutSeq(target) {
  state.resumable = null;
  hello(target, false);
}

// ---- composer
export function updateComposer() {
  const running = state.turn !== null;
  ui.send.hidden = running;
  ui.stop.hidden = !running;
  ui.stop.disabled = running && state.turn.cancelled;
  ui.send.disabled = !canSend() || !ui.input.value.trim();
  ui.composer.setAttribute("aria-busy", String(running || state.pending !== null));
  refreshActions(isIdle());
  updateJump();
  onIdleChange();
}

export function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = Math.min(ui.input.scrollHeight, 200) + "px";
}

export { showError };
