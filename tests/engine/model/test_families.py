"""Every supported architecture (engine/model/families.py) on a tiny random model built from its transformers
config: in the exact mode (float32 activations and KV) the engine's greedy answers over a multi-turn
conversation, with the KV kept between turns, equal transformers' generate() on the whole conversation;
sessions batched in one step answer as alone; an unsupported architecture is refused at start."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from chatserver.engine_client import EngineClient
from engine import (
    DoneEvent,
    EngineConfig,
    ModelConfig,
    SamplingParams,
    TurnRequest,
    start_engine,
)
from engine.kv.config import KVStoreConfig
from engine.model import ForwardItem, ModelRunner
from engine.model.families import UnsupportedArchitecture
from engine.model.loader import LoadedModel
from engine.model.reference import greedy_ids

WINDOW = 8  # sliding layers see this many positions: far fewer than a conversation's
COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": 1,
          "eos_token_id": 2, "pad_token_id": 2, "initializer_range": 0.1}


def _gemma3(vocab: int):
    shape = {**COMMON, "num_key_value_heads": 1}  # as gemma-3-270m: one KV head of 256 for 4 query heads
    config = Gemma3TextConfig(vocab_size=vocab, head_dim=256, query_pre_attn_scalar=64, sliding_window=WINDOW,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              rope_local_base_freq=100.0, rope_theta=10_000.0, **shape)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # Gemma's norms start at w = 0 (x1): give them something to get wrong
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    return model


FAMILIES = {
    "llama": lambda vocab: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **COMMON)),
    "mistral": lambda vocab: MistralForCausalLM(MistralConfig(vocab_size=vocab, sliding_window=WINDOW, **COMMON)),
    "qwen2": lambda vocab: Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **COMMON)),
    "qwen3": lambda vocab: Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, head_dim=32, use_sliding_window=True,
                                                        sliding_window=WINDOW, max_window_layers=1, **COMMON)),
    "gemma3": _gemma3,
}


def _tiny(family: str, tokenizer) -> LoadedModel:
    torch.manual_seed(1)
    model = FAMILIES[family](len(tokenizer)).eval().requires_grad_(False)
    if family == "qwen2":
        with torch.no_grad():  # Qwen2's q/k/v biases start at zero
            for proj in ("q_proj", "k_proj", "v_proj"):
                for layer in model.model.layers:
                    getattr(layer.self_attn, proj).bias.normal_(0, 0.5)
    model.generation_config.eos_token_id = 2
    return LoadedModel(model, tokenizer, f"tiny-{family}", model.name_or_path, f"tiny-{family}")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, real_model) -> LoadedModel:
    return _tiny(request.param, real_model.tokenizer)


@pytest.fixture
def exact_engine(family_model):
    config = EngineConfig(model=ModelConfig(activations="float32"), kv=KVStoreConfig(dtype="float32"))
    engine, _ = start_engine(config, family_model)
    yield EngineClient(engine)
    engine.stop()


async def _answer(client: EngineClient, key: str, prompt: list[int], max_tokens: int) -> list[int]:
    stream = client.admit(prompt, max_tokens)
    stream.start(TurnRequest(key, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)))
    async for event in stream:
        pass
    assert isinstance(event, DoneEvent), event
    return event.output_ids


def test_the_sliding_windows_are_smaller_than_the_conversation(family_model):
    windows = [w.window for w in ModelRunner(family_model.model)._layers]
    expected = {"llama": [0] * 3, "qwen2": [0] * 3, "mistral": [WINDOW] * 3, "qwen3": [0, WINDOW, WINDOW],
                "gemma3": [WINDOW, 0, WINDOW]}[family_model.name.removeprefix("tiny-")]
    assert windows == expected


async def test_greedy_answers_over_turns_with_kv_reuse_equal_generate(exact_engine, family_model):
    """Turn 1 is a long prefill (the blocked chunk kernel), later turns short chunks and decode steps (the
    ragged kernel) reading the KV the earlier turns left; every answer is transformers' on the whole text."""
    conversation: list[int] = []
    for turn, user in enumerate([list(range(300, 370)), list(range(500, 507)), list(range(700, 704))]):
        conversation += user
        answer = await _answer(exact_engine, "conversation", conversation, 10)
        assert answer == greedy_ids(family_model, conversation, 10), f"turn {turn + 1}"
        conversation += answer
    stats = await exact_engine.stats()
    assert stats["kv"]["hits_ram"] >= 2  # the later turns read the KV the earlier ones left


