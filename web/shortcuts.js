// Keyboard shortcuts, and the help dialog that lists them ("?" button, "?" key when not typing, Ctrl/⌘+/).
// Chosen not to clash with the browsers' own: Ctrl/⌘+Shift+R reloads, so regenerate is Alt+R (⌥R).
import { MOD, el, ui } from "./dom.js";
import { closeNav, openChat } from "./chats.js";
import { anyDialogOpen } from "./dialogs.js";
import { isEditing } from "./editor.js";
import { regenerate } from "./tree.js";
import { state } from "./state.js";
import { cancelTurn } from "./turns.js";

const ALT = MOD === "⌘" ? "⌥" : "Alt";
export const SHORTCUTS = [
  [[MOD, "Shift", "O"], "New chat"],
  [["Shift", "Esc"], "Focus the message box (also / when not typing)"],
  [["Esc"], "Stop the answer being written"],
  [[ALT, "R"], "Regenerate the last answer"],
  [["Enter"], "Send the message (Shift+Enter: new line)"],
  [["?"], `Show these shortcuts (when not typing; ${MOD}+/ anywhere)`],
];

const typing = (t) => t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));

export function openHelp() {
  if (ui.help.open) return;
  ui.helpKeys.replaceChildren(...SHORTCUTS.map(([keys, what]) => {
    const tr = el("tr");
    const th = el("th");
    keys.forEach((k, i) => { if (i) th.append(" + "); th.appendChild(el("kbd", null, k)); });
    tr.append(th, el("td", null, what));
    return tr;
  }));
  ui.help.showModal();
}

document.addEventListener("keydown", (e) => {
  if (e.defaultPrevented || e.isComposing) return;
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.shiftKey && !e.altKey && e.code === "KeyO") {
    e.preventDefault();
    if (!anyDialogOpen()) openChat(null);
  } else if (e.key === "Escape" && e.shiftKey) {
    e.preventDefault();
    if (!anyDialogOpen()) ui.input.focus();
  } else if (e.key === "Escape") {
    if (anyDialogOpen() || isEditing()) return;  // they close themselves
    if (!ui.exportMenu.hidden) return;
    if (ui.app.classList.contains("nav-open")) closeNav();
    else if (state.turn) { e.preventDefault(); cancelTurn(); }
  } else if (e.altKey && !e.ctrlKey && !e.metaKey && e.code === "KeyR") {
    e.preventDefault();
    if (!anyDialogOpen() && !isEditing()) regenerate();
  } else if (mod && !e.altKey && (e.key === "/" || e.code === "Slash")) {
    e.preventDefault();
    openHelp();
  } else if (!typing(e.target) && !mod && !e.altKey && !anyDialogOpen()) {
    if (e.key === "?") { e.preventDefault(); openHelp(); }
    else if (e.key === "/") { e.preventDefault(); ui.input.focus(); }
  }
});
ui.openHelp.addEventListener("click", openHelp);
