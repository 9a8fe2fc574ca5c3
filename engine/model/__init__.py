"""The model: the catalog of models known by name (and pulling them), loading (GGUF files, Hugging Face
directories), what each supported architecture's decoder layer computes, its weights arranged for our
kernels, the packed multi-session forward pass, the chat template, incremental detokenization, and the
float reference of transformers' own generate()."""

from engine.model.catalog import (CATALOG, CatalogEntry, Chunk, ModelFetchError, ModelStatus, is_catalog_name,
                                  list_models, pull, remove, resolve_model)
from engine.model.chat_format import ChatFormat, ChatMessage
from engine.model.detokenizer import IncrementalDetokenizer
from engine.model.families import FAMILIES, Family, UnsupportedArchitecture, family_of
from engine.model.fingerprint import kv_fingerprint, model_fingerprint
from engine.model.gguf_meta import GGUFFormatError
from engine.model.loader import LoadedModel, ModelNotFound, default_gguf_path, load_model
from engine.model.reference import greedy_answer, greedy_ids
from engine.model.runner import ForwardItem, ModelRunner
from engine.model.weights import MATMUL_DTYPES, LayerWeights, fuse_layers

__all__ = ["CATALOG", "FAMILIES", "MATMUL_DTYPES", "CatalogEntry", "ChatFormat", "ChatMessage", "Chunk", "Family",
           "ForwardItem", "GGUFFormatError", "IncrementalDetokenizer", "LayerWeights", "LoadedModel", "ModelFetchError",
           "ModelNotFound", "ModelRunner", "ModelStatus", "UnsupportedArchitecture", "default_gguf_path", "family_of",
           "fuse_layers", "greedy_answer", "greedy_ids", "is_catalog_name", "kv_fingerprint", "list_models",
           "load_model", "model_fingerprint", "pull", "remove", "resolve_model"]
