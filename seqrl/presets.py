"""Presets: typed, frozen dataclasses filled from TOML files and `--set key=value` overrides.

Every tunable value has a default in a dataclass. A preset file (``agents/*.toml``, ``envs/*.toml``)
overrides some of them, and the command line overrides the file. Field names in TOML map 1:1 to the
dataclasses; an unknown key, a missing preset or a value of the wrong type raises `PresetError`
naming the key. Parsing is the standard library's `tomllib`; this module only checks types.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seqrl.errors import PresetError

ROOT = Path(__file__).resolve().parent.parent
"""the repository, in a checkout (editable install, running from source)"""
SHIPPED = Path(__file__).resolve().parent / "_presets"
"""the presets inside an installed wheel: pyproject.toml maps agents/ and envs/ onto seqrl/_presets/"""


def preset_folder(name: str) -> Path:
    """agents/ or envs/: the copy shipped in the package when there is one, else the checkout's folder."""
    shipped = SHIPPED / name
    return shipped if shipped.is_dir() else ROOT / name


AGENTS_DIR = preset_folder("agents")
ENVS_DIR = preset_folder("envs")


# ----------------------------------------------------------------------------------------- validation
def require_at_least(config: Any, minimum: float, names: tuple[str, ...]) -> None:
    """ValueError naming the first field of `names` below `minimum` (a config's __post_init__)."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def require_in(config: Any, low: float, high: float, names: tuple[str, ...], high_open: bool = True) -> None:
    """ValueError naming the first field of `names` outside [low, high) (or [low, high] with high_open=False)."""
    for name in names:
        v = getattr(config, name)
        if not (low <= v < high if high_open else low <= v <= high):
            raise ValueError(f"{name} must be in [{low}, {high}{')' if high_open else ']'}, got {v}")


def require_device(device: str) -> None:
    try:
        import torch

        torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from e


def training_device(device: str):
    """A device name as a torch.device, for training or evaluating on it: an unknown name, or CUDA on a
    machine without it, is a PresetError (the config check above only knows the name is a device)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise PresetError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PresetError(f"trainer.device={device!r}, but this machine has no CUDA device")
    return dev


