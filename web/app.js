// The chat page (docs/UI.md), a client of docs/PROTOCOL.md: routes the socket's frames to the modules
// that handle them and wires the page's controls. Model output is rendered by markdown.js with DOM APIs
// only; every other text goes in with textContent. No module of web/ parses a string as HTML.
import { ui } from "./dom.js";
import { connect, goneOffline, hello, reconnectElsewhere, reconnectNow, setHandlers } from "./connection.js";
import { closeNav, onResumeRefused, onSessionDeleted, openChat } from "./chats.js";
import "./dialogs.js";
import { setEditorBusy } from "./editor.js";
import { updateExport } from "./export.js";
import { openSettings, setModelName } from "./settings.js";
import "./shortcuts.js";
import { markActive, renderSidebar, showTitle } from "./sidebar.js";
import { state } from "./state.js";
import { STORE_KEY, currentId, findSession, onSessionsChanged } from "./store.js";
import { onPath, onPendingError } from "./tree.js";
import { autosize, onComposerChange, onDone, onSession, onToken, onTurnError, onTurnStarted, resumeWithoutSeq, sendMessage,
  showError, suspendTurn, updateComposer, cancelTurn } from "./turns.js";

function onFrame(f) {
  if (f.type === "session") { setModelName(f.model); onSession(f); }
  else if (f.type === "turn") onTurnStarted(f);
  else if (f.type === "token") onToken(f);
  else if (f.type === "done") onDone(f);
  else if (f.type === "path") onPath(f);
  else if (f.type === "error") onError(f);
}

function onError(f) {
  const code = f.code || "error";
  if (code === "session_deleted") { onSessionDeleted(); return; }
  // a cluster: another replica serves the chat (a hello refused), or took it over (the socket closes, 4009)
  if (code === "session_elsewhere") { state.helloSent = null; reconnectElsewhere(f.retry_after); return; }
  if (code === "session_moved") { reconnectElsewhere(0); return; }
  if (state.helloSent && !f.turn_id) {  // the answer to our hello
    const { target, withSeq } = state.helloSent;
    state.helloSent = null;
    if (withSeq && code === "bad_request") { resumeWithoutSeq(target); return; }  // resume without last_seq
    if (target && (code === "unauthorized" || code === "session_not_found")) { onResumeRefused(target); return; }
  }
  if (onPendingError(f)) return;
  if (onTurnError(f, code)) return;
  showError(`${code}: ${f.message || ""}`);
  updateComposer();
}

setHandlers({
  frame: onFrame,
  opened: () => hello(state.wanted),
  dropped() {
    if (state.pending) { state.pending = null; setEditorBusy(false); }  // the session frame after reconnect tells what happened
    if (state.turn) suspendTurn();
  },
  changed: updateComposer,
});
onSessionsChanged(renderSidebar);
onComposerChange(() => { markActive(); showTitle(); updateExport(); });

// ---- controls
ui.composer.addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendMessage(); }
});
ui.input.addEventListener("input", () => { autosize(); updateComposer(); });
ui.stop.addEventListener("click", cancelTurn);
ui.newChat.addEventListener("click", () => openChat(null));
ui.openSettings.addEventListener("click", () => { closeNav(); openSettings(); });
ui.retry.addEventListener("click", reconnectNow);
ui.menu.addEventListener("click", () => {
  const open = ui.app.classList.toggle("nav-open");
  ui.menu.setAttribute("aria-expanded", String(open));
});
ui.backdrop.addEventListener("click", closeNav);
window.addEventListener("online", () => { if (!state.ws) reconnectNow(); });
window.addEventListener("offline", goneOffline);
window.addEventListener("storage", (e) => { if (e.key === STORE_KEY) renderSidebar(); });  // another tab changed the list

// ---- start: the chat shown last, if this browser still has it
const start = findSession(currentId());
state.wanted = start ? { session_id: start.session_id, resume_token: start.resume_token } : null;
renderSidebar();
updateComposer();
connect();
