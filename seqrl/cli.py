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
    """Load the presets, build the source the agent preset names (a dataset or an env), train through the
    one Trainer, evaluate. Returns (run folder, evaluation summary)."""
    import torch

    from seqrl.policies import policy_class
    from seqrl.presets import load_agent
    from seqrl.runners.sources import build_source
    from seqrl.runners.trainer import Trainer

    agent_over, env_over = _split_overrides(overrides)
    if device is not None:
        agent_over.setdefault("trainer", {})["device"] = device
    preset = load_agent(agent, agent_over)
    source, spec, name = build_source(preset, dataset, env_name, env_over)
    torch.manual_seed(preset.trainer.seed)  # initial weights follow the seed too
    run_dir = run_dir or Path("runs") / agent / name / f"seed{preset.trainer.seed}"
    policy = policy_class(preset.agent)(preset.policy, spec)
    return run_dir, Trainer(policy, source, preset, run_dir, resume=resume).run()


@app.command()
@_friendly
def train(
    agent: str = typer.Option(..., help="agent preset: agents/NAME.toml (dt, bc, dm, dt_small, gtrxl, lstm_ppo, ...) or a path"),
    dataset: Optional[str] = typer.Option(None, help="agents with source.kind='dataset': a local Minari dataset id, "
                                                     "e.g. seqrl/hopper/medium-v0"),
    env: Optional[str] = typer.Option(None, help="env preset or Gymnasium id (source.kind='env': required; dataset: "
                                                 "default the preset whose dataset_prefix owns the dataset)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. trainer.steps=1000 or env.target_returns=[3600]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (same as --set trainer.device=...)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "--out", help="default: runs/AGENT/DATASET_OR_ENV/seedN"),
    resume: bool = typer.Option(False, help="continue from RUN_DIR/checkpoint.pt"),
) -> None:
    """Train an agent from the source its preset names (a Minari dataset: dt, bc, dm; an env: gtrxl, lstm_ppo),
    then evaluate it."""
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
    episodes: int = typer.Option(50, help="trials, run together in a vector env (each as many episodes as the "
                                          "agent's protocol asks)"),
    seed: int = typer.Option(0, help="env i is seeded seed+i"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
) -> None:
    """Evaluate a checkpoint at every condition of its agent's protocol (DT: target returns)."""
    from seqrl.checkpoint import policy_from_checkpoint
    from seqrl.runners.evaluate import evaluate

    policy, preset, _ = policy_from_checkpoint(checkpoint, device=device)
    spec, proto = policy.spec, policy.eval_protocol()
    rows = []
    for label, cond in proto.conditions:
        s = evaluate(policy, spec.env, episodes, seed, device, cond, spec.ref_scores, proto.episodes).summary()
        rows.append((f"{preset.agent} {label}".strip(), s | {"episodes": episodes}))
    console.print(_results_table(f"{checkpoint} on {spec.env.env_id}", rows))
    for name, s in rows:
        if "success_rate" in s:
            console.print(f"{name} success rate: {s['success_rate']:.2f}")


@app.command()
@_friendly
def convert(
    old: Path = typer.Argument(..., help="a format-1 checkpoint (seqrl before the one trainer) of dt, bc or dm"),
    new: Path = typer.Argument(..., help="where to write the format-2 checkpoint"),
) -> None:
    """Convert a checkpoint written before the one-trainer change (format 1) to today's format."""
    from seqrl.checkpoint import convert_format1

    console.print(f"wrote {convert_format1(old, new)}")


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
    seed = load_agent("dt_small").trainer.seed + 10_000  # the evaluation seeds the trainer uses: same starts for all
    rows = [("random", evaluate(RandomPolicy(store.action_space), env, episodes, seed, "cpu", None, ref).summary())]
    for i, agent in enumerate(("bc_small", "dt_small"), start=2):
        console.print(f"[bold]{i}/4[/] training {agent}")
        run_dir, results = train_run(agent, dataset, "pendulum",
                                     [f"trainer.eval_episodes={episodes}", "trainer.eval_every=0"],
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
