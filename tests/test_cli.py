"""The `seqrl` command end to end on a small Pendulum dataset."""

import pytest
from typer.testing import CliRunner

from conftest import PENDULUM_DATASET
from seqrl.cli import app

runner = CliRunner()
TINY = ["--set", "trainer.steps=4", "--set", "trainer.eval_episodes=2", "--set", "policy.embed_dim=16",
        "--set", "policy.n_layers=1", "--set", "policy.context_len=3", "--set", "source.batch_size=4",
        "--set", "env.max_episode_steps=50"]


def test_train_eval_resume(dataset, tmp_path):
    run_dir = tmp_path / "run"
    res = runner.invoke(app, ["train", "--agent", "dt", "--dataset", dataset, "--run-dir", str(run_dir), *TINY])
    assert res.exit_code == 0, res.output
    assert "target=-400" in res.output and (run_dir / "checkpoint.pt").is_file()
    res = runner.invoke(app, ["eval", str(run_dir / "checkpoint.pt"), "--episodes", "3"])
    assert res.exit_code == 0, res.output
    assert "dt target=-1000" in res.output
    res = runner.invoke(app, ["train", "--agent", "dt", "--dataset", dataset, "--run-dir", str(run_dir), "--resume",
                              *TINY[:-4], "--set", "trainer.steps=6", *TINY[4:]])
    assert res.exit_code == 0, res.output
    from seqrl.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoint.pt", "dt")["step"] == 6


@pytest.mark.parametrize("args,message", [
    (["train", "--agent", "dtx", "--dataset", PENDULUM_DATASET], "unknown agent preset 'dtx'"),
    (["train", "--agent", "dt", "--dataset", "seqrl/hopper/medium-v0"], "seqrl collect --env hopper --quality medium"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--set", "trainer.nope=1"], "unknown key 'trainer.nope'"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--env", "hopper"], "was recorded on Pendulum-v1, not on Hopper-v5"),
    (["eval", "missing.pt"], "no checkpoint at missing.pt"),
    (["collect", "--env", "pendulum", "--quality", "superb"], "unknown quality 'superb'"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--set", "trainer.log_every=0"],
     "trainer.log_every must be >= 1"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--device", "cdua"], "is not a torch device"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--set", "env.target_returns=[]"],
     "target_returns needs at least one"),
    (["train", "--agent", "dt", "--dataset", PENDULUM_DATASET, "--resume", "--run-dir", "/nonexistent/x"],
     "nothing to resume"),
])
def test_bad_input_is_one_clear_line(dataset, args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in " ".join(res.output.split()), res.output


def test_collect_scripted(minari_root):
    res = runner.invoke(app, ["collect", "--env", "pendulum", "--quality", "expert", "--set", "collect.n_steps=400",
                              "--set", "collect.n_envs=2"])
    assert res.exit_code == 0, res.output
    assert (minari_root / "seqrl/pendulum/expert-v0/data").is_dir()
