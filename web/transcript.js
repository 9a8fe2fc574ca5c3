// The transcript on screen: one view per message of the displayed path, oldest first.
// A view is {el, role, id, siblings, text, body?, meta?}: id and siblings (the ids of the message's
// alternatives, itself included, oldest first) come from the server, and are null/[] until it gives them.
// Under each message: ‹ n / m › when it has alternatives, Copy, and ✎ Edit (user) or ↻ Regenerate (the
// last answer). Copy is handled here; the other actions go to the handler set with onMessageAction().
import { renderMarkdown } from "./markdown.js";
import { ICONS, announce, copyText, el, iconButton, toast, ui } from "./dom.js";
import { followBottom, stickToBottom } from "./scroll.js";
import { state } from "./state.js";

const views = new WeakMap();  // message element -> its view
let actionHandler = () => {};

/** fn(action, view): "edit", "regenerate", "prev" or "next" was clicked under a message. */
export function onMessageAction(fn) { actionHandler = fn; }

export const viewOf = (node) => views.get(node.closest(".msg"));
export const messageViews = () => [...ui.messages.querySelectorAll(".msg.user, .msg.assistant")].map((n) => views.get(n));
export const lastAnswer = () => { const all = ui.messages.querySelectorAll(".msg.assistant"); return all.length ? views.get(all[all.length - 1]) : null; };
/** The key of an answer's note in the chat's stored notes (store.js). */
export const noteKey = (id, turnNo) => (id != null ? "m" + id : String(turnNo));

export function clearTranscript() {
  ui.messages.replaceChildren();
  state.turns = 0;
  ui.empty.hidden = false;
}
export const hideEmpty = () => { ui.empty.hidden = true; };

/** Show `messages` (the session's active path, as in a session or path frame) with the notes kept for
 *  them; notes keyed by turn number are trusted only while every message so far has no alternative
 *  (they were written for the one branch there was). */
export function renderTranscript(messages, notes) {
  ui.messages.replaceChildren();
  state.turns = 0;
  let linear = true;
  for (const m of messages) {
    if (Array.isArray(m.siblings) && m.siblings.length > 1) linear = false;
    if (m.role === "system") {
      addSystem(m.content);
    } else if (m.role === "user") {
      addUser(m.content, m);
      state.turns++;
    } else if (m.role === "assistant") {
      const view = addAssistant("done", m);
      renderAnswer(view, m.content);
      const note = (m.id != null && notes[noteKey(m.id)]) || (linear && notes[state.turns - 1])
        || (m.finish_reason ? { finish: m.finish_reason } : null);
      if (note) applyNote(view, note);
    }
  }
  ui.empty.hidden = messages.some((m) => m.role !== "system");
  if (state.pendingNotice) { showError(state.pendingNotice, "notice"); state.pendingNotice = null; }
  stickToBottom();
}

function addSystem(text) {
  const box = el("details", "msg system");
  box.append(el("summary", null, "System prompt"), el("div", "system-text", text));
  ui.messages.appendChild(box);
}

/** A user message at the end of the transcript; `m` gives its id and siblings when known. */
export function addUser(text, m = {}) {
  const node = el("div", "msg user");
  const view = { el: node, role: "user", id: null, siblings: [], text };
  node.append(el("div", "bubble", text), actionBar(view));
  views.set(node, view);
  ui.messages.appendChild(node);
  setIds(view, m.id, m.siblings);
  return view;
}

/** An answer at the end of the transcript, in state "streaming" or "done". */
export function addAssistant(status, m = {}) {
  const node = el("div", "msg assistant");
  node.dataset.state = status;
  const view = { el: node, role: "assistant", id: null, siblings: [], text: "", body: el("div", "body md"), meta: el("div", "meta") };
  const foot = el("div", "foot");
  foot.append(actionBar(view), view.meta);
  node.append(view.body, foot);
  views.set(node, view);
  ui.messages.appendChild(node);
  setIds(view, m.id, m.siblings);
  return view;
}

function actionBar(view) {
  const bar = el("div", "actions");
  const nav = el("div", "nav");
  nav.setAttribute("role", "group");
  nav.setAttribute("aria-label", view.role === "user" ? "Versions of this message" : "Versions of this answer");
  const prev = iconButton("act prev", "Previous version", ICONS.prev);
  const next = iconButton("act next", "Next version", ICONS.next);
  prev.dataset.action = "prev";
  next.dataset.action = "next";
  nav.append(prev, el("span", "count"), next);
  const copy = iconButton("act copy-msg", view.role === "user" ? "Copy message" : "Copy answer", ICONS.copy);
  copy.dataset.action = "copy";
  bar.append(nav, copy);
  if (view.role === "user") {
    const edit = iconButton("act edit", "Edit message", ICONS.edit);
    edit.dataset.action = "edit";
    bar.appendChild(edit);
  } else {
    const regen = iconButton("act regenerate", "Regenerate answer", ICONS.regenerate);
    regen.dataset.action = "regenerate";
    bar.appendChild(regen);
  }
  return bar;
}

