"""Base models: bundled tiny pretrained models and fetched real ones by short name, or any HF model id / local path."""

from fedpeft.models.fetch import ModelFetchError, cache_dir
from fedpeft.models.hub import BUNDLED_DIR, ModelSpec, load_model, load_tokenizer, resolve_model_path, select_device

__all__ = [
    "BUNDLED_DIR",
    "ModelFetchError",
    "ModelSpec",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
    "select_device",
]
