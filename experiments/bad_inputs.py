#!/usr/bin/env python
"""Bad inputs to the `seqrl` command and what seqrl does with each (issue 28).

Every case builds one bad input in a temporary folder of its own (a dataset, a checkpoint, a preset, a
command-line value, a folder, a file size limit, a killed process), runs the real CLI on it in a
subprocess (OMP_NUM_THREADS=1, tiny budgets, a timeout) and classifies the outcome:

  clear error     nonzero exit, no Python traceback, a message (its last line is recorded)
  traceback       nonzero exit with a Python traceback (exception type and message recorded)
  ok              exit 0 where exit 0 is right, and the case's check found nothing wrong
  silently wrong  exit 0 where seqrl should have refused, or the check found damage (a checkpoint
                  overwritten, NaN weights saved, `*.tmp` files left, ...)
  harmful error   nonzero exit, but the check found damage anyway (a checkpoint overwritten, a module
                  imported that nobody named, pickled code run, `weights_only=False` suggested)
  crash           killed by a signal it did not handle (a segfault, say)
  timeout         still running at the case's time limit (killed)
  harness error   the harness failed to build the input (a bug here, not in seqrl)

Base artefacts (small Pendulum datasets from `seqrl collect`, random-action datasets of CartPole-v0/v1 and
Hopper-v4, one 3-update dt_small checkpoint) are built once per run, when a case first needs them, and
copied into each case's folder, so cases never see each other's damage.

    python experiments/bad_inputs.py -j 2 --json bad_inputs.json > bad_inputs.md
    python experiments/bad_inputs.py --only lr_inf          # one case (repeat --only for more)
    python experiments/bad_inputs.py --list                 # the case names

Running as root, permission cases drop CAP_DAC_OVERRIDE with setpriv (root ignores `chmod 500`
otherwise); a full disk is simulated with a file size limit (prlimit --fsize).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent

# The test that holds each case, filled in by the code owner: {case name: "tests/test_x.py::test_y"}.
TESTS: dict[str, str] = {  # case -> the test that holds the behaviour
    'train_into_existing_run_dir': 'tests/test_bad_input.py::test_a_run_folder_is_never_trained_over',
    'train_into_default_run_dir': 'tests/test_bad_input.py::test_default_run_folders_differ_when_the_model_data_or_env_differ',
    'resume_other_dataset': 'tests/test_bad_input.py::test_resume_on_another_dataset_or_rebuilt_data_is_refused',
    'resume_other_env': 'tests/test_bad_input.py::test_resume_says_what_differs',
    'resume_other_size': 'tests/test_bad_input.py::test_resume_says_what_differs',
    'resume_other_preset': 'tests/test_bad_input.py::test_resume_says_what_differs',
    'resume_other_context': 'tests/test_bad_input.py::test_resume_says_what_differs',
    'resume_other_reward_scale': 'tests/test_bad_input.py::test_resume_says_what_differs',
    'resume_other_agent': 'tests/test_trainer.py::test_checkpoint_of_another_agent_or_corrupt',
    'resume_without_checkpoint': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'resume_past_budget': 'tests/test_bad_input.py::test_a_longer_budget_resumes',
    'collect_existing_other_set': 'tests/test_bad_input.py::test_collect_keeps_its_recipe_and_refuses_another',
    'collect_existing_other_seed': 'tests/test_bad_input.py::test_collect_keeps_its_recipe_and_refuses_another',
    'dataset_obs_out_of_bounds': 'tests/test_bad_input.py::test_finite_garbage_outside_the_space_is_refused_on_load',
    'dataset_action_out_of_bounds': 'tests/test_bad_input.py::test_actions_outside_the_space_are_refused_on_load',
    'dataset_nan_reward': 'tests/test_minari_io.py::test_bad_episodes_are_refused_and_leave_no_dataset',
    'dataset_inf_obs': 'tests/test_store.py',
    'dataset_huge_reward': 'tests/test_store.py',
    'dataset_empty_episode': 'tests/test_store.py',
    'dataset_length_mismatch': 'tests/test_store.py',
    'dataset_garbage_dir': 'tests/test_minari_io.py',
    'dataset_truncated_hdf5': 'tests/test_minari_io.py',
    'dataset_missing': 'tests/test_bad_input.py::test_missing_dataset_hint_names_only_commands_that_exist',
    'lr_inf': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'lr_nan': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'lr_negative': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'loss_nan_mid_run_resume': 'tests/test_bad_input.py::test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint',
    'loss_nan_fresh_run': 'tests/test_bad_input.py::test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint',
    'grad_clip_nan': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'weight_decay_nan': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'eps_inf': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'dataset_env_v0_vs_v1': 'tests/test_minari_io.py::test_spaces_must_match_the_env',
    'dataset_env_hopper_v4_vs_v5': 'tests/test_minari_io.py::test_spaces_must_match_the_env',
    'dataset_env_other_spaces': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'train_device_cuda': 'tests/test_trainer.py::test_cuda_asked_for_without_cuda_is_an_error',
    'agent_unknown': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'online_agent_without_env': 'tests/test_online_cli.py::test_bad_input_is_one_clear_line',
    'online_env_unknown': 'tests/test_online_cli.py::test_bad_input_is_one_clear_line',
    'eval_episodes_zero': 'tests/test_bad_input.py::test_eval_values',
    'eval_episodes_negative': 'tests/test_bad_input.py::test_eval_values',
    'eval_device_cuda': 'tests/test_bad_input.py::test_eval_on_cuda_without_a_gpu',
    'eval_device_tpu': 'tests/test_bad_input.py::test_eval_values',
    'eval_seed_negative': 'tests/test_bad_input.py::test_eval_seed_must_not_be_negative',
    'eval_text_file': 'tests/test_bad_input.py::test_a_file_that_is_not_a_checkpoint',
    'eval_empty_file': 'tests/test_bad_input.py::test_a_file_that_is_not_a_checkpoint',
    'eval_truncated_checkpoint': 'tests/test_trainer.py::test_checkpoint_of_another_agent_or_corrupt',
    'eval_missing_checkpoint': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'eval_unknown_env': 'tests/test_bad_input.py::test_a_checkpoint_never_imports_a_module',
    'eval_nan_weights': 'tests/test_bad_input.py::test_an_altered_checkpoint_is_refused',
    'eval_zero_obs_std': 'tests/test_bad_input.py::test_an_altered_checkpoint_is_refused',
    'eval_format_1': 'tests/test_trainer.py::test_checkpoint_from_before_the_one_trainer_converts',
    'run_dir_parent_is_file': 'tests/test_bad_input.py::test_an_unwritable_run_folder_fails_before_training',
    'collect_root_is_file': 'tests/test_bad_input.py::test_collect_into_an_unwritable_datasets_folder',
    'disk_full_during_checkpoint': 'tests/test_bad_input.py::test_a_full_disk_mid_run_keeps_the_last_checkpoint',
    'collect_unknown_quality': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'eval_env_id_imports_module': 'tests/test_bad_input.py::test_a_checkpoint_never_imports_a_module',
    'eval_unsafe_pickle': 'tests/test_bad_input.py::test_a_pickled_object_never_runs_and_unsafe_loading_is_never_suggested',
    'stale_tmp_then_resume': 'tests/test_bad_input.py::test_temp_files_of_killed_writers_are_removed',
    'stale_tmp_then_eval': 'tests/test_bad_input.py::test_temp_files_of_killed_writers_are_removed',
    'kill9_mid_training_then_resume': 'tests/test_trainer.py::test_killed_while_writing_a_checkpoint_leaves_the_previous_one',
    'stale_minari_tmp_then_collect': 'tests/test_minari_io.py::test_crash_during_write_keeps_the_id_free',
    'n_heads_zero': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'dropout_two': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'embed_dim_zero': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'n_layers_negative': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'betas_out_of_range': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'trainer_not_a_table': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'hidden_dim_zero': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'reward_scale_zero': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'ref_scores_nan': 'tests/test_bad_input.py::test_preset_values_are_checked_where_declared',
    'max_episode_steps_short': 'tests/test_bad_input.py::test_episodes_longer_than_the_env_limit_are_refused',
    'set_unknown_key': 'tests/test_cli.py::test_bad_input_is_one_clear_line',
    'set_without_equals': 'tests/test_presets.py::test_bad_overrides_name_the_key',
    'collect_random_cartpole': 'tests/test_bad_input.py::test_collect_random_data_of_discrete_envs',
    'collect_random_tmaze': 'tests/test_bad_input.py::test_collect_random_data_of_discrete_envs',
    'collect_random_repeat_previous': 'tests/test_bad_input.py::test_collect_random_data_of_discrete_envs',
}

VERDICTS = ("clear error", "traceback", "ok", "silently wrong", "harmful error", "crash", "timeout", "harness error")
TRAIN_STEPS = 3  # updates of the base checkpoint

DATASETS = {  # base artefact -> the Minari id it holds
    "pendulum_random": "seqrl/pendulum/random-v0",
    "pendulum_expert": "seqrl/pendulum/expert-v0",
    "cartpole_v0": "seqrl/cartpole0/random-v0",
    "cartpole_v1": "seqrl/cartpole/random-v0",
    "hopper_v4": "seqrl/hopper/random-v0",
}
RANDOM_DATASETS = {  # built in-process (random actions): env id, reference min/max score
    "cartpole_v0": ("CartPole-v0", 22.0, 200.0),
    "cartpole_v1": ("CartPole-v1", 22.0, 500.0),
    "hopper_v4": ("Hopper-v4", 20.272, 3234.3),
}


def seqrl_command() -> list[str]:
    entry = Path(sys.executable).parent / "seqrl"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "seqrl.cli"]


def base_env(minari: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="400", PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")
    if minari is not None:
        env["MINARI_DATASETS_PATH"] = str(minari)
    return env


# ------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Run:
    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def wrap(argv: list[str], drop_dac: bool = False, fsize: int | None = None) -> list[str]:
    """The seqrl command line, without root's permission override and/or with a file size limit."""
    cmd = [*seqrl_command(), *argv]
    if fsize is not None:
        cmd = ["prlimit", f"--fsize={fsize}", "--", *cmd]
    if drop_dac and os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    return cmd


