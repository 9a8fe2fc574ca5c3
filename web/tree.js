// Branches of a conversation (docs/PROTOCOL.md): ↻ regenerate the last answer, ✎ edit a user message,
// ‹ n / m › switch to another version of a message. Each is sent as one frame; the server answers with a
// `path` frame (the new active path, and the turn that answers it, if any), to every tab of the chat.
// state.pending = {kind, view?, anchor?} from the frame sent until its path frame (or its error) comes.
import { ui } from "./dom.js";
import { send } from "./connection.js";
import { closeEditor, openEditor, setEditorBusy } from "./editor.js";
import { keepAt } from "./scroll.js";
import { sampling } from "./settings.js";
import { state } from "./state.js";
import { findSession } from "./store.js";
import { lastAnswer, onMessageAction, renderTranscript, showError } from "./transcript.js";
import { followTurn, isIdle, leaveTurn, updateComposer } from "./turns.js";

/** Ask for another answer to the message `view` (an answer) answers; default: the last answer. */
export function regenerate(view = lastAnswer()) {
  if (!view || view.id == null || !isIdle()) return;
  state.pending = { kind: "regenerate", view };
  view.el.classList.add("replacing");
  send({ type: "regenerate", message_id: view.id, ...sampling() });
  updateComposer();
}

function edit(view) {
  if (view.id == null || !isIdle()) return;
  openEditor(view, (content) => {
    if (!isIdle()) return;
    state.pending = { kind: "edit", view };
    setEditorBusy(true);
    send({ type: "edit", message_id: view.id, content, ...sampling() });
    updateComposer();
  });
}

/** Show the version `delta` (-1, +1) away from `view`'s message, keeping it where it is on screen. */
function switchVersion(view, delta) {
  const i = view.siblings.indexOf(view.id) + delta;
  if (!isIdle() || i < 0 || i >= view.siblings.length) return;
  const id = view.siblings[i];
  const offset = view.el.getBoundingClientRect().top - ui.scroller.getBoundingClientRect().top;
  state.pending = { kind: "switch", anchor: { id, offset } };
  send({ type: "switch", message_id: id });
  updateComposer();
}

onMessageAction((action, view) => {
  if (action === "regenerate") regenerate(view);
  else if (action === "edit") edit(view);
  else if (action === "prev") switchVersion(view, -1);
  else if (action === "next") switchVersion(view, 1);
});

/** The chat's active path changed (here or in another tab): show it, then the answer streaming on it. */
export function onPath(f) {
  if (!state.current || state.helloSent || !Array.isArray(f.messages)) return;  // a frame of the chat being left
  const mine = state.pending;
  state.pending = null;
  if (state.turn) leaveTurn();
  closeEditor();
  const entry = findSession(state.current.session_id);
  renderTranscript(f.messages, entry ? entry.notes || {} : {});
  if (f.turn_id) {
    followTurn(f.turn_id, f.messages);
  } else if (mine && mine.anchor) {
    const node = ui.messages.querySelector(`.msg[data-id="${mine.anchor.id}"]`);
    if (node) keepAt(node, mine.anchor.offset);
  }
  updateComposer();
}

/** An error frame while a regenerate/edit/switch awaits its path frame: that frame was refused, nothing
 *  changed. Returns true if it was that. */
export function onPendingError(f) {
  const p = state.pending;
  if (!p || f.turn_id) return false;
  state.pending = null;
  if (p.kind === "edit") setEditorBusy(false);
  if (p.view) p.view.el.classList.remove("replacing");
  showError(`${f.code || "error"}: ${f.message || ""}`);
  updateComposer();
  return true;
}
