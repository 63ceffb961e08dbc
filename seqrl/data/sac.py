"""stable-baselines3's SAC with a fast gradient step: the learner behind `seqrl collect`'s D4RL-style datasets.

SB3's `SAC.train` is launch-bound on a GPU: each gradient step samples the replay buffer on the host, copies the
batch over, runs a few hundred small kernels and reads four losses back (`.item()`), so the step costs
milliseconds whatever the GPU, and a 1M-step learner takes hours. `GraphSAC` keeps everything of SB3's SAC
(policy, optimisers, `learn`, callbacks, checkpoints as SB3 zips that plain `SAC.load` reads) and changes only
where the step runs:

- the replay buffer lives on the learner's device (`DeviceReplayBuffer`): one row per transition, sampled
  uniformly with indices drawn on the device;
- one gradient step is the same computation as `SAC.train`'s loop body (entropy coefficient, critic, actor,
  Polyak update, in that order; `test_sac.py` checks the two against each other on one batch), with the losses
  summed on the device and read once per `train` call;
- on a CUDA device the step is captured once as a CUDA graph (after three eager warm-up steps on a side stream,
  as capture requires) and replayed `gradient_steps` times: sampling, forward, backward, the three Adam steps
  (capturable) and the target update, with no host synchronisation.

The graph needs a constant learning rate and a target update every step (SB3's defaults); anything else runs
the same step eagerly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update


class DeviceReplayBuffer(ReplayBuffer):
    """A replay buffer of Box observations and actions in one (rows, width) float32 tensor on the device.

    Row r holds [obs, next_obs, action, reward, done]; `done` is SB3's: terminated and not truncated
    (`handle_timeout_termination`), so a time-limit cut bootstraps. Rows are filled in order and overwritten
    oldest first; `sample` draws rows uniformly from the filled ones (the others are never read, so they start
    uninitialised), the count read from a device tensor so
    that a CUDA graph can sample as the buffer grows.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: torch.device | str = "auto", n_envs: int = 1, optimize_memory_usage: bool = False,
                 handle_timeout_termination: bool = True):
        if optimize_memory_usage:
            raise ValueError("DeviceReplayBuffer: optimize_memory_usage is not supported")
        if not isinstance(observation_space, spaces.Box) or not isinstance(action_space, spaces.Box):
            raise TypeError("DeviceReplayBuffer holds Box observations and Box actions only, got "
                            f"{observation_space} and {action_space}")
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)  # vector steps, as SB3's ReplayBuffer counts them
        self.handle_timeout_termination = handle_timeout_termination
        o, a = int(np.prod(self.obs_shape)), self.action_dim
        self._cols = np.cumsum([0, o, o, a, 1, 1])
        self.rows = torch.empty(self.buffer_size * n_envs, int(self._cols[-1]), device=self.device)
        self.filled = torch.zeros((), dtype=torch.float32, device=self.device)  # rows filled, for sampling

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            infos: list[dict[str, Any]]) -> None:
        n = self.n_envs
        done = np.asarray(done, np.float32).reshape(n)
        if self.handle_timeout_termination:
            done = done * (1.0 - np.array([info.get("TimeLimit.truncated", False) for info in infos], np.float32))
        block = np.concatenate([np.asarray(obs, np.float32).reshape(n, -1), np.asarray(next_obs, np.float32).reshape(n, -1),
                                np.asarray(action, np.float32).reshape(n, -1), np.asarray(reward, np.float32).reshape(n, 1),
                                done.reshape(n, 1)], axis=1)
        self.rows[self.pos * n:(self.pos + 1) * n] = torch.from_numpy(block).to(self.device, non_blocking=False)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0
        self.filled.fill_(self.size() * n)

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        if env is not None:
            raise ValueError("DeviceReplayBuffer does not normalise observations (VecNormalize); use SB3's ReplayBuffer")
        idx = (torch.rand(batch_size, device=self.device) * self.filled).long()
        batch = self.rows[idx]
        obs, nxt, act, rew, done = (batch[:, a:b] for a, b in zip(self._cols[:-1], self._cols[1:]))
        shape = (batch_size, *self.obs_shape)
        return ReplayBufferSamples(obs.reshape(shape), act, nxt.reshape(shape), done, rew)