def run_cli(argv: list[str], env: dict[str, str], cwd: Path, timeout: float, drop_dac: bool = False,
            fsize: int | None = None) -> Run:
    t0 = time.perf_counter()
    p = subprocess.Popen(wrap(argv, drop_dac, fsize), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=cwd, start_new_session=True, text=True, errors="replace")
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(p.pid, signal.SIGKILL)  # the session this call started: seqrl and its children
        out, err = p.communicate()
    return Run(argv, p.returncode, out, err, time.perf_counter() - t0, timed_out)


# ------------------------------------------------------------------------------------ classification
BOX = "│╭╮╰╯─┃┏┓┗┛━┡┩┠┨╇┼┬┴├┤"


def _plain(line: str) -> str:
    line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)
    return " ".join(line.strip().strip(BOX).split())


def error_message(stderr: str, stdout: str) -> str:
    """The message of a clean failure: from the `error:` line on, else the last line with text."""
    lines = [_plain(ln) for ln in (stderr or stdout).splitlines()]
    lines = [ln for ln in lines if ln and re.search(r"\w", ln)]
    for i, ln in enumerate(lines):
        if ln.startswith("error:"):
            return " ".join(lines[i:])
    return lines[-1] if lines else "(no message)"


def traceback_exception(stderr: str) -> str | None:
    """`ExcType: message` of the last traceback in stderr, or None when there is none."""
    lines = stderr.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    for ln in lines[starts[-1] + 1:]:
        if ln and not ln[0].isspace():
            return ln.strip()
    return "(traceback without an exception line)"


