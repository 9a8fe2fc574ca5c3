"""Hostile session ids in WebSocket, admin REST and OpenAI requests: typed 400/404 answers, and no file
outside the data directory is ever opened (checked with an audit hook on every open of the process)."""

import sys
from pathlib import Path

import pytest

from tests.helpers.admin import ADMIN_AUTH
from tests.helpers.chat import Chat

AUTH = ADMIN_AUTH
HOSTILE = ["../x", "..%2f..%2fetc%2fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2fchat.db", "a\x00b", "/etc/passwd",
           "x" * 10_000, "..\\..\\win.ini", "\u202e\u0000", "kv/../../secret"]

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # process-wide and permanent; records only while a test sets _opened



@pytest.fixture
def opened(tmp_path):
    global _opened
    _opened = []
    yield _opened
    _opened = None


def _outside(paths: list[str], data_dir: Path) -> list[str]:
    """Opened paths outside the data directory, except Python source read to format a logged traceback."""
    allowed = [str(Path(p).resolve()) for p in (data_dir, sys.prefix, sys.base_prefix, Path(__file__).parents[2])]
    resolved = [str(Path(p).resolve()) for p in paths]
    return [p for p in resolved if not any(p.startswith(a) for a in allowed[:1])
            and not (p.endswith(".py") and any(p.startswith(a) for a in allowed[1:]))]


async def test_hostile_ids_in_a_websocket_hello_get_typed_errors(admin, opened, tmp_path):
    chat = Chat(await admin.ws_connect("/ws"))
    for bad in HOSTILE:
        frame = await chat.hello(session_id=bad, resume_token="t")
        assert frame["type"] == "error" and frame["code"] in ("bad_request", "session_not_found"), (bad, frame)
    assert (await chat.hello())["type"] == "session"  # the connection still works
    assert _outside(opened, tmp_path) == []


async def test_hostile_ids_in_admin_urls_get_400_or_404(admin, opened, tmp_path):
    for bad in HOSTILE:
        quoted = bad.replace("\x00", "%00").replace("/", "%2F")
        for method, suffix in (("GET", ""), ("GET", "/messages"), ("DELETE", ""), ("POST", "/evict")):
            resp = await admin.request(method, f"/api/sessions/{quoted}{suffix}", headers=AUTH)
            assert resp.status in (400, 404, 405), (bad, method, suffix, resp.status)
            if resp.content_type == "application/json":  # (aiohttp's parser answers an 8 KB+ URL in plain text)
                assert (await resp.json())["error"]["code"] in ("bad_request", "session_not_found", "not_found",
                                                                "method_not_allowed")
    assert _outside(opened, tmp_path) == []


async def test_hostile_session_ids_in_openai_requests_get_400(admin, opened, tmp_path):
    model = (await (await admin.get("/v1/models")).json())["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for bad in HOSTILE:
        resp = await admin.post("/v1/chat/completions", json={**body, "session_id": bad})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "session_id", bad
        if "\x00" not in bad and "\u202e" not in bad:  # header values cannot carry these at all
            resp = await admin.post("/v1/chat/completions", json=body, headers={"X-Session-Id": bad})
            assert resp.status == 400, bad
    assert _outside(opened, tmp_path) == []


def test_no_pickle_or_torch_load_anywhere_in_the_project():
    """Unpickling runs code: no module may import pickle or call torch.load, and model weights load
    from safetensors only."""
    root = Path(__file__).resolve().parents[2]
    forbidden = ["import pickle", "from pickle", "cPickle", "torch.load(", "import dill", "joblib.load",
                 "allow_pickle=True", "weights_only=False", "import marshal", "shelve."]
    offenders = []
    for folder in ("chatserver", "engine", "storage", "bench", "scripts", "alembic", "tests"):
        for path in (root / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(root)}: {word}" for word in forbidden if word in text]
    assert offenders == []
    loader = (root / "engine" / "model" / "loader.py").read_text()
    assert "use_safetensors=True" in loader
