"""An embedding table kept as block codes (a GGUF file loaded in place): a lookup dequantizes only the
rows it reads, to the same float32 values as the whole table dequantized."""

from __future__ import annotations

import torch

from engine.kernels import GridCodes


class CodesEmbedding(torch.nn.Module):
    def __init__(self, codes: GridCodes):
        super().__init__()
        self.codes = codes  # [vocab, hidden]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: long [T] -> float32 [T, hidden]."""
        return self.codes.rows(ids).dequantize()