def trim(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclasses.dataclass
class Finding:
    bad: bool
    note: str


def global_findings(run: Run) -> list[Finding]:
    """What no command may ever do, whatever the input."""
    out = run.stdout + run.stderr
    found = []
    if "The Zen of Python" in out:
        found.append(Finding(True, "imported module `this` (printed The Zen of Python)"))
    if "PWNED-seqrl" in out:
        found.append(Finding(True, "ran code from a pickle (the crafted os.system call printed)"))
    if re.search(r"weights_only\W{0,3}(?:set to\W{0,3}|=\W{0,3})False", out):
        found.append(Finding(True, "suggests loading with weights_only=False"))
    return found


def table_row(stdout: str) -> str | None:
    """The first data row of the results table seqrl prints (policy, return, score)."""
    for ln in stdout.splitlines():
        if "│" in ln:
            cells = [c.strip() for c in ln.strip().strip("│").split("│")]
            if len(cells) >= 2 and cells[0] and cells[0] != "policy":
                return " ".join(c for c in cells if c)
    return None


# --------------------------------------------------------------------------------------- checkpoints
def _torch():
    import torch

    return torch


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def load_ckpt(path: Path) -> dict[str, Any]:
    return _torch().load(path, map_location="cpu", weights_only=True)


def ckpt_summary(path: Path) -> Finding:
    """Step and finiteness of a checkpoint's weights (bad: non-finite weights saved)."""
    torch = _torch()
    if not path.is_file():
        return Finding(False, "no checkpoint written")
    try:
        ck = load_ckpt(path)
    except Exception as e:  # noqa: BLE001
        return Finding(True, f"checkpoint unreadable afterwards ({type(e).__name__})")
    bad = [k for k, v in ck.get("policy", {}).items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    note = f"checkpoint at step {ck.get('step')}"
    if bad:
        return Finding(True, f"{note} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]})")
    return Finding(False, f"{note}, weights finite")


def leftover_tmp(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tmp")) if folder.is_dir() else []


def eval_note(run_dir: Path) -> str:
    path = run_dir / "eval.json"
    try:
        ev = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    rets = [f"{v['return_mean']:.1f}" + (f" (score {v['score_mean']:.1f})" if "score_mean" in v else "")
            for v in ev.values() if isinstance(v, dict) and "return_mean" in v]
    return f"; eval return {', '.join(rets)}" if rets else ""


# ------------------------------------------------------------------------------------ base artefacts
class Base:
    """Artefacts shared by the cases, built once, on first use, thread-safely."""

    def __init__(self, root: Path, timeout: float = 300):
        self.root, self.timeout = root, timeout
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._built: dict[str, Any] = {}

    def get(self, key: str) -> Path:
        with self._lock:
            lock = self._locks[key]
        with lock:
            if key not in self._built:
                try:
                    self._built[key] = self._build(key)
                except Exception as e:  # noqa: BLE001  remembered: every case that needs it fails the same way
                    self._built[key] = e
            got = self._built[key]
        if isinstance(got, Exception):
            raise RuntimeError(f"base artefact {key!r} could not be built: {got}")
        return got

    def _check(self, run: Run, what: str) -> None:
        if run.rc != 0:
            raise RuntimeError(f"{what} failed (rc {run.rc}): {trim(run.stderr[-2000:], 400)}")

    def _build(self, key: str) -> Path:
        out = self.root / key
        if key in ("pendulum_random", "pendulum_expert"):
            quality = key.split("_")[1]
            run = run_cli(["collect", "--env", "pendulum", "--quality", quality, "--set", "collect.n_steps=1000",
                           "--set", "collect.n_envs=5", "--workdir", str(out / "work")], base_env(out / "minari"),
                          self.root, self.timeout)
            self._check(run, f"seqrl collect --env pendulum --quality {quality}")
            return out / "minari"
        if key in RANDOM_DATASETS:
            run = subprocess.run([sys.executable, __file__, "--_build", key, str(out / "minari")],
                                 capture_output=True, text=True, env=base_env(out / "minari"), timeout=self.timeout)
            self._check(Run([], run.returncode, run.stdout, run.stderr, 0, False), f"random dataset {key}")
            return out / "minari"
        if key == "dt_run":  # a dt_small checkpoint after TRAIN_STEPS updates on the random Pendulum data
            minari = self.get("pendulum_random")
            run = run_cli(["train", "--agent", "dt_small", "--dataset", DATASETS["pendulum_random"], "--set",
                           f"trainer.steps={TRAIN_STEPS}", "--set", "trainer.eval_episodes=1", "--run-dir",
                           str(out)], base_env(minari), self.root, self.timeout)
            self._check(run, "seqrl train --agent dt_small")
            return out
        raise KeyError(key)


def build_random_dataset(key: str, root: str) -> None:
    """(--_build) A Minari dataset of uniformly random actions on RANDOM_DATASETS[key]'s env."""
    import gymnasium as gym
    import numpy as np

    os.environ["MINARI_DATASETS_PATH"] = root
    from seqrl.data.collect import rollout
    from seqrl.data.minari_io import write_dataset

    env_id, lo, hi = RANDOM_DATASETS[key]
    probe = gym.make(env_id)
    space = probe.action_space
    probe.close()
    rng = np.random.default_rng(0)
    if isinstance(space, gym.spaces.Discrete):
        policy = lambda obs: rng.integers(0, space.n, len(obs))  # noqa: E731
    else:
        policy = lambda obs: rng.uniform(space.low, space.high, (len(obs), *space.shape)).astype(np.float32)  # noqa: E731
    episodes = rollout(policy, env_id, 1000, 4, seed=0)
    write_dataset(DATASETS[key], episodes, env_id, lo, hi, "random", f"bad_inputs.py: random actions on {env_id}")


# ----------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    name: str
    group: str
    what: str
    prepare: Callable[["Ctx"], list[str]]
    issue: str = ""  # the item of issue 28 this case comes from ("" for our own)
    refuse: bool = True  # exit 0 is itself wrong
    timeout: float = 120


CASES: list[Case] = []


def case(name: str, group: str, what: str, issue: str = "", refuse: bool = True, timeout: float = 120):
    def deco(fn: Callable[["Ctx"], list[str]]) -> Callable:
        assert name not in {c.name for c in CASES}, name
        CASES.append(Case(name, group, what, fn, issue, refuse, timeout))
        return fn

    return deco


class Ctx:
    """One case's folder, the command's environment and what to check after the command."""

    def __init__(self, base: Base, folder: Path):
        self.base, self.dir = base, folder
        self.minari = folder / "minari"
        self.minari.mkdir(parents=True)
        self.env = base_env(self.minari)
        self.cwd = folder
        self.drop_dac = False
        self.fsize: int | None = None
        self.check: Callable[[Run], Finding | None] | None = None  # damage the run did, or a note on it
        self.default_note: Callable[[Run], Finding | None] | None = None
        self.notes: list[str] = []  # what the preparation saw (e.g. where a kill landed)
        self._copied: set[str] = set()

    # inputs ---------------------------------------------------------------------------------------
    def dataset(self, key: str = "pendulum_random") -> str:
        """A base dataset, copied into this case's Minari root once (later calls keep the case's edits)."""
        if key not in self._copied:
            shutil.copytree(self.base.get(key), self.minari, dirs_exist_ok=True)
            self._copied.add(key)
        return DATASETS[key]

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.minari / dataset_id / "data"

    def run_copy(self, name: str = "run") -> Path:
        dst = self.dir / name
        shutil.copytree(self.base.get("dt_run"), dst)
        return dst

    def checkpoint(self) -> Path:
        return self.run_copy() / "checkpoint.pt"

    def crafted(self, edit: Callable[[dict], Any], name: str = "crafted.pt") -> Path:
        """The base checkpoint, loaded safely, edited and saved again."""
        ck = load_ckpt(self.base.get("dt_run") / "checkpoint.pt")
        edit(ck)
        path = self.dir / name
        _torch().save(ck, path)
        return path

    def unwritable(self, name: str = "ro") -> Path:
        path = self.dir / name
        path.mkdir()
        path.chmod(0o500)
        self.drop_dac = True
        return path

    # commands -------------------------------------------------------------------------------------
    def train(self, *extra: str, run: Path | None = None, key: str | None = "pendulum_random",
              agent: str = "dt_small") -> list[str]:
        """`seqrl train` at a tiny budget (and a note on its checkpoint when it exits 0)."""
        run = self.dir / "run" if run is None else run
        argv = ["train", "--agent", agent]
        if key is not None:
            argv += ["--dataset", self.dataset(key)]
        argv += ["--run-dir", str(run), "--set", f"trainer.steps={TRAIN_STEPS}", "--set", "trainer.eval_episodes=1",
                 *extra]
        self.default_note = lambda r: (lambda f: Finding(f.bad, f.note + eval_note(run)))(
            ckpt_summary(run / "checkpoint.pt"))
        return argv

    def online(self, *extra: str, env: str = "tmaze") -> list[str]:
        """`seqrl train --agent gtrxl` at a tiny budget: 4 envs x 32 steps, one collection."""
        run = self.dir / "run"
        self.default_note = lambda r: ckpt_summary(run / "checkpoint.pt")
        return ["train", "--agent", "gtrxl", "--env", env, "--run-dir", str(run), "--set", "source.env_steps=128",
                "--set", "source.n_envs=4", "--set", "source.n_steps=32", "--set", "trainer.eval_episodes=1", *extra]

    def eval(self, ckpt: Path, *extra: str) -> list[str]:
        self.default_note = lambda r: Finding(False, f"prints {table_row(r.stdout) or 'no table'}")
        return ["eval", str(ckpt), "--episodes", "1", *extra]

    def popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(wrap(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                                cwd=self.cwd, start_new_session=True)


def unchanged(path: Path, before: str | None, what: str = "checkpoint") -> Finding:
    after = sha(path)
    if after == before:
        return Finding(False, f"the first {what} is untouched")
    step = ""
    if path.is_file() and path.suffix == ".pt":
        try:
            step = f" (now at step {load_ckpt(path).get('step')})"
        except Exception:  # noqa: BLE001
            step = " (now unreadable)"
    return Finding(True, f"overwrote the first run's {what}{step}" if after else f"deleted the first run's {what}")


def h5_edit(path: Path, fn: Callable[[Any], None]) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        fn(f)


def replace(group: Any, name: str, data: Any) -> None:
    del group[name]
    group.create_dataset(name, data=data)


def meta_edit(data_dir: Path, fn: Callable[[dict], None]) -> None:
    path = data_dir / "metadata.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


# ============================================================================== 1. existing run dir
@case("train_into_existing_run_dir", "run dir", "`seqrl train` again with the same --run-dir, no --resume",
      issue="1", refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    before = sha(run / "checkpoint.pt")
    c.check = lambda r: unchanged(run / "checkpoint.pt", before)
    return c.train("--set", "trainer.steps=5", run=run)


@case("train_into_default_run_dir", "run dir", "`seqrl train` twice with the same args (default runs/AGENT/DATASET/seedN)",
      issue="1", refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.dir / "runs" / "dt_small" / DATASETS["pendulum_random"].replace("/", "_") / "seed0"
    shutil.copytree(c.base.get("dt_run"), run)
    before = sha(run / "checkpoint.pt")
    argv = c.train("--set", "trainer.steps=5")
    i = argv.index("--run-dir")
    del argv[i: i + 2]
    c.check = lambda r: unchanged(run / "checkpoint.pt", before)
    return argv


# ================================================================================ 2. resume mismatch
def _resume_check(c: Ctx, run: Path) -> Callable[[Run], Finding]:
    ck = load_ckpt(run / "checkpoint.pt")
    mean0 = [round(float(x), 3) for x in ck["spec"]["obs_mean"]]
    before = sha(run / "checkpoint.pt")

    def check(r: Run) -> Finding:
        if sha(run / "checkpoint.pt") == before:
            return Finding(False, "checkpoint untouched")
        new = load_ckpt(run / "checkpoint.pt")
        mean1 = new["spec"]["obs_mean"]
        mean1 = [round(float(x), 3) for x in mean1] if not isinstance(mean1, dict) else mean1
        renorm = f"; obs_mean {mean0} -> {mean1}" if mean1 != mean0 else ""
        return Finding(True, f"resumed step {ck['step']} -> {new['step']}{renorm}, "
                             f"dataset {ck['spec']['meta'].get('dataset_id')} -> {new['spec']['meta'].get('dataset_id')}")

    return check


@case("resume_other_dataset", "resume", "--resume with another dataset of the same env (pendulum expert data)",
      issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.dataset("pendulum_random")
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "trainer.steps=5", run=run, key="pendulum_expert")


@case("resume_other_env", "resume", "--resume a Pendulum checkpoint on a CartPole-v1 dataset (--env cartpole)",
      issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--env", "cartpole", "--set", "trainer.steps=5", run=run, key="cartpole_v1")


@case("resume_other_size", "resume", "--resume with another model size (--set policy.embed_dim=32)", issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "policy.embed_dim=32", "--set", "trainer.steps=5", run=run)


@case("resume_other_preset", "resume", "--resume a dt_small checkpoint with --agent dt (the paper-sized preset)",
      issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "trainer.steps=5", run=run, agent="dt")


@case("resume_other_context", "resume", "--resume with another context length (--set policy.context_len=3)",
      issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "policy.context_len=3", "--set", "trainer.steps=5", run=run)


@case("resume_other_reward_scale", "resume", "--resume with another env setting (--set env.reward_scale=0.01)",
      issue="2")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "env.reward_scale=0.01", "--set", "trainer.steps=5", run=run)


@case("resume_other_agent", "resume", "--resume a dt checkpoint with --agent bc_small")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _resume_check(c, run)
    return c.train("--resume", "--set", "trainer.steps=5", run=run, agent="bc_small")


@case("resume_without_checkpoint", "resume", "--resume into an empty run dir")
def _(c: Ctx) -> list[str]:
    (c.dir / "run").mkdir()
    return c.train("--resume")


@case("resume_past_budget", "resume", "--resume with trainer.steps below the checkpoint's step (3 -> 2)",
      refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = lambda r: (lambda s: Finding(s.bad or "step 3" not in s.note, s.note))(ckpt_summary(run / "checkpoint.pt"))
    return c.train("--resume", "--set", "trainer.steps=2", run=run)


# ============================================================================ 3. collect over a dataset
def _collect_check(c: Ctx, dataset_id: str, want_steps: int | None) -> Callable[[Run], Finding]:
    def check(r: Run) -> Finding:
        meta = json.loads((c.dataset_dir(dataset_id) / "metadata.json").read_text())
        steps = meta.get("total_steps")
        said = re.search(r"differ|exists|already|other settings", r.stdout + r.stderr, re.I)
        kept = f"kept the existing {steps}-step dataset made with other settings"
        if want_steps is not None and steps == want_steps:
            return Finding(False, f"rebuilt the dataset ({steps} steps)")
        return Finding(not said, kept + (" and said so" if said else ", printed only its path"))

    return check


@case("collect_existing_other_set", "collect", "`seqrl collect` when the dataset exists, made with other --set values "
      "(collect.n_steps 1000 -> 3000)", issue="3")
def _(c: Ctx) -> list[str]:
    ds = c.dataset("pendulum_random")
    c.check = _collect_check(c, ds, 3000)
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=3000", "--set",
            "collect.n_envs=5"]


@case("collect_existing_other_seed", "collect", "`seqrl collect` when the dataset exists, made with another --seed",
      issue="3")
def _(c: Ctx) -> list[str]:
    ds = c.dataset("pendulum_random")
    c.check = _collect_check(c, ds, None)
    return ["collect", "--env", "pendulum", "--quality", "random", "--seed", "7", "--set", "collect.n_steps=1000",
            "--set", "collect.n_envs=5"]


# ================================================================================ 4. finite garbage
@case("dataset_obs_out_of_bounds", "dataset", "Pendulum dataset with bytes flipped so an observation in a Box "
      "bounded to [-1, 1] reads -3e38", issue="4")
def _(c: Ctx) -> list[str]:
    import h5py
    import numpy as np

    ds = c.dataset()
    path = c.dataset_dir(ds) / "main_data.hdf5"
    row = 5  # cos(theta) of step 5 of episode 0
    with h5py.File(path, "r") as f:
        d = f["episode_0/observations"]
        offset, itemsize, ncol = d.id.get_offset(), d.dtype.itemsize, d.shape[1]
        if offset is not None:  # contiguous
            offset += row * ncol * itemsize
        elif d.chunks is not None and d.compression is None and d.dtype == np.dtype("<f4"):
            r = d.chunks[0]
            info = d.id.get_chunk_info_by_coord((row // r * r, 0))
            if info.filter_mask == 0 and d.chunks[1] == ncol:
                offset = info.byte_offset + (row % r) * ncol * itemsize
    if offset is None:  # compressed: write through h5py instead
        h5_edit(path, lambda f: f["episode_0/observations"].__setitem__((row, 0), -3e38))
        c.notes.append("written through h5py")
    else:  # the float32's four bytes, in place in the file, behind HDF5's back
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(np.array([-3e38], "<f4").tobytes())
        with h5py.File(path, "r") as f:
            assert f["episode_0/observations"][row, 0] == np.float32(-3e38), "the flip missed"
    return c.train()


@case("dataset_action_out_of_bounds", "dataset", "Pendulum dataset with an action of 50 (the Box is [-2, 2])")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()

    def edit(f):
        a = f["episode_0/actions"][()]
        a[3, 0] = 50.0
        f["episode_0/actions"][...] = a

    h5_edit(c.dataset_dir(ds) / "main_data.hdf5", edit)
    return c.train()


@case("dataset_nan_reward", "dataset", "Pendulum dataset with a NaN reward")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    h5_edit(c.dataset_dir(ds) / "main_data.hdf5", lambda f: f["episode_1/rewards"].__setitem__(7, float("nan")))
    return c.train()


@case("dataset_inf_obs", "dataset", "Pendulum dataset with +inf in an observation")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    h5_edit(c.dataset_dir(ds) / "main_data.hdf5", lambda f: f["episode_2/observations"].__setitem__((4, 2), float("inf")))
    return c.train()


@case("dataset_huge_reward", "dataset", "Pendulum dataset with a finite reward of -1e300 (float64, beyond float32)")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    h5_edit(c.dataset_dir(ds) / "main_data.hdf5", lambda f: f["episode_1/rewards"].__setitem__(7, -1e300))
    return c.train()


@case("dataset_empty_episode", "dataset", "Pendulum dataset with an episode of 0 steps (1 observation, no actions)")
def _(c: Ctx) -> list[str]:
    import numpy as np

    ds = c.dataset()

    def edit(f):
        g = f["episode_1"]
        replace(g, "observations", g["observations"][:1])
        for k, dt in (("actions", np.float32), ("rewards", np.float64), ("terminations", bool), ("truncations", bool)):
            shape = (0, *g[k].shape[1:])
            replace(g, k, np.zeros(shape, dt))
        g.attrs["total_steps"] = 0

    h5_edit(c.dataset_dir(ds) / "main_data.hdf5", edit)
    meta_edit(c.dataset_dir(ds), lambda m: m.__setitem__("total_steps", m["total_steps"] - 200))
    return c.train()


@case("dataset_length_mismatch", "dataset", "Pendulum dataset whose episode has 150 rewards for 200 actions")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    h5_edit(c.dataset_dir(ds) / "main_data.hdf5",
            lambda f: replace(f["episode_0"], "rewards", f["episode_0/rewards"][:150]))
    return c.train()


@case("dataset_garbage_dir", "dataset", "a dataset folder holding garbage (random bytes as main_data.hdf5 and "
      "metadata.json)")
def _(c: Ctx) -> list[str]:
    d = c.minari / "seqrl" / "pendulum" / "garbage-v0" / "data"
    d.mkdir(parents=True)
    (d / "main_data.hdf5").write_bytes(os.urandom(4096))
    (d / "metadata.json").write_bytes(os.urandom(512))
    c.dataset()  # the namespace files of a real one beside it
    argv = c.train()
    argv[argv.index("--dataset") + 1] = "seqrl/pendulum/garbage-v0"
    return argv


@case("dataset_truncated_hdf5", "dataset", "Pendulum dataset whose HDF5 file is cut to half its length")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    path = c.dataset_dir(ds) / "main_data.hdf5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return c.train()


@case("dataset_missing", "dataset", "--dataset an id that is not there (seqrl/pendulum/nosuch-v0)")
def _(c: Ctx) -> list[str]:
    argv = c.train()
    argv[argv.index("--dataset") + 1] = "seqrl/pendulum/nosuch-v0"
    return argv


@case("dataset_id_absolute_path", "dataset", "--dataset an absolute path outside the Minari root (with --env "
      "pendulum)", refuse=False)
def _(c: Ctx) -> list[str]:
    ds = c.dataset()
    elsewhere = c.dir / "elsewhere" / "pendulum-v0"
    shutil.copytree(c.minari / ds, elsewhere)
    argv = c.train("--env", "pendulum")
    argv[argv.index("--dataset") + 1] = str(elsewhere)
    return argv


# ============================================================================ 5. non-finite training
@case("lr_inf", "preset values", "--set trainer.lr=inf", issue="5")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.lr=inf")


@case("lr_nan", "preset values", "--set trainer.lr=nan", issue="5")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.lr=nan")


@case("lr_negative", "preset values", "--set trainer.lr=-1", issue="5")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.lr=-1")


def _nan_check(run: Path, before: str | None) -> Callable[[Run], Finding]:
    def check(r: Run) -> Finding:
        s = ckpt_summary(run / "checkpoint.pt")
        if s.bad:
            return s
        if before is not None and sha(run / "checkpoint.pt") != before:
            return Finding(r.rc == 0, f"overwrote the good checkpoint: {s.note}")
        return Finding(False, f"kept the last good checkpoint ({s.note})")

    return check


@case("loss_nan_mid_run_resume", "training", "the loss turns non-finite mid-run: --resume with trainer.lr=1e30, "
      "a checkpoint every update", issue="5")
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    c.check = _nan_check(run, sha(run / "checkpoint.pt"))
    return c.train("--resume", "--set", "trainer.lr=1e30", "--set", "trainer.steps=10", "--set",
                   "trainer.checkpoint_every=1", run=run)


@case("loss_nan_fresh_run", "training", "the loss turns non-finite in a fresh run (trainer.lr=1e30)", issue="5")
def _(c: Ctx) -> list[str]:
    run = c.dir / "run"
    c.check = _nan_check(run, None)
    return c.train("--set", "trainer.lr=1e30", "--set", "trainer.steps=10", run=run)


@case("grad_clip_nan", "preset values", "--set trainer.grad_clip=nan")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.grad_clip=nan")


@case("weight_decay_nan", "preset values", "--set trainer.weight_decay=nan")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.weight_decay=nan")


@case("eps_inf", "preset values", "--set trainer.eps=inf (every update is zero)")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "trainer.eps=inf")


# ================================================================================= 6. dataset vs env
@case("dataset_env_v0_vs_v1", "dataset vs env", "a dataset recorded on CartPole-v0 used with --env cartpole "
      "(CartPole-v1: same spaces)", issue="6")
def _(c: Ctx) -> list[str]:
    return c.train("--env", "cartpole", key="cartpole_v0")


@case("dataset_env_hopper_v4_vs_v5", "dataset vs env", "seqrl/hopper/random-v0 recorded on Hopper-v4, trained with "
      "--env hopper (Hopper-v5: same spaces)", issue="6")
def _(c: Ctx) -> list[str]:
    return c.train("--env", "hopper", key="hopper_v4")


@case("dataset_env_other_spaces", "dataset vs env", "the Pendulum dataset with --env cartpole (other spaces)")
def _(c: Ctx) -> list[str]:
    return c.train("--env", "cartpole")


# ================================================================================ 7. preset values
for _name, _set, _agent in [
    ("n_heads_zero", "policy.n_heads=0", "dt_small"),
    ("dropout_two", "policy.dropout=2.0", "dt_small"),
    ("dropout_negative", "policy.dropout=-0.5", "dt_small"),
    ("embed_dim_zero", "policy.embed_dim=0", "dt_small"),
    ("n_layers_negative", "policy.n_layers=-1", "dt_small"),
    ("context_len_zero", "policy.context_len=0", "dt_small"),
    ("betas_out_of_range", "trainer.betas=[2.0,0.9]", "dt_small"),
    ("trainer_not_a_table", "trainer=5", "dt_small"),
    ("hidden_dim_zero", "policy.hidden_dim=0", "bc_small"),
    ("bc_n_layers_zero", "policy.n_layers=0", "bc_small"),
    ("reward_scale_zero", "env.reward_scale=0", "dt_small"),
    ("reward_scale_nan", "env.reward_scale=nan", "dt_small"),
    ("max_episode_steps_short", "env.max_episode_steps=5", "dt_small"),
    ("ref_scores_nan", "env.ref_min_score=nan", "dt_small"),
    ("set_unknown_key", "policy.foo=1", "dt_small"),
    ("set_wrong_type", "trainer.steps=many", "dt_small"),
    ("set_float_for_int", "trainer.steps=1.5", "dt_small"),
    ("set_empty_value", "trainer.steps=", "dt_small"),
    ("batch_size_zero", "source.batch_size=0", "dt_small"),
    ("device_tpu_train", "trainer.device=tpu", "dt_small"),
    ("set_without_equals", "trainer.steps", "dt_small"),
]:
    def _make(s: str = _set, a: str = _agent) -> Callable[[Ctx], list[str]]:
        return lambda c: c.train("--set", s, agent=a)

    case(_name, "preset values", f"{'--agent ' + _agent + ' ' if _agent != 'dt_small' else ''}--set {_set}",
         issue="7" if _name in ("n_heads_zero", "dropout_two", "embed_dim_zero", "betas_out_of_range",
                                "trainer_not_a_table", "n_layers_negative", "hidden_dim_zero", "reward_scale_zero",
                                "set_unknown_key", "set_wrong_type") else "")(_make())


@case("train_device_cuda", "preset values", "seqrl train --device cuda on a machine without CUDA", issue="8")
def _(c: Ctx) -> list[str]:
    return c.train("--device", "cuda")


@case("preset_toml_syntax_error", "presets", "--agent a TOML file with a syntax error")
def _(c: Ctx) -> list[str]:
    path = c.dir / "broken.toml"
    path.write_text('agent = "dt"\n[policy\nembed_dim = 64\n')
    return c.train(agent=str(path))


@case("preset_toml_without_agent", "presets", "--agent a TOML file without the `agent` key")
def _(c: Ctx) -> list[str]:
    path = c.dir / "noagent.toml"
    path.write_text('[policy]\nembed_dim = 64\n[source]\nkind = "dataset"\n')
    return c.train(agent=str(path))


@case("agent_unknown", "presets", "--agent nosuch")
def _(c: Ctx) -> list[str]:
    return c.train(agent="nosuch")


@case("online_agent_without_env", "presets", "--agent gtrxl with --dataset and no --env")
def _(c: Ctx) -> list[str]:
    return c.train(agent="gtrxl")


@case("online_env_unknown", "presets", "--agent gtrxl --env NoSuchEnv-v0")
def _(c: Ctx) -> list[str]:
    return c.online(env="NoSuchEnv-v0")


@case("online_env_kwargs_negative", "presets", "--agent gtrxl --env tmaze --set env.env_kwargs.length=-3")
def _(c: Ctx) -> list[str]:
    return c.online("--set", "env.env_kwargs.length=-3")


@case("online_env_kwargs_unknown", "presets", "--agent gtrxl --env tmaze --set env.env_kwargs.colour=1")
def _(c: Ctx) -> list[str]:
    return c.online("--set", "env.env_kwargs.colour=1")


# ======================================================================================= 8. eval
@case("eval_episodes_zero", "eval", "seqrl eval --episodes 0", issue="8")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--episodes", "0")


@case("eval_episodes_negative", "eval", "seqrl eval --episodes -3")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--episodes", "-3")


@case("eval_device_cuda", "eval", "seqrl eval --device cuda (no GPU here)", issue="8")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--device", "cuda")


@case("eval_device_tpu", "eval", "seqrl eval --device tpu", issue="8")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--device", "tpu")


@case("eval_seed_not_int", "eval", "seqrl eval --seed abc")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--seed", "abc")


@case("eval_seed_negative", "eval", "seqrl eval --seed -5 (env i is seeded seed+i)")
def _(c: Ctx) -> list[str]:
    return c.eval(c.checkpoint(), "--seed", "-5")


@case("eval_text_file", "checkpoint", "a text file as the checkpoint", issue="8")
def _(c: Ctx) -> list[str]:
    path = c.dir / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n")
    return c.eval(path)


@case("eval_empty_file", "checkpoint", "an empty file as the checkpoint", issue="8")
def _(c: Ctx) -> list[str]:
    path = c.dir / "empty.pt"
    path.write_bytes(b"")
    return c.eval(path)


@case("eval_truncated_checkpoint", "checkpoint", "a checkpoint cut to 60% of its length", issue="8")
def _(c: Ctx) -> list[str]:
    path = c.checkpoint()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return c.eval(path)


@case("eval_directory", "checkpoint", "a directory as the checkpoint")
def _(c: Ctx) -> list[str]:
    return c.eval(c.run_copy())


@case("eval_missing_checkpoint", "checkpoint", "a checkpoint path that does not exist")
def _(c: Ctx) -> list[str]:
    return c.eval(c.dir / "nope" / "checkpoint.pt")


@case("eval_unknown_env", "checkpoint", "a checkpoint naming an unknown env (NoSuchEnv-v0)", issue="8")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck["spec"]["env"].__setitem__("env_id", "NoSuchEnv-v0")))


@case("eval_other_spaces", "checkpoint", "a Pendulum checkpoint whose env is changed to CartPole-v1 (other spaces)")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck["spec"]["env"].__setitem__("env_id", "CartPole-v1")))


@case("eval_nan_weights", "checkpoint", "a checkpoint with NaN in its weights")
def _(c: Ctx) -> list[str]:
    def edit(ck):
        k = next(k for k, v in ck["policy"].items() if v.is_floating_point() and v.dim() >= 2)
        ck["policy"][k].fill_(float("nan"))

    return c.eval(c.crafted(edit))


@case("eval_zero_obs_std", "checkpoint", "a checkpoint whose observation std is 0 (seqrl floors it at 1e-6; "
      "normalisation divides by it)")
def _(c: Ctx) -> list[str]:
    def edit(ck):
        ck["spec"]["obs_std"] = [0.0 for _ in ck["spec"]["obs_std"]]
        for k, v in ck["policy"].items():
            if k.endswith("obs_std"):  # the tokenizer's buffer, which load_state_dict restores
                v.zero_()

    return c.eval(c.crafted(edit))


@case("eval_wrong_weight_shape", "checkpoint", "a checkpoint whose weight tensor has the wrong shape")
def _(c: Ctx) -> list[str]:
    def edit(ck):
        k = next(k for k, v in ck["policy"].items() if v.is_floating_point() and v.dim() >= 2)
        ck["policy"][k] = ck["policy"][k][:, :-1].clone()

    return c.eval(c.crafted(edit))


@case("eval_missing_key", "checkpoint", "a checkpoint without its `policy` entry")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck.pop("policy")))


@case("eval_bad_preset_in_checkpoint", "checkpoint", "a checkpoint whose stored preset has trainer.lr = NaN")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck["preset"]["trainer"].__setitem__("lr", float("nan"))))


