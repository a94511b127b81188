"""Frozen run configuration shared by every agent, its validation (before any work), and its
JSON form (`config.json`, checkpoint headers), including configurations written before the
surgery options were nested."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

import tyro

import envs
import neurosurgery as ns
from neurosurgery._presets import import_here

from ..algorithms import BROConfig, DACERConfig, SACConfig

AGENTS = ("sac", "bro", "dacer")
SINKS = ("csv", "jsonl", "tensorboard", "console", "wandb")
#: the sinks a run writes unless told otherwise
DEFAULT_SINKS = ("csv", "jsonl", "tensorboard", "console")
#: each agent's networks that surgery can score and reset
NETWORKS = {
    "sac": ("critic", "actor"),
    "bro": ("critic", "actor", "optimistic_actor"),
    "dacer": ("critic", "actor"),
}
#: the metrics logged at every surgery step unless told otherwise
LOGGED = ("grama", "grama_activation", "grama_weight", "dormant")

MetricSpec = Annotated[str | ns.Metric, tyro.conf.arg(constructor=str)]


@dataclass(frozen=True)
class SurgeryConfig:
    """Neuron scores logged during training, whatever resets run."""

    networks: tuple[str, ...] = ("critic",)
    """Networks scored and logged: critic, actor (bro also: optimistic_actor)."""
    metrics: Annotated[
        tuple[MetricSpec, ...],
        tyro.conf.arg(
            constructor=tuple[str, ...],
            help=f"Metrics logged per network and per layer: registered names ({', '.join(ns.METRICS)}) "
            "or `package.module:attribute` for your own; from Python, metric objects too. "
            "Empty: no surgery step unless a reset is configured.",
        ),
    ] = LOGGED
    tau: float = 0.0
    """In the logs a unit counts as inactive where its score is <= tau."""
    taus: tuple[tuple[str, float], ...] = ()
    """τ of single metrics, in place of --surgery.tau for them: (name, τ) pairs, e.g.
    `--surgery.taus dormant 0.1 grama 0.01`; each must name a logged metric, once."""
    means: bool = False
    """Also log each metric's mean score per hidden layer, surgery/<network>/mean/<metric>/<layer>,
    and over the network's hidden units, surgery/<network>/mean/<metric>: the raw scores beside
    the fraction <= tau."""
    every: int = 1000
    """Gradient updates between surgery steps (scores logged)."""
    units: bool = False
    """Also keep every logged metric's per-unit scores of the hidden layers (from the last
    surgery step before each record) and each unit's reset count, as units/<env step>.npz in the
    run folder: `neurosurgery report` draws them, units × env steps."""

    def built_metrics(self) -> tuple[ns.Metric, ...]:
        """The metric objects, names resolved."""
        return tuple(m if isinstance(m, ns.Metric) else ns.metric(m) for m in self.metrics)


#: each registered method's options, read once (`ns.method_options`: docstrings and defaults)
_METHOD_OPTIONS = {name: ns.method_options(f) for name, f in ns.STRATEGIES.items()}


def _option_help(option: str) -> str:
    """What `--reset.<option>` does for each named method that takes it, read from the
    methods' own registrations."""
    by_text: dict[str, list[str]] = {}
    for name, options in _METHOD_OPTIONS.items():
        found = options.get(option)
        if found is not None:
            text = f"{found.help.rstrip('.')} (default {found.default!r})"
            by_text.setdefault(text, []).append(name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in by_text.items())


def strategy_option_names() -> tuple[str, ...]:
    """ResetConfig's options passed to the named method (None: the method's own default): its
    fields other than `method` and `networks`."""
    return tuple(
        f.name for f in dataclasses.fields(ResetConfig) if f.name not in ("method", "networks")
    )


def _option(option: str) -> Any:
    return tyro.conf.arg(
        help=_option_help(option), help_behavior_hint="(default: the method's, as listed)"
    )


def _method_help() -> str:
    """`--reset.method`'s help: the registered methods' names."""
    return (
        f"none (no resets), a registered method ({', '.join(ns.STRATEGIES)}), or "
        "`package.module:attribute` for your own; from Python, a strategy object. "
        "`--reset.method NAME --help` says what the method does and lists its options only."
    )


