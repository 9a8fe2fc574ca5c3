// One request about a chat over a WebSocket of its own: hello (resume with the chat's token), one frame,
// its reply, close. Used for what the sidebar and the export do to a chat, shown or not, without
// disturbing the page's own connection (a running answer's frames on this socket are ignored). The socket
// is opened at /ws?session=ID, so that a cluster's balancer sends it to the replica serving the chat.

const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";

/** Send `frame` to chat `target` ({session_id, resume_token}); resolve with the first frame for which
 *  `isReply(f)` is true. Reject with an Error whose `code` is the error frame's code (e.g.
 *  "session_not_found" for a chat the server no longer has), or "unavailable" when the socket closes or
 *  nothing came within `timeoutMs`. */
export function request(target, frame, isReply, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(`${wsUrl}?session=${encodeURIComponent(target.session_id)}`);
    let settled = false;
    const finish = (ok, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.close();
      (ok ? resolve : reject)(value);
    };
    const fail = (code, message) => finish(false, Object.assign(new Error(message), { code }));
    const timer = setTimeout(() => fail("unavailable", "the server did not answer"), timeoutMs);
    sock.onopen = () => sock.send(JSON.stringify({ type: "hello", session_id: target.session_id, resume_token: target.resume_token }));
    sock.onmessage = (event) => {
      let f;
      try { f = JSON.parse(event.data); } catch { return; }
      if (!f || typeof f !== "object") return;
      if (isReply(f)) finish(true, f);
      else if (f.type === "session") sock.send(JSON.stringify(frame));
      else if (f.type === "error" && !f.turn_id) fail(f.code || "error", f.message || "");
    };
    sock.onclose = () => fail("unavailable", "the connection closed");
  });
}