def differences(old: Any, new: Any, prefix: str = "", names: tuple[str, str] = ("there", "asked")) -> list[str]:
    """'key: OLD there, NEW asked' for each leaf where two nested dicts differ (tuples compare as lists)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{prefix}{k}.", names)]
    norm = lambda x: [norm(v) for v in x] if isinstance(x, (list, tuple)) else x  # noqa: E731
    if norm(old) == norm(new):
        return []
    return [f"{prefix.rstrip('.')}: {old!r} {names[0]}, {new!r} {names[1]}"]


# -------------------------------------------------------------------------------------------- trainer
@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation, logging, evaluation and checkpoint settings of the one Trainer (every agent).

    Every count is in optimiser updates: one update steps every optimiser group of the agent once."""

    steps: int = 100_000
    """optimiser updates in total; 0: no limit (an env source then stops at its `env_steps`)"""
    lr: float = 1e-4
    """peak learning rate of AdamW (an agent's optimiser group may scale it)"""
    weight_decay: float = 1e-4
    """AdamW weight decay, applied to matrices only (see `seqrl.runners.trainer.param_groups`)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    eps: float = 1e-8
    """AdamW epsilon (CleanRL's PPO uses 1e-5)"""
    warmup_steps: int = 10_000
    """linear warm-up from 0 to `lr` over this many updates (Chen et al. 2021)"""
    schedule: Literal["constant", "linear"] = "constant"
    """after warm-up: constant, or a linear decay to 0 at the end of the budget (PPO's learning-rate annealing)"""
    grad_clip: float = 0.25
    """max global gradient norm of each optimiser group; 0 disables clipping"""
    eval_every: int = 10_000
    """updates between evaluations (0: only at the end)"""
    eval_episodes: int = 10
    """trials per evaluation (each of the episodes the agent's protocol asks), run together in a vector env"""
    log_every: int = 100
    """updates between TensorBoard scalars and progress lines"""
    checkpoint_every: int = 10_000
    """updates between checkpoints (a final one is always written)"""
    seed: int = 0
    """seeds torch, the sampler, the envs and the evaluation envs"""
    threads: int = 0
    """CPU threads of torch; 0: as many as the cores this process may use that are idle when training
    starts (one when the machine is busy: two runs sharing two cores each at 2 threads are many times
    slower than at 1)"""
    device: str = "cpu"
    """torch device for training and evaluation: cpu, cuda, cuda:1, ..."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)"""
    compile: bool = False
    """torch.compile the agent's losses on CUDA"""
    cuda_graph: bool = True
    """on one CUDA device with a dataset source on the device, capture a whole update (sampling, losses,
    backward, clipping, AdamW) as one CUDA graph and replay it: small models are otherwise bound by launches"""

    def __post_init__(self):
        require_at_least(self, 0, ("steps", "warmup_steps", "eval_every", "eval_episodes", "checkpoint_every",
                                   "threads", "grad_clip", "weight_decay", "seed"))
        require_at_least(self, 1, ("log_every",))
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {list(self.betas)}")
        require_device(self.device)


# -------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class DatasetSourceConfig:
    """Offline: a fixed ReplayStore (a Minari dataset); every update trains on `agent.sample(store, ...)`."""

    kind: Literal["dataset"] = "dataset"
    batch_size: int = 64
    """samples per update (the global batch: split across DDP ranks)"""
    store_on_device: bool = True
    """copy the store to the training device so sampling never crosses PCIe"""

    def __post_init__(self):
        require_at_least(self, 1, ("batch_size",))


@dataclass(frozen=True)
class EnvSourceConfig:
    """Online: a Gymnasium vector env stepped by the agent; its steps go into a ReplayStore."""

    kind: Literal["env"] = "env"
    env_steps: int = 500_000
    """environment steps in total, over all envs"""
    n_envs: int = 16
    """parallel environments (a Gymnasium sync vector env)"""
    n_steps: int = 128
    """steps per env per collection; each collection is one iteration of the agent's updates"""
    capacity: int = 1_000_000
    """steps the store keeps; the oldest whole episodes are evicted beyond it"""
    # agents that replay the store (world-model agents); agents that learn from each rollout (PPO) ignore these
    batch_size: int = 16
    """replay: sequences per update, drawn with the agent's `sample`"""
    train_ratio: float = 32.0
    """replay: steps replayed per env step (DreamerV3's train ratio); updates per collection follow from it"""
    learning_starts: int = 1024
    """replay: stored steps before the first update"""

    def __post_init__(self):
        require_at_least(self, 1, ("env_steps", "n_envs", "n_steps", "capacity", "batch_size"))
        require_at_least(self, 0, ("train_ratio", "learning_starts"))


SOURCES = {"dataset": DatasetSourceConfig, "env": EnvSourceConfig}
"""source kind -> its config; the classes that run them live in seqrl.runners.sources"""


# --------------------------------------------------------------------------------------- environments
@dataclass(frozen=True)
class CollectConfig:
    """How `seqrl collect` builds the datasets of one task."""

    source: Literal["sb3", "scripted"] = "sb3"
    """sb3: train a stable-baselines3 agent and roll out its checkpoints; scripted: a hand-written controller"""
    algo: Literal["SAC", "TD3", "PPO"] = "SAC"
    """stable-baselines3 algorithm used to train the behaviour policies (D4RL used SAC)"""
    train_steps: int = 1_000_000
    """environment steps of SB3 training; its final policy is the expert"""
    train_envs: int = 1
    """environments the SB3 learner collects from in parallel; an off-policy learner (SAC, TD3) takes one gradient
    step per env step collected, so its updates per env step stay SB3's, whatever this is"""
    checkpoint_every: int = 50_000
    """SB3 checkpoint interval; collection resumes from the newest one after an interruption"""
    medium_fraction: float = 1 / 3
    """medium = the checkpoint whose return is closest to this fraction of the expert's (D4RL)"""
    n_steps: int = 1_000_000
    """transitions in each of the random / medium / expert datasets (D4RL: 1M)"""
    n_envs: int = 8
    """parallel environments while rolling out a behaviour policy"""
    checkpoint_eval_episodes: int = 5
    """episodes per SB3 checkpoint to rate it when picking the medium policy"""
    medium_epsilon: float = 0.7
    """scripted source only: probability of a uniformly random action in 'medium' data"""

    def __post_init__(self):
        require_at_least(self, 1, ("train_steps", "train_envs", "checkpoint_every", "n_steps", "n_envs",
                                   "checkpoint_eval_episodes"))
        if not 0.0 <= self.medium_epsilon <= 1.0 or not 0.0 < self.medium_fraction < 1.0:
            raise ValueError("medium_epsilon must be in [0, 1] and medium_fraction in (0, 1)")


@dataclass(frozen=True)
class EnvPreset:
    """A task: the Gymnasium env, the dataset namespace and the D4RL-style reference scores."""

    name: str = ""
    """short name used on the command line (`--env hopper`)"""
    env_id: str = ""
    """Gymnasium id of the evaluation environment"""
    dataset_prefix: str = ""
    """Minari ids are `{dataset_prefix}/{quality}-v0`"""
    ref_min_score: float = 0.0
    """return of a random policy: normalised score 0"""
    ref_max_score: float = 1.0
    """return of an expert policy: normalised score 100"""
    reward_scale: float = 0.001
    """returns-to-go are multiplied by this before embedding (DT: 1/1000 on Gym MuJoCo)"""
    target_returns: tuple[float, ...] = (3600.0, 1800.0)
    """returns a conditioned policy is evaluated at, first is the main one"""
    max_episode_steps: int = 1000
    """episode length limit; also the size of the timestep embedding"""
    qualities: tuple[str, ...] = ("random", "medium", "expert", "medium-replay", "medium-expert")
    """the datasets `seqrl collect` can build for this task"""
    collect: CollectConfig = field(default_factory=CollectConfig)
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """keyword arguments of the env's constructor (`gym.make(env_id, **env_kwargs)`), e.g. a memory length"""

    def __post_init__(self):
        if self.ref_max_score == self.ref_min_score:
            raise ValueError("ref_max_score must differ from ref_min_score")
        if not self.target_returns:
            raise ValueError("target_returns needs at least one return")
        require_at_least(self, 1, ("max_episode_steps",))
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")

    def dataset_id(self, quality: str) -> str:
        if quality not in self.qualities:
            raise PresetError(f"unknown quality {quality!r} for env {self.name!r}; one of {list(self.qualities)}")
        return f"{self.dataset_prefix}/{quality}-v0"

    @property
    def ref_scores(self) -> tuple[float, float]:
        return self.ref_min_score, self.ref_max_score


# ------------------------------------------------------------------------------------------- building
def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise PresetError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PresetError(f"{key}: expected a table, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise PresetError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check(value, arg, key)
            except PresetError:
                pass
        raise PresetError(f"{key}: {value!r} does not fit {tp}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PresetError(f"{key}: expected a table, got {value!r}")
        return {_check(k, key_tp, key): _check(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PresetError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise PresetError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_check(v, a, key) for v, a in zip(value, args))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PresetError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise PresetError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PresetError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PresetError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise PresetError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")  # a bug in a config class, not user input


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a (nested) dict, checking every key, type and range."""
    if not isinstance(values, dict):
        raise PresetError(f"{prefix.rstrip('.') or cls.__name__}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PresetError(f"unknown key '{prefix}{unknown[0]}'; known keys: {sorted(names)}")
    kwargs = {k: _check(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as e:  # __post_init__: messages start with the field name
        raise PresetError(f"{prefix}{e}") from e


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["trainer.steps=10", "policy.dropout=0.0"]` -> nested dict. Values are TOML (bare words: strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PresetError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as `device=cuda`
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PresetError(f"override {key!r}: {p!r} is not a table")
        node[leaf] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(name_or_path: str | Path, directory: Path, kind: str) -> tuple[dict[str, Any], Path]:
    """Read `directory/{name}.toml`, or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = directory / f"{name_or_path}.toml"
    if not path.is_file():
        if not directory.is_dir():
            raise PresetError(f"no {kind} presets: {directory} is missing. A checkout reads the repository's "
                              f"agents/ and envs/ folders and an installed wheel its seqrl/_presets/ copy of "
                              f"them; reinstall seqrl (`pip install -e .` in a checkout, `pip install seqrl`)")
        known = sorted(p.stem for p in directory.glob("*.toml"))
        raise PresetError(f"unknown {kind} preset {str(name_or_path)!r}; known: {known}")
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from e


@dataclass(frozen=True)
class AgentPreset:
    """An agent: which agent class and its config, where its experience comes from, and the trainer's config."""

    agent: str
    policy: Any
    source: DatasetSourceConfig | EnvSourceConfig
    trainer: TrainerConfig

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "policy": dataclasses.asdict(self.policy),
                "source": dataclasses.asdict(self.source), "trainer": dataclasses.asdict(self.trainer)}


def agent_from_dict(values: dict[str, Any]) -> AgentPreset:
    """Build an AgentPreset from a (TOML) dict: `agent`, and the tables `policy`, `source`, `trainer`."""
    from seqrl.policies import policy_class

    values = dict(values)
    agent = values.pop("agent", None)
    if not isinstance(agent, str):
        raise PresetError("agent preset: missing key 'agent' (e.g. agent = \"dt\")")
    cls = policy_class(agent)
    unknown = sorted(set(values) - {"policy", "source", "trainer"})
    if unknown:
        raise PresetError(f"unknown key {unknown[0]!r} in agent preset; known: ['agent', 'policy', 'source', 'trainer']")
    source = values.get("source", {})
    if not isinstance(source, dict):
        raise PresetError(f"source: expected a table, got {source!r}")
    kind = source.get("kind")
    if kind not in SOURCES:
        raise PresetError(f"source.kind: {kind!r} is not a source; known: {sorted(SOURCES)}")
    preset = AgentPreset(agent=agent, policy=build(cls.Config, values.get("policy", {}), prefix="policy."),
                         source=build(SOURCES[kind], source, prefix="source."),
                         trainer=build(TrainerConfig, values.get("trainer", {}), prefix="trainer."))
    if preset.source.kind == "dataset" and preset.trainer.steps == 0:
        raise PresetError("trainer.steps must be >= 1 with a dataset source: a dataset has no budget of its own")
    try:
        cls.check_preset(preset)  # what only the agent knows: e.g. PPO's sequences must tile a collection
    except ValueError as e:
        raise PresetError(str(e)) from e
    return preset


def load_agent(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AgentPreset:
    values, _ = read_toml(name_or_path, AGENTS_DIR, "agent")
    return agent_from_dict(merge(values, overrides or {}))


def load_env(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> EnvPreset:
    values, _ = read_toml(name_or_path, ENVS_DIR, "env")
    return build(EnvPreset, merge(values, overrides or {}))


def find_env_for_dataset(dataset_id: str) -> EnvPreset | None:
    """The env preset whose dataset_prefix owns `dataset_id` (e.g. seqrl/hopper/medium-v0 -> hopper)."""
    for path in sorted(ENVS_DIR.glob("*.toml")):
        env = load_env(path)
        if dataset_id.startswith(env.dataset_prefix + "/"):
            return env
    return None


def find_env_for_id(env_id: str) -> EnvPreset | None:
    """The env preset of Gymnasium id `env_id` (e.g. seqrl/TMaze-v0 -> tmaze), if one exists."""
    for path in sorted(ENVS_DIR.glob("*.toml")):
        env = load_env(path)
        if env.env_id == env_id:
            return env
    return None