@dataclass(frozen=True)
class ResetConfig:
    """Neuron resets during training: a named strategy with its options, or your own. Each
    option's help says which methods take it (`--reset.method NAME --help`: that method's
    options only); the methods and their options are those registered (`ns.register_method`)."""

    method: Annotated[str | ns.Strategy, tyro.conf.arg(constructor=str, help=_method_help())] = (
        "none"
    )
    networks: tuple[str, ...] = ("critic",)
    """Networks reset: critic, actor (bro also: optimistic_actor)."""
    tau: Annotated[float | None, _option("tau")] = None
    every: Annotated[int | None, _option("every")] = None
    start: Annotated[int | None, _option("start")] = None
    end: Annotated[int | None, _option("end")] = None
    max_fraction: Annotated[float | None, _option("max_fraction")] = None
    outgoing: Annotated[str | None, _option("outgoing")] = None
    outgoing_scale: Annotated[float | None, _option("outgoing_scale")] = None
    include_shared: Annotated[bool | None, _option("include_shared")] = None
    reset_count: Annotated[bool | None, _option("reset_count")] = None
    shrink: Annotated[float | None, _option("shrink")] = None
    perturb: Annotated[float | None, _option("perturb")] = None
    at: Annotated[tuple[int, ...] | None, _option("at")] = None
    reset_optimizer: Annotated[bool | None, _option("reset_optimizer")] = None
    replacement_rate: Annotated[float | None, _option("replacement_rate")] = None
    maturity: Annotated[int | None, _option("maturity")] = None
    decay: Annotated[float | None, _option("decay")] = None
    bias_correction: Annotated[bool | None, _option("bias_correction")] = None
    overactive: Annotated[float | None, _option("overactive")] = None
    share: Annotated[float | None, _option("share")] = None
    sharpness: Annotated[float | None, _option("sharpness")] = None
    threshold: Annotated[float | None, _option("threshold")] = None
    gate: Annotated[str | None, _option("gate")] = None
    optimizer_state: Annotated[str | None, _option("optimizer_state")] = None
    layers: Annotated[int | None, _option("layers")] = None

    def given(self) -> dict[str, Any]:
        """The strategy options set here (the others take the preset's defaults)."""
        return {
            k: getattr(self, k) for k in strategy_option_names() if getattr(self, k) is not None
        }

    def strategy(self) -> ns.Strategy | None:
        """The strategy object (None: no resets); options that do not apply raise."""
        if isinstance(self.method, str) and self.method == "none":
            if self.given():
                raise ValueError(
                    f"reset options {', '.join(self.given())} are set but reset.method is none; "
                    "choose a method (e.g. --reset.method regrama) or leave them out"
                )
            return None
        if not isinstance(self.method, str):
            if not isinstance(self.method, ns.Strategy) or isinstance(self.method, type):
                raise ValueError(f"reset.method must be a name or a strategy, got {self.method!r}")
            try:
                ns.check_step(self.method, "reset.method")
            except TypeError as err:
                raise ValueError(str(err)) from None
            if self.given():
                raise ValueError(
                    f"reset options {', '.join(self.given())} apply to named methods; the "
                    "strategy object given as reset.method carries its own"
                )
            return self.method
        return ns.strategy(self.method, **self.given())


@dataclass(frozen=True)
class WandbConfig:
    """Where a run's records go in Weights & Biases (with `--sinks wandb`)."""

    project: str = "neurosurgery"
    """W&B project."""
    group: str | None = None
    """W&B group of the seeds' runs; default: the run folder's name."""
    entity: str | None = None
    """W&B entity (user or team); default: W&B's own default."""


