"""`seqrl train --agent gtrxl --env seqrl/TMaze-v0` end to end: train, eval, resume, bad input."""

import pytest
from typer.testing import CliRunner

from seqrl.checkpoint import load_checkpoint
from seqrl.cli import app

runner = CliRunner()
TINY = ["--set", "policy.d_model=16", "--set", "policy.gtrxl.n_heads=2", "--set", "policy.gtrxl.memory=8",
        "--set", "policy.gtrxl.n_layers=1", "--set", "source.n_envs=4", "--set", "source.n_steps=16",
        "--set", "policy.seq_len=8", "--set", "policy.minibatches=2", "--set", "policy.epochs=1",
        "--set", "trainer.eval_episodes=4", "--set", "env.env_kwargs.length=3"]


def test_train_eval_resume_online(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--agent", "gtrxl", "--env", "seqrl/TMaze-v0", "--out", str(out),
                              "--set", "source.env_steps=64", *TINY])
    assert res.exit_code == 0, res.output
    assert "gtrxl success rate:" in res.output and (out / "checkpoint.pt").is_file() and (out / "tb").is_dir()
    ckpt = load_checkpoint(out / "checkpoint.pt", "ppo")
    assert ckpt["source"]["env_steps"] == 64 and ckpt["spec"]["env"]["env_kwargs"] == {"length": 3}
    res = runner.invoke(app, ["eval", str(out / "checkpoint.pt"), "--episodes", "3"])
    assert res.exit_code == 0, res.output
    assert "seqrl/TMaze-v0" in res.output and "ppo success rate:" in res.output
    res = runner.invoke(app, ["train", "--agent", "gtrxl", "--env", "seqrl/TMaze-v0", "--out", str(out), "--resume",
                              "--set", "source.env_steps=128", *TINY])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out / "checkpoint.pt", "ppo")["source"]["env_steps"] == 128


def test_lstm_on_a_gymnasium_id_without_preset(tmp_path):
    res = runner.invoke(app, ["train", "--agent", "lstm_ppo", "--env", "Acrobot-v1", "--out", str(tmp_path),
                              "--set", "policy.d_model=8", "--set", "source.env_steps=64", "--set", "source.n_envs=4",
                              "--set", "source.n_steps=16", "--set", "policy.seq_len=16", "--set", "policy.minibatches=1",
                              "--set", "policy.epochs=1", "--set", "trainer.eval_episodes=0"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "checkpoint.pt")["spec"]["env"]["max_episode_steps"] == 500  # from the registry


def test_module_colon_env_id_imports_the_module_that_registers_it(tmp_path, monkeypatch):
    """`--env module:EnvId` (Gymnasium's form): seqrl imports the module, which registers the env."""
    (tmp_path / "seqrl_test_registers.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('SeqrlTestAcrobot-v0', entry_point='gymnasium.envs.classic_control:AcrobotEnv', "
        "max_episode_steps=40)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "--agent", "lstm_ppo", "--env", "seqrl_test_registers:SeqrlTestAcrobot-v0",
                              "--out", "run", "--set", "policy.d_model=8", "--set", "source.env_steps=32",
                              "--set", "source.n_envs=2", "--set", "source.n_steps=16", "--set", "policy.seq_len=16",
                              "--set", "policy.minibatches=1", "--set", "policy.epochs=1",
                              "--set", "trainer.eval_episodes=0"])
    assert res.exit_code == 0, res.output
    env = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["spec"]["env"]
    assert env["env_id"] == "SeqrlTestAcrobot-v0" and env["max_episode_steps"] == 40  # from the module's registration


@pytest.mark.parametrize("args,message", [
    (["train", "--agent", "gtrxl", "--env", "seqrl_no_such_module:X-v0"], "cannot import module 'seqrl_no_such_module'"),
    (["train", "--agent", "gtrxl", "--env", "json:SeqrlNope-v0"], "importing 'json' registered no env 'SeqrlNope-v0'"),
    (["train", "--agent", "gtrxl"], "agent 'ppo' trains online (source.kind = 'env'): pass --env"),
    (["train", "--agent", "gtrxl", "--dataset", "seqrl/pendulum/mixed-v0"], "trains online (source.kind = 'env'): pass --env, not --dataset"),
    (["train", "--agent", "dt", "--env", "tmaze"], "agent 'dt' trains offline (source.kind = 'dataset'): pass --dataset"),
    (["train", "--agent", "gtrxl", "--env", "seqrl/Nope-v0"], "unknown env 'seqrl/Nope-v0'"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "policy.seq_len=5"], "seq_len 5 does not divide source.n_steps"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "source.steps=5"], "unknown key 'source.steps'"),
    (["train", "--agent", "gtrxl", "--env", "tmaze", "--set", "source.kind=replay"], "'replay' is not a source"),
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
