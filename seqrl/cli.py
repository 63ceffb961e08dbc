"""The `seqrl` command: quickstart, collect, train, eval, icrl, imagine.

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

from seqrl.errors import PresetError, SeqrlError

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


def _num(x: float) -> str:
    """A return rounded to a whole number, without the minus of a negative zero."""
    return f"{round(x) + 0:.0f}"


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
    env: str = typer.Option(..., help="env preset: envs/NAME.toml (hopper, halfcheetah, walker2d, pendulum), an "
                                      "in-context family (gaussian-bandit, bernoulli-bandit, linear-bandit, darkroom, "
                                      "keytodoor), or a world-model image task (distracting-memory, four-rooms, "
                                      "multi-doors-keys)"),
    quality: str = typer.Option(..., help="random, medium, expert, medium-replay, medium-expert (mixed for pendulum); "
                                          "in-context: dpt, ad-ucb, ad-thompson, ad-linucb, ad-q, ad-noisy; image tasks: "
                                          "random (distracting-memory), explore (four-rooms, multi-doors-keys)"),
    seed: int = typer.Option(0, help="seed of training and rollouts"),
    workdir: Path = typer.Option(Path("runs/collect"), help="SB3 checkpoints live here; rerun to resume"),
    set_: list[str] = typer.Option([], "--set", help="override a preset value, e.g. collect.train_steps=300000"),
    rebuild: bool = typer.Option(False, help="make the dataset again even if one of that id exists (replacing it "
                                             "once the new one is complete)"),
) -> None:
    """Build a D4RL-style Minari dataset locally (resumes an interrupted SB3 training). A dataset of that id
    made with the same recipe is reused; one made with another recipe is an error unless --rebuild."""
    from seqrl.data.collect import collect as run_collect
    from seqrl.data.icrl_collect import collect_icrl, is_icrl_env
    from seqrl.presets import load_env, parse_overrides

    if is_icrl_env(env):  # in-context task families: seqrl.data.icrl_collect (--quality dpt, ad-ucb, ad-q, ...)
        path = collect_icrl(env, quality, {"seed": seed} | parse_overrides(set_), rebuild=rebuild)
        console.print(f"dataset [bold]{path.relative_to(path.parents[2])}[/] is at {path}")
        return
    from seqrl.data.wm_collect import wm_task

    task = wm_task(env)
    if task is not None:  # the world models' image tasks: distracting-memory, four-rooms, multi-doors-keys
        from seqrl.data.minari_io import dataset_path
        from seqrl.data.wm_collect import build_wm_dataset

        over = parse_overrides(set_)
        if quality != task.quality:
            raise PresetError(f"--env {env}: --quality {task.quality}; --set n_steps=N, seed=S and "
                              + ", ".join(task.args) + " set the rest")
        did = build_wm_dataset(task.name, over.pop("n_steps", 20_000), over.pop("seed", seed), rebuild, **over)
        console.print(f"dataset [bold]{did}[/] is at {dataset_path(did)}")
        return
    preset = load_env(env, parse_overrides(set_))
    path = run_collect(preset, quality, seed=seed, workdir=workdir, rebuild=rebuild)
    console.print(f"dataset [bold]{preset.dataset_id(quality)}[/] is at {path}")


# ---------------------------------------------------------------------------------------------- train
def default_run_dir(agent: str, name: str, seed: int, agent_over: dict, env_over: dict) -> Path:
    """runs/AGENT/DATASET_OR_ENV/seedN, with a digest of the --set values that change the model, its data or
    its env, so that two different runs never share a folder. Budgets and the trainer's settings
    (trainer.*, source.env_steps) are left out: a resume may change them."""
    import hashlib
    import json

    varying = {k: v for k, v in agent_over.items() if k != "trainer"} | ({"env": env_over} if env_over else {})
    if isinstance(varying.get("source"), dict):
        varying["source"] = {k: v for k, v in varying["source"].items() if k != "env_steps"}
    varying = {k: v for k, v in varying.items() if v != {}}
    tag = f"seed{seed}"
    if varying:
        tag += "-" + hashlib.sha1(json.dumps(varying, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / agent / name / tag


def train_run(agent: str, dataset: Optional[str], env_name: Optional[str], overrides: list[str], run_dir: Optional[Path],
              resume: bool, device: Optional[str] = None) -> tuple[Path, dict, Any]:
    """Load the presets, build the source the agent preset names (a dataset or an env), train through the
    one Trainer, evaluate. Returns (run folder, evaluation summary, agent preset)."""
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
    run_dir = run_dir or default_run_dir(agent, name, preset.trainer.seed, agent_over, env_over)
    try:
        policy = policy_class(preset.agent)(preset.policy, spec)
    except (ValueError, ArithmeticError) as e:  # a combination of values the preset checks did not foresee
        raise PresetError(f"agent {agent!r}: its preset does not build a network ({type(e).__name__}: {e})") from e
    return run_dir, Trainer(policy, source, preset, run_dir, resume=resume).run(), preset


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

    run_dir, results, preset = train_run(agent, dataset, env, set_, run_dir, resume, device)
    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun, rank 0 evaluates and reports
        return
    rows = [(f"{agent} {k}".strip(), v | {"episodes": preset.trainer.eval_episodes}) for k, v in results.items()]
    console.print(_results_table(f"{agent} on {dataset or env}", rows))
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
    seed: int = typer.Option(0, help="env i is seeded seed+i (training evaluated at trainer.seed + 10000)"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    env: Optional[str] = typer.Option(None, help="evaluate on this env (a preset or Gymnasium id, module:Id to import "
                                                 "a module first) instead of the checkpoint's; same spaces"),
    act: Optional[str] = typer.Option(None, help="dt, dm: acting mode, 'stream' (the whole episode through a cache or "
                                                 "recurrent state) or 'window' (the last K steps re-encoded every "
                                                 "step, as trained); default: the checkpoint's policy.act_mode"),
) -> None:
    """Evaluate a checkpoint at every condition of its agent's protocol (DT: target returns)."""
    import dataclasses

    from seqrl.checkpoint import policy_from_checkpoint
    from seqrl.cpu import set_threads
    from seqrl.policies.dt import set_act_mode
    from seqrl.presets import training_device
    from seqrl.runners.evaluate import evaluate
    from seqrl.runners.sources import checkpoint_env, resolve_env

    if episodes < 1:
        raise PresetError(f"--episodes must be >= 1, got {episodes}")
    if seed < 0:
        raise PresetError(f"--seed must be >= 0 (env i is seeded seed+i), got {seed}")
    dev = training_device(device)
    set_threads(0)
    policy, preset, _ = policy_from_checkpoint(checkpoint, device=dev)
    if act is not None:  # acting only: the same weights, another policy.act_mode
        try:
            set_act_mode(policy, act)
        except ValueError as e:
            raise PresetError(f"--act {act}: {e}") from e
    spec, proto = policy.spec, policy.eval_protocol()
    env_preset = spec.env
    if env is not None:
        named = resolve_env(env, {})
        env_preset = dataclasses.replace(spec.env, env_id=named.env_id, env_kwargs=named.env_kwargs)
    else:
        checkpoint_env(env_preset.env_id, checkpoint)
    rows = []
    for label, cond in proto.conditions:
        s = evaluate(policy, env_preset, episodes, seed, dev, cond, spec.ref_scores, proto.episodes).summary()
        rows.append((f"{preset.agent} {label}".strip(), s | {"episodes": episodes}))
    mode = f", acting mode {policy.config.act_mode}" if hasattr(policy.config, "act_mode") else ""
    console.print(_results_table(f"{checkpoint} on {env_preset.env_id}{mode}", rows))
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


