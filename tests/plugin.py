"""Shared fixtures, loaded as a pytest plugin (pyproject: -p tests.plugin): the real model (loaded once
per run), a tiny random Llama for speed, each test's database (SQLite, or PostgreSQL with
TEST_DATABASE_URL: tests/helpers/database.py), and in-process servers on the tiny model and that database."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatserver.app import create_app
from chatserver.config import ChatConfig, HttpConfig, ServerConfig
from engine import EngineConfig
from engine.model.loader import LoadedModel, load_model
from storage import StorageConfig
from tests.helpers.admin import ADMIN_TOKEN
from tests.helpers.chat import Chat
from tests.helpers.database import drop_test_databases, fresh_database
from tests.helpers.paths import MODEL_CACHE


def pytest_sessionfinish(session, exitstatus) -> None:
    drop_test_databases()



@pytest.fixture(scope="session")
def real_model() -> LoadedModel:
    return load_model(None, MODEL_CACHE, in_place=False)  # the float model: the reference tests compare with


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


@pytest.fixture
def database_url(tmp_path) -> str:
    """The SQLAlchemy URL of an empty database for this test (SQLite file tmp_path/chat.db by default)."""
    return fresh_database(tmp_path)


@pytest.fixture
def storage_config(database_url) -> StorageConfig:
    return StorageConfig(database_url=database_url)


@pytest.fixture
def server_config(tmp_path, storage_config) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path, storage=storage_config,
                        engine=EngineConfig(max_context=1024, max_new_tokens=64, max_queue=8))


@pytest.fixture
async def admin(aiohttp_client, tiny_model, tmp_path, storage_config):
    """The app with the admin API enabled (bearer ADMIN_TOKEN)."""
    config = ServerConfig(data_dir=tmp_path, http=HttpConfig(admin_token=ADMIN_TOKEN), storage=storage_config,
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


@pytest.fixture
async def client(aiohttp_client, tiny_model, server_config):
    return await aiohttp_client(create_app(server_config, model=tiny_model))


@pytest.fixture
def make_client(aiohttp_client, tiny_model, tmp_path, storage_config):
    """make(http={...}, chat={...}, engine=EngineConfig(...)): an app whose config differs in these fields."""
    async def make(http: dict | None = None, chat: dict | None = None, engine: EngineConfig | None = None):
        config = ServerConfig(data_dir=tmp_path, http=HttpConfig(**(http or {})), chat=ChatConfig(**(chat or {})),
                              storage=storage_config,
                              engine=engine or EngineConfig(max_context=1024, max_new_tokens=64))
        return await aiohttp_client(create_app(config, model=tiny_model))

    return make


@pytest.fixture
def connect(client):
    async def open_chat(**hello) -> tuple[Chat, dict]:
        chat = Chat(await client.ws_connect("/ws"))
        return chat, await chat.hello(**hello)

    return open_chat