@case("eval_format_1", "checkpoint", "a checkpoint marked format 1 (before the one trainer)")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck.__setitem__("format", 1)))


@case("eval_future_format", "checkpoint", "a checkpoint marked format 3 (a newer seqrl)")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck.__setitem__("format", 3)))


@case("convert_format_2", "checkpoint", "seqrl convert on a checkpoint that is already format 2")
def _(c: Ctx) -> list[str]:
    return ["convert", str(c.checkpoint()), str(c.dir / "new.pt")]


# ===================================================================================== 9. disk
@case("run_dir_unwritable", "disk", "--run-dir an existing folder with mode 500", issue="9")
def _(c: Ctx) -> list[str]:
    return c.train(run=c.unwritable())


@case("out_unwritable_parent", "disk", "--out a new folder inside a folder with mode 500", issue="9")
def _(c: Ctx) -> list[str]:
    argv = c.train(run=c.unwritable() / "run")
    argv[argv.index("--run-dir")] = "--out"
    return argv


@case("run_dir_is_file", "disk", "--run-dir a path where a file exists", issue="9")
def _(c: Ctx) -> list[str]:
    path = c.dir / "run"
    path.write_text("a file\n")
    return c.train(run=path)


@case("run_dir_parent_is_file", "disk", "--run-dir below a path that is a file (file/run)", issue="9")
def _(c: Ctx) -> list[str]:
    path = c.dir / "file"
    path.write_text("a file\n")
    return c.train(run=path / "run")