# ----------------------------------------------------------------------------------------------- icrl
@app.command()
@_friendly
def icrl(
    checkpoints: list[Path] = typer.Argument(..., help="checkpoints of in-context agents (dpt, ad) of one task family"),
    name: list[str] = typer.Option([], help="a name per checkpoint in the table (default AGENT-BACKBONE)"),
    tasks: int = typer.Option(20, help="held-out tasks: the first N of the env's test split"),
    seeds: int = typer.Option(3, help="seeds per task (reward noise, action draws): seeds 0..N-1"),
    episodes: Optional[int] = typer.Option(None, help="episodes per trial (default: the agent's trial_episodes)"),
    mode: list[str] = typer.Option(["online"], help="online, online-episode, offline, offline-expert (repeat the option for several)"),
    baselines: bool = typer.Option(True, help="run the family's classic learners on the same tasks and seeds"),
    set_: list[str] = typer.Option([], "--set", help="override the env's constructor kwargs, e.g. horizon=200"),
    extrapolate: bool = typer.Option(False, help="let a Mamba model act past the context length it was trained on"),
    family: Optional[str] = typer.Option(None, help="evaluate on another task family with the same spaces, e.g. "
                                         "bernoulli-bandit for a model pretrained on Gaussian bandits"),
    allow_overlap: bool = typer.Option(False, help="run even when evaluation tasks were training tasks (warns)"),
    out: Path = typer.Option(Path("runs/icrl"), help="results.json, results.md and curves.png go here"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
) -> None:
    """In-context evaluation on held-out tasks: online (context across episodes), online-episode (the last
    episode as the context), offline (a fixed random context) and offline-expert (the optimal policy's
    episodes as the fixed context), beside Thompson sampling, UCB, ... on the
    same tasks and seeds. Cumulative regret (bandits) or return per episode (grids), mean ± 95% interval."""
    import datetime
    import platform

    from seqrl.cpu import set_threads
    from seqrl.data.icrl_collect import make_env, FAMILIES
    from seqrl.presets import parse_overrides, training_device
    from seqrl.runners.icrl import evaluate_icrl, load_icrl_agents, report

    if tasks < 1 or seeds < 1 or (episodes is not None and episodes < 1):
        raise PresetError("--tasks, --seeds and --episodes must be >= 1")
    dev = training_device(device)
    set_threads(0)
    agents, trained_on, kw = load_icrl_agents(checkpoints, name, dev)
    if family is not None and family not in FAMILIES:
        raise PresetError(f"--family {family!r}: one of {sorted(FAMILIES)}")
    family = family or trained_on
    if family != trained_on:  # the pretrained family's env arguments that the other family's env does not take
        from seqrl.envs.checks import env_arguments

        takes = env_arguments(FAMILIES[family])
        if set(kw) - set(takes):
            console.print(f"--family {family}: its env takes no {sorted(set(kw) - set(takes))} (from the "
                          f"{trained_on} recipe); left out")
        kw = {k: v for k, v in kw.items() if k in takes}
    kw = kw | parse_overrides(set_)
    try:
        probe = make_env(FAMILIES[family], kw)
    except (TypeError, ValueError) as e:
        raise PresetError(f"env kwargs {kw}: {e}") from e
    test = probe.tasks("test")[:tasks]
    E = episodes or max(a.config.trial_episodes for a in agents.values())
    curves = evaluate_icrl(agents, family, kw, test, list(range(seeds)), E, mode, baselines, extrapolate,
                           allow_overlap, dev)
    meta = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "env_kwargs": kw,
            "family": family, "trained_on": trained_on, "tasks": [int(t) for t in test], "n_tasks": len(test),
            "seeds": list(range(seeds)), "episodes": E, "modes": list(mode),
            "checkpoints": {k: str(c) for k, c in zip(agents, checkpoints)}}
    report(curves, family, out, meta)
    console.print((out / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"written: {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")


# -------------------------------------------------------------------------------------------- imagine
@app.command()
@_friendly
def imagine(
    checkpoint: Path = typer.Argument(..., help="a world model's checkpoint (agents s4wm, rssm, twm) or a world-model "
                                                "agent's (s4wm_agent, dreamer, s4wm_agent_offline)"),
    context: int = typer.Option(4, help="real steps read through the posterior before imagining"),
    horizon: int = typer.Option(16, help="steps imagined by the prior under the dataset's actions (open loop)"),
    dataset: Optional[str] = typer.Option(None, help="Minari id or saved store (.npz) of the episodes to imagine "
                                                     "from (default: the checkpoint's dataset, else the replay.npz "
                                                     "beside it)"),
    sequences: int = typer.Option(8, help="episodes imagined (each from its first step)"),
    seed: int = typer.Option(0, help="which episodes"),
    out: Path = typer.Option(Path("runs/imagine"), help="strip.png, error.png, imagine.json (and imagine.gif)"),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
) -> None:
    """Imagine with a world model: a context of real steps, then the prior rolled forward recurrently;
    writes a strip of real above imagined frames, the error against the horizon and JSON."""
    from seqrl.presets import training_device
    from seqrl.runners.imagine import imagine_checkpoint, training_length_note

    try:
        result = imagine_checkpoint(checkpoint, context, horizon, out, dataset, sequences, seed=seed,
                                    device=str(training_device(device)))
    except ValueError as e:  # argument checks of imagine_checkpoint (context, horizon >= 1)
        if isinstance(e, SeqrlError):
            raise
        raise PresetError(str(e)) from e
    console.print({k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    note = training_length_note(context + horizon, result["trained_seq_len"])
    if note:
        console.print(note)
    console.print(f"written to {out}")


# ------------------------------------------------------------------------------------------ quickstart
@app.command()
@_friendly
def quickstart(
    out: Optional[Path] = typer.Option(None, help="TensorBoard logs and checkpoints go here (default: runs/quickstart, "
                                                  "or runs/quickstart-2, -3, ... when it is taken)"),
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
    console.print(f"     {store.num_episodes} episodes, {len(store)} steps, returns {_num(r['min'])} .. {_num(r['max'])}")
    ref = env.ref_scores
    if out is None:  # a fresh numbered folder: a second quickstart never trains over the first
        out, n = Path("runs/quickstart"), 1
        while out.exists() and any(out.iterdir()):
            n += 1
            out = Path(f"runs/quickstart-{n}")
    elif out.exists() and any(out.iterdir()):
        raise PresetError(f"{out} is not empty: pass a new --out folder (seqrl never trains over a run)")
    seed = load_agent("dt_small").trainer.seed + 10_000  # the evaluation seeds the trainer uses: same starts for all
    rows = [("random", evaluate(RandomPolicy(store.action_space), env, episodes, seed, "cpu", None, ref).summary())]
    for i, agent in enumerate(("bc_small", "dt_small"), start=2):
        console.print(f"[bold]{i}/4[/] training {agent}")
        run_dir, results, _ = train_run(agent, dataset, "pendulum",
                                     [f"trainer.eval_episodes={episodes}", "trainer.eval_every=0"],
                                     out / agent, resume=False, device=device)
        rows += [(f"{agent.split('_')[0].upper()} {k}".strip(), v) for k, v in results.items()]
    console.print("[bold]4/4[/] results (normalised score: 0 = random, 100 = scripted expert)")
    for _, s in rows:
        s["episodes"] = episodes
    console.print(_results_table(f"{dataset} -> {env.env_id}", rows))
    console.print(f"checkpoints: {out}/*/checkpoint.pt   TensorBoard: tensorboard --logdir {out}")
    console.print(f"evaluate again: seqrl eval {out / 'dt_small' / 'checkpoint.pt'} --episodes {episodes} --seed {seed}")


def main() -> None:  # python -m seqrl.cli
    app()


if __name__ == "__main__":
    sys.exit(main())
