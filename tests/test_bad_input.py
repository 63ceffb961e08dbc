"""Bad input through the `seqrl` command, where users meet it (issue 28): nothing lost, nothing silently
wrong, one clear line instead of a traceback. docs/bad_input.md lists every case with the test holding it."""

import errno
import os
import re
import sys

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import PENDULUM_DATASET
from seqrl.checkpoint import load_checkpoint, save_checkpoint
from seqrl.cli import app, default_run_dir
from seqrl.cpu import torch_threads
from seqrl.data.collect import pendulum_controller, rollout
from seqrl.data.minari_io import dataset_path, load_store, write_dataset
from seqrl.errors import DataError, WriteError

runner = CliRunner()
TINY = ["--set", "trainer.steps=4", "--set", "trainer.eval_episodes=0", "--set", "policy.embed_dim=16",
        "--set", "policy.n_layers=1", "--set", "policy.context_len=3", "--set", "source.batch_size=4",
        "--set", "env.max_episode_steps=50", "--set", "trainer.warmup_steps=1"]
DATASET = PENDULUM_DATASET


def one_line(res) -> str:
    return " ".join(res.output.split())


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(res, message: str) -> None:
    """Exit code 2, no traceback, the message."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert message in one_line(res), res.output


@pytest.fixture
def trained(dataset, tmp_path):
    run = tmp_path / "run"
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", run, *TINY)
    assert res.exit_code == 0, res.output
    return run


def step_of(run) -> int:
    return load_checkpoint(run / "checkpoint.pt")["step"]


# ------------------------------------------------------------------------------------ runs and resume
def test_a_run_folder_is_never_trained_over(dataset, trained):
    before = (trained / "checkpoint.pt").read_bytes()
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", trained, *TINY)
    refused(res, "already holds a checkpoint: continue that run with --resume, or pass a fresh --run-dir")
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_default_run_folders_differ_when_the_model_data_or_env_differ():
    base = default_run_dir("gtrxl", "seqrl_TMaze-v0", 0, {}, {})
    longer = default_run_dir("gtrxl", "seqrl_TMaze-v0", 0, {}, {"env_kwargs": {"length": 100}})
    wider = default_run_dir("gtrxl", "seqrl_TMaze-v0", 0, {"policy": {"d_model": 128}}, {})
    longer_run = default_run_dir("gtrxl", "seqrl_TMaze-v0", 0, {"trainer": {"steps": 10}, "source": {"env_steps": 9}}, {})
    assert base.name == "seed0" and len({base, longer, wider}) == 3
    assert longer_run == base  # trainer settings and budgets keep the folder: that is how a run resumes


@pytest.mark.parametrize("change,message", [
    (["--set", "policy.embed_dim=32"], "policy.embed_dim: 16 in the checkpoint, 32 now"),
    (["--set", "env.max_episode_steps=60"], "env.max_episode_steps: 50 in the checkpoint, 60 now"),
    (["--set", "source.batch_size=8"], "source.batch_size: 4 in the checkpoint, 8 now"),
])
def test_resume_says_what_differs(dataset, trained, change, message):
    args = [*TINY, *change]
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", trained, "--resume", *args)
    refused(res, message)
    assert step_of(trained) == 4


def test_resume_on_another_dataset_or_rebuilt_data_is_refused(dataset, trained):
    eps = rollout(pendulum_controller(0.9, 1), "Pendulum-v1", 200, 2, seed=1, max_episode_steps=50)
    write_dataset("seqrl/pendulum/other-v0", eps, "Pendulum-v1", -1226.0, -149.7, "scripted", "another")
    res = invoke("train", "--agent", "dt", "--dataset", "seqrl/pendulum/other-v0", "--run-dir", trained, "--resume",
                 "--env", "pendulum", *TINY)
    refused(res, f"dataset: '{DATASET}' in the checkpoint, 'seqrl/pendulum/other-v0' now")
    write_dataset(DATASET, eps, "Pendulum-v1", -1226.0, -149.7, "scripted", "rebuilt", replace=True)
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", trained, "--resume", *TINY)
    refused(res, "observation mean differs from the checkpoint's (the dataset changed since)")
    assert step_of(trained) == 4


def test_a_longer_budget_resumes(dataset, trained):
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", trained, "--resume", *TINY,
                 "--set", "trainer.steps=6")
    assert res.exit_code == 0, res.output
    assert step_of(trained) == 6


# ------------------------------------------------------------------------------- non-finite training
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(dataset, trained):
    good = load_checkpoint(trained / "checkpoint.pt")
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", trained, "--resume", *TINY,
                 "--set", "trainer.steps=40", "--set", "trainer.lr=1e30", "--set", "trainer.grad_clip=0",
                 "--set", "trainer.checkpoint_every=1", "--set", "trainer.log_every=1")
    refused(res, "the loss became NaN or inf between updates")
    assert "the last good checkpoint is" in one_line(res) and "Lower trainer.lr" in one_line(res)
    after = load_checkpoint(trained / "checkpoint.pt")
    assert after["step"] >= good["step"] and f"(update {after['step']})" in one_line(res)
    assert all(torch.isfinite(v).all() for v in after["policy"].values() if v.is_floating_point())


def test_a_full_disk_mid_run_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch):
    import seqrl.checkpoint as ck

    real, calls = ck.atomic_write, []

    def full_after_first(path, write):
        calls.append(path)
        if len(calls) > 1:
            raise WriteError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
        return real(path, write)

    monkeypatch.setattr(ck, "atomic_write", full_after_first)
    run = tmp_path / "run"
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", run, *TINY,
                 "--set", "trainer.checkpoint_every=2")
    refused(res, "training stopped at update 4: cannot write")
    assert "No space left on device; the checkpoint of update 2 is kept" in one_line(res)
    monkeypatch.undo()
    assert step_of(run) == 2


def test_an_unwritable_run_folder_fails_before_training(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", blocker / "run", *TINY)
    refused(res, f"cannot write to the run folder {blocker / 'run'}")


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("agent,setting,message", [
    ("dt", "policy.n_heads=0", "policy.n_heads must be >= 1, got 0"),
    ("dt", "policy.dropout=2.0", "policy.dropout must be in [0.0, 1.0), got 2.0"),
    ("dt", "policy.embed_dim=0", "policy.embed_dim must be >= 1, got 0"),
    ("dt", "policy.n_layers=-1", "policy.n_layers must be >= 1, got -1"),
    ("dt", "trainer.betas=[2.0, 0.9]", "trainer.betas must be in [0, 1), got [2.0, 0.9]"),
    ("dt", "trainer=5", "trainer: expected a table, got 5"),
    ("dt", "trainer.lr=inf", "trainer.lr: expected a finite number, got inf"),
    ("dt", "trainer.lr=nan", "trainer.lr: expected a finite number, got nan"),
    ("dt", "trainer.lr=-1", "trainer.lr must be > 0, got -1.0"),
    ("dt", "env.reward_scale=0", "reward_scale must be > 0, got 0.0"),
    ("dt", "env.ref_min_score=nan", "ref_min_score: expected a finite number, got nan"),
    ("dt", "trainer.threads=-2", "trainer.threads must be >= 0, got -2"),
    ("bc", "policy.hidden_dim=0", "policy.hidden_dim must be >= 1, got 0"),
    ("dm", "policy.d_state=0", "policy.d_state must be >= 1, got 0"),
])
def test_preset_values_are_checked_where_declared(dataset, tmp_path, agent, setting, message):
    res = invoke("train", "--agent", agent, "--dataset", dataset, "--run-dir", tmp_path / "r", "--set", setting)
    refused(res, message)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- data
def test_finite_garbage_outside_the_space_is_refused_on_load(dataset):
    files = list(dataset_path(dataset).rglob("*.hdf5"))
    with h5py.File(files[0], "r+") as f:
        obs = f["episode_0/observations"]
        row = obs[3]
        row[0] = -3e38  # cos(theta) of Pendulum-v1, bounded to [-1, 1]: two flipped bytes did this
        obs[3] = row
    with pytest.raises(DataError, match=r"observations outside the space's bounds: -3e\+38 at step 3, element 0, "
                                        r"bounds \[-1, 1\]"):
        load_store(dataset)


def test_actions_outside_the_space_are_refused_on_load(minari_root):
    eps = rollout(pendulum_controller(0.5, 0), "Pendulum-v1", 100, 2, seed=0, max_episode_steps=50)
    eps[1]["act"][7] = 250.0  # Pendulum's torque is in [-2, 2]
    write_dataset("seqrl/pendulum/act-v0", eps, "Pendulum-v1", -1226.0, -149.7, "scripted", "t")
    with pytest.raises(DataError, match=r"actions outside the space's bounds: 250 at step 57"):
        load_store("seqrl/pendulum/act-v0")


def test_offline_training_accepts_a_gymnasium_id(dataset, tmp_path):
    res = invoke("train", "--agent", "bc", "--dataset", dataset, "--env", "Pendulum-v1", "--run-dir", tmp_path / "r",
                 "--set", "trainer.steps=2", "--set", "trainer.eval_episodes=1", "--set", "source.batch_size=4")
    assert res.exit_code == 0, res.output
    assert re.search(r"│\s+1\s+│\n", res.output)  # the episodes column is filled


def test_reference_scores_set_on_the_command_line_win_over_the_dataset(dataset):
    from seqrl.runners.sources import build_source
    from seqrl.presets import load_agent

    preset = load_agent("bc_small")
    _, spec, _ = build_source(preset, dataset, None, {})
    assert spec.ref_scores == (-1226.0, -149.7)  # the dataset's
    _, spec, _ = build_source(preset, dataset, None, {"ref_min_score": -2000.0})
    assert spec.ref_scores[0] == -2000.0


def test_collect_keeps_its_recipe_and_refuses_another(minari_root):
    small = ["--set", "collect.n_steps=100", "--set", "collect.n_envs=2"]
    assert invoke("collect", "--env", "pendulum", "--quality", "random", *small).exit_code == 0
    store = load_store("seqrl/pendulum/random-v0")
    stamp = os.stat(dataset_path("seqrl/pendulum/random-v0")).st_mtime_ns
    assert invoke("collect", "--env", "pendulum", "--quality", "random", *small).exit_code == 0  # same recipe: reused
    assert os.stat(dataset_path("seqrl/pendulum/random-v0")).st_mtime_ns == stamp
    res = invoke("collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=300",
                 "--set", "collect.n_envs=2")
    refused(res, "exists but was made with another recipe (collect.n_steps: 100 there, 300 asked). Pass --rebuild")
    assert len(load_store("seqrl/pendulum/random-v0")) == len(store)
    res = invoke("collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=300",
                 "--set", "collect.n_envs=2", "--rebuild")
    assert res.exit_code == 0, res.output
    assert len(load_store("seqrl/pendulum/random-v0")) >= 300
    assert not list(minari_root.glob(".seqrl-tmp-*"))  # the replaced dataset is gone, nothing half-made is left


@pytest.mark.parametrize("env,kwargs", [("cartpole", []), ("tmaze", ["--set", "env_kwargs.length=5"]),
                                        ("repeat_previous", [])])
def test_collect_random_data_of_discrete_envs(minari_root, env, kwargs):
    res = invoke("collect", "--env", env, "--quality", "random", "--set", "collect.n_steps=60",
                 "--set", "collect.n_envs=2", *kwargs)
    assert res.exit_code == 0, res.output
    store = load_store(f"seqrl/{env}/random-v0")
    assert len(store) >= 60
    if env == "tmaze":  # the env's constructor arguments reach the data: episodes of length + 1 steps
        assert set(store.episode_lengths.tolist()) == {6}


def test_missing_dataset_hint_names_only_commands_that_exist(minari_root):
    res = invoke("train", "--agent", "dt", "--dataset", "seqrl/pendulum/nosuch-v0")
    refused(res, "is not in")
    assert "--quality nosuch" not in one_line(res)
    assert "seqrl collect --env pendulum --quality Q" in one_line(res)


# ------------------------------------------------------------------------------------ eval, checkpoints
@pytest.mark.parametrize("args,message", [
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--device", "tpu"], "device 'tpu' is not a torch device"),
])
def test_eval_values(trained, args, message):
    refused(invoke("eval", trained / "checkpoint.pt", *args), message)


def test_eval_seed_must_not_be_negative(trained):
    refused(invoke("eval", trained / "checkpoint.pt", "--seed", "-5"), "--seed must be >= 0")


@pytest.mark.parametrize("alter,message", [
    (lambda sd: sd.__setitem__(next(k for k, v in sd.items() if v.is_floating_point()),
                               torch.full_like(next(v for v in sd.values() if v.is_floating_point()), float("nan"))),
     "its weights hold NaN or inf"),
    (lambda sd: [sd.__setitem__(k, torch.zeros_like(v)) for k, v in list(sd.items()) if k.endswith("obs_std")],
     "observation std"),
])
def test_an_altered_checkpoint_is_refused(trained, tmp_path, alter, message):
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    alter(ckpt["policy"])
    save_checkpoint(tmp_path / "c.pt", {k: v for k, v in ckpt.items() if k != "format"})
    refused(invoke("eval", tmp_path / "c.pt", "--episodes", "1"), message)


def test_episodes_longer_than_the_env_limit_are_refused(dataset, tmp_path):
    res = invoke("train", "--agent", "dt", "--dataset", dataset, "--run-dir", tmp_path / "r", *TINY,
                 "--set", "env.max_episode_steps=5")
    refused(res, "has episodes of 50 steps, longer than env.max_episode_steps=5")


def test_collect_into_an_unwritable_datasets_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(blocker))
    res = invoke("collect", "--env", "pendulum", "--quality", "random", "--set", "collect.n_steps=50",
                 "--set", "collect.n_envs=1")
    refused(res, f"cannot write datasets to {blocker} (MINARI_DATASETS_PATH)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_a_gpu(trained):
    refused(invoke("eval", trained / "checkpoint.pt", "--device", "cuda"), "this machine has no CUDA device")


@pytest.mark.parametrize("content,message", [
    (b"hello, I am a text file\n", "is corrupt, truncated or not a checkpoint"),
    (b"", "is corrupt, truncated or not a checkpoint"),
])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    res = invoke("eval", path)
    refused(res, message)
    assert "weights_only" not in res.output


class Payload:
    def __reduce__(self):
        return (print, ("the payload ran",))


def test_a_pickled_object_never_runs_and_unsafe_loading_is_never_suggested(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "agent": Payload()}, path)
    res = invoke("eval", path)
    refused(res, "print) that a seqrl checkpoint never holds; seqrl does not unpickle it")
    assert "the payload ran" not in res.output and "weights_only" not in res.output


def test_a_checkpoint_never_imports_a_module(trained, tmp_path):
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    ckpt["spec"]["env"]["env_id"] = "this:Pendulum-v1"  # importing `this` prints the Zen of Python
    save_checkpoint(tmp_path / "c.pt", {k: v for k, v in ckpt.items() if k != "format"})
    sys.modules.pop("this", None)
    res = invoke("eval", tmp_path / "c.pt", "--episodes", "1")
    refused(res, "names env 'this:Pendulum-v1', which would import module 'this'")
    assert "this" not in sys.modules and "Zen of Python" not in res.output
    ckpt["spec"]["env"]["env_id"] = "NoSuchEnv-v3"
    save_checkpoint(tmp_path / "d.pt", {k: v for k, v in ckpt.items() if k != "format"})
    refused(invoke("eval", tmp_path / "d.pt"), "names env 'NoSuchEnv-v3', which is not registered here")
    res = invoke("eval", tmp_path / "d.pt", "--episodes", "1", "--env", "Pendulum-v1")  # the user names it
    assert res.exit_code == 0, res.output


def test_temp_files_of_killed_writers_are_removed(trained):
    dead = 2**22 + 12345  # above the kernel's default pid_max: never a live process
    stale = trained / f".checkpoint.pt.{dead}.abcd.tmp"
    stale.write_bytes(b"x" * 100)
    live = trained / f".checkpoint.pt.{os.getpid()}.efgh.tmp"  # this process's own: may be mid-write
    live.write_bytes(b"y")
    load_checkpoint(trained / "checkpoint.pt")
    assert not stale.exists() and live.exists()


def test_threads_follow_idle_cores(monkeypatch):
    import seqrl.cpu as cpu

    samples = iter([{0: (0, 0), 1: (0, 0)}, {0: (0, 100), 1: (100, 200)}])  # cpu0 busy, cpu1 half idle
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(cpu, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(cpu.time, "sleep", lambda s: None)
    assert cpu.idle_cores() == 1
    samples = iter([{0: (0, 0), 1: (0, 0)}, {0: (100, 100), 1: (100, 100)}])
    assert cpu.idle_cores() == 2
    with torch_threads(torch.get_num_threads()):  # the caller's count comes back after the block
        assert cpu.set_threads(3) == 3 and torch.get_num_threads() == 3


def test_rollout_policies_run_on_one_thread_and_the_count_comes_back():
    """A behaviour policy runs with one torch thread (collect.rollout's docstring says why); the caller's
    thread count is restored after, also when the policy raises."""
    seen = []

    def policy(obs):
        seen.append(torch.get_num_threads())
        return np.zeros((obs.shape[0], 1), np.float32)

    def broken(obs):
        raise RuntimeError("policy failed")

    with torch_threads(3):
        episodes = rollout(policy, "Pendulum-v1", 20, 2, 0, max_episode_steps=10)
        assert sum(len(e["rew"]) for e in episodes) >= 20 and set(seen) == {1}
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError, match="policy failed"):
            rollout(broken, "Pendulum-v1", 20, 2, 0, max_episode_steps=10)
        assert torch.get_num_threads() == 3


def test_grad_norm_is_logged_without_clipping(dataset, tmp_path):
    from seqrl.cli import train_run

    run, _, _ = train_run("bc", dataset, None, ["trainer.steps=2", "trainer.eval_episodes=0", "trainer.grad_clip=0",
                                                "trainer.log_every=1", "source.batch_size=4"], tmp_path / "r", False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))


def test_negative_zero_is_not_printed():
    from seqrl.cli import _num

    assert _num(-0.4) == "0" and _num(-1847.2) == "-1847" and _num(0.6) == "1"
