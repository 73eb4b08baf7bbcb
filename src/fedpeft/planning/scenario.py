"""A FedsLLM planning scenario: typed dataclasses read from TOML, every field validated before anything is solved.

Layout (recipes/plan_paper.toml is a complete example)::

    name = "..."            seed = 0 (the random baseline's)      max_round_s = 86400 (a longer round is infeasible)
    [model]     preset = "smollm2-135m" | "llama-3.2-1b" (or layers, hidden, intermediate, vocab, heads, kv_heads),
                lora_targets, activation_bytes (per element on the wire), lora_bytes (per LoRA parameter)
    [training]  batch_size, seq_len, local_steps (per round), cuts, ranks (the candidates), default_rank
    [rounds]    ranks, rounds (measured rounds to the target accuracy at each rank), source
    [network]   mode = "bandwidth" (bandwidth_hz, shared continuously) | "subchannels" (subchannels x subchannel_hz,
                one client per subchannel), noise_dbm_per_hz, total_power_w (optional)
    [server]    flops (FLOP/s, shared equally by the clients), downlink_power_w (spread over the whole band)
    [[clients]] flops, max_power_w, gain_db (< 0) or distance_m, energy_budget_j (optional, per round),
                joules_per_flop (compute energy; 0 = radio energy only)

``[clients]`` may also be one table of per-client lists (or scalars for all) with ``count``. Gains are in dB (linear
gain = 10^(dB/10)); ``distance_m`` gives the 3GPP urban-macro path gain (:func:`~fedpeft.planning.delay.path_gain_db`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from fedpeft.errors import ConfigError, FedPeftError
from fedpeft.planning.delay import PROJECTIONS, ModelDims, path_gain_db
from fedpeft.planning.rounds import RoundsModel, fit_rounds

#: Named model dimensions (Hugging Face configs of the released checkpoints).
PRESETS: dict[str, ModelDims] = {
    "smollm2-135m": ModelDims(layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3),
    "llama-3.2-1b": ModelDims(layers=16, hidden=2048, intermediate=8192, vocab=128256, heads=32, kv_heads=8),
}
_DIMS = ("layers", "hidden", "intermediate", "vocab", "heads", "kv_heads")
MODES = ("bandwidth", "subchannels")


class InfeasibleScenarioError(FedPeftError, ValueError):
    """No allocation meets the scenario's budgets. The message names the field and what it would take."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: infeasible: {problem}")


def _positive(path: str, value: float | int, what: str = "a positive number") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(path, value, what)


@dataclass
class ClientSpec:
    """One client: compute (FLOP/s), radio (max transmit power W, path gain dB), energy budget per round (J)."""

    flops: float
    max_power_w: float
    gain_db: float | None = None
    distance_m: float | None = None
    energy_budget_j: float | None = None
    joules_per_flop: float = 0.0
    path: str = field(default="clients[0]", repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive(f"{self.path}.flops", self.flops, "a positive FLOP/s figure")
        _positive(f"{self.path}.max_power_w", self.max_power_w, "a positive power in W")
        if (self.gain_db is None) == (self.distance_m is None):
            raise ConfigError(f"{self.path}.gain_db", self.gain_db, "exactly one of gain_db and distance_m")
        if self.distance_m is not None:
            _positive(f"{self.path}.distance_m", self.distance_m, "a positive distance in m")
            self.gain_db = float(path_gain_db(self.distance_m))
        gain = self.gain_db
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain < 0):
            raise ConfigError(f"{self.path}.gain_db", gain, "a path gain in dB below 0 (e.g. -110; linear gain < 1)")
        if self.energy_budget_j is not None:
            _positive(f"{self.path}.energy_budget_j", self.energy_budget_j, "a positive energy in J, or omitted")
        if not (math.isfinite(self.joules_per_flop) and self.joules_per_flop >= 0):
            raise ConfigError(f"{self.path}.joules_per_flop", self.joules_per_flop, "a number >= 0")

    @property
    def resolved_gain_db(self) -> float:
        """The path gain in dB (given, or from the distance)."""
        assert self.gain_db is not None  # set by __post_init__
        return float(self.gain_db)


