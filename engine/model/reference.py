"""The float reference: what transformers' own generate() answers, greedily, recomputing the whole prompt.

Tests compare the served answers with it (KV reuse, restarts, batching must not change a greedy answer
in the exact mode) and bench/agreement.py measures how far the fast modes stay from it. Slow: one full
forward pass of the model per token, in torch.
"""

from __future__ import annotations

import torch

from engine.model.chat_format import ChatFormat, ChatMessage
from engine.model.loader import LoadedModel


def greedy_ids(loaded: LoadedModel, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """The first max_tokens greedy answer ids after prompt_ids (fewer if the model stops)."""
    with torch.inference_mode():
        out = loaded.model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def greedy_answer(loaded: LoadedModel, conversation: list[ChatMessage], max_tokens: int) -> str:
    """The greedy answer text to a conversation rendered with the model's chat template."""
    prompt_ids = ChatFormat(loaded.tokenizer, loaded.model.generation_config).render(conversation)
    return loaded.tokenizer.decode(greedy_ids(loaded, prompt_ids, max_tokens), skip_special_tokens=True)
