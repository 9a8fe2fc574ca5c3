"""Incremental detokenization: turns a growing list of token ids into text deltas.

Byte-level BPE can split one character over several tokens, and a token's text can depend on its
left neighbour, so each delta is the difference of two decodes of a short window; a window ending
in an incomplete UTF-8 sequence (U+FFFD) is held back until the next token completes it.
The concatenation of all deltas equals decode(all ids).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_CONTEXT = 6  # tokens of left context kept in the window


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this index have been emitted as text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        full_text = self._decode(self.ids[self._prefix :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""
        self._prefix = max(0, len(self.ids) - _CONTEXT)
        # re-anchor the window: text of ids[prefix:read] must be recomputed next time
        self._read = len(self.ids)
        delta = full_text[len(prefix_text) :]
        return delta

    def flush(self) -> str:
        """Text not yet emitted (e.g. a trailing incomplete character) at the end of a turn."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        full_text = self._decode(self.ids[self._prefix :])
        self._read = len(self.ids)
        return full_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
