"""The default model's GGUF file loaded in place: every matrix stays the file's block codes (no float copy),
and the forward pass computes exactly what it computes on the float model transformers dequantizes."""


import pytest
import torch

from engine.model import ForwardItem, ModelRunner, load_model
from tests.helpers.paths import MODEL_CACHE


@pytest.fixture(scope="module")
def in_place():
    return load_model(None, MODEL_CACHE)


def test_every_matrix_and_the_embedding_stay_codes(in_place):
    linears = {f"{n}.weight" for n, m in in_place.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= set(in_place.codes)
    assert "model.embed_tokens.weight" in in_place.codes
    floats = [n for n, p in in_place.model.named_parameters() if not p.is_meta]
    assert floats and all(n.endswith("norm.weight") for n in floats)  # only the norms hold floats


@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_logits_equal_those_of_the_dequantized_float_model(in_place, real_model, activations):
    coded = ModelRunner(in_place.model, kv_dtype=torch.float16, activations=activations, codes=in_place.codes,
                        embedding_rows=in_place.embedding_rows)
    floats = ModelRunner(real_model.model, kv_dtype=torch.float16, activations=activations)
    assert coded.weights_summary() == floats.weights_summary()  # the same codes, found or read
    kv_a, kv_b = coded.new_kv(), floats.new_kv()
    tokens = list(range(200, 300))
    a, b = coded.forward([ForwardItem(kv_a, tokens, True)]), floats.forward([ForwardItem(kv_b, tokens, True)])
    for _ in range(4):
        assert torch.equal(a, b)
        token = int(a.argmax())
        a, b = coded.forward([ForwardItem(kv_a, [token], True)]), floats.forward([ForwardItem(kv_b, [token], True)])
    assert torch.equal(a, b)


def test_the_embedding_is_read_from_the_file_row_by_row(in_place, real_model):
    ids = torch.tensor([0, 5, 5, 49151, 1234])
    rows = in_place.embedding_rows.rows(ids)
    assert rows.shape == (5, real_model.model.config.hidden_size)
    assert torch.equal(rows.dequantize(), real_model.model.get_input_embeddings().weight[ids])


def test_the_tokenizer_and_chat_template_come_from_the_file(in_place, real_model):
    conversation = [{"role": "user", "content": "Hello there"}]
    assert in_place.tokenizer.apply_chat_template(conversation, tokenize=False) == \
        real_model.tokenizer.apply_chat_template(conversation, tokenize=False)