@dataclass
class ModelSpec:
    """The decoder's dimensions (a preset, each dimension overridable) and what travels: bytes per activation element
    (2 = bf16) and per LoRA parameter (4 = fp32); ``lora_targets`` are the adapted linear maps of every layer."""

    preset: str | None = "smollm2-135m"
    layers: int | None = None
    hidden: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    activation_bytes: float = 2.0
    lora_bytes: float = 4.0

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError("model.preset", self.preset, list(PRESETS))
        base = PRESETS[self.preset] if self.preset is not None else None
        for name in _DIMS:
            value = getattr(self, name)
            if value is None and base is not None:
                setattr(self, name, getattr(base, name))
            elif value is None:
                raise ConfigError(f"model.{name}", None, "an integer >= 1 (or model.preset)")
            elif value < 1:
                raise ConfigError(f"model.{name}", value, "an integer >= 1")
        if self.hidden % self.heads or self.heads % self.kv_heads:  # type: ignore[operator]
            raise ConfigError("model.kv_heads", self.kv_heads, "heads dividing hidden and kv_heads dividing heads")
        if not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets):
            raise ConfigError("model.lora_targets", self.lora_targets, "a non-empty list of distinct projections")
        for target in self.lora_targets:
            if target not in PROJECTIONS:
                raise ConfigError("model.lora_targets", target, PROJECTIONS)
        _positive("model.activation_bytes", self.activation_bytes, "bytes per element > 0 (2 = bf16)")
        _positive("model.lora_bytes", self.lora_bytes, "bytes per parameter > 0 (4 = fp32)")

    @property
    def dims(self) -> ModelDims:
        return ModelDims(*(int(getattr(self, n)) for n in _DIMS))


@dataclass
class TrainingSpec:
    """Per-step workload (batch of ``batch_size`` sequences of ``seq_len`` tokens), ``local_steps`` per round, and the
    candidate cuts (clients run layers [0, cut)) and LoRA ranks the planner searches; ``default_rank`` (the baselines'
    fixed rank) defaults to the median candidate. ``client_forwards``: forwards per step on the client, 1 for a
    client that keeps its autograd graph between sending the activations and receiving their gradient, 2 for
    fedpeft's ``fedsllm`` client (no graph kept between messages: the forward is recomputed)."""

    batch_size: int = 8
    seq_len: int = 256
    local_steps: int = 10
    cuts: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    default_rank: int | None = None
    client_forwards: int = 1

    def __post_init__(self) -> None:
        if self.client_forwards not in (1, 2):
            raise ConfigError("training.client_forwards", self.client_forwards, [1, 2])
        for name in ("batch_size", "seq_len", "local_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}", getattr(self, name), "an integer >= 1")
        if not self.ranks or len(set(self.ranks)) != len(self.ranks) or min(self.ranks) < 1:
            raise ConfigError("training.ranks", self.ranks, "a non-empty list of distinct ranks >= 1")
        if self.default_rank is None:
            self.default_rank = sorted(self.ranks)[(len(self.ranks) - 1) // 2]
        if self.default_rank < 1:
            raise ConfigError("training.default_rank", self.default_rank, "a rank >= 1")


@dataclass
class RoundsSpec:
    """Measured rounds to the target accuracy at several ranks (at least 3), and where they come from."""

    ranks: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    source: str = ""


@dataclass
class NetworkSpec:
    """The uplink/downlink band shared by the clients and the noise; ``total_power_w`` caps the sum of client powers."""

    mode: Literal["bandwidth", "subchannels"] = "bandwidth"
    bandwidth_hz: float | None = None
    subchannels: int | None = None
    subchannel_hz: float | None = None
    noise_dbm_per_hz: float = -174.0
    total_power_w: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("network.mode", self.mode, MODES)
        if self.mode == "bandwidth":
            _positive("network.bandwidth_hz", self.bandwidth_hz, "a positive bandwidth in Hz")  # type: ignore[arg-type]
        else:
            if not isinstance(self.subchannels, int) or self.subchannels < 1:
                raise ConfigError("network.subchannels", self.subchannels, "an integer >= 1 in subchannels mode")
            _positive("network.subchannel_hz", self.subchannel_hz, "a positive bandwidth in Hz")  # type: ignore[arg-type]
        if not (math.isfinite(self.noise_dbm_per_hz) and -250 < self.noise_dbm_per_hz < 0):
            raise ConfigError("network.noise_dbm_per_hz", self.noise_dbm_per_hz, "a density in dBm/Hz, e.g. -174")
        if self.total_power_w is not None:
            _positive("network.total_power_w", self.total_power_w, "a positive power in W, or omitted (no cap)")

    @property
    def band_hz(self) -> float:
        """The whole band: bandwidth_hz, or subchannels x subchannel_hz."""
        if self.mode == "bandwidth":
            return float(self.bandwidth_hz)  # type: ignore[arg-type]
        return float(self.subchannels * self.subchannel_hz)  # type: ignore[operator]


@dataclass
class ServerSpec:
    """The main server: FLOP/s (each of K clients gets flops / K) and the downlink power spread over the band (W)."""

    flops: float = 1e14
    downlink_power_w: float = 10.0

    def __post_init__(self) -> None:
        _positive("server.flops", self.flops, "a positive FLOP/s figure")
        _positive("server.downlink_power_w", self.downlink_power_w, "a positive power in W")


@dataclass
class Scenario:
    """Everything the planner needs; see the module docstring for the TOML layout."""

    model: ModelSpec
    training: TrainingSpec
    rounds: RoundsSpec
    network: NetworkSpec
    server: ServerSpec
    clients: list[ClientSpec]
    name: str = "scenario"
    seed: int = 0
    max_round_s: float = 86400.0
    rounds_model: RoundsModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.clients:
            raise ConfigError("clients", self.clients, "at least one [[clients]] table")
        if isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed", self.seed, "an integer >= 0")
        _positive("max_round_s", self.max_round_s, "a positive time in s")
        layers = self.model.dims.layers
        if layers < 2:
            raise ConfigError("model.layers", layers, "at least 2 layers (one on each side of the cut)")
        if not self.training.cuts:
            self.training.cuts = list(range(1, layers))
        cuts = self.training.cuts
        if len(set(cuts)) != len(cuts) or not all(1 <= c < layers for c in cuts):
            raise ConfigError("training.cuts", cuts, f"distinct cut layers in [1, {layers - 1}]")
        if self.network.mode == "subchannels" and self.network.subchannels < len(self.clients):  # type: ignore[operator]
            raise InfeasibleScenarioError(
                "network.subchannels",
                f"{self.network.subchannels} subchannels for {len(self.clients)} clients; every client needs one",
            )
        self.rounds_model = fit_rounds(self.rounds.ranks, self.rounds.rounds, "rounds")

    @property
    def num_clients(self) -> int:
        return len(self.clients)


# ---------------------------------------------------------------------------------------------------------------------
# TOML -> Scenario


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check one TOML value against a (simple) type hint; ConfigError naming ``path`` when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, value, args)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, value, "a list")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(path, value, "an integer")
    if tp is str and not isinstance(value, str):
        raise ConfigError(path, value, "a string")
    return value