class GraphSAC(SAC):
    """SB3's SAC with a replay buffer on its device and its gradient step as a CUDA graph there (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("replay_buffer_class", DeviceReplayBuffer)
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmups = 0
        self._stats = torch.zeros(4, device=self.device)  # sums over steps: ent_coef, ent_coef_loss, critic, actor

    def _graphable(self) -> bool:
        return (self.device.type == "cuda" and self.target_update_interval == 1 and not self.use_sde
                and self.lr_schedule(1.0) == self.lr_schedule(0.0) and isinstance(self.replay_buffer, DeviceReplayBuffer))

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.actor.optimizer, self.critic.optimizer, self.ent_coef_optimizer) if o is not None]

    def _capturable(self, on: bool) -> None:
        """Adam keeps its step count on the device when capturable (a graph can replay the step), on the host
        otherwise; set either, whichever the checkpoint this model came from used."""
        for opt in self._optimizers():
            for group in opt.param_groups:
                group["capturable"] = on
                for p in group["params"]:
                    st = opt.state.get(p)
                    if st and "step" in st:
                        st["step"] = st["step"].to(p.device if on else "cpu")

    def _step(self, batch_size: int) -> None:
        """One gradient step, as one iteration of SB3's SAC.train (no host synchronisation)."""
        data = self.replay_buffer.sample(batch_size)
        actions_pi, log_prob = self.actor.action_log_prob(data.observations)
        log_prob = log_prob.reshape(-1, 1)
        if self.ent_coef_optimizer is not None:
            ent_coef = torch.exp(self.log_ent_coef.detach())
            ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
        else:
            ent_coef, ent_coef_loss = self.ent_coef_tensor, torch.zeros((), device=self.device)
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
            next_q = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1).min(dim=1, keepdim=True)[0]
            next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
            target_q = data.rewards + (1 - data.dones) * self.gamma * next_q
        critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in self.critic(data.observations, data.actions))
        self.critic.optimizer.zero_grad()
        critic_loss.backward()
        self.critic.optimizer.step()
        min_q_pi = torch.cat(self.critic(data.observations, actions_pi), dim=1).min(dim=1, keepdim=True)[0]
        actor_loss = (ent_coef * log_prob - min_q_pi).mean()
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        self._stats += torch.stack([ent_coef.reshape(()), ent_coef_loss.detach(), critic_loss.detach(), actor_loss.detach()])

    def _graph_step(self, batch_size: int) -> None:
        if self._warmups < 3:  # eager warm-up on a side stream, as capture requires
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(batch_size)
            torch.cuda.current_stream().wait_stream(side)
            self._warmups += 1
            return
        if self._graph is None:  # capture records the kernels without running them; then replay runs the step
            self._graph = torch.cuda.CUDAGraph()
            validate = torch.distributions.Distribution._validate_args
            torch.distributions.Distribution.set_default_validate_args(False)  # its checks read values on the host
            try:
                with torch.cuda.graph(self._graph):
                    self._step(batch_size)
            finally:
                torch.distributions.Distribution.set_default_validate_args(validate)
            self._graph_batch = batch_size
        if batch_size != self._graph_batch:
            raise ValueError(f"GraphSAC: the graph was captured for batch size {self._graph_batch}, not {batch_size}")
        self._graph.replay()

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        graph = self._graphable()
        if self._graph is None:  # before the first step, or after loading: the optimisers' state follows the device
            self._capturable(graph)
        if not graph:
            self._update_learning_rate(self._optimizers())
        self._stats.zero_()
        for _ in range(gradient_steps):
            self._graph_step(batch_size) if graph else self._step(batch_size)
        self._n_updates += gradient_steps
        ent_coef, ent_coef_loss, critic, actor = (self._stats / max(gradient_steps, 1)).tolist()
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", ent_coef)
        self.logger.record("train/actor_loss", actor)
        self.logger.record("train/critic_loss", critic)
        if self.ent_coef_optimizer is not None:
            self.logger.record("train/ent_coef_loss", ent_coef_loss)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_graph", "_graph_batch", "_warmups", "_stats"]
