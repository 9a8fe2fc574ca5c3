// Which chat the page shows: opening one from the list or a new one, and forgetting one that is gone from
// the server (deleted here, in another tab or by an operator, or unknown to it: the page then shows a
// new chat, it does not retry the dead one).
import { ui } from "./dom.js";
import { hello, isOpen } from "./connection.js";
import { closeEditor } from "./editor.js";
import { state } from "./state.js";
import { findSession, removeSession } from "./store.js";
import { clearTranscript } from "./transcript.js";
import { leaveTurn, updateComposer } from "./turns.js";

const deletedHere = new Set();  // session ids this page deleted: no "was deleted" notice for those

const shown = () => (state.current || state.wanted || {}).session_id;

/** Show chat `target` ({session_id, resume_token}), or a new chat when null. */
export function openChat(target) {
  closeNav();
  if (target && state.current && target.session_id === state.current.session_id && !state.helloSent) return;
  if (!target && state.current && !findSession(state.current.session_id) && !state.turn && !state.helloSent) {  // already new
    ui.input.focus();
    return;
  }
  state.wanted = target;
  state.current = null;
  state.pending = null;
  closeEditor();
  clearTranscript();
  if (state.turn) leaveTurn();  // it goes on in its chat on the server, which stores it
  if (isOpen()) hello(target);
  updateComposer();
  ui.input.focus();
}

/** Chat `id` no longer exists for this browser: drop it from the list; if it is shown, show a new chat
 *  with `notice` (none if null). */
export function forgetChat(id, notice = null) {
  removeSession(id);
  if (shown() === id) {
    state.current = null;  // not "already a new chat": it lost its list entry
    if (notice) state.pendingNotice = notice;
    openChat(null);
  }
}

/** Chat `id` is being deleted by this page (its own connection will hear session_deleted too). */
export const deletingHere = (id) => deletedHere.add(id);

/** `session_deleted` on the page's connection: the chat it is attached to was deleted (here, in another
 *  tab, or by an operator); the server closes the socket (4004) and the next connection starts a new chat. */
export function onSessionDeleted() {
  const id = state.attachedId;
  if (!id) return;
  state.gone = true;
  if (state.ws) state.ws.close();  // the server closes it too; its close starts the new chat (connection.js)
  if (state.wanted && state.wanted.session_id === id) state.wanted = null;
  const wasShown = shown() === id;
  removeSession(id);
  if (!wasShown) return;
  if (state.turn) leaveTurn();
  state.current = null;
  state.pending = null;
  closeEditor();
  clearTranscript();
  state.pendingNotice = deletedHere.has(id) ? null : "This chat was deleted, so it was removed from your list. This is a new chat.";
  updateComposer();
}

/** A resume refused with unauthorized or session_not_found: the chat is gone; show a new one. */
export function onResumeRefused(target) {
  removeSession(target.session_id);
  state.wanted = state.current = null;
  clearTranscript();
  state.pendingNotice = "That chat is no longer available on the server, so it was removed from your list. This is a new chat.";
  hello(null);
}

export function closeNav() {
  ui.app.classList.remove("nav-open");
  ui.menu.setAttribute("aria-expanded", "false");
}
