"""The model's chat template: conversation -> prompt token ids, and which tokens end a turn.

A model without a chat template (a base model, e.g. gemma-3-270m) gets one from fallback_chat_template:
Gemma's turn markers when its vocabulary has them, else plain "User: / Assistant:" paragraphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from transformers import GenerationConfig, PreTrainedTokenizerBase

_GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")
_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"
# Gemma's instruction format: system text joins the next user turn; the assistant's role is "model"
GEMMA_TEMPLATE = _BOS + (
    "{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' "
    "+ (ns.system if m['role'] != 'assistant' else '') + m['content'] + '<end_of_turn>\n' }}"
    "{% if m['role'] != 'assistant' %}{% set ns.system = '' %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
PLAIN_TEMPLATE = _BOS + (
    "{% for m in messages %}{{ {'system': 'System', 'assistant': 'Assistant'}.get(m['role'], 'User') + ': ' "
    "+ m['content'] + '\n\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def fallback_chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """A chat template for a tokenizer that has none: Gemma's turns if <start_of_turn>/<end_of_turn> are
    single tokens of its vocabulary, else PLAIN_TEMPLATE."""
    vocab = tokenizer.get_vocab()
    return GEMMA_TEMPLATE if all(marker in vocab for marker in _GEMMA_TURNS) else PLAIN_TEMPLATE


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
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        if _GEMMA_TURNS[1] in template and _GEMMA_TURNS[1] in tokenizer.get_vocab():
            stop.add(tokenizer.convert_tokens_to_ids(_GEMMA_TURNS[1]))  # a model's turn ends with <end_of_turn>
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
