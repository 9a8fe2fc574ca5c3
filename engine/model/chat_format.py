"""The model's chat template: conversation -> prompt token ids, and which tokens end a turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


class ChatFormat:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None):
        self.tokenizer = tokenizer
        eos = generation_config.eos_token_id if generation_config is not None else None
        stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            stop.add(tokenizer.eos_token_id)
        self.stop_token_ids = frozenset(stop)

    def render(self, messages: Iterable[ChatMessage]) -> list[int]:
        """Whole conversation + the assistant generation prompt, tokenized as the model was trained.

        Blocking CPU work (a few ms for long histories): run it off the event loop.
        """
        text = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=False
        )
        # the template writes special tokens itself; adding BOS again would shift every position
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
