"""Saving adapters to disk and restoring them onto a base model.

peft-backed methods are written by peft itself (``adapter_config.json`` + ``adapter_model.safetensors``), so the folder
loads with ``peft.PeftModel.from_pretrained``. fedpeft-native methods (selective, bottleneck), which peft cannot
express, write ``adapter_model.safetensors`` with their trainable state. Both kinds also get ``fedpeft_adapter.json``
(the AdapterConfig), which is what :func:`load_saved_adapter` uses for the native kind. Every file is written under a
temporary name in the target folder and moved into place with ``os.replace``; the JSON goes last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from fedpeft.adapters.base import (
    CONFIG_ATTR,
    AdapterConfig,
    extract_trainable_state,
    get_adapter_config,
    load_trainable_state_into,
)
from fedpeft.errors import ConfigError, FedPeftError, UnsupportedModelError
from fedpeft.fileio import atomic_write_bytes

FEDPEFT_CONFIG_NAME = "fedpeft_adapter.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the adapter of ``model`` (as returned by ``attach_adapter``) to the folder ``path``; return the folder.

    peft-backed methods: Hugging Face PEFT format, loadable with ``PeftModel.from_pretrained``. fedpeft-native
    methods: ``adapter_model.safetensors`` (the trainable state) and ``fedpeft_adapter.json``.

    Raises
    ------
    ValueError
        ``model`` carries no adapter attached by fedpeft or peft.
    """
    from peft import PeftModel
    from safetensors.torch import save

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_adapter_config(model)
    if isinstance(model, PeftModel):
        tmp_dir = Path(tempfile.mkdtemp(dir=out, prefix=".tmp-save-"))
        try:
            # save_embedding_layers=False: peft would otherwise add the whole base embedding matrix to the adapter
            # whenever an embedding is a LoRA target (meant for resized vocabularies; fedpeft never resizes), 4 MB
            # per save on tiny-small instead of the 0.3 MB the LoRA factors take. The base embedding is unchanged.
            model.save_pretrained(str(tmp_dir), save_embedding_layers=False)
            for src in sorted(p for p in tmp_dir.rglob("*") if p.is_file()):
                dst = out / src.relative_to(tmp_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        kind = "peft"
    elif cfg is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in extract_trainable_state(model).items()}
        if not state:  # a native adapter *is* its trainable selection; an inference load has none left
            raise FedPeftError(f"{cfg.method}: the model has no trainable parameters left to save")
        atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": "pt", "fedpeft_method": cfg.method}))
        kind = "fedpeft"
    else:
        raise FedPeftError(f"{type(model).__name__} carries no adapter; attach one with attach_adapter first")
    if cfg is not None:
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": kind, "config": cfg.to_dict()}
        atomic_write_bytes(out / FEDPEFT_CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out


def read_saved_config(path: str | os.PathLike[str]) -> AdapterConfig | None:
    """The AdapterConfig stored in a folder written by :func:`save_adapter`, or None if it has none."""
    file = Path(path) / FEDPEFT_CONFIG_NAME
    if not file.is_file():
        return None
    meta = json.loads(file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{file}: format_version", meta.get("format_version"), [FORMAT_VERSION])
    return AdapterConfig.from_dict(meta["config"])


def load_saved_adapter(base_model: nn.Module, path: str | os.PathLike[str], *, trainable: bool = False) -> nn.Module:
    """Restore an adapter written by :func:`save_adapter` (or any Hugging Face PEFT folder) onto ``base_model``.

    Returns the adapted model, as ``attach_adapter`` would; ``base_model`` is modified in place. With
    ``trainable=False`` (inference) nothing is trainable; with ``trainable=True`` exactly the adapter's parameters are.
    The base model must be the one the adapter was trained on (same architecture and weights).

    Raises
    ------
    FileNotFoundError
        ``path`` holds neither ``adapter_config.json`` nor ``fedpeft_adapter.json``.
    UnsupportedModelError
        ``trainable=True`` for a prompt-learning adapter (peft saves only the final virtual-token embeddings; resume
        such training from ``adapter_state``/``load_adapter_state`` checkpoints instead).
    """
    from peft import PeftConfig, PeftModel
    from safetensors.torch import load_file

    from fedpeft.adapters._peft import PeftBackedMethod

    folder = Path(path)
    cfg = read_saved_config(folder)
    if (folder / PEFT_CONFIG_NAME).is_file():
        peft_cfg = PeftConfig.from_pretrained(str(folder))
        if trainable and peft_cfg.is_prompt_learning:
            raise UnsupportedModelError(
                f"{peft_cfg.peft_type}: peft cannot load a prompt-learning adapter as trainable (only its final "
                "virtual-token embeddings are saved); resume training from adapter_state/load_adapter_state instead"
            )
        model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)
        if not trainable:
            model.requires_grad_(False)  # peft leaves prompt-learning embeddings trainable even in inference mode
        if cfg is not None:
            method = cfg.validate()
            if trainable and isinstance(method, PeftBackedMethod):
                method.after_attach(model, cfg)  # e.g. FFA-LoRA freezes A again
            setattr(model, CONFIG_ATTR, cfg)
        return model
    if cfg is None:
        raise FileNotFoundError(f"{folder} holds neither {PEFT_CONFIG_NAME} nor {FEDPEFT_CONFIG_NAME}")
    native = cfg.validate().attach(base_model, cfg)  # what fedpeft.adapters.attach_adapter does
    load_trainable_state_into(native, load_file(str(folder / WEIGHTS_NAME), device=_device_of(native)))
    if not trainable:
        native.requires_grad_(False)
    return native


def _device_of(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return str(param.device) if param is not None else "cpu"
