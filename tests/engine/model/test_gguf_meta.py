"""A GGUF file's tokenizer as the engine reads it (engine/model/gguf_meta.py: the generic fast tokenizer on
the tokenizer.json converted from the file) tokenizes, decodes and renders chats exactly as the family's
own transformers class does on the same files, for the real models' vocabularies (Gemma's 262k-token
SentencePiece-derived BPE with byte fallback, Qwen2.5's byte-level BPE)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine.model.gguf_meta import read_meta
from tests.helpers.paths import MODEL_CACHE, real_gguf

pytestmark = [pytest.mark.slow]

TEXTS = [
    "Hello world",
    "  two  spaces\n\n\tand a tab, then <start_of_turn>user\nhi<end_of_turn> and <|im_start|>",
    "日本語, émoji 🤖 and code: def f(x):\n    return x**2  # done",
    "<bos><eos><unused12> <|endoftext|>",
    "\u200b zero width, \U0001f9d1\u200d\U0001f4bb joined, a lone \udcff" .encode("utf-8", "replace").decode(),
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there  \n x"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "再见"}]


@pytest.mark.parametrize("name", ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct"])
def test_the_generic_tokenizer_equals_the_family_class(name):
    meta = read_meta(real_gguf(name), MODEL_CACHE)
    ours, family = meta.tokenizer, AutoTokenizer.from_pretrained(meta.directory)
    assert type(ours) is PreTrainedTokenizerFast and type(family) is not PreTrainedTokenizerFast
    assert len(ours) == len(family)
    assert (ours.bos_token_id, ours.eos_token_id, ours.all_special_ids) == \
        (family.bos_token_id, family.eos_token_id, family.all_special_ids)
    for text in TEXTS:
        ids = family(text).input_ids
        assert ours(text).input_ids == ids
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == family.decode(ids, skip_special_tokens=skip)
    assert ours.chat_template == family.chat_template
    if family.chat_template is not None:
        assert ours.apply_chat_template(CHAT, add_generation_prompt=True) == \
            family.apply_chat_template(CHAT, add_generation_prompt=True)
