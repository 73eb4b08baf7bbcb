"""``fedpeft export``: copy a run's adapter out in Hugging Face PEFT format, or merge it into the base model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import tomllib

from fedpeft.errors import ConfigError, FedPeftError


def _adapter_dir(run_dir: Path, round: int | None) -> Path:
    folder = run_dir / ("adapter" if round is None else f"adapters/round_{round:04d}")
    if not folder.is_dir():
        available = (
            sorted(p.name for p in (run_dir / "adapters").glob("round_*")) if (run_dir / "adapters").is_dir() else []
        )
        raise FedPeftError(
            f"{folder} does not exist (finished runs have adapter/; saved rounds: {available or 'none'})"
        )
    return folder


def _named_adapters(folder: Path) -> list[str]:
    """Sub-folders holding a PEFT adapter (FL-TAC saves one per task cluster)."""
    return sorted(p.parent.name for p in folder.glob("*/adapter_config.json"))


def _pick_adapter(folder: Path, name: str | None) -> Path:
    names = _named_adapters(folder)
    if name is None:
        return folder
    if name not in names:
        raise ConfigError("--adapter", name, names or "a run with named adapters (e.g. FL-TAC's cluster_<k>)")
    return folder / name


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge: bool = False,
    round: int | None = None,
    adapter: str | None = None,
) -> Path:
    """Export the final (or round ``round``'s) global adapter of a run to ``out``.

    Runs with several adapters (FL-TAC: ``cluster_<k>/`` plus its router) export all of them, or the one named by
    ``adapter``; merging needs one adapter, so ``merge`` requires ``adapter`` there.

    Without ``merge`` the adapter folder is copied as is (loadable with ``PeftModel.from_pretrained`` for peft-backed
    methods). With ``merge`` the adapter is folded into the base model's weights (``merge_and_unload``) and a plain
    Hugging Face model + tokenizer is written: no peft needed to use it. Prompt-learning and bottleneck adapters add
    computation that cannot be folded into weights and raise an error. Written into a temporary sibling folder and
    renamed, so ``out`` is never half-written.
    """
    run = Path(run_dir)
    cfg_path = run / "config.toml"
    if not cfg_path.is_file():
        raise ConfigError("RUN_DIR", str(run), "a run directory containing config.toml")
    src = _pick_adapter(_adapter_dir(run, round), adapter)
    if merge and not (src / "adapter_config.json").is_file() and _named_adapters(src):
        raise ConfigError("--adapter", None, f"one of {_named_adapters(src)} to merge (this run has several)")
    dest = Path(out)
    if dest.exists():
        raise FedPeftError(f"{dest} already exists; choose a new output folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        if merge:
            _merge(tomllib.loads(cfg_path.read_text()), src, tmp)
        else:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


#: Adapters that add computation (virtual tokens, new modules) rather than a weight update: nothing to fold in.
UNMERGEABLE = ("prompt_tuning", "prefix_tuning", "p_tuning", "bottleneck")


def _untie_adapted_embeddings(model: Any) -> None:
    """Give the LM head its own copy of a tied input embedding that the adapter changes, before merging.

    With tied embeddings (the bundled models) a LoRA on ``embed_tokens`` changes only the input lookup; folding it
    into the shared matrix would change the output projection too, so the merged model would not compute what the
    adapter model computes. Untied first, the merged model does (the saved config says so, and both matrices are
    saved).
    """
    import torch

    base = model.get_base_model()
    if not getattr(base.config, "tie_word_embeddings", False):
        return
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    if head is None or not any("lora_embedding" in name for name, _ in emb.named_parameters()):
        return
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    base.config.tie_word_embeddings = False
    if hasattr(base.config, "get_text_config"):  # multimodal configs keep the flag on their text config
        base.config.get_text_config().tie_word_embeddings = False


def _merge(cfg: dict, adapter: Path, out: Path) -> None:
    from fedpeft.adapters import load_saved_adapter
    from fedpeft.adapters.export import read_saved_config
    from fedpeft.models import load_model, load_tokenizer

    saved = read_saved_config(adapter)
    method = saved.method if saved is not None else cfg.get("adapter", {}).get("method", "lora")
    if method in UNMERGEABLE:
        raise FedPeftError(
            f"a {method!r} adapter adds computation that cannot be merged into weights; export without --merge"
        )
    model_cfg = cfg.get("model", {})
    name = model_cfg.get("name", "tiny-small")
    model: Any = load_saved_adapter(load_model(name, model_cfg.get("dtype", "float32"), "cpu"), adapter)
    if hasattr(model, "merge_and_unload"):
        _untie_adapted_embeddings(model)
        model = model.merge_and_unload()
    # Selective methods (BitFit, LayerNorm, last-k, named) trained base parameters in place: already merged.
    model.save_pretrained(out)
    load_tokenizer(name).save_pretrained(out)
