// The chat page's shared state: what the socket is attached to and what is being shown. One object, so
// that every module reads and writes the same fields (an ES module cannot reassign another's `let`).

export const state = {
  ws: null,             // the open (or opening) WebSocket
  attempt: 0,           // failed connection attempts in a row
  wanted: null,         // the chat to show: {session_id, resume_token}, or null for a new one
  current: null,        // the chat the server attached the socket to, once its session frame came
  attachedId: null,     // session_id the server has this socket attached to (also while a hello is pending)
  helloSent: null,      // the hello awaiting its session frame: {target, withSeq}
  gone: false,          // the attached session was deleted: the next connection starts a new chat at once
  turns: 0,             // user messages on the displayed path
  turn: null,           // the answer streaming: {session_id, turnNo, view, text, userView, content, turnId, seq, cancelled}
  resumable: null,      // the turn a dropped connection cut off, resumed from its last seq on reconnect
  pending: null,        // a regenerate/edit/switch sent, its path frame not yet come: {kind, view?, anchor?}
  sendWhenReady: false, // Enter pressed before the session frame came: send once it does
  pendingNotice: null,  // shown once the next transcript is rendered
  lastCancelAt: 0,      // ms; a cancel may cross the turn's done frame (its bad_request is then expected)
};
