"""Base models: bundled tiny pretrained models by short name, or any Hugging Face model id / local path."""

from fedpeft.models.hub import BUNDLED_DIR, ModelSpec, load_model, load_tokenizer, resolve_model_path, select_device

__all__ = ["BUNDLED_DIR", "ModelSpec", "load_model", "load_tokenizer", "resolve_model_path", "select_device"]
