"""Model backends behind two small protocols; `registry` picks and loads them."""

from shared.models.base import CrossEncoderBackend, Embedder, Pair
from shared.models.registry import load_cross_encoder, load_embedder

__all__ = ["CrossEncoderBackend", "Embedder", "Pair", "load_cross_encoder", "load_embedder"]
