"""Command line: options derived from the configuration, their CHATSERVER_* variables, `db upgrade`,
the generated docs/CONFIG.md, and the terminal client's own command line."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatserver.cli import build_parser, main
from chatserver.config import ServerConfig
from chatserver.options import config_from_args, options, render_doc
from tests.helpers.paths import REPO


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
    assert db.execute("select version_num from alembic_version").fetchone() == ("0001",)


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
