"""Typed job configuration: nested dataclasses, TOML recipes, ``--set key=value`` overrides.

A recipe is a TOML file whose tables mirror the dataclasses below (``[model]``, ``[data]``, ``[adapter]``,
``[train]``, ...). Unknown keys are errors that name the field and list the known ones, and every value is
validated in ``__post_init__`` before any work starts. The resolved config is saved into each run directory
so a run can be reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import tomllib

from fedpeft.adapters import AdapterConfig
from fedpeft.errors import ConfigError
from fedpeft.registry import ALGORITHMS, load_plugins

T = TypeVar("T")

Schedule = Literal["constant", "linear", "cosine"]
Precision = Literal["auto", "fp32", "bf16"]

_SCHEDULES = ("constant", "linear", "cosine")
_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Local optimisation settings.

    ``steps`` counts optimizer updates; each update sees ``batch_size * grad_accum`` examples.
    ``balanced_sampling`` draws examples with probability inversely proportional to their label's frequency, which
    counters label skew on a client without sharing anything (ALGORITHMS.md §1, heterogeneity).
    ``seed`` seeds the data order; None (the default) = the job's ``seed`` in a job, 0 on its own.
    """

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    loss: str = "lm"  # a registered loss: "lm", "label_words" (fedpeft.registry.LOSSES)
    precision: Precision = "auto"
    balanced_sampling: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError("train.seed", self.seed, "an integer >= 0, or omitted (the job's seed)")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", getattr(self, name), "an integer >= 1")
        if not self.lr > 0:
            raise ConfigError("train.lr", self.lr, "a positive float")
        if self.warmup_steps < 0:
            raise ConfigError("train.warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.max_grad_norm < 0:
            raise ConfigError("train.max_grad_norm", self.max_grad_norm, "a float >= 0 (0 disables clipping)")
        from fedpeft.registry import LOSSES

        if self.loss not in LOSSES:
            raise ConfigError("train.loss", self.loss, LOSSES.names())
        if self.schedule not in _SCHEDULES:
            raise ConfigError("train.schedule", self.schedule, _SCHEDULES)
        if self.precision not in _PRECISIONS:
            raise ConfigError("train.precision", self.precision, _PRECISIONS)
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class ModelConfig:
    """Base model: a bundled short name (``fedpeft list``), a local path, or a Hugging Face hub id."""

    name: str = "tiny-small"
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name", self.name, "a bundled model name, local path or hub id")


@dataclass
class DataConfig:
    """Dataset and encoding. ``train_limit`` / ``eval_limit`` cap the number of examples (None = all).

    ``dataset`` is a registered name, or several classification datasets joined by ``+`` (``"sst2+qnli+rte"``): a
    multi-task mix in which every example keeps its task name, its dataset's template and its own label words, the
    limits apply to each task, and evaluation reports each task's accuracy (``accuracy_<task>``) and their mean.

    ``task_subset`` keeps only the examples whose task is one of these names (Dolly's categories, or datasets of a
    mix), in both splits, after the limits: the same examples of those tasks that the whole job would use (e.g. a
    centralized reference for one Dolly category). A name no loaded example has is an error naming those present.

    Your own data: ``train_file`` / ``eval_file`` (relative to the current directory) for a dataset that reads files
    (``jsonl``: JSON Lines, a JSON array, CSV, TSV, Parquet, format from the extension; ``hf``: anything
    ``datasets`` opens, e.g. a ``save_to_disk`` folder). ``fields`` maps canonical fields to the file's own
    (``{instruction = "question", output = "answer"}``). Without ``eval_file``, ``heldout_fraction`` of each task
    of the train file (seeded by ``heldout_seed``, not the job seed, so every seed of a study is scored on the same
    examples) is the evaluation split and training uses the rest. ``options`` is passed to the dataset's loader as
    keyword options (``name_or_path`` / ``config_name`` of ``hf``, ``tasks_dir`` of ``natural_instructions``, ...).
    """

    dataset: str = "sst2"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "dev"
    train_limit: int | None = None
    eval_limit: int | None = None
    template: str | None = None  # None = the dataset's own template
    max_length: int = 128
    task_subset: list[str] | None = None
    train_file: str | None = None
    eval_file: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    heldout_fraction: float = 0.1
    heldout_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fedpeft.registry import DATASETS

        names = self.tasks
        for name in names:
            if name not in DATASETS:
                raise ConfigError("data.dataset", self.dataset, [*DATASETS.names(), "<name>+<name>+..."])
        if len(names) > 1:
            if len(set(names)) != len(names):
                raise ConfigError("data.dataset", self.dataset, "a mix of distinct dataset names")
            kinds = {name: DATASETS.get(name).task_type for name in names}
            if any(kind != "classification" for kind in kinds.values()):
                raise ConfigError("data.dataset", self.dataset, f"a mix of classification datasets only ({kinds})")
            if self.template is not None:
                raise ConfigError("data.template", self.template, "unset for a mix (each task keeps its own template)")
            for split in (self.train_split, self.eval_split):
                missing = [n for n in names if split not in DATASETS.get(n).splits]
                if missing:
                    raise ConfigError("data split", split, f"a split every task of the mix has ({missing} lack it)")
        if self.max_length < 8:
            raise ConfigError("data.max_length", self.max_length, "an integer >= 8")
        keep = self.task_subset
        if keep is not None and (not keep or len(set(keep)) != len(keep)):
            raise ConfigError("data.task_subset", keep, "a non-empty list of distinct task names, or omitted")
        if keep is not None and len(names) > 1 and not set(keep) <= set(names):
            raise ConfigError("data.task_subset", keep, f"names of the mix's datasets {names}")
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}", value, "a positive integer or omitted")
        self._check_own_data()

    def _check_own_data(self) -> None:
        """Files, field mapping and loader options: everything checkable without reading a file."""
        from fedpeft.data import COLUMNS
        from fedpeft.registry import DATASETS

        specs = [DATASETS.get(name) for name in self.tasks]
        readers = [n for n, s in DATASETS.items() if s.file_option is not None]
        file_option = specs[0].file_option if len(specs) == 1 else None
        for name in ("train_file", "eval_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"data.{name}", value, "a file path, or omitted")
            if value is not None and file_option is None:
                raise ConfigError(f"data.{name}", value, f"data.dataset one of {readers} (datasets that read files)")
        if self.eval_file is not None and self.train_file is None:
            raise ConfigError("data.eval_file", self.eval_file, "set together with data.train_file")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError("data.heldout_fraction", self.heldout_fraction, "a share in (0, 1)")
        if isinstance(self.heldout_seed, bool) or self.heldout_seed < 0:
            raise ConfigError("data.heldout_seed", self.heldout_seed, "an integer >= 0")
        for key, source in self.fields.items():
            if key not in COLUMNS:
                raise ConfigError(f"data.fields.{key}", source, f"a mapping of the canonical fields {list(COLUMNS)}")
            if not isinstance(source, str) or not source:
                raise ConfigError(f"data.fields.{key}", source, "the name of a field of your data")
        if self.fields and any("fields" not in spec.option_names() for spec in specs):
            mappers = [n for n, s in DATASETS.items() if "fields" in s.option_names()]
            raise ConfigError("data.fields", self.fields, f"data.dataset one of {mappers} (datasets that map fields)")
        for spec in specs:
            # The fields and the data files have config fields of their own; every other option is the loader's.
            redirect = {"fields": "data.fields (a table of its own)"}
            if spec.file_option is not None:
                redirect[spec.file_option] = "data.train_file / data.eval_file"
            allowed = [o for o in spec.option_names() if o not in redirect]
            for key, value in self.options.items():
                if key not in allowed:
                    listed = f"an option of {spec.name}'s loader: {allowed}" if allowed else f"{spec.name} has none"
                    raise ConfigError(f"data.options.{key}", value, redirect.get(key, listed))

    @property
    def tasks(self) -> list[str]:
        """The dataset names of a ``+`` mix (one name for a plain dataset)."""
        return [part.strip() for part in self.dataset.split("+")]

    @property
    def uses_heldout(self) -> bool:
        """True when evaluation is a held-out share of ``train_file`` (no ``eval_file`` given)."""
        return self.train_file is not None and self.eval_file is None

    def loader_options(self, role: Literal["train", "eval"]) -> dict[str, Any]:
        """Keyword options of the loader for the training or evaluation split: ``[data.options]``, ``fields``,
        and the role's file (relative paths are read from the current directory, not ``data_dir``)."""
        from fedpeft.registry import DATASETS

        options = dict(self.options)
        if self.fields:
            options["fields"] = dict(self.fields)
        file = self.train_file if role == "train" or self.eval_file is None else self.eval_file
        option = DATASETS.get(self.tasks[0]).file_option
        if file is not None and option is not None:
            options[option] = str(Path(file).expanduser().absolute())
            if role == "eval" and "task" in DATASETS.get(self.tasks[0]).option_names():
                # Records without a task are named after the train file in both files, so their scores line up.
                options.setdefault("task", Path(self.train_file or file).stem)
        return options


@dataclass
class EvalConfig:
    """How the model is scored: ``label_words`` (classification datasets) or ``generation`` (Rouge-L, EM)."""

    mode: str = "auto"  # auto = label_words for classification datasets, generation otherwise
    batch_size: int = 64
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "label_words", "generation", "perplexity"):
            raise ConfigError("eval.mode", self.mode, ["auto", "label_words", "generation", "perplexity"])


