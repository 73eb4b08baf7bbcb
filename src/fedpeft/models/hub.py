"""Load base models and tokenizers by bundled short name, local path or Hugging Face hub id.

The bundled family (``tiny-small``, ``tiny-large``) ships inside the package in Hugging Face format and shares one
byte-level BPE tokenizer; see docs/model_card.md and ``fedpeft.models.pretrain`` for how they were made.
Any other string is passed to ``from_pretrained`` unchanged, so a hub id or a local checkpoint works in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedpeft.errors import ConfigError
from fedpeft.registry import MODELS, register_model

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class ModelSpec:
    """A model addressable by short name."""

    name: str
    path: Path
    description: str


register_model(ModelSpec("tiny-small", BUNDLED_DIR / "tiny-small", "bundled Llama-style causal LM, ~1.9M params"))
register_model(ModelSpec("tiny-large", BUNDLED_DIR / "tiny-large", "bundled Llama-style causal LM, ~8.5M params"))


def resolve_model_path(name_or_path: str) -> str:
    """Map a bundled short name to its folder; return anything else unchanged (hub id or local path)."""
    if name_or_path in MODELS:
        spec = MODELS.get(name_or_path)
        if not (spec.path / "config.json").is_file():
            raise ConfigError("model", name_or_path, f"bundled checkpoint files at {spec.path} (missing: reinstall)")
        return str(spec.path)
    return name_or_path


def select_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an explicit device that is unavailable is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", device, "'auto' or 'cpu' (CUDA is not available on this machine)")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError("device", device, ["auto", "cpu", "cuda", "cuda:N", "mps"])
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(name_or_path: str, dtype: str = "float32", device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a causal LM for fine-tuning.

    Parameters
    ----------
    name_or_path:
        Bundled short name (``fedpeft list`` shows them), local folder, or Hugging Face hub id.
    dtype:
        Storage dtype of the frozen base weights: ``float32`` (default; bundled weights are stored in bf16 and upcast),
        ``bfloat16`` or ``float16``.
    device:
        Target device (see :func:`select_device`).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ConfigError("model.dtype", dtype, list(_DTYPES))
    path = resolve_model_path(name_or_path)
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype])
    dev = device if isinstance(device, torch.device) else select_device(device)
    return model.to(dev)


def load_tokenizer(name_or_path: str):  # -> PreTrainedTokenizerBase
    """Load the tokenizer that belongs to a model; a pad token is guaranteed (EOS reused when the model has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
