"""The admin API's OpenAPI description stays true: schemathesis fuzzes the running server with
requests generated from it and checks every response against it (status codes, content types,
bodies), with and without valid credentials."""

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from chatserver.admin.openapi import openapi_document
from tests.helpers.paths import MODEL_CACHE
from tests.helpers.real_server import RealServer, WsChat

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

TOKEN = "fuzz-token"
# positive generation only: the API deliberately ignores unknown query parameters and headers
# (invalid values of known parameters get a 400, checked in test_admin.py)
schema = schemathesis.openapi.from_dict(
    openapi_document(), config=SchemathesisConfig.from_dict({"generation": {"mode": "positive"}})
)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    server = RealServer(tmp_path_factory.mktemp("fuzz"), MODEL_CACHE, "--admin-token", TOKEN).start()

    async def seed():  # a few real sessions, so that listing and detail have content
        for text in ("hello", "what is 2+2?"):
            chat, _ = await WsChat.open(server.ws_url)
            await chat.turn(text, max_tokens=4, temperature=0)
            await chat.close()

    asyncio.run(seed())
    yield server
    server.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_admin_api_conforms_to_its_openapi_description(case, api_server):
    if case.method == "DELETE":
        case.path_parameters = {"session_id": "no-such-session"}  # keep the seeded sessions
    if case.query:
        # cursors are opaque tokens minted by the API (an invented one is a documented 400);
        # pagination with real cursors is covered in test_admin.py
        case.query.pop("cursor", None)
    case.call_and_validate(base_url=api_server.url, headers={"Authorization": f"Bearer {TOKEN}"})


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_credentials_every_operation_is_refused_as_documented(case, api_server):
    response = case.call(base_url=api_server.url)
    assert response.status_code == 401
    case.validate_response(response)