def _build(cls: type, data: Any, where: str, **extra: Any) -> Any:
    """A dataclass from a TOML table: unknown keys are errors that list the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(where, data, f"a table of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("path", *extra)]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(full, value, [f"{where}.{n}" if where else n for n in names])
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [n for n in names if n in _REQUIRED.get(cls.__name__, ()) and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}" if where else missing[0], None, "a value (required)")
    return cls(**kwargs, **extra)


_REQUIRED = {"ClientSpec": ("flops", "max_power_w")}
_SECTIONS = {"model": ModelSpec, "training": TrainingSpec, "rounds": RoundsSpec, "network": NetworkSpec,
             "server": ServerSpec}  # fmt: skip


def _client_tables(value: Any) -> list[dict[str, Any]]:
    """``[[clients]]`` tables as given, or one ``[clients]`` table of lists / scalars with ``count`` expanded."""
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise ConfigError("clients", value, "[[clients]] tables, or one [clients] table of per-client lists")
    table = dict(value)
    count = table.pop("count", None)
    lengths = {len(v) for v in table.values() if isinstance(v, list)}
    if count is None and len(lengths) == 1:
        count = lengths.pop()
    if not isinstance(count, int) or isinstance(count, bool) or count < 1 or any(n != count for n in lengths):
        raise ConfigError("clients.count", count, "the number of clients, equal to the length of every list")
    return [{k: (v[i] if isinstance(v, list) else v) for k, v in table.items()} for i in range(count)]


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """Build and validate a :class:`Scenario` from a plain (TOML-shaped) dict."""
    known = [*_SECTIONS, "clients", "name", "seed", "max_round_s"]
    for key in data:
        if key not in known:
            raise ConfigError(key, data[key], known)
    sections = {name: _build(cls, data.get(name, {}), name) for name, cls in _SECTIONS.items()}
    clients = [
        _build(ClientSpec, table, f"clients[{i}]", path=f"clients[{i}]")
        for i, table in enumerate(_client_tables(data.get("clients", [])))
    ]
    top = {k: data[k] for k in ("name", "seed", "max_round_s") if k in data}
    hints = typing.get_type_hints(Scenario)
    top = {k: _coerce(v, hints[k], k) for k, v in top.items()}
    return Scenario(clients=clients, **sections, **top)


def _apply_override(data: dict[str, Any], item: str) -> None:
    """``"network.bandwidth_hz=1e7"`` or ``"clients.2.flops=5e12"`` onto ``data``; the value is parsed as TOML."""
    if "=" not in item:
        raise ConfigError("--set", item, "KEY=VALUE, e.g. network.bandwidth_hz=1e7")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    keys = key.strip().split(".")
    node: Any = data
    for k in keys[:-1]:
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError("--set", item, f"an index below {len(node)}")
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    if isinstance(node, list):
        if not keys[-1].isdigit() or int(keys[-1]) >= len(node):
            raise ConfigError("--set", item, f"an index below {len(node)}")
        node[int(keys[-1])] = value
    elif isinstance(node, dict):
        node[keys[-1]] = value
    else:
        raise ConfigError("--set", item, "a key path through tables and lists")


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario TOML file, apply ``--set key=value`` overrides, validate, return the :class:`Scenario`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("scenario", str(path), "an existing TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("scenario", str(path), f"valid TOML ({exc})") from None
    for item in overrides or []:
        _apply_override(data, item)
    return scenario_from_dict(data)
