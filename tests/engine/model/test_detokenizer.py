from engine.model.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "naïve café — 東京 🍣🍜 emoji 👩‍👩‍👧 mixed\n\n```python\nprint('x')\n```",
    "  leading spaces and\ttabs  ",
]


def test_streamed_deltas_concatenate_to_the_full_decode(real_model):
    tok = real_model.tokenizer
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        detok = IncrementalDetokenizer(tok)
        pieces = [detok.push(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == tok.decode(ids)
        assert all("\ufffd" not in p for p in pieces)
