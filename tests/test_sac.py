"""seqrl.data.sac: GraphSAC's gradient step against SB3's SAC.train, and its replay buffer on the device."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from seqrl.data.sac import DeviceReplayBuffer, GraphSAC


def box(n):
    return gym.spaces.Box(-1.0, 1.0, (n,), np.float32)


def test_buffer_rows_timeouts_wrap_and_sampling():
    buf = DeviceReplayBuffer(6, box(3), box(2), device="cpu", n_envs=2)  # 3 vector steps of 2 envs
    for t in range(4):  # the 4th vector step overwrites the 1st
        obs = np.array([[t, 0, 0], [t, 1, 0]], np.float64)
        buf.add(obs, obs + 10, np.full((2, 2), t / 10), np.array([t, -t], np.float32), np.array([True, True]),
                [{"TimeLimit.truncated": True}, {}])
        if t == 0:
            s = buf.sample(50)
            assert (s.observations[:, 0] == 0).all()  # only the 2 filled rows are drawn
            assert set(s.observations[:, 1].tolist()) == {0.0, 1.0}
    assert buf.full and buf.pos == 1 and buf.size() == 3 and buf.filled.item() == 6
    s = buf.sample(400)
    assert set(s.observations[:, 0].tolist()) == {1.0, 2.0, 3.0}  # step 0 was overwritten
    assert torch.equal(s.next_observations, s.observations + 10)
    assert torch.allclose(s.actions, (s.observations[:, :1] / 10).expand(-1, 2))
    env1 = s.observations[:, 1] == 1
    assert torch.equal(s.rewards[:, 0], torch.where(env1, -s.observations[:, 0], s.observations[:, 0]))
    assert torch.equal(s.dones[:, 0], env1.float())  # a time-limit cut (env 0) is not a terminal: it bootstraps
    with pytest.raises(TypeError, match="Box"):
        DeviceReplayBuffer(6, gym.spaces.Discrete(3), box(2), device="cpu")


def pair(seed=0):
    """Plain SB3 SAC and GraphSAC with the same weights, optimiser states and entropy coefficient."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed)
    ref = SAC("MlpPolicy", env, seed=seed, learning_starts=0, batch_size=32, device="cpu")
    ours = GraphSAC("MlpPolicy", env, seed=seed, learning_starts=0, batch_size=32, device="cpu")
    ours.policy.load_state_dict(ref.policy.state_dict())
    for m in (ref, ours):
        m.set_logger(Logger(folder=None, output_formats=[]))
    with torch.no_grad():
        ours.log_ent_coef.copy_(ref.log_ent_coef)
    return ref, ours


def params(model):
    return {**{k: v.detach().clone() for k, v in model.policy.state_dict().items()},
            "log_ent_coef": model.log_ent_coef.detach().clone()}


def test_step_equals_sb3_train_on_the_same_batches():
    ref, ours = pair()
    rng = np.random.default_rng(0)
    for k in range(3):  # three steps on three batches: the optimisers' moments come into play
        b = 32
        obs = torch.tensor(rng.normal(size=(b, 3)), dtype=torch.float32)
        batch = ours.replay_buffer.sample(1)._replace(  # a fixed batch, as both buffers would return it
            observations=obs, actions=torch.tensor(rng.uniform(-1, 1, (b, 1)), dtype=torch.float32),
            next_observations=obs + 0.1, rewards=torch.tensor(rng.normal(size=(b, 1)), dtype=torch.float32),
            dones=torch.tensor(rng.random((b, 1)) < 0.2, dtype=torch.float32))
        ref.replay_buffer.sample = lambda *a, **kw: batch
        ours.replay_buffer.sample = lambda *a, **kw: batch
        torch.manual_seed(k)
        ref.train(gradient_steps=1, batch_size=b)
        torch.manual_seed(k)
        ours.train(gradient_steps=1, batch_size=b)
        for name, v in params(ref).items():
            torch.testing.assert_close(params(ours)[name], v, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(params(ours)["critic_target.qf0.0.weight"], pair()[1].policy.critic_target.qf0[0].weight)
    # the losses it logs are SB3's
    for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef", "train/ent_coef_loss"):
        assert ours.logger.name_to_value[key] == pytest.approx(ref.logger.name_to_value[key], rel=1e-5)


def test_checkpoint_is_sb3s_and_training_resumes(tmp_path):
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = GraphSAC("MlpPolicy", env, seed=0, learning_starts=50, batch_size=16, gradient_steps=-1, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(120)
    assert model._n_updates == 70  # one gradient step per env step past learning_starts: 35 vector steps of 2
    model.save(tmp_path / "m.zip")
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    plain = SAC.load(tmp_path / "m.zip", device="cpu")  # SB3's own loader reads it
    np.testing.assert_allclose(plain.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    again = GraphSAC.load(tmp_path / "m.zip", env=env, device="cpu")
    assert isinstance(again.replay_buffer, DeviceReplayBuffer) and again.num_timesteps == model.num_timesteps
    again.set_logger(Logger(folder=None, output_formats=[]))
    n = again._n_updates
    again.replay_buffer.add(obs[:2], obs[2:], np.zeros((2, 1)), np.zeros(2), np.zeros(2), [{}, {}])
    again.train(gradient_steps=4, batch_size=8)  # the optimisers' saved state steps on
    assert again._n_updates == n + 4
    assert all(torch.isfinite(p).all() for p in again.policy.parameters())