@dataclass
class JobConfig:
    """A centralized fine-tuning job (the federated job extends this).

    ``seed`` is the job's one seed: the data order (``train.seed``) and the adapter's initialisation
    (``adapter.init_seed``) follow it unless they are set themselves, and a federated job derives its partition,
    client sampling and local batches from it. The saved config.toml holds the resolved values.
    """

    name: str = "job"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "an integer >= 0")
        if self.train.seed is None:
            self.train.seed = self.seed
        if self.adapter.init_seed is None:
            self.adapter.init_seed = self.seed
        # The adapter method is checked against the registry here, so a typo fails before any model is loaded.
        try:
            self.adapter.validate()
        except ConfigError as exc:
            raise exc.prefixed("adapter") from None
        if self.train.loss == "label_words":
            from fedpeft.registry import DATASETS

            if DATASETS.get(self.data.tasks[0]).task_type != "classification":
                raise ConfigError("train.loss", "label_words", "'lm' for generation datasets (no label words)")


RUNTIMES = ("local", "flower-sim", "deploy")


@dataclass
class FederationConfig:
    """The federation: algorithm, rounds, clients, how data is split, and what the server checks.

    ``partition`` / ``alpha`` / ``partition_by`` / ``shards_per_client`` / ``min_partition_size`` describe the split of
    the training data over ``num_clients`` (see :class:`fedpeft.data.PartitionConfig`; seeded by the job seed).
    Each client keeps ``local_test_fraction`` of its partition as a local test split for per-client evaluation.
    ``fraction`` of the clients (at least one) is sampled each round with a generator seeded by (seed, round).
    """

    algorithm: str = "fedavg"
    rounds: int = 10
    num_clients: int = 10
    fraction: float = 1.0
    partition: str = "dirichlet"
    alpha: float = 0.5
    partition_by: str = "label"
    shards_per_client: int = 2
    min_partition_size: int = 8
    local_test_fraction: float = 0.1
    eval_every: int = 1  # global eval (server side) every N rounds; the last round is always evaluated
    client_eval_every: int = 0  # per-client eval of the global adapter on local test splits every N rounds; 0 = off
    client_eval_limit: int = 64  # at most this many local test examples per client
    max_update_norm: float | None = None  # reject client updates with a larger L2 norm
    timeout: float | None = None  # seconds to wait for replies in a round (None = wait for all)
    lr_decay: str = "constant"  # client learning rate across rounds: constant, linear or cosine decay to 0
    runtime: str = "local"
    save_adapters_every: int = 1  # write adapters/round_NNNN every N rounds (0 = only the final adapter)
    sim_workers: int = 0  # flower-sim: Ray workers (one torch thread each) training clients at once; 0 = one per CPU

    def __post_init__(self) -> None:
        for name in ("rounds", "num_clients", "eval_every", "client_eval_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"federation.{name}", value, "an integer >= 1")
        for name in ("client_eval_every", "save_adapters_every", "sim_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"federation.{name}", value, "an integer >= 0")
        if not 0 < self.fraction <= 1:
            raise ConfigError("federation.fraction", self.fraction, "a number in (0, 1]")
        if not 0 <= self.local_test_fraction < 1:
            raise ConfigError("federation.local_test_fraction", self.local_test_fraction, "a number in [0, 1)")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ConfigError("federation.max_update_norm", self.max_update_norm, "a number > 0 or omitted")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("federation.timeout", self.timeout, "a number of seconds > 0 or omitted")
        if self.lr_decay not in ("constant", "linear", "cosine"):
            raise ConfigError("federation.lr_decay", self.lr_decay, ["constant", "linear", "cosine"])
        if self.runtime not in RUNTIMES:
            raise ConfigError("federation.runtime", self.runtime, RUNTIMES)
        if self.partition == "natural":
            self.partition_by = "task"  # one client per task: the task is the only column it can read
        try:
            self.partition_config(0)
        except ConfigError as exc:
            field_map = {"scheme": "partition", "by": "partition_by"}
            raise exc.renamed(f"federation.{field_map.get(exc.field, exc.field)}") from None

    @property
    def clients_per_round(self) -> int:
        return max(1, round(self.fraction * self.num_clients))

    def partition_config(self, seed: int) -> Any:
        from fedpeft.data.partition import PartitionConfig

        return PartitionConfig(
            scheme=self.partition,  # type: ignore[arg-type]
            num_clients=self.num_clients,
            alpha=self.alpha,
            by=self.partition_by,  # type: ignore[arg-type]
            shards_per_client=self.shards_per_client,
            min_partition_size=self.min_partition_size,
            seed=seed,
        )


@dataclass
class CommConfig:
    """Wire compression of what travels: ``up`` (client updates) and ``down`` (the global adapter).

    ``none`` sends fp32; ``fp16`` / ``bf16`` cast; ``int8`` / ``int4`` quantize with a per-tensor scale; ``topk``
    (uplink only) sends the ``topk_ratio`` largest entries, with error feedback kept on the client when
    ``error_feedback``. Bytes are counted from the encoded payload whatever the setting.
    """

    up: str = "none"
    down: str = "none"
    topk_ratio: float = 0.1
    error_feedback: bool = True
    #: compressor of other payload kinds (``activations``, ``gradients``, ``features``, ...), both directions;
    #: kinds not named here travel losslessly (integer and bool tensors always do)
    payloads: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fedpeft.registry import COMPRESSORS

        if self.up not in COMPRESSORS:
            raise ConfigError("comm.up", self.up, COMPRESSORS.names())
        down_allowed = [n for n in COMPRESSORS.names() if n != "topk"]
        if self.down not in down_allowed:
            raise ConfigError("comm.down", self.down, down_allowed)
        for kind, name in self.payloads.items():
            if kind == "adapter":
                raise ConfigError("comm.payloads.adapter", name, "comm.up / comm.down (adapter tensors use those)")
            if not isinstance(name, str) or name not in COMPRESSORS:
                raise ConfigError(f"comm.payloads.{kind}", name, COMPRESSORS.names())
        if not 0 < self.topk_ratio <= 1:
            raise ConfigError("comm.topk_ratio", self.topk_ratio, "a number in (0, 1]")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: simulated Byzantine behaviours (fedpeft.algorithms.attacks)
ATTACKS = ("none", "sign_flip", "scale", "noise", "label_flip", "backdoor")


@dataclass
class AttackConfig:
    """Simulated Byzantine clients (:mod:`fedpeft.algorithms.attacks`; FedAvg family, ``local`` / ``flower-sim``).

    ``kind``: ``none``, ``sign_flip``, ``scale``, ``noise``, ``label_flip`` or ``backdoor``. ``fraction``: share
    of the clients that attack (the same ones every round, drawn with the run's seed). ``scale``: the factor of
    ``scale``. ``noise_std``: the std of a ``noise`` attacker's random update.

    ``backdoor`` (classification with label words): each attacker inserts ``trigger`` (text, tokenized with the
    run's tokenizer) at the start of the prompt of ``poison_fraction`` of its training examples and relabels them
    ``target``; it then sends its update multiplied by ``boost`` (1: plain data poisoning; > 1: model
    replacement). The server's evaluation reports ``backdoor_asr``: the share of eval examples of another class
    that the model assigns to ``target`` once the trigger is inserted.
    """

    kind: str = "none"
    fraction: float = 0.0
    scale: float = 10.0
    noise_std: float = 0.1
    trigger: str = " cf"
    target: int = 0
    poison_fraction: float = 0.5
    boost: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError("attack.kind", self.kind, ATTACKS)
        if not 0 <= self.fraction < 1:
            raise ConfigError("attack.fraction", self.fraction, "a fraction in [0, 1)")
        if not self.noise_std > 0:
            raise ConfigError("attack.noise_std", self.noise_std, "a number > 0")
        if not self.trigger.strip():
            raise ConfigError("attack.trigger", self.trigger, "non-blank text")
        if self.target < 0:
            raise ConfigError("attack.target", self.target, "a class index >= 0")
        if not 0 < self.poison_fraction <= 1:
            raise ConfigError("attack.poison_fraction", self.poison_fraction, "a fraction in (0, 1]")
        if not self.boost > 0:
            raise ConfigError("attack.boost", self.boost, "a number > 0")


@dataclass
class PrivacyConfig:
    """What the server may learn from the clients' uploads (see docs/privacy.md).

    ``secure_aggregation``: the FedAvg family's adapter updates are summed by SecAgg (Bonawitz et al. 2017) on
    Flower's SecAgg+ primitives (:mod:`fedpeft.privacy.secagg`): the server learns the sum of the round's
    surviving clients' updates, weighted by their example counts, and no single update. Three more exchanges per
    round (keys, masked vectors, unmasking; the key upload rides on the training reply). Clients' losses and
    example counts still travel in the clear. The server cannot validate or bound a single update any more:
    each coordinate is clipped to ``[-secagg_clip, secagg_clip]`` before quantization instead.
    ``secagg_threshold``: fraction of the round's clients whose shares rebuild a secret (at least 2): the round
    survives ``n - threshold`` dropouts after key sharing, and fewer than ``threshold`` colluding clients learn
    nothing with the server. ``secagg_bits``: quantization levels per coordinate (``2^bits``; the error per
    coordinate is one level, ``2 secagg_clip / (2^bits - 2)``, per client, unbiased). ``secagg_modulus_bits``: the
    masked arithmetic's modulus; the sum of every client's values must fit (``clients per round * 2^bits``), so
    the default 32 with 24 bits allows 255 clients per round; up to 32 a masked value travels in 4 bytes (fp32's
    size), above in 8.

    ``dp``: client-level differential privacy (DP-FedAvg, :mod:`fedpeft.privacy.dp`): ``off``, ``central`` (each
    client clips its update to L2 norm ``dp_clip``; the server adds Gaussian noise of std ``dp_noise_multiplier *
    dp_clip`` to the round's sum) or ``local`` (each client adds that noise to its own clipped update before it
    leaves). Either way the mean is the sum over the expected number of clients per round, unweighted. Epsilon at
    ``dp_delta`` (0 = ``0.1 / num_clients``; ``1e-5`` for ``sample``) is reported every round and in the summary
    (Opacus's RDP accountant).
    ``central`` trusts the server with the clipped updates, unless combined with ``secure_aggregation``.
    ``sample``: DP-SGD in each client's local training instead (:mod:`fedpeft.privacy.dp_sgd`): every example's
    gradient clipped to ``dp_clip``, noise ``dp_noise_multiplier * dp_clip`` on each batch's sum; epsilon of each
    client's own examples (its running total across rounds; the round reports the worst client). Needs
    ``train.grad_accum = 1`` and an adapter Opacus gives per-example gradients for (LoRA on linear layers, not on
    the embedding).
    """

    secure_aggregation: bool = False
    dp: str = "off"
    dp_clip: float = 1.0
    dp_noise_multiplier: float = 1.0
    dp_delta: float = 0.0
    secagg_threshold: float = 0.5
    secagg_clip: float = 1.0
    secagg_bits: int = 24
    secagg_modulus_bits: int = 32

    def __post_init__(self) -> None:
        if self.dp not in ("off", "central", "local", "sample"):
            raise ConfigError("privacy.dp", self.dp, ["off", "central", "local", "sample"])
        if not self.dp_clip > 0:
            raise ConfigError("privacy.dp_clip", self.dp_clip, "an L2 norm > 0")
        if not self.dp_noise_multiplier >= 0:
            raise ConfigError("privacy.dp_noise_multiplier", self.dp_noise_multiplier, "a number >= 0")
        if not 0 <= self.dp_delta < 1:
            raise ConfigError("privacy.dp_delta", self.dp_delta, "a probability in (0, 1), or 0 for 0.1 / num_clients")
        if not 0 < self.secagg_threshold <= 1:
            raise ConfigError("privacy.secagg_threshold", self.secagg_threshold, "a fraction in (0, 1]")
        if not self.secagg_clip > 0:
            raise ConfigError("privacy.secagg_clip", self.secagg_clip, "a number > 0")
        if isinstance(self.secagg_bits, bool) or not 2 <= self.secagg_bits <= 32:
            raise ConfigError("privacy.secagg_bits", self.secagg_bits, "an integer in [2, 32]")
        if isinstance(self.secagg_modulus_bits, bool) or not self.secagg_bits + 8 <= self.secagg_modulus_bits <= 62:
            raise ConfigError(
                "privacy.secagg_modulus_bits", self.secagg_modulus_bits, f"an integer in [{self.secagg_bits + 8}, 62]"
            )


@dataclass
class DeployConfig:
    """The ``deploy`` runtime: a SuperLink and one SuperNode per client on this machine, through Flower's deployment
    engine (see docs/deployment.md). Ignored by the other runtimes.

    TLS and SuperNode authentication are on unless ``insecure`` (which prints a warning). ``certs`` is a folder made
    by ``fedpeft deploy certs``; empty means one is generated inside the run directory. ``superlink`` (127.0.0.1:port)
    submits the run to a SuperLink already running on this machine (``fedpeft deploy superlink``; its Control API
    answers loopback peers only) instead of starting a loopback
    cluster; its CA is then ``certs``/ca.pem. ``port`` 0 picks a free
    port for the SuperLink. ``node_threads`` is each node worker's torch thread count (nodes share this machine).
    A node process that dies is restarted when ``restart_nodes`` (it rejoins later rounds). ``poll_interval`` is
    how often the server pulls replies (Flower's own loop sleeps 3 s). ``connect_timeout`` bounds the wait for
    every node to come up and build its model. ``fast_nodes`` makes each node's fedpeft worker the SuperNode's task
    executor (no process per message) and shortens the SuperNode's idle wait from Flower's 3 s to
    ``node_idle_poll``; false runs stock Flower nodes (a ``flwr-clientapp`` process per message, forwarding to the
    worker), the baseline of benchmarks/deploy_overhead.py.
    """

    insecure: bool = False
    certs: str = ""
    superlink: str = ""
    port: int = 0
    node_threads: int = 1
    restart_nodes: bool = True
    poll_interval: float = 0.1
    connect_timeout: float = 600.0
    fast_nodes: bool = True
    node_idle_poll: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError("deploy.port", self.port, "0 (a free port) or a port number up to 65535")
        if isinstance(self.node_threads, bool) or self.node_threads < 1:
            raise ConfigError("deploy.node_threads", self.node_threads, "an integer >= 1")
        if not 0 < self.poll_interval <= 5:
            raise ConfigError("deploy.poll_interval", self.poll_interval, "seconds in (0, 5]")
        if not 0 < self.node_idle_poll <= 3:
            raise ConfigError("deploy.node_idle_poll", self.node_idle_poll, "seconds in (0, 3]")
        if self.superlink and (":" not in self.superlink or not self.superlink.rsplit(":", 1)[1].isdigit()):
            raise ConfigError("deploy.superlink", self.superlink, "host:port of a running SuperLink, or empty")
        host = self.superlink.rsplit(":", 1)[0].strip("[]") if self.superlink else ""
        if host and host != "localhost" and not _loopback(host):
            # the SuperLink's Control API (submitting runs) answers loopback peers only (deploy/superlink.py)
            raise ConfigError(
                "deploy.superlink",
                self.superlink,
                "a loopback address (127.0.0.1:PORT): submit on the SuperLink's machine",
            )
        if self.superlink and not self.insecure and not self.certs:
            raise ConfigError("deploy.certs", self.certs, "the certs folder with the SuperLink's ca.pem")
        if not self.connect_timeout > 0:
            raise ConfigError("deploy.connect_timeout", self.connect_timeout, "seconds > 0")


@dataclass
class ServerDataConfig:
    """Examples the server holds itself (e.g. FedPT's unlabeled prompts for distillation): a registered dataset's
    split, encoded with the clients' tokenizer and the dataset's template.

    It may never be the evaluation split, nor the clients' training split of the same dataset (that data is the
    clients'). ``labels = false`` (the default) drops labels and responses: the server sees prompts only.
    """

    dataset: str = ""
    split: str = "train"
    data_dir: str | None = None
    limit: int | None = None
    labels: bool = False
    template: str | None = None

    def __post_init__(self) -> None:
        from fedpeft.registry import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError("server.data.dataset", self.dataset, DATASETS.names())
        splits = DATASETS.get(self.dataset).splits
        if self.split not in splits:
            raise ConfigError("server.data.split", self.split, list(splits))
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError("server.data.limit", self.limit, "a positive integer or omitted")


@dataclass
class ServerConfig:
    """The server's own resources, loaded once in the server process only (clients never load them).

    ``models`` maps a role to a model (a bundled short name, local path or hub id), e.g. ``large = "tiny-large"``.
    Each is loaded frozen on ``device``; an algorithm reads them by role (``ServerContext.models``) and may attach
    adapters and run backward through them. ``same_vocab`` lists roles (``client`` = the clients' ``model.name``)
    that must share one vocabulary; it is checked before any work starts. ``data`` is the server's own examples.
    """

    models: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    same_vocab: list[str] = field(default_factory=list)
    data: ServerDataConfig | None = None

    def __post_init__(self) -> None:
        for role, name in self.models.items():
            if role == "client" or not role.isidentifier():
                raise ConfigError(f"server.models.{role}", name, "a role that is an identifier other than 'client'")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"server.models.{role}", name, "a bundled model name, local path or hub id")
        known = ["client", *self.models]
        unknown = [r for r in self.same_vocab if r not in known]
        if unknown:
            raise ConfigError("server.same_vocab", self.same_vocab, f"roles among {known}")


@dataclass
class RunConfig(JobConfig):
    """A federated job: the centralized job's model/data/adapter/train (``train`` = each client's local steps per
    round) plus the federation, the wire, and the algorithm's own table ``[algorithm]`` (typed by the registered
    algorithm's config class, so its fields are validated like the rest)."""

    name: str = "fed"
    federation: FederationConfig = field(default_factory=FederationConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    algorithm: Any = field(default_factory=dict)
    #: modules imported before names are looked up, in the server and every client process (they register their
    #: own algorithms, datasets or PEFT methods); built-in algorithms are found without being listed
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        held = self.server.data
        if held is not None and held.dataset in self.data.tasks:
            clients = (self.data.train_split, "the clients' training split")
            for split, what in (clients, (self.data.eval_split, "the evaluation split")):
                if held.split == split:
                    raise ConfigError("server.data.split", held.split, f"a split other than {what} ({split!r})")
        # Plugins first: they may register the algorithm (or dataset) this config names, in every process.
        load_plugins(self.plugins)
        algo = ALGORITHMS.get(self.federation.algorithm, "federation.algorithm")
        if isinstance(self.algorithm, dict):
            self.algorithm = from_dict(algo.config_cls, self.algorithm, "algorithm")
        elif not isinstance(self.algorithm, algo.config_cls):
            raise ConfigError("algorithm", type(self.algorithm).__name__, f"a {algo.config_cls.__name__} table")
        algo.check_config(self)
        self._check_privacy(algo)
        if self.attack.kind != "none":
            if self.federation.runtime == "deploy":
                raise ConfigError("attack.kind", self.attack.kind, "'none' on deploy (attacks are simulated)")
            if not getattr(algo, "simulates_attacks", False):  # the FedAvg family's train handler
                raise ConfigError("attack.kind", self.attack.kind, "'none' for this algorithm (FedAvg family only)")
            if self.attack.kind == "label_flip" and self.train.loss != "label_words":
                raise ConfigError("attack.kind", "label_flip", "train.loss = 'label_words' (class labels to flip)")

    def _check_privacy(self, algo: Any) -> None:
        sa, fed = self.privacy, self.federation
        summed = getattr(algo, "supports_secure_aggregation", False)  # its aggregate is a sum of updates
        if sa.dp != "off":
            if not summed:
                why = f"an algorithm whose aggregate is a sum of updates ({fed.algorithm!r} is not)"
                raise ConfigError("privacy.dp", sa.dp, why)
            if sa.dp_delta == 0:
                # resolved here, so that the saved config holds the value used
                sa.dp_delta = 1e-5 if sa.dp == "sample" else 0.1 / fed.num_clients
            if sa.dp == "sample" and self.train.grad_accum != 1:
                raise ConfigError("train.grad_accum", self.train.grad_accum, "1 under DP-SGD (privacy.dp = 'sample')")
        if not sa.secure_aggregation:
            return
        if not summed:
            why = f"an algorithm whose aggregate is a sum of updates ({fed.algorithm!r} is not)"
            raise ConfigError("privacy.secure_aggregation", True, why)
        n = fed.clients_per_round
        if n < 2:
            raise ConfigError("privacy.secure_aggregation", True, "at least 2 clients per round (a sum of one is it)")
        if n * (2**sa.secagg_bits) >= 2**sa.secagg_modulus_bits:
            raise ConfigError("privacy.secagg_modulus_bits", sa.secagg_modulus_bits, f"room for a sum of {n} clients")
        if fed.max_update_norm is not None:
            why = "unset under secure aggregation (no single update is seen; privacy.secagg_clip bounds them)"
            raise ConfigError("federation.max_update_norm", fed.max_update_norm, why)


# --------------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts (TOML) with field-level errors.


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one TOML value against a type hint; raise ConfigError naming ``path`` on mismatch."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, value, f"a table of {tp.__name__} fields")
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue  # try the next member of the union; the error below names the whole union
        raise ConfigError(path, value, f"one of {tp}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(path, value, get_args(tp))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, f"a list ({tp})")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a table")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, rejecting unknown keys with the list of known ones."""
    hints = get_type_hints(cls, vars(sys.modules[cls.__module__]))
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(full, value, [f"{path}.{n}" if path else n for n in names])
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists, None values dropped) ready for TOML/JSON."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001). The value is parsed as TOML, else taken as a string."""
    if "=" not in item:
        raise ConfigError("--set", item, "KEY=VALUE, e.g. train.lr=1e-3")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items onto a nested dict (copying tables as it goes)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            node[k] = dict(child) if isinstance(child, dict) else {}
            node = node[k]
        node[keys[-1]] = value
    return out


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a TOML recipe (optional), apply ``--set`` overrides, validate, return the typed config."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError("recipe", str(path), "an existing TOML file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("recipe", str(path), f"valid TOML ({exc})") from None
    return from_dict(cls, merge_overrides(data, overrides or []))
