"""The `seqrl` command: quickstart, collect, train, eval.

Built on Typer (already a dependency of Minari) for argument parsing and help, Rich for tables and
tqdm for progress bars. Bad input ends with one line naming the problem and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from seqrl.errors import SeqrlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reinforcement learning with sequence-model policies.")
console = Console()


def _friendly(fn: Callable) -> Callable:
    """Report SeqrlError as a one-line message instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SeqrlError as e:
            Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)

    return wrapper


def _split_overrides(items: list[str]) -> tuple[dict, dict]:
    """--set values: `env.*` keys go to the env preset, the rest to the agent preset."""
    from seqrl.presets import parse_overrides

    tree = parse_overrides(items)
    return {k: v for k, v in tree.items() if k != "env"}, tree.get("env", {})


def _results_table(title: str, rows: list[tuple[str, dict]]) -> Table:
    table = Table(title=title, caption="mean ± std over episodes")
    for col in ("policy", "return", "normalised score", "episodes"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, s in rows:
        score = f"{s['score_mean']:.1f} ± {s['score_std']:.1f}" if "score_mean" in s else "n/a"
        table.add_row(name, f"{s['return_mean']:.1f} ± {s['return_std']:.1f}", score, str(s.get("episodes", "")))
    return table


# -------------------------------------------------------------------------------------------- collect
@app.command()
@_friendly
def collect(
    env: str = typer.Option(..., help="env preset: envs/NAME.toml (hopper, halfcheetah, walker2d, pendulum)"),
    quality: str = typer.Option(..., help="random, medium, expert, medium-replay, medium-expert (mixed for pendulum)"),
    seed: int = typer.Option(0, help="seed of training and rollouts"),
    workdir: Path = typer.Option(Path("runs/collect"), help="SB3 checkpoints live here; rerun to resume"),
    set_: list[str] = typer.Option([], "--set", help="override a preset value, e.g. collect.train_steps=300000"),
) -> None:
    """Build a D4RL-style Minari dataset locally (resumes an interrupted SB3 training)."""
    from seqrl.data.collect import collect as run_collect
    from seqrl.presets import load_env, parse_overrides

    preset = load_env(env, parse_overrides(set_))
    path = run_collect(preset, quality, seed=seed, workdir=workdir)
    console.print(f"dataset [bold]{preset.dataset_id(quality)}[/] is at {path}")


# ---------------------------------------------------------------------------------------------- train
def train_run(agent: str, dataset: Optional[str], env_name: Optional[str], overrides: list[str], run_dir: Optional[Path],
              resume: bool, device: Optional[str] = None) -> tuple[Path, dict]:
    """Load presets and data, train, evaluate. Returns (run folder, evaluation summary)."""
    import torch

    from seqrl.data.minari_io import check_env_matches, load_store
    from seqrl.errors import PresetError
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.presets import OnlineRunnerConfig, find_env_for_dataset, load_agent, load_env
    from seqrl.runners.offline import OfflineRunner

    agent_over, env_over = _split_overrides(overrides)
    if device is not None:
        agent_over.setdefault("runner", {})["device"] = device
    preset = load_agent(agent, agent_over)
    if isinstance(preset.runner, OnlineRunnerConfig):  # gtrxl, lstm_ppo: they train on an env
        return online_train_run(preset, dataset, env_name, env_over, run_dir, resume)
    if dataset is None:
        raise PresetError(f"agent {preset.agent!r} trains offline: pass --dataset (a Minari dataset id)")
    store = load_store(dataset)
    if env_name is None:
        env_preset = find_env_for_dataset(dataset)
        if env_preset is None:
            raise PresetError(f"no env preset owns dataset {dataset!r}: pass --env NAME (a file in envs/)")
        env_preset = load_env(env_preset.name, env_over)
    else:
        env_preset = load_env(env_name, env_over)
    check_env_matches(store, env_preset.env_id)
    torch.manual_seed(preset.runner.seed)  # initial weights follow the seed too
    run_dir = run_dir or Path("runs") / agent / dataset.replace("/", "_") / f"seed{preset.runner.seed}"
    policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env_preset))
    results = OfflineRunner(policy, store, preset, run_dir, resume=resume).run()
    return run_dir, results


