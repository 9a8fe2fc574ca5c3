"""The engine: one thread that owns the model and every session's KV and runs concurrent turns through
shared forward passes (schedule -> run -> postprocess). Sub-packages: kv/ (per-session KV, the RAM
store and its disk tier interface), model/ (loading, weights, forward pass, chat template), kernels/
(the C kernels and their Python faces). Imports torch and transformers; nothing of the server."""

from engine.admission import Ticket
from engine.config import EngineConfig, ModelConfig
from engine.engine import Engine
from engine.errors import ContextTooLong, EngineError, EngineStopped, Overloaded
from engine.kv import KV_DTYPES, DiskTier, KVSpec, KVStoreConfig
from engine.model import ChatFormat, ChatMessage, LoadedModel, ModelNotFound, load_model
from engine.sampling import SamplingParams
from engine.startup import max_context, start_engine
from engine.turn import DoneEvent, ErrorEvent, Timings, TokenEvent, TurnEvent, TurnRequest, Usage

__all__ = ["KV_DTYPES", "ChatFormat", "ChatMessage", "ContextTooLong", "DiskTier", "DoneEvent", "Engine",
           "EngineConfig", "EngineError", "EngineStopped", "ErrorEvent", "KVSpec", "KVStoreConfig", "LoadedModel",
           "ModelConfig", "ModelNotFound", "Overloaded", "SamplingParams", "Ticket", "Timings", "TokenEvent",
           "TurnEvent", "TurnRequest", "Usage", "load_model", "max_context", "start_engine"]