@case("collect_root_unwritable", "disk", "seqrl collect with MINARI_DATASETS_PATH a folder with mode 500", issue="9")
def _(c: Ctx) -> list[str]:
    c.env["MINARI_DATASETS_PATH"] = str(c.unwritable("ro_minari"))
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=1000"]


@case("collect_root_is_file", "disk", "seqrl collect with MINARI_DATASETS_PATH a file", issue="9")
def _(c: Ctx) -> list[str]:
    path = c.dir / "minari_file"
    path.write_text("a file\n")
    c.env["MINARI_DATASETS_PATH"] = str(path)
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=1000"]


@case("convert_into_unwritable", "disk", "seqrl convert a format-1 checkpoint into a folder with mode 500", issue="9")
def _(c: Ctx) -> list[str]:
    src = c.dir / "old.pt"
    shutil.copy(REPO / "tests" / "data" / "dt_format1.pt", src)
    return ["convert", str(src), str(c.unwritable() / "new.pt")]


@case("disk_full_during_checkpoint", "disk", "disk full while saving: --resume under a 1 MB file size limit "
      "(the checkpoint is ~2 MB)", refuse=True)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    before = sha(run / "checkpoint.pt")
    c.fsize = 1_000_000

    def check(r: Run) -> Finding:
        tmp = leftover_tmp(run)
        if tmp:
            return Finding(True, f"left {tmp}")
        return unchanged(run / "checkpoint.pt", before)

    c.check = check
    return c.train("--resume", "--set", "trainer.steps=5", run=run)