def resolve_env(name: str, overrides: dict) -> "EnvPreset":  # noqa: F821
    """An env preset by name or path (envs/NAME.toml), else the preset of a Gymnasium id, else a bare
    preset for any registered Gymnasium id."""
    import dataclasses

    import gymnasium as gym

    import seqrl.envs  # noqa: F401  registers seqrl/... ids
    from seqrl.errors import PresetError
    from seqrl.presets import ENVS_DIR, EnvPreset, build, find_env_for_id, load_env, merge

    if name.endswith(".toml") or (ENVS_DIR / f"{name}.toml").is_file():
        return load_env(name, overrides)
    found = find_env_for_id(name)
    if found is not None:
        return build(EnvPreset, merge(dataclasses.asdict(found), overrides))
    if name in gym.registry:
        limit = gym.registry[name].max_episode_steps or 1000
        return build(EnvPreset, merge({"name": name, "env_id": name, "max_episode_steps": limit}, overrides))
    known = sorted(p.stem for p in ENVS_DIR.glob("*.toml"))
    raise PresetError(f"unknown env {name!r}: neither an env preset {known} nor a registered Gymnasium id")


def online_train_run(preset, dataset: Optional[str], env_name: Optional[str], env_over: dict,
                     run_dir: Optional[Path], resume: bool) -> tuple[Path, dict]:
    """Train an online agent (gtrxl, lstm_ppo) with PPO on an env, then evaluate it."""
    import gymnasium as gym
    import numpy as np
    import torch

    from seqrl.data.store import space_to_dict
    from seqrl.errors import PresetError
    from seqrl.policies import TaskSpec, policy_class
    from seqrl.runners.online import OnlineRunner

    if dataset is not None:
        raise PresetError(f"agent {preset.agent!r} trains online: pass --env, not --dataset")
    if env_name is None:
        raise PresetError(f"agent {preset.agent!r} trains online: pass --env (an env preset such as tmaze, "
                          f"or a Gymnasium id such as seqrl/TMaze-v0)")
    env_preset = resolve_env(env_name, env_over)
    try:
        probe = gym.make(env_preset.env_id, **env_preset.env_kwargs)
    except (gym.error.Error, TypeError, ValueError) as e:
        raise PresetError(f"env {env_preset.env_id!r} with env_kwargs {env_preset.env_kwargs}: {e}") from e
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    space_to_dict(obs_space), space_to_dict(act_space)  # DataError naming an unsupported space
    shape = () if isinstance(obs_space, gym.spaces.Discrete) else obs_space.shape
    spec = TaskSpec(obs_space, act_space, np.zeros(shape, np.float32), np.ones(shape, np.float32), env_preset,
                    {"env_id": env_preset.env_id, "online": True})
    torch.manual_seed(preset.runner.seed)  # initial weights follow the seed too
    run_dir = run_dir or Path("runs") / preset.agent / env_preset.env_id.replace("/", "_") / f"seed{preset.runner.seed}"
    policy = policy_class(preset.agent)(preset.policy, spec)
    return run_dir, OnlineRunner(policy, preset, run_dir, resume=resume).run()


