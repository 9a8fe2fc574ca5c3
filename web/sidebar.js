// The sidebar: this browser's chats, newest first, filtered by the search box (case-insensitive, on the
// titles). Each chat can be opened, renamed (here and on the server: rename frame) and deleted on the
// server after a confirmation (delete_session frame); both go over a socket of their own (remote.js).
import { ICONS, el, iconButton, toast, ui } from "./dom.js";
import { deletingHere, forgetChat, openChat } from "./chats.js";
import { confirmDialog } from "./dialogs.js";
import { request } from "./remote.js";
import { state } from "./state.js";
import { findSession, loadSessions, updateSessions } from "./store.js";

let renaming = null;  // {id, input} while a title is being edited; the list is not rebuilt meanwhile
let stale = false;    // the list changed while renaming: rebuild when it ends

const activeId = () => (state.current || state.wanted || {}).session_id;
const titleText = (s) => s.title || "Untitled chat";
const normalize = (text) => text.replace(/\s+/g, " ").trim();

export function renderSidebar(list = loadSessions()) {
  if (renaming) { stale = true; return; }
  list.sort((a, b) => (b.updated || 0) - (a.updated || 0));
  const query = normalize(ui.search.value).toLowerCase();
  const shown = query ? list.filter((s) => titleText(s).toLowerCase().includes(query)) : list;
  ui.noSessions.hidden = list.length > 0;
  ui.noMatch.hidden = !(list.length > 0 && shown.length === 0);
  ui.noMatch.textContent = `No chat title contains “${normalize(ui.search.value)}”.`;
  ui.sessions.replaceChildren(...shown.map(row));
  markActive();
  showTitle();
}

function row(s) {
  const li = el("li", "session");
  li.dataset.id = s.session_id;
  const open = el("button", "open");
  open.type = "button";
  open.append(el("span", "title", titleText(s)), el("span", "time", ago(s.updated)));
  open.onclick = () => openChat({ session_id: s.session_id, resume_token: s.resume_token });
  open.ondblclick = () => startRename(li, s);
  const rename = iconButton("row-btn rename", `Rename chat: ${titleText(s)}`, ICONS.rename);
  rename.onclick = () => startRename(li, s);
  const del = iconButton("row-btn delete", `Delete chat: ${titleText(s)}`, ICONS.trash);
  del.onclick = () => deleteChat(s);
  li.append(open, rename, del);
  return li;
}

/** Highlight the chat shown, without rebuilding the list. */
export function markActive() {
  const id = activeId();
  for (const li of ui.sessions.children) {
    const on = li.dataset.id === id;
    li.classList.toggle("active", on);
    const open = li.querySelector(".open");
    if (open) { if (on) open.setAttribute("aria-current", "page"); else open.removeAttribute("aria-current"); }
  }
}

/** The top bar's title (and the document's): the shown chat's title, or "New chat". */
export function showTitle() {
  const target = state.current || state.wanted;
  const entry = target && findSession(target.session_id);
  ui.title.textContent = entry ? titleText(entry) : "New chat";
  document.title = entry ? `${titleText(entry)} · chatserver` : "chatserver";
}

// ---- rename
function startRename(li, s) {
  if (renaming) finishRename(false);
  const input = el("input", "rename-input");
  input.value = titleText(s);
  input.maxLength = 200;
  input.setAttribute("aria-label", "Chat title");
  li.classList.add("renaming");
  li.querySelector(".open").hidden = true;
  li.prepend(input);
  renaming = { id: s.session_id, input };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finishRename(true); }
    else if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finishRename(false); }
  });
  input.addEventListener("blur", () => finishRename(true));
  input.focus();
  input.select();
}

function finishRename(keep) {
  if (!renaming) return;
  const { id, input } = renaming;
  renaming = null;
  stale = false;
  const title = normalize(input.value).slice(0, 200);
  const entry = findSession(id);
  if (keep && entry && title && title !== entry.title) {
    updateSessions((list) => { const s = findSession(id, list); if (s) s.title = title; });  // shown at once, also offline
    request(entry, { type: "rename", title }, (f) => f.type === "renamed").then((f) => {
      updateSessions((list) => { const s = findSession(id, list); if (s && typeof f.title === "string") s.title = f.title; });
    }, (err) => {
      if (err.code === "session_not_found" || err.code === "unauthorized") forgetChat(id, "That chat is no longer on the server, so it was removed from your list.");
      else toast(`Renamed in this browser only: the server was not told (${err.message}).`, "error", 6000);
    });
  } else {
    renderSidebar();
  }
}

// ---- delete
async function deleteChat(s) {
  const yes = await confirmDialog("Delete chat?",
    `“${titleText(s)}” will be deleted on the server: every message, every version and its cached data. This cannot be undone.`,
    "Delete");
  if (!yes) return;
  deletingHere(s.session_id);
  try {
    await request(s, { type: "delete_session" }, (f) => f.type === "error" && f.code === "session_deleted");
  } catch (err) {
    if (err.code !== "session_not_found" && err.code !== "unauthorized") {  // those: already gone from the server
      toast(`Could not delete the chat: ${err.message}`, "error", 6000);
      return;
    }
  }
  forgetChat(s.session_id);
  toast("Chat deleted.");
}

function ago(t) {
  const s = (Date.now() - (t || 0)) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

ui.search.addEventListener("input", () => renderSidebar());
ui.search.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && ui.search.value) { e.stopPropagation(); ui.search.value = ""; renderSidebar(); }
});
setInterval(() => renderSidebar(), 60000);  // "3 min ago" moves on
