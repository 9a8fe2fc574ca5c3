"""Branches of one conversation (a regenerated answer, an edited question, an earlier path switched back
to): each kept as a KV entry of its own, sharing the KV of their common beginning copy-free.

The session's own KV (key: the session id) holds the branch its turns run on. Before a turn starts:
- `take`: the session comes back to a branch kept earlier: the KV it holds is kept as `keep_as` and the
  kept KV of that branch becomes the session's;
- `fork`: the turn's prompt leaves the session's KV part way (a new answer to an earlier question, an
  edited question): that KV is kept as branch `keep_as`, and the session's KV starts on the prefix both
  share, a SharedPrefix read by both (held once in RAM and counted once; engine/kv/session_kv.py).
A kept branch is an ordinary entry of the store: least recently used first out, spilled to disk and read
back like any session's (on disk, branches hold their common chunks once: storage/kv_files.py), dropped
with its session (drop_all).

The chat server names branches (`keep_as`, `take`) with branch_key(). Every KV still covers exactly its
token_ids, and a turn keeps only the prefix its prompt shares with them: a branch named wrongly costs
recomputation, never a wrong answer. Engine thread only.
"""

from __future__ import annotations

from engine.kv.session_kv import common_prefix_length
from engine.kv.store import KVStore

BRANCH_SEP = "#"  # branch keys are "<session id>#<name>"


def branch_key(session_id: str, name: str) -> str:
    return f"{session_id}{BRANCH_SEP}{name}"


class Branches:
    def __init__(self, store: KVStore):
        self.store = store
        self._discarded = 0  # names of forgotten KV, unique in this process

    def prepare(self, session_id: str, prompt_ids: list[int], holds: str, continues: str,
                new_branch: bool) -> tuple[bool, str]:
        """Before a turn of session_id on prompt_ids. holds: the branch the session's KV holds; continues:
        the branch the turn's prompt starts from (names, "" for none: nothing is kept). When they differ,
        the session's KV is kept as `holds` and the KV kept for `continues`, if any, becomes the session's;
        then, for a new branch, the KV the prompt leaves is kept as `continues` (fork). (A turn that goes on
        from its branch keeps only the prefix its prompt shares: the rest is the last answer as sampled,
        which its text may tokenize differently.)
        Returns (ready, the branch the session's KV holds now). Not ready: a KV is being read back from disk
        or written to it; call again, with the branch returned, after the next notify."""
        ready, holds = self.switch(session_id, holds, continues)
        if not ready:
            return False, holds
        if new_branch and continues and session_id in self.store.entries:
            self.fork(session_id, prompt_ids, branch_key(session_id, continues))
        return True, holds

    def switch(self, session_id: str, holds: str, continues: str) -> tuple[bool, str]:
        """The session's KV, which holds branch `holds`, is kept as that branch, and the KV kept for branch
        `continues`, if any, becomes the session's (read back from disk if it is there). Returns (done, the
        branch the session's KV holds now); not done: a KV is being read or written, call again later."""
        store = self.store
        keep_as, take = branch_key(session_id, holds), branch_key(session_id, continues)
        if holds == continues:
            return self._settled(session_id), holds
        if not self._settled(session_id) or not self._settled(take):
            return False, holds
        if store.tier_of(session_id) != "none":
            self._keep(session_id, keep_as if holds else "")
        if continues and store.tier_of(take) != "none":
            store.rename(take, session_id)
            if session_id not in store.entries:  # on disk: read it back before it may fork
                store.restore(session_id)
                return False, continues
        return True, continues

    def fork(self, session_id: str, prompt_ids: list[int], keep_as: str) -> int:
        """If the session's KV (idle, in RAM) holds tokens prompt_ids does not continue, keep it as branch
        keep_as and start the session's KV on the prefix both share: all of the prompt when the branch kept
        the logits after it (no forward pass before the first token), else all but its last token. Returns
        the tokens shared (0: nothing forked, the session's KV is as it was)."""
        store = self.store
        entry = store.entries[session_id]
        kv = entry.kv
        n = common_prefix_length(kv.token_ids, prompt_ids)
        if n == kv.length or store.tier_of(keep_as) != "none":
            return 0  # the prompt continues it; or that branch is kept already (the turn truncates this copy)
        if kv.logits_after(n) is None or n < len(prompt_ids):
            n = min(n, len(prompt_ids) - 1)
        reuse = kv.prefix is not None and kv.prefix_len >= n
        # a new SharedPrefix is a copy beside the branch until its own buffer shrinks: both must fit
        if n and not store.budget.make_room(0 if reuse else kv.token_bytes * n, exclude=(session_id,),
                                            new_session=True):
            return 0  # no room now: the session's KV is truncated as without branches
        store.rename(session_id, keep_as)
        store.stats.forks += 1
        if not n:
            return 0
        shared = kv.prefix if reuse else kv.share(n)
        if not reuse:
            store.budget.add_shared(shared)
        own = store.new_entry(session_id, store.new_kv(0))
        own.kv.attach(shared, n, n)
        if kv.last_logits is not None and kv.last_logits[0] <= n:
            own.kv.last_logits = kv.last_logits
        store.index.set(session_id, own.kv.token_ids)
        store.stats.fork_tokens += n
        return n

    def drop_all(self, session_id: str, on_done) -> None:
        """Forget the session's KV and every branch kept for it, in every tier; on_done(tier) once the
        session's own is gone."""
        store = self.store
        prefix = session_id + BRANCH_SEP
        for key in {k for k in list(store.entries) + store.index.known_keys() if k.startswith(prefix)}:
            store.drop(key)
        store.drop(session_id, on_done=on_done)

    def _keep(self, session_id: str, keep_as: str) -> None:
        """The session's settled KV is kept as keep_as, or forgotten when there is no such name or that
        branch is kept already. Forgotten under a name of its own: the deletion of its file runs later
        on the I/O thread, and must not take the file of a branch renamed to the session's name meanwhile."""
        store = self.store
        if keep_as and store.tier_of(keep_as) == "none":
            store.rename(session_id, keep_as)
            return
        self._discarded += 1
        trash = branch_key(session_id, f"~discarded-{self._discarded}")
        if store.rename(session_id, trash):
            store.drop(trash, cause="replaced")

    def _settled(self, key: str) -> bool:
        """key's KV is idle in RAM, only on disk, or nowhere; else (being written or read) False, after
        asking that a KV being written stays in RAM."""
        entry = self.store.entries.get(key)
        if entry is None or entry.is_idle:
            return True
        if entry.state == "spilling":
            entry.after_io = "keep"
        return False