@case("disk_full_during_collect", "disk", "disk full while writing a dataset: seqrl collect under a 100 kB file "
      "size limit")
def _(c: Ctx) -> list[str]:
    c.fsize = 100_000

    def check(r: Run) -> Finding:
        left = [p.name for p in c.minari.glob(".seqrl-tmp-*")]
        half = (c.minari / "seqrl" / "pendulum" / "random-v0").exists()
        if left or (half and r.rc != 0):
            return Finding(True, f"left {left or 'a half-written dataset'}")
        return Finding(False, "nothing half-written left")

    c.check = check
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=3000"]


# ============================================================================ 10. collect unsupported
for _env in ("cartpole", "tmaze", "repeat_previous"):
    def _make_collect(env: str = _env) -> Callable[[Ctx], list[str]]:
        def prepare(c: Ctx) -> list[str]:
            def check(r: Run) -> Finding:
                made = list((c.minari / "seqrl").glob(f"{env}/random-v0/data/metadata.json"))
                return Finding(not made, "made the dataset" if made else "exit 0 but no dataset")

            c.check = check
            return ["collect", "--env", env, "--quality", "random", "--set", "collect.n_steps=2000"]

        return prepare

    case(f"collect_random_{_env}", "collect", f"seqrl collect --env {_env} --quality random "
         f"(collect.n_steps=2000)", issue="10", refuse=False, timeout=180)(_make_collect())