@app.command()
@_friendly
def train(
    agent: str = typer.Option(..., help="agent preset: agents/NAME.toml (dt, bc, dt_small, gtrxl, lstm_ppo, ...) or a path"),
    dataset: Optional[str] = typer.Option(None, help="offline agents: a local Minari dataset id, e.g. seqrl/hopper/medium-v0"),
    env: Optional[str] = typer.Option(None, help="env preset or Gymnasium id (online agents: required; offline: "
                                                 "default the preset whose dataset_prefix owns the dataset)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. runner.steps=1000 or env.target_returns=[3600]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (same as --set runner.device=...)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "--out", help="default: runs/AGENT/DATASET_OR_ENV/seedN"),
    resume: bool = typer.Option(False, help="continue from RUN_DIR/checkpoint.pt"),
) -> None:
    """Train an agent offline on a Minari dataset (dt, bc) or online on an env (gtrxl, lstm_ppo), then evaluate it."""
    import torch.distributed as dist

    run_dir, results = train_run(agent, dataset, env, set_, run_dir, resume, device)
    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun, rank 0 evaluates and reports
        return
    console.print(_results_table(f"{agent} on {dataset or env}", [(f"{agent} {k}".strip(), v) for k, v in results.items()]))
    for k, v in results.items():
        if "success_rate" in v:
            console.print(f"{agent} {k}".strip() + f" success rate: {v['success_rate']:.2f}")
    console.print(f"checkpoint: {run_dir / 'checkpoint.pt'}\nTensorBoard: tensorboard --logdir {run_dir / 'tb'}")


# ----------------------------------------------------------------------------------------------- eval
@app.command("eval")
@_friendly
def eval_(
    checkpoint: Path = typer.Argument(..., help="a checkpoint.pt written by `seqrl train`"),
    episodes: int = typer.Option(50, help="episodes, run together in a vector env"),
    seed: int = typer.Option(0, help="env i is seeded seed+i"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
) -> None:
    """Evaluate a checkpoint over parallel episodes, at every condition it declares (DT: target returns)."""
    from seqrl.checkpoint import policy_from_checkpoint
    from seqrl.runners.evaluate import evaluate

    policy, preset, _ = policy_from_checkpoint(checkpoint, device=device)
    env = policy.spec.env
    rows = []
    for label, cond in policy.eval_conditions():
        s = evaluate(policy, env.env_id, episodes, seed, device, cond, policy.spec.ref_scores, env.max_episode_steps,
                     env.env_kwargs).summary()
        rows.append((f"{preset.agent} {label}".strip(), s | {"episodes": episodes}))
    console.print(_results_table(f"{checkpoint} on {env.env_id}", rows))
    for name, s in rows:
        if "success_rate" in s:
            console.print(f"{name} success rate: {s['success_rate']:.2f}")


# ------------------------------------------------------------------------------------------ quickstart
@app.command()
@_friendly
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="TensorBoard logs and checkpoints go here"),
    episodes: int = typer.Option(50, help="evaluation episodes per policy, run together"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Offline, in a few minutes on a laptop CPU: build a mixed-quality Pendulum dataset, train BC and a
    Decision Transformer on it, evaluate both against random, and print the table."""
    from seqrl.data.collect import collect as run_collect
    from seqrl.data.minari_io import load_store
    from seqrl.presets import load_agent, load_env
    from seqrl.runners.evaluate import RandomPolicy, evaluate

    env = load_env("pendulum")
    dataset = env.dataset_id("mixed")
    console.print(f"[bold]1/4[/] dataset {dataset}: scripted Pendulum-v1 controller at three quality levels")
    run_collect(env, "mixed")
    store = load_store(dataset)
    r = store.return_stats()
    console.print(f"     {store.num_episodes} episodes, {len(store)} steps, returns {r['min']:.0f} .. {r['max']:.0f}")
    ref = env.ref_scores
    seed = load_agent("dt_small").runner.seed + 10_000  # the evaluation seeds the runner uses: same starts for all
    rows = [("random", evaluate(RandomPolicy(store.action_space), env.env_id, episodes, seed, "cpu", None, ref,
                                env.max_episode_steps).summary())]
    for i, agent in enumerate(("bc_small", "dt_small"), start=2):
        console.print(f"[bold]{i}/4[/] training {agent}")
        run_dir, results = train_run(agent, dataset, "pendulum",
                                     [f"runner.eval_episodes={episodes}", "runner.eval_every=0"],
                                     out / agent, resume=False, device=device)
        rows += [(f"{agent.split('_')[0].upper()} {k}".strip(), v) for k, v in results.items()]
    console.print("[bold]4/4[/] results (normalised score: 0 = random, 100 = scripted expert)")
    for _, s in rows:
        s["episodes"] = episodes
    console.print(_results_table(f"{dataset} -> {env.env_id}", rows))
    console.print(f"checkpoints: {out}/*/checkpoint.pt   TensorBoard: tensorboard --logdir {out}")
    console.print(f"evaluate again: seqrl eval {out / 'dt_small' / 'checkpoint.pt'} --episodes 50")


def main() -> None:  # python -m seqrl.cli
    app()


if __name__ == "__main__":
    sys.exit(main())
