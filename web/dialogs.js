// Modal dialogs (<dialog>): a click on the backdrop closes them, and a confirmation that resolves to
// the person's answer.
import { $, ui } from "./dom.js";

for (const dialog of document.querySelectorAll("dialog")) {
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close("cancel"); });  // the backdrop
}

/** Ask: resolves true if `ok` (the button's text) was chosen, false on Cancel, Escape or a click outside. */
export function confirmDialog(title, text, ok) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  ui.confirm.returnValue = "";
  ui.confirm.showModal();  // focus starts on Cancel
  return new Promise((resolve) => {
    ui.confirm.addEventListener("close", () => resolve(ui.confirm.returnValue === "ok"), { once: true });
  });
}

export const anyDialogOpen = () => document.querySelector("dialog[open]") !== null;