/** The server named the message (id, the ids of its alternatives): show ‹ n / m › if it has any. */
export function setIds(view, id, siblings) {
  view.id = Number.isInteger(id) ? id : null;
  view.siblings = Array.isArray(siblings) ? siblings : view.id != null ? [view.id] : [];
  if (view.id != null) view.el.dataset.id = String(view.id);
  const nav = view.el.querySelector(".nav");
  const i = view.siblings.indexOf(view.id);
  nav.hidden = view.siblings.length < 2 || i < 0;
  nav.querySelector(".count").textContent = nav.hidden ? "" : `${i + 1} / ${view.siblings.length}`;
  nav.querySelector(".prev").disabled = i <= 0;
  nav.querySelector(".next").disabled = i >= view.siblings.length - 1;
}

/** Show or hide and enable the tree actions: ↻ only on the last answer; all of them only when `idle`
 *  (nothing streaming or being changed) and on messages the server has named. */
export function refreshActions(idle) {
  const last = lastAnswer();
  for (const view of messageViews()) {
    view.el.classList.toggle("last", view === last);
    const named = view.id != null;
    const edit = view.el.querySelector(".edit");
    if (edit) { edit.hidden = !named; edit.disabled = !idle; }
    const regen = view.el.querySelector(".regenerate");
    if (regen) { regen.hidden = !named || view !== last; regen.disabled = !idle; }
    const i = view.siblings.indexOf(view.id);
    view.el.querySelector(".prev").disabled = !idle || i <= 0;
    view.el.querySelector(".next").disabled = !idle || i >= view.siblings.length - 1;
  }
}

export function renderAnswer(view, text) {
  view.text = text;
  view.body.replaceChildren(renderMarkdown(text));
}

const STATUS = { cancelled: "Stopped", interrupted: "Interrupted", length: "Reached the length limit", error: "Failed" };

/** The grey line under an answer: how it ended, cached prompt tokens, where the KV came from, TTFT. */
export function applyNote(view, note) {
  const status = note.finish === "stop" || note.finish === "length" ? "done" : note.finish;
  view.el.dataset.state = status;
  const parts = [];
  if (STATUS[note.finish]) parts.push([STATUS[note.finish], "status"]);
  if (note.usage) parts.push([`${note.usage.cached_tokens}/${note.usage.prompt_tokens} prompt tokens cached`, "cached"]);
  if (note.cache) parts.push([`cache: ${note.cache}`, "cache"]);
  if (note.timings) parts.push([`TTFT ${formatMs(note.timings.ttft_ms)}`, "ttft"]);
  view.meta.replaceChildren(...parts.map(([text, cls]) => el("span", cls, text)));
  view.meta.title = note.usage ? `${note.usage.completion_tokens} tokens generated; prompt ${note.usage.prompt_tokens} tokens, `
    + `${note.usage.cached_tokens} of them reused from the session's KV cache (${note.cache})` : "";
}

const formatMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);

/** An error (or, kind "notice", a notice) in the transcript; never fatal. */
export function showError(text, kind = "error") {
  hideEmpty();
  const node = el("div", "msg " + kind, text);
  node.setAttribute("role", kind === "error" ? "alert" : "status");
  ui.messages.appendChild(node);
  followBottom();
}

async function copy(button, text, label) {
  const ok = await copyText(text);
  if (!ok) { toast("Could not copy: the browser refused access to the clipboard.", "error"); return; }
  announce("Copied.");
  if (label) {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  } else {
    button.classList.add("done");
    setTimeout(() => button.classList.remove("done"), 1500);
  }
}

ui.messages.addEventListener("click", (e) => {
  const code = e.target.closest(".code-bar button.copy");
  if (code) { copy(code, code.closest(".code").querySelector("pre").textContent, "Copy"); return; }
  const button = e.target.closest("button.act");
  if (!button || button.disabled) return;
  const view = viewOf(button);
  if (button.dataset.action === "copy") copy(button, view.text);
  else actionHandler(button.dataset.action, view);
});
