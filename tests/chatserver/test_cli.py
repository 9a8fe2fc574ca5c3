"""Command line: options, their CHATSERVER_* environment equivalents, and `db upgrade`."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from chatserver.cli import build_parser
from tests.helpers.paths import REPO


def test_environment_sets_defaults_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("CHATSERVER_PORT", "9123")
    monkeypatch.setenv("CHATSERVER_DATA_DIR", "/srv/chat")
    monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", "from-env")
    args = build_parser().parse_args(["serve", "--port", "9999"])
    assert args.port == 9999 and args.data_dir == Path("/srv/chat") and args.admin_token == "from-env"
    defaults = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    assert defaults.port == 9123 and defaults.host == "0.0.0.0"


def test_embedded_defaults(monkeypatch):
    for name in ("PORT", "HOST", "DATA_DIR", "MODEL", "ADMIN_TOKEN"):
        monkeypatch.delenv(f"CHATSERVER_{name}", raising=False)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.data_dir, args.model, args.admin_token) == ("127.0.0.1", 8080, Path(".data"), None, None)


def test_a_bad_choice_from_the_environment_is_refused_before_anything_starts(tmp_path):
    env = {**os.environ, "CHATSERVER_ACTIVATIONS": "int8"}
    run = subprocess.run([sys.executable, "-m", "chatserver", "serve", "--data-dir", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2
    assert "CHATSERVER_ACTIVATIONS must be one of float32, int16, not 'int8'" in run.stderr
    assert not (tmp_path / "chat.db").exists()  # nothing was created
    assert build_parser().parse_args(["serve"]).activations == "int16"  # the embedded default


def test_db_upgrade_creates_the_schema(tmp_path):
    run = subprocess.run([sys.executable, "-m", "chatserver", "db", "upgrade", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    db = sqlite3.connect(tmp_path / "chat.db")
    assert db.execute("select version_num from alembic_version").fetchone() == ("0001",)
