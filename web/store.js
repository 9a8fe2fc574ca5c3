// This browser's list of chats, in localStorage (no accounts: clearing the site's data loses the list,
// not the transcripts on the server).
//   "chatserver.chat.sessions": [{session_id, resume_token, title, updated (ms), notes: {key: note}}]
//   "chatserver.current": the session_id of the chat shown last
// A note is what the page knows of an answer beyond the transcript: {finish, usage?, timings?, cache?}.
// Its key is "m<message id>" when the server gave the answer an id, else the answer's turn number.

const STORE = "chatserver.chat.sessions", CURRENT = "chatserver.current";
export const STORE_KEY = STORE;

let onChange = () => {};
/** Call `fn(list)` after every change of the list made by this page. */
export function onSessionsChanged(fn) { onChange = fn; }

export function loadSessions() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(list) ? list.filter((s) => s && typeof s.session_id === "string" && typeof s.resume_token === "string") : [];
  } catch { return []; }
}

/** Read-modify-write (two tabs do not undo each other's changes); returns what `change(list)` returns. */
export function updateSessions(change) {
  const list = loadSessions();
  const result = change(list);
  try { localStorage.setItem(STORE, JSON.stringify(list)); } catch { /* storage full or disabled */ }
  onChange(list);
  return result;
}

export const findSession = (id, list = loadSessions()) => list.find((s) => s.session_id === id);

export function removeSession(id) {
  updateSessions((list) => { const i = list.findIndex((s) => s.session_id === id); if (i >= 0) list.splice(i, 1); });
}

/** Keep `note` for the answer `key` ("m<id>" or a turn number) of chat `id`. */
export function saveNote(id, key, note) {
  updateSessions((list) => {
    const entry = findSession(id, list);
    if (entry) { entry.updated = Date.now(); (entry.notes ||= {})[key] = note; }
  });
}

export function setCurrentId(id) { try { localStorage.setItem(CURRENT, id); } catch { /* ignore */ } }
export function currentId() { try { return localStorage.getItem(CURRENT); } catch { return null; } }

(function migrateOldPage() {  // an older page kept one session under this key
  try {
    const old = JSON.parse(localStorage.getItem("chatserver.session") || "null");
    if (old && old.session_id && old.resume_token && !findSession(old.session_id)) {
      updateSessions((list) => list.push({ ...old, title: "Earlier chat", updated: Date.now(), notes: {} }));
    }
    localStorage.removeItem("chatserver.session");
  } catch { /* ignore */ }
})();