def _changed(value: Any, default: Any, prefix: str) -> list[str]:
    """The dotted names of the options in which the dataclass `value` differs from `default`."""
    out = []
    for f in dataclasses.fields(value):
        a, b = getattr(value, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            out += _changed(a, b, f"{prefix}.{f.name}")
        elif a != b:
            out.append(f"{prefix}.{f.name}")
    return out


@dataclass(frozen=True)
class TrainConfig:
    """One training run: agent, environment, budget, logging, checkpoints, surgery and resets."""

    agent: str = "sac"
    """Agent to train (sac, bro, dacer)."""
    env: str = "dmc/cartpole-swingup"
    """Environment name for `envs.make` (brax/…, playground/…, dmc/…, test/point-mass)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained together in one process (vmapped)."""
    steps: int = 1_000_000
    """Environment steps per seed (vector steps × num_envs), rounded up to whole segments."""
    num_envs: int = 1
    """Parallel environments per seed."""
    env_workers: int | None = None
    """dm_control only: worker processes of each seed's environments (0: step them in the
    training process). Default: one per core for more than one environment per seed, else 0.
    Trajectories do not depend on it, so a run may resume with another value."""
    shard_seeds: bool = False
    """Shard the seed axis over this process's devices (`jax.devices()`, e.g. several GPUs):
    each device trains its block of the seeds, with the same records as on one device. The
    number of seeds must be a multiple of the device count. A run may resume with another
    value."""
    env_impl: str | None = None
    """Playground only: physics implementation, "jax" (MJX) or "warp" (MuJoCo Warp, for
    GPUs). Default: "jax"."""
    action_repeat: int = 1
    """Environment action repeat."""
    episode_length: int = 1000
    """Time limit of an episode (truncation)."""
    replay_ratio: float = 1.0
    """Gradient updates per vectorised env step (one call of env.step); fractions like 0.5 work."""
    learning_starts: int = 5000
    """Environment steps of uniform random actions before the first update."""
    buffer_size: int = 1_000_000
    """Replay capacity per seed (transitions), on device."""
    log_every: int = 5000
    """Environment steps between metric records; also the length of one compiled segment.
    Records fall on its multiples: a warm-up that ends between two of them is followed by one
    shorter segment (compiled once more), which does not change the trajectory."""
    eval_every: int = 10_000
    """Environment steps between deterministic evaluations (rounded to log_every); 0: never."""
    eval_episodes: int = 5
    """Evaluation episodes (run in parallel) per seed."""
    checkpoint_every: int = 50_000
    """Environment steps between checkpoints (rounded to log_every); the last step always saves."""
    keep_checkpoints: bool = False
    """Keep every checkpoint as checkpoints/<env step>.ckpt besides the latest (for `neurosurgery
    inspect --against`)."""
    run_dir: str = "runs/run"
    """Folder for config.json, metrics, TensorBoard events, checkpoint, plots, summary."""
    sinks: tuple[str, ...] = DEFAULT_SINKS
    """Metric sinks: csv, jsonl, tensorboard, console, wandb (the wandb extra)."""
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig())
    """Weights & Biases names (with --sinks wandb)."""
    progress: bool = True
    """Show a progress bar."""
    published: str | None = None
    """A published learning curve `neurosurgery report` draws beside this run and tabulates at the
    env steps both have: BRO, BRO_fast or SAC (agents/reporting/published/SOURCES.md). It does
    not change training; a run may resume with another value."""
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    """Neuron scores logged during training."""
    reset: ResetConfig = field(default_factory=ResetConfig)
    """Neuron resets during training."""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyperparameters."""
    bro: BROConfig = field(default_factory=BROConfig)
    """BRO hyperparameters (agent bro)."""
    dacer: DACERConfig = field(default_factory=DACERConfig)
    """DACER hyperparameters (agent dacer)."""

    def _validate_agent_options(self) -> None:
        """Refuse options of another agent than `agent`: the run would silently ignore them."""
        for other in AGENTS:
            if other == self.agent:
                continue
            options = getattr(self, other)
            changed = _changed(options, type(options)(), other)
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} {'are options' if len(changed) > 1 else 'is an option'}"
                    f" of agent {other}, but this run trains {self.agent}, which would ignore "
                    f"{'them' if len(changed) > 1 else 'it'}; train agent {other}, or leave the "
                    f"{other}.* options at their defaults"
                )

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; available: {', '.join(AGENTS)}")
        self._validate_agent_options()
        positive = ("steps", "num_envs", "action_repeat", "episode_length", "buffer_size")
        positive += ("log_every", "eval_episodes", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("learning_starts", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.replay_ratio > 0:
            raise ValueError(f"replay_ratio must be > 0, got {self.replay_ratio}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        for sink in self.sinks:
            if sink not in SINKS:
                raise ValueError(f"unknown sink {sink!r} ({', '.join(SINKS)})")
        if "wandb" in self.sinks and importlib.util.find_spec("wandb") is None:
            from ._sinks import WANDB_MISSING

            raise ValueError(WANDB_MISSING)
        self._validate_env_options()
        if self.published is not None:
            from ..reporting._published import check_published

            try:
                check_published(self.published, self.env)
            except ValueError as err:
                raise ValueError(f"published: {err}") from None
        if self.buffer_size < self.num_envs:
            raise ValueError("buffer_size must hold at least one vector step (num_envs)")
        {"sac": self.sac, "bro": self.bro, "dacer": self.dacer}[self.agent].validate()
        self._validate_surgery()

    def _validate_env_options(self) -> None:
        if self.env_workers is not None:
            if isinstance(self.env_workers, bool) or not isinstance(self.env_workers, int):
                raise ValueError(
                    f"env_workers must be an integer or None, got {self.env_workers!r}"
                )
            if self.env_workers < 0:
                raise ValueError(
                    f"env_workers must be >= 0 (0: step in the training process), got "
                    f"{self.env_workers}"
                )
            if not self.env.startswith("dmc/"):
                raise ValueError(
                    f"env_workers applies to dm_control environments (dmc/...), not {self.env!r}; "
                    "leave it unset"
                )
        if self.env_impl is not None:
            if self.env_impl not in envs.PLAYGROUND_IMPLS:
                raise ValueError(
                    f"env_impl must be one of {', '.join(map(repr, envs.PLAYGROUND_IMPLS))} (MJX "
                    f"or MuJoCo Warp), got {self.env_impl!r}"
                )
            if not self.env.startswith("playground/"):
                raise ValueError(
                    f"env_impl applies to Playground environments (playground/...), not "
                    f"{self.env!r}; leave it unset"
                )

    def _validate_surgery(self) -> None:
        s, networks = self.surgery, NETWORKS[self.agent]
        if s.every <= 0:
            raise ValueError(f"surgery.every must be > 0, got {s.every}")
        if not s.tau >= 0:
            raise ValueError(f"surgery.tau must be >= 0, got {s.tau}")
        for name, tau in s.taus:
            if not tau >= 0:
                raise ValueError(f"surgery.taus: {name}'s tau must be >= 0, got {tau}")
        given = [name for name, _ in s.taus]
        if len(set(given)) != len(given):
            raise ValueError(f"surgery.taus: each metric once, got {', '.join(given)}")
        for part, nets in (("surgery", s.networks), ("reset", self.reset.networks)):
            for net in nets:
                if net not in networks:
                    raise ValueError(
                        f"{part}.networks: {self.agent} has no network {net!r} "
                        f"({', '.join(networks)})"
                    )
        strategy = self.reset.strategy()  # unknown methods and options that do not apply raise
        if isinstance(strategy, ns.PlasticityInjection) and self.agent != "sac":
            raise ValueError(
                f"reset.method injection: agent {self.agent} is not supported: the injected "
                "head's parameters must exist in the training state from the start, and only "
                "sac builds its networks with injectable heads"
                + (
                    " (bro's AdamW weight decay would also shrink the frozen heads)"
                    if self.agent == "bro"
                    else ""
                )
                + "; train sac (neurosurgery train sac) or use another method"
            )
        metrics = s.built_metrics()
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"surgery.metrics: each metric once, got {names}")
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(
                f"surgery.taus: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                f"logged (surgery.metrics: {', '.join(names) or 'none'}); log "
                f"{'it' if len(unknown) == 1 else 'them'} or leave "
                f"{'its' if len(unknown) == 1 else 'their'} tau out"
            )


# ---- JSON form ----------------------------------------------------------------------------
def _config_classes(cls: type) -> dict[str, type]:
    """The fields of a configuration class that hold configurations themselves (by type)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


