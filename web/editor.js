// The inline editor of a user message (✎): its text in a textarea with Cancel and Save in place of the
// bubble. Enter saves, Shift+Enter is a new line, Escape cancels. One editor at a time; a transcript
// re-rendered from the server drops it.
import { el } from "./dom.js";

let editing = null;  // {view, box, area, save, cancel}

/** Open the editor on user message `view`; `onSave(text)` is called with the edited text. */
export function openEditor(view, onSave) {
  closeEditor();
  const bubble = view.el.querySelector(".bubble");
  const box = el("div", "editor");
  const area = el("textarea");
  area.value = view.text;
  area.rows = 1;
  area.setAttribute("aria-label", "Edit message");
  const foot = el("div", "editor-foot");
  const cancel = el("button", "btn", "Cancel");
  const save = el("button", "btn primary", "Save");
  cancel.type = save.type = "button";
  foot.append(cancel, save);
  box.append(area, foot);
  bubble.hidden = true;
  view.el.classList.add("editing");
  view.el.insertBefore(box, bubble);
  editing = { view, box, area, save, cancel };
  const fit = () => { area.style.height = "auto"; area.style.height = Math.min(area.scrollHeight, 320) + "px"; };
  const submit = () => { if (area.value.trim() && !save.disabled) onSave(area.value); };
  area.addEventListener("input", () => { fit(); save.disabled = !area.value.trim(); });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); closeEditor(); }
  });
  save.addEventListener("click", submit);
  cancel.addEventListener("click", closeEditor);
  fit();
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

/** Close the editor, leaving the message as it was. */
export function closeEditor() {
  if (!editing) return;
  const { view, box } = editing;
  editing = null;
  box.remove();
  view.el.classList.remove("editing");
  view.el.querySelector(".bubble").hidden = false;
}

/** While the edit is on its way (`on`), the editor cannot be changed or sent again. */
export function setEditorBusy(on) {
  if (!editing || !editing.box.isConnected) return;
  editing.area.readOnly = on;
  editing.save.disabled = on;
  editing.cancel.disabled = on;
  editing.save.textContent = on ? "Saving…" : "Save";
}

export const isEditing = () => editing !== null && editing.box.isConnected;
