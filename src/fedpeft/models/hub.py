"""Load base models and tokenizers by bundled short name, local path or Hugging Face hub id.

The bundled family (``tiny-small``, ``tiny-large``) ships inside the package in Hugging Face format and shares one
byte-level BPE tokenizer; see docs/model_card.md and ``fedpeft.models.pretrain`` for how they were made.
Fetched models (``smollm2-135m``) are converted once into a user cache (``fedpeft.models.fetch``) by
``fedpeft models fetch NAME`` or on first use, and load from there offline afterwards.
Any other string is passed to ``from_pretrained`` unchanged, so a hub id or a local checkpoint works in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from fedpeft.errors import ConfigError
from fedpeft.models.derive import DerivedModel
from fedpeft.models.fetch import SMOLLM2_135M
from fedpeft.registry import MODELS, register_model

BUNDLED_DIR = Path(__file__).parent / "bundled"


class Fetcher(Protocol):
    """What a model that is not bundled must provide: a cache folder, whether it is filled, and how to fill it."""

    def folder(self) -> Path: ...

    def is_fetched(self) -> bool: ...

    def state(self) -> str: ...

    def fetch(self, force: bool = False) -> Path: ...


@dataclass(frozen=True)
class ModelSpec:
    """A model addressable by short name.

    Attributes
    ----------
    name:
        The short name (``model.name`` in a recipe).
    path:
        Folder of a bundled model; ``None`` for a fetched one (its folder is ``fetcher.folder()``).
    description:
        One line for ``fedpeft list``.
    fetcher:
        Fills a user-cache folder on demand (see ``fedpeft.models.fetch``); ``None`` for bundled models.
    """

    name: str
    path: Path | None
    description: str
    fetcher: Fetcher | None = None

    def location(self) -> Path:
        """Where the Hugging Face folder is (or will be, for a fetched model not fetched yet)."""
        if self.fetcher is not None:
            return self.fetcher.folder()
        assert self.path is not None, f"model {self.name!r} has neither a path nor a fetcher"
        return self.path

    def available(self) -> bool:
        """True when the folder can be loaded now, without any download."""
        if self.fetcher is not None:
            return self.fetcher.is_fetched()
        return (self.location() / "config.json").is_file()

    def state(self) -> str:
        """One line for ``fedpeft list``: bundled, fetched at PATH, or not fetched (with the command)."""
        if self.fetcher is not None:
            return self.fetcher.state()
        return "bundled" if self.available() else "checkpoint missing: reinstall fedpeft"


register_model(ModelSpec("tiny-small", BUNDLED_DIR / "tiny-small", "bundled Llama-style causal LM, ~1.9M params"))
register_model(ModelSpec("tiny-large", BUNDLED_DIR / "tiny-large", "bundled Llama-style causal LM, ~8.5M params"))
register_model(
    ModelSpec(
        SMOLLM2_135M.name,
        None,
        "SmolLM2-135M-Instruct (Llama, 134.5M params, chat template), fetched once into the user cache",
        fetcher=SMOLLM2_135M,
    )
)


#: FedPT's real pair: a small model that shares smollm2-135m's vocabulary, cut from it (6 of its 30 layers, evenly
#: spaced: the lowest KL to the parent among the cuts probed before distillation) and distilled into it briefly.
SMOLLM2_6L = DerivedModel("smollm2-6l", SMOLLM2_135M.name, (0, 6, 12, 18, 24, 29), steps=300, lr=5e-4)
register_model(
    ModelSpec(
        SMOLLM2_6L.name,
        None,
        "6 of smollm2-135m's 30 layers (49.6M params, same vocabulary), distilled into it; built once into the cache",
        fetcher=SMOLLM2_6L,
    )
)


def resolve_model_path(name_or_path: str) -> str:
    """Map a short name to its folder; return anything else unchanged (hub id or local path).

    A fetched model that is not in the cache yet is fetched first (it prints what it does); offline, that raises
    ``ModelFetchError`` naming ``fedpeft models fetch NAME``.
    """
    if name_or_path in MODELS:
        spec: ModelSpec = MODELS.get(name_or_path)
        if spec.fetcher is not None:
            if not spec.fetcher.is_fetched():
                print(f"model {spec.name!r} is not in the cache yet: fetching it once (`fedpeft models fetch`)")
                spec.fetcher.fetch()
            return str(spec.fetcher.folder())
        if not spec.available():
            raise ConfigError("model", name_or_path, f"bundled checkpoint files at {spec.path} (missing: reinstall)")
        return str(spec.location())
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
