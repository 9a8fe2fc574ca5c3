"""An embedding table kept as block codes (a GGUF file loaded in place), in memory or left in the file: a
lookup dequantizes only the rows it reads, to the same float32 values as the whole table dequantized."""

from __future__ import annotations

import torch

from engine.kernels import GridCodes
from engine.model.gguf_codes import MappedRows


class CodesEmbedding(torch.nn.Module):
    def __init__(self, codes: GridCodes | MappedRows):
        super().__init__()
        self.codes = codes  # [vocab, hidden]: anything whose rows(ids) gives those rows' GridCodes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: long [T] -> float32 [T, hidden]."""
        return self.codes.rows(ids).dequantize()