@case("collect_unknown_quality", "collect", "seqrl collect --env pendulum --quality superb", issue="10")
def _(c: Ctx) -> list[str]:
    return ["collect", "--env", "pendulum", "--quality", "superb"]


@case("collect_unknown_env", "collect", "seqrl collect --env nosuch --quality random", issue="10")
def _(c: Ctx) -> list[str]:
    return ["collect", "--env", "nosuch", "--quality", "random"]


@case("collect_n_envs_zero", "collect", "seqrl collect --set collect.n_envs=0")
def _(c: Ctx) -> list[str]:
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_envs=0"]


@case("collect_medium_epsilon_nan", "collect", "seqrl collect --quality medium --set collect.medium_epsilon=nan")
def _(c: Ctx) -> list[str]:
    return ["collect", "--env", "pendulum", "--quality", "medium", "--set", "collect.medium_epsilon=nan",
            "--set", "collect.n_steps=1000"]


# ========================================================================= 11. module named by an id
@case("eval_env_id_imports_module", "checkpoint", "a checkpoint whose env id is `this:Pendulum-v1` "
      "(gym.make would import module `this`)", issue="11", refuse=True)
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck["spec"]["env"].__setitem__("env_id", "this:Pendulum-v1")))


@case("dataset_env_id_imports_module", "dataset", "a dataset whose env_spec id is `this:Pendulum-v1`, trained with "
      "--env pendulum", issue="11")
def _(c: Ctx) -> list[str]:
    ds = c.dataset()

    def edit(m):
        for k in ("env_spec", "eval_env_spec"):
            spec = json.loads(m[k])
            spec["id"] = "this:Pendulum-v1"
            m[k] = json.dumps(spec)

    meta_edit(c.dataset_dir(ds), edit)
    return c.train("--env", "pendulum")


# ============================================================================ 12. unsafe pickle
class _Evil:
    """Unpickling this runs `os.system`; a weights_only load refuses it."""

    def __reduce__(self):
        return os.system, ("echo PWNED-seqrl",)


@case("eval_unsafe_pickle", "checkpoint", "a checkpoint holding a pickled os.system call (a non-allowlisted global)",
      issue="12")
def _(c: Ctx) -> list[str]:
    return c.eval(c.crafted(lambda ck: ck.__setitem__("extra", _Evil())))


@case("convert_unsafe_pickle", "checkpoint", "seqrl convert on a pickle holding an os.system call", issue="12")
def _(c: Ctx) -> list[str]:
    path = c.dir / "old.pt"
    _torch().save({"format": 1, "agent": "dt", "extra": _Evil()}, path)
    return ["convert", str(path), str(c.dir / "new.pt")]


# ================================================================================= 13. kills
def _tmp_check(folder: Path, want_step: int | None = None) -> Callable[[Run], Finding]:
    def check(r: Run) -> Finding:
        left = leftover_tmp(folder)
        s = ckpt_summary(folder / "checkpoint.pt")
        if left:
            return Finding(True, f"left {left}; {s.note}")
        if want_step is not None and f"step {want_step}," not in s.note:
            return Finding(True, f"no .tmp left, but {s.note} (expected step {want_step})")
        return Finding(s.bad, f"no .tmp left; {s.note}")

    return check


def killed_save(c: Ctx, path: Path) -> list[str]:
    """Run seqrl.io.atomic_write on `path` in a process that SIGKILLs itself halfway through writing: the temp
    file it leaves has whatever name the current code gives it. Returns the temp files left."""
    before = set(leftover_tmp(path.parent))
    subprocess.run([sys.executable, __file__, "--_killed_save", str(path)], env=c.env, cwd=c.cwd, timeout=60,
                   capture_output=True)
    left = sorted(set(leftover_tmp(path.parent)) - before)
    if not left:
        raise RuntimeError("the killed save left no *.tmp file: the write path changed, see seqrl/io.py")
    c.notes.append(f"the killed save left {left[0]}")
    return left


def _killed_save_here(path: str) -> None:
    """(--_killed_save) Write `path` through seqrl's atomic_write and die by SIGKILL halfway through."""
    from seqrl.io import atomic_write

    def write(f):
        f.write(os.urandom(100_000))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(path, write)


