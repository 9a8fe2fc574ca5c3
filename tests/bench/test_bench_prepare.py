"""Benchmarks prepare what they need: bench/restore.py on a machine where no server has run yet."""

import pytest

from bench import restore

pytestmark = pytest.mark.slow  # converts the GGUF into an empty directory: ~30 s on 2 cores


def test_restore_prepares_an_empty_model_cache_and_sizes_its_reports(tmp_path):
    tokenizer = restore.prepared_tokenizer(tmp_path)  # tmp_path: an empty model cache
    text = "Latency at the 99th percentile fell from 480 to 210 milliseconds."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    report = restore.pasted_text(tokenizer, 512, "copy 1")  # the first message of a ~512-token history
    assert 0 <= len(tokenizer.encode(report).ids) - (512 - restore.OVERHEAD) < 60
    assert list(tmp_path.glob("*/config.json"))  # the servers the benchmark starts next load these weights
