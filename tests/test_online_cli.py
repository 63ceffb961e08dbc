"""`seqrl train --agent gtrxl --env seqrl/TMaze-v0` end to end: train, eval, resume, bad input."""

import pytest
from typer.testing import CliRunner

from seqrl.checkpoint import load_checkpoint
from seqrl.cli import app

runner = CliRunner()
TINY = ["--set", "policy.d_model=16", "--set", "policy.n_heads=2", "--set", "policy.memory=8", "--set", "policy.n_layers=1",
        "--set", "runner.n_envs=4", "--set", "runner.n_steps=16", "--set", "runner.seq_len=8",
        "--set", "runner.minibatches=2", "--set", "runner.epochs=1", "--set", "runner.eval_episodes=4",
        "--set", "env.env_kwargs.length=3"]


def test_train_eval_resume_online(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--agent", "gtrxl", "--env", "seqrl/TMaze-v0", "--out", str(out),
                              "--set", "runner.total_steps=64", *TINY])
    assert res.exit_code == 0, res.output
    assert "gtrxl success rate:" in res.output and (out / "checkpoint.pt").is_file() and (out / "tb").is_dir()
    ckpt = load_checkpoint(out / "checkpoint.pt", "gtrxl")
    assert ckpt["step"] == 64 and ckpt["spec"]["env"]["env_kwargs"] == {"length": 3}
    res = runner.invoke(app, ["eval", str(out / "checkpoint.pt"), "--episodes", "3"])
    assert res.exit_code == 0, res.output
    assert "seqrl/TMaze-v0" in res.output and "gtrxl success rate:" in res.output
    res = runner.invoke(app, ["train", "--agent", "gtrxl", "--env", "seqrl/TMaze-v0", "--out", str(out), "--resume",
                              "--set", "runner.total_steps=128", *TINY])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out / "checkpoint.pt", "gtrxl")["step"] == 128


def test_lstm_on_a_gymnasium_id_without_preset(tmp_path):
    res = runner.invoke(app, ["train", "--agent", "lstm_ppo", "--env", "Acrobot-v1", "--out", str(tmp_path),
                              "--set", "policy.d_model=8", "--set", "runner.total_steps=64", "--set", "runner.n_envs=4",
                              "--set", "runner.n_steps=16", "--set", "runner.seq_len=16", "--set", "runner.minibatches=1",
                              "--set", "runner.epochs=1", "--set", "runner.eval_episodes=0"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "checkpoint.pt")["spec"]["env"]["max_episode_steps"] == 500  # from the registry


@pytest.mark.parametrize("args,message", [
    (["train", "--agent", "gtrxl"], "agent 'gtrxl' trains online: pass --env"),
    (["train", "--agent", "gtrxl", "--dataset", "seqrl/pendulum/mixed-v0"], "trains online: pass --env, not --dataset"),
    (["train", "--agent", "dt", "--env", "tmaze"], "agent 'dt' trains offline: pass --dataset"),
    (["train", "--agent", "gtrxl", "--env", "seqrl/Nope-v0"], "unknown env 'seqrl/Nope-v0'"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "runner.seq_len=5"], "seq_len 5 does not divide n_steps"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "runner.steps=5"], "unknown key 'runner.steps'"),
    (["train", "--agent", "lstm_ppo", "--env", "tmaze", "--set", "env.env_kwargs.length=0"], "length must be an integer"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "env.env_kwargs.colour=1"], "unexpected keyword argument"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--device", "cdua"], "is not a torch device"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--resume", "--out", "/nonexistent/x"], "nothing to resume"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that starts by mistake writes here, not into the repository
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
