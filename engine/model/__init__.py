"""The model: loading (GGUF files, Hugging Face directories), its weights arranged for our kernels, the
packed multi-session forward pass, the chat template, incremental detokenization, and the float
reference of transformers' own generate()."""

from engine.model.chat_format import ChatFormat, ChatMessage
from engine.model.detokenizer import IncrementalDetokenizer
from engine.model.fingerprint import kv_fingerprint, model_fingerprint
from engine.model.loader import LoadedModel, ModelNotFound, default_gguf_path, load_model
from engine.model.reference import greedy_answer, greedy_ids
from engine.model.runner import ForwardItem, ModelRunner
from engine.model.weights import MATMUL_DTYPES, LayerWeights, fuse_layers

__all__ = ["MATMUL_DTYPES", "ChatFormat", "ChatMessage", "ForwardItem", "IncrementalDetokenizer", "LayerWeights",
           "LoadedModel", "ModelNotFound", "ModelRunner", "default_gguf_path", "fuse_layers", "greedy_answer", "greedy_ids", "kv_fingerprint",
           "load_model", "model_fingerprint"]