@functools.cache
def _all_config_classes() -> frozenset[type]:
    """TrainConfig and every configuration class nested in it, at any depth."""
    found, todo = set(), [TrainConfig]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo.extend(_config_classes(cls).values())
    return frozenset(found)


def _is_config(value: Any) -> bool:
    """A configuration of the run (written as a plain dict), not a user's object."""
    return type(value) in _all_config_classes()


#: options of configurations written before the surgery options were nested
_FLAT_SURGERY = (
    "reset",
    "reset_tau",
    "reset_period",
    "reset_start",
    "reset_end",
    "reset_max_fraction",
    "reset_networks",
)
#: reset methods renamed since
_RENAMED_METHODS = {"regrama_act": "regrama_activation"}


def _path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def encode(value: Any) -> Any:
    """A JSON-able form of a configuration value: config dataclasses as dicts, other objects
    (metrics, strategies, selections, schedules) as their class and fields, functions by name."""
    if _is_config(value):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
        return {"__object__": _path(value), "fields": fields}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if callable(value):
        return {"__function__": f"{value.__module__}:{value.__qualname__}"}
    return value


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return encode(config)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict) and "__object__" in value:
        cls = _import(value["__object__"])
        return cls(**{k: _decode(v) for k, v in value["fields"].items()})
    if isinstance(value, dict) and "__function__" in value:
        return _import(value["__function__"])
    return value


