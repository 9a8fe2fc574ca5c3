"""Shared fixtures: the real model (loaded once per test run) and a tiny random Llama for speed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine.model.loader import LoadedModel, load_model

REPO = Path(__file__).resolve().parents[1]
# Converted weights are kept between runs (the GGUF dequantization takes ~15 s once).
MODEL_CACHE = REPO / ".cache" / "models"


@pytest.fixture(scope="session")
def real_model() -> LoadedModel:
    return load_model(None, MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_model(real_model: LoadedModel) -> LoadedModel:
    """A 2-layer random Llama sharing SmolLM2's tokenizer and chat template (same vocabulary)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(real_model.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    model.generation_config.eos_token_id = 2
    return LoadedModel(model, real_model.tokenizer, "tiny-llama", real_model.path, "tiny")
