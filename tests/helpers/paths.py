"""Where things are: the repository and the converted-weights cache kept between test runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Converted weights are kept between runs (the GGUF dequantization takes ~15 s once).
MODEL_CACHE = REPO / ".cache" / "models"