@case("stale_tmp_then_resume", "kill", "kill -9 during a checkpoint save (seqrl.io.atomic_write SIGKILLed mid-write) "
      "left a *.tmp beside the checkpoint, then --resume", issue="13", refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    killed_save(c, run / "checkpoint.pt")
    c.check = _tmp_check(run, 5)
    return c.train("--resume", "--set", "trainer.steps=5", run=run)


@case("stale_tmp_then_eval", "kill", "kill -9 during a checkpoint save left a *.tmp beside the checkpoint, then "
      "seqrl eval", issue="13", refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    killed_save(c, run / "checkpoint.pt")
    c.check = _tmp_check(run)
    return c.eval(run / "checkpoint.pt")


@case("stale_tmp_foreign_name", "kill", "a file `.checkpoint.pt.notes.tmp` that seqrl did not write, beside the "
      "checkpoint, then --resume (must be left alone)", refuse=False)
def _(c: Ctx) -> list[str]:
    run = c.run_copy()
    mine = run / ".checkpoint.pt.notes.tmp"
    mine.write_text("the user's own file\n")
    c.check = lambda r: Finding(not mine.exists(), "kept the user's file" if mine.exists() else "deleted the user's file")
    return c.train("--resume", "--set", "trainer.steps=5", run=run)


@case("kill9_mid_training_then_resume", "kill", "kill -9 of seqrl train saving a checkpoint every update, then "
      "--resume", issue="13", refuse=False, timeout=150)
def _(c: Ctx) -> list[str]:
    run = c.dir / "run"
    argv = c.train("--set", "trainer.steps=100000", "--set", "trainer.checkpoint_every=1", run=run)
    p = c.popen(argv)
    deadline, tmp_seen = time.time() + 90, False
    try:
        while time.time() < deadline and p.poll() is None and not (run / "checkpoint.pt").exists():
            time.sleep(0.05)
        t_end = time.time() + 5  # now aim the kill at a save in flight
        while time.time() < t_end and p.poll() is None:
            if leftover_tmp(run):
                tmp_seen = True
                break
            time.sleep(0.001)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    left = leftover_tmp(run)
    try:
        step = int(load_ckpt(run / "checkpoint.pt")["step"])
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"the killed run left no readable checkpoint ({type(e).__name__}: {e})") from e
    c.notes.append(f"killed at step {step}{' during a save' if tmp_seen else ''}, leaving {len(left)} .tmp file(s)")
    c.check = _tmp_check(run, step + 2)
    return c.train("--resume", "--set", f"trainer.steps={step + 2}", run=run)


def _killed_dataset_write_here(root: str) -> None:
    """(--_killed_dataset_write) seqrl's write_dataset, SIGKILLed once Minari has written the dataset into
    seqrl's temporary root (before seqrl moves it into place)."""
    import minari

    os.environ["MINARI_DATASETS_PATH"] = root
    from seqrl.data.collect import pendulum_controller, rollout
    from seqrl.data.minari_io import write_dataset

    real = minari.create_dataset_from_buffers

    def create_then_die(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    minari.create_dataset_from_buffers = create_then_die
    episodes = rollout(pendulum_controller(1.0, 0), "Pendulum-v1", 200, 1, seed=0)
    write_dataset("seqrl/pendulum/killed-v0", episodes, "Pendulum-v1", -1226.0, -149.7, "random", "killed write")


@case("stale_minari_tmp_then_collect", "kill", "kill -9 during a dataset write (seqrl's write_dataset SIGKILLed "
      "mid-write) left a temp folder in the Minari root, then seqrl collect", issue="13", refuse=False)
def _(c: Ctx) -> list[str]:
    subprocess.run([sys.executable, __file__, "--_killed_dataset_write", str(c.minari)], env=c.env, cwd=c.cwd,
                   timeout=120, capture_output=True)
    stale = sorted(p for p in c.minari.iterdir() if p.name.startswith("."))
    if not stale:
        raise RuntimeError("the killed dataset write left nothing in the Minari root: see seqrl/data/minari_io.py")
    c.notes.append(f"the killed write left {[p.name for p in stale]}")
    if (c.minari / "seqrl" / "pendulum" / "killed-v0").exists():
        c.notes.append("and the half-written dataset holds its id")

    def check(r: Run) -> Finding:
        left = [p.name for p in stale if p.exists()]
        return Finding(bool(left), f"left {left}" if left else "removed the stale temp folder")

    c.check = check
    return ["collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=1000"]


@case("kill9_mid_collect_then_collect", "kill", "kill -9 of seqrl collect --quality mixed while it writes, then the "
      "same command again", issue="13", refuse=False, timeout=180)
def _(c: Ctx) -> list[str]:
    argv = ["collect", "--env", "pendulum", "--quality", "mixed", "--set", "collect.n_steps=2000"]
    p = c.popen(argv)
    deadline, seen = time.time() + 60, False
    try:
        while time.time() < deadline and p.poll() is None:
            if any(c.minari.glob(".seqrl-tmp-*")):
                seen = True
                time.sleep(0.05)
                break
            time.sleep(0.005)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    have = sorted(str(p.relative_to(c.minari / "seqrl")) for p in (c.minari / "seqrl").glob("*/*-v0"))
    c.notes.append(f"killed {'during a dataset write' if seen else 'at the deadline'}; datasets then: {have}")

    def check(r: Run) -> Finding:
        left = [p.name for p in c.minari.glob(".seqrl-tmp-*")]
        meta = c.minari / "seqrl" / "pendulum" / "mixed-v0" / "data" / "metadata.json"
        if not meta.is_file():
            return Finding(True, "no mixed dataset afterwards")
        steps = json.loads(meta.read_text()).get("total_steps")
        if left:
            return Finding(True, f"left {left}; mixed dataset has {steps} steps")
        return Finding(steps is None or steps < 6000, f"mixed dataset has {steps} steps, no temp folder left")

    c.check = check
    return argv


# ============================================================================================ running
@dataclasses.dataclass
class Result:
    n: int
    name: str
    group: str
    issue: str
    bad_input: str
    verdict: str
    does: str
    test: str
    rc: int | None
    seconds: float
    command: list[str]
    notes: list[str]
    stderr_tail: str


def classify(cs: Case, run: Run, ctx: Ctx, shorten: Callable[[str], str] = lambda s: s) -> tuple[str, str]:
    """(verdict, what seqrl does); `shorten` rewrites long paths in messages before they are trimmed."""
    findings = global_findings(run)
    for fn in (ctx.check,) if ctx.check else ():
        try:
            f = fn(run)
        except Exception as e:  # noqa: BLE001
            f = Finding(True, f"check failed: {type(e).__name__}: {e}")
        if f is not None:
            findings.append(f)
    if run.rc == 0 and not ctx.check and ctx.default_note:
        try:
            f = ctx.default_note(run)
        except Exception as e:  # noqa: BLE001
            f = Finding(False, f"({type(e).__name__}: {e})")
        if f is not None:
            findings.append(f)
    harm = [f.note for f in findings if f.bad]
    notes = [f.note for f in findings if not f.bad]
    if run.timed_out:
        return "timeout", f"still running after {cs.timeout:.0f} s" + (f"; {'; '.join(harm)}" if harm else "")
    if run.rc is not None and run.rc < 0:
        try:
            sig = signal.Signals(-run.rc).name
        except ValueError:
            sig = f"signal {-run.rc}"
        exc = traceback_exception(run.stderr)
        last = f"; last traceback: {exc}" if exc else ""
        return "crash", trim(shorten(f"killed by {sig}{last}" + (f" | {'; '.join(harm)}" if harm else "")), 200)
    if run.rc != 0:
        exc = traceback_exception(run.stderr)
        msg = shorten(f"Traceback: {exc}" if exc else error_message(run.stderr, run.stdout))
        if harm:
            return "harmful error", trim("; ".join(harm) + " | " + msg, 200)
        return ("traceback" if exc else "clear error"), trim(msg)
    does = shorten("exit 0: " + "; ".join(harm + notes or ["accepted"]))
    if harm or cs.refuse:
        return "silently wrong", trim(does, 200)
    return "ok", trim(does, 200)


def run_case(n: int, cs: Case, base: Base, root: Path) -> Result:
    folder = root / f"{n:02d}_{cs.name}"
    folder.mkdir()
    ctx = Ctx(base, folder)
    t0 = time.perf_counter()
    argv: list[str] = []
    try:
        argv = cs.prepare(ctx)
    except Exception as e:  # noqa: BLE001
        return Result(n, cs.name, cs.group, cs.issue, cs.what, "harness error", trim(f"{type(e).__name__}: {e}", 200),
                      TESTS.get(cs.name, ""), None, time.perf_counter() - t0, argv, ctx.notes, "")
    run = run_cli(argv, ctx.env, ctx.cwd, cs.timeout, ctx.drop_dac, ctx.fsize)
    verdict, does = classify(cs, run, ctx, lambda s: s.replace(str(folder), "CASE").replace(str(root.parent), "TMP"))
    return Result(n, cs.name, cs.group, cs.issue, cs.what, verdict, does, TESTS.get(cs.name, ""), run.rc,
                  time.perf_counter() - t0, wrap(argv, ctx.drop_dac, ctx.fsize), ctx.notes, run.stderr[-6000:])


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: list[Result]) -> str:
    out = ["| # | group | bad input | what seqrl does | verdict | test |", "|---|---|---|---|---|---|"]
    for r in results:
        what = r.bad_input + (f" ({'; '.join(r.notes)})" if r.notes else "")
        out.append(f"| {r.n} | {cell(r.group)} | {cell(what)} | {cell(r.does)} | {r.verdict} | {cell(r.test)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="run only this case (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="cases run in parallel (default 1)")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("--_build", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_killed_save", help=argparse.SUPPRESS)
    ap.add_argument("--_killed_dataset_write", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._build:
        build_random_dataset(*args._build)
        return 0
    if args._killed_save:
        _killed_save_here(args._killed_save)
        return 0
    if args._killed_dataset_write:
        _killed_dataset_write_here(args._killed_dataset_write)
        return 0
    numbered = list(enumerate(CASES, start=1))
    if args.list:
        for n, cs in numbered:
            print(f"{n:3d} {cs.name:34s} {cs.group:15s} {cs.what}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {cs.name for cs in CASES})
        if unknown:
            ap.error(f"unknown case(s) {unknown}; see --list")
        numbered = [(n, cs) for n, cs in numbered if cs.name in args.only]
    root = Path(tempfile.mkdtemp(prefix="seqrl-bad-inputs-"))
    root.chmod(0o755)
    base = Base(root / "base")
    (root / "base").mkdir()
    (root / "cases").mkdir()
    t0 = time.perf_counter()
    results: list[Result] = []
    try:
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = {pool.submit(run_case, n, cs, base, root / "cases"): n for n, cs in numbered}
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                print(f"[{len(results)}/{len(numbered)}] {r.n:2d} {r.name}: {r.verdict} ({r.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            for p in root.rglob("*"):  # the mode-500 folders first, so that rmtree can empty them
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    results.sort(key=lambda r: r.n)
    total = time.perf_counter() - t0
    counts = collections.Counter(r.verdict for r in results)
    print(markdown(results))
    print()
    print("Verdicts: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v]) +
          f" ({len(results)} cases, {total:.0f} s, -j {args.jobs})")
    if args.json:
        args.json.write_text(json.dumps({"seqrl": seqrl_command(), "seconds": total, "jobs": args.jobs,
                                         "counts": {v: counts[v] for v in VERDICTS},
                                         "cases": [dataclasses.asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