def _import(spec: str) -> Any:
    module_name, _, qualname = spec.partition(":")
    try:
        found: Any = import_here(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"the configuration names {spec}, which cannot be found here ({err}); it was "
            "defined in the program that started the run: resume the run from that program "
            "(`agents.train(config, resume=True)` with the same objects)"
        ) from err
    return found


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration dict of an earlier version in today's form: the flat `reset*` options
    become `surgery` and `reset`, with the same surgery steps and resets."""
    flat = isinstance(data.get("reset"), str) or any(k in data for k in _FLAT_SURGERY[1:])
    if not flat:
        return data
    data = dict(data)
    old = {k: data.pop(k) for k in _FLAT_SURGERY if k in data}
    period = int(old.get("reset_period", 1000))
    networks = list(old.get("reset_networks", ["critic"]))
    tau = float(old.get("reset_tau", 0.0))
    data["surgery"] = {"networks": networks, "metrics": list(LOGGED), "tau": tau, "every": period}
    method = _RENAMED_METHODS.get(old.get("reset", "none"), old.get("reset", "none"))
    reset: dict[str, Any] = {"method": method, "networks": networks}
    if method != "none":
        start, end = int(old.get("reset_start", 0)), int(old.get("reset_end", 0))
        # resets at multiples of the period within [start, end): the schedule's points are
        # start' + k·period for k >= 1, so start' is the multiple of the period before start
        first = max(-(-start // period), 1) * period  # the first multiple of the period >= start
        reset.update(tau=tau, every=period, start=first - period, end=end or None)
        fraction = float(old.get("reset_max_fraction", 1.0))
        if fraction < 1.0:
            reset["max_fraction"] = fraction
    data["reset"] = reset
    return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of `config_to_dict` (tuples restored, nested configs rebuilt); configurations of
    earlier versions are migrated, and unknown keys are refused by name."""

    def build(cls: Any, values: dict[str, Any]) -> Any:
        kwargs = {}
        nested = _config_classes(cls)
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            sub = nested.get(f.name)
            if sub is not None and not isinstance(v, dict):
                raise ValueError(f"{cls.__name__}.{f.name} must be a dict of options, got {v!r}")
            kwargs[f.name] = build(sub, v) if sub is not None else _decode(v)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**kwargs)

    return build(TrainConfig, migrate(data))


def grama_preset(reset: str = "regrama") -> dict[str, Any]:
    """TrainConfig options of the GraMa paper's BRO-net runs (RR 2, batch 128, resets every
    1000 updates): `reset` is `regrama` (τ 0.01) or `redo` (τ 0.02);
    `TrainConfig(**grama_preset(), env=...)`. The logged ratios use the same τ."""
    taus = {"regrama": 0.01, "redo": 0.02}
    if reset not in taus:
        raise ValueError(f"grama_preset: reset must be one of {sorted(taus)}, got {reset!r}")
    return {
        "agent": "bro",
        "replay_ratio": 2.0,
        "surgery": SurgeryConfig(tau=taus[reset], every=1000),
        "reset": ResetConfig(method=reset, tau=taus[reset], every=1000),
        "bro": BROConfig.grama(),
    }