async def test_sessions_batched_in_one_step_answer_as_alone(exact_engine):
    prompts = [list(range(100, 130)), list(range(900, 905)), list(range(2000, 2080))]
    alone = [await _answer(exact_engine, f"alone{i}", p, 12) for i, p in enumerate(prompts)]
    together = await asyncio.gather(*[_answer(exact_engine, f"batch{i}", p, 12) for i, p in enumerate(prompts)])
    assert list(together) == alone


@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_every_family_takes_the_one_call_path_bit_identically_past_its_window(family_model, activations):
    """layers.c runs each family's extras (q/k norms, output norms, GELU-tanh, per-layer rotary tables, sliding
    windows) as the per-operation loop does: the same logits and KV, bit for bit, for decode steps and short
    chunks of two sessions whose contexts are longer than the window."""
    runners = [ModelRunner(family_model.model, kv_dtype=torch.float16, activations=activations) for _ in range(2)]
    fused, looped = runners
    assert fused._fused is not None
    looped._fused = None
    results = []
    for runner in runners:
        kvs = [runner.new_kv() for _ in range(2)]
        runner.forward([ForwardItem(kvs[0], list(range(300, 340)), False), ForwardItem(kvs[1], [4, 5, 6], False)])
        steps = [runner.forward([ForwardItem(kvs[0], [7 + s], True), ForwardItem(kvs[1], list(range(50, 50 + WINDOW + 2)),
                                                                                       True)]) for s in range(3)]
        results.append((steps, [kv.positions(0, kv.length) for kv in kvs]))
    (steps_a, kv_a), (steps_b, kv_b) = results
    assert kv_a[1].shape[-2] > 3 * WINDOW  # (the second session's context grew past the window too)
    assert all(torch.equal(a, b) for a, b in zip(steps_a, steps_b))
    assert all(torch.equal(a, b) for a, b in zip(kv_a, kv_b))


def test_an_unsupported_architecture_is_refused_naming_the_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)).eval()
    with pytest.raises(UnsupportedArchitecture) as refused:
        ModelRunner(model)
    assert str(refused.value) == ("unsupported model architecture 'gpt2'; supported: gemma3_text, llama, mistral, "
                                  "qwen2, qwen3")


def test_the_server_refuses_an_unsupported_architecture_at_start(tmp_path, real_model, capsys):
    from chatserver.cli import main

    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(real_model.tokenizer))).save_pretrained(
        model_dir)
    real_model.tokenizer.save_pretrained(model_dir)
    assert main(["serve", "--model", str(model_dir), "--data-dir", str(tmp_path / "data"), "--port", "0"]) == 2
    assert ("chatserver: unsupported model architecture 'gpt2'; supported: gemma3_text, llama, mistral, qwen2, qwen3"
            in capsys.readouterr().err)


def test_gemma_soft_capping_is_transformers(real_model):
    """A config with attn_logit_softcapping and final_logit_softcapping: logits of a long chunk, a short chunk
    and decode steps equal transformers' forward (eager attention, which could cap scores; Gemma 3's does not
    pass the attention cap, only the final one applies)."""
    model = _gemma3(len(real_model.tokenizer))
    model.config.attn_logit_softcapping, model.config.final_logit_softcapping = 0.5, 3.0  # small: they bite
    model.config._attn_implementation = "eager"
    model.eval().requires_grad_(False)
    runner = ModelRunner(model, kv_dtype=torch.float32)
    ids = list(range(300, 380)) + list(range(900, 910)) + [5, 6, 7]
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0]
    assert expected.abs().max() < 3.0  # the final cap is in effect
    kv, got = runner.new_kv(), []
    for chunk in (ids[:80], ids[80:90], [5], [6], [7]):
        got.append(runner.forward([ForwardItem(kv, chunk, True)])[0])
    torch.testing.assert_close(torch.stack(got), expected[[79, 89, 90, 91, 92]], atol=1e-4, rtol=1e-4)
    uncapped = ModelRunner(model, kv_dtype=torch.float32)
    uncapped._final_softcap = None
    kv = uncapped.new_kv()
    assert not torch.allclose(uncapped.forward([ForwardItem(kv, ids[:80], True)])[0], expected[79], atol=1e-3)
