"""In-context evaluation: how well a pretrained agent learns held-out tasks from its context alone, beside
classic learners on the same tasks and seeds (`seqrl icrl CHECKPOINT ...`).

Dimension letters: n trials (tasks x seeds), E episodes per trial, T steps per episode, C context
transitions.

Every method, agent or baseline, runs through `seqrl.data.learners.learning_histories`: the same envs,
reset to the same tasks with the same reward-noise seeds (derived from the seed alone), so the methods
face identical tasks and identical noise draws per step. An agent runs as a learner-shaped adapter
(`AgentLearner`) in one of three modes:

    online            the context grows across the E episodes of a trial (the transformer sees a sliding
                      window of its last K-1 transitions; Mamba the whole trial, up to K transitions
                      unless `extrapolate`)
    online-episode    at each episode start the context is re-read from the previous episode alone, then
                      grows within the episode (DPT's public code keeps the last episode as the context)
    offline           a fixed context of one random episode per task (DPT's data recipe, other seeds);
                      greedy actions (DPT's offline protocol). DPT queries each state against it alone; for
                      AD the current episode's transitions join it, and each episode starts from it again
                      (an AD history always ends with the current episode's steps)
    offline-expert    the same with the optimal policy's episodes as the context (the best arm's pulls;
                      the grids' shortest paths): can the model use a context that says where the reward is?

A fixed context holds T transitions per task (T the horizon). Where an episode ends early (Key-to-Door at its
door) the context goes on with the policy's next episode, as a learning history does, instead of padding.

Online modes sample actions from the predicted distribution (DPT's and AD's online protocol).

Metrics: bandits, cumulative regret per step over the trial (the env's `info["regret"]`); grids, the
return of each episode. Mean over trials and a 95% interval (1.96 standard errors over the n trials).
Written: `results.json`, `results.md` and one PNG of the curves.

Refused: a test task the agent was trained on (its checkpoint records the training task ids; `allow_overlap`
turns the error into a loud warning), a checkpoint without task records is evaluated with a warning, an
env whose action space differs from the agent's (arms out of range), Mamba past its trained context
without `extrapolate`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from seqrl.data import learners as L
from seqrl.data.icrl_collect import BANDITS, FAMILIES, family_of, in_ranges, make_env, random_context_policy
from seqrl.data.store import check_spaces
from seqrl.errors import DataError
from seqrl.io import atomic_write, atomic_write_json

MODES = ("online", "online-episode", "offline", "offline-expert")


def _where(keep: torch.Tensor, new: Any, old: Any) -> Any:
    """new where keep (n,) else old, over a backbone state (tensors with the batch first, in dataclasses/tuples)."""
    if isinstance(new, torch.Tensor):
        return torch.where(keep.view(-1, *[1] * (new.dim() - 1)), new, old)
    if isinstance(new, tuple):
        return tuple(_where(keep, a, b) for a, b in zip(new, old))
    if dataclasses.is_dataclass(new):
        return type(new)(**{f.name: _where(keep, getattr(new, f.name), getattr(old, f.name))
                            for f in dataclasses.fields(new)})
    return new


class AgentLearner:
    """An in-context agent behind the learner interface of `seqrl.data.learners` (module docstring)."""

    def __init__(self, agent: Any, n: int, mode: str, context: dict[str, np.ndarray] | None = None,
                 device: str | torch.device = "cpu"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.agent, self.n, self.mode, self.device = agent, n, mode, torch.device(device)
        self.episode = -1
        self.fixed = mode.startswith("offline")  # a fixed context, greedy actions
        self.frozen = self.fixed and not agent.episode_joins_fixed_context  # nothing joins the context (DPT)
        self.state = agent.initial_state(n, self.device, greedy=self.fixed)
        self.prefix = None  # the fixed context's state, where each episode starts (AD)
        self._prev = None  # the state before the last act (rows that did not step go back to it)
        self._ep: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # this episode (obs, a, r, live)
        if self.fixed:
            if context is None:
                raise ValueError(f"{mode} mode needs a context")
            self.state = self.prefix = agent.encode(self._t(context["obs"]), self._t(context["act"]),
                                                    self._t(context["rew"]), greedy=True)

    def _t(self, x: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x), device=self.device)
        return x.to(self.agent._dtype()) if x.is_floating_point() else x

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits, after_s = self.agent.logits(self._t(obs), self.state)
        if self.fixed:
            a = logits.argmax(-1).cpu().numpy()
            if self.frozen:  # nothing joins the context
                return a
        else:
            p = torch.softmax(logits.double(), -1).cpu().numpy()  # (n, A)
            u = rng.random((self.n, 1))  # inverse-CDF draws from the numpy generator: reproducible on any device
            a = np.minimum((p.cumsum(1) < u).sum(1), p.shape[1] - 1).astype(np.int64)
        self._prev = self.state
        self.state = self.agent.feed_action(torch.as_tensor(a, device=self.device), after_s)
        return a

    def update(self, obs, actions, rewards, next_obs, terminated, live=None) -> None:
        if self.frozen:
            return
        live = np.ones(self.n, bool) if live is None else np.array(live, bool)  # a copy: the caller updates its own
        new = self.agent.observe(self.state, self._t(np.asarray(rewards, np.float32)),
                                 torch.zeros(self.n, dtype=torch.bool, device=self.device))
        keep = torch.as_tensor(live, device=self.device)
        self.state = dataclasses.replace(new, mem=_where(keep, new.mem, self._prev.mem))
        self._ep.append((np.asarray(obs), np.asarray(actions), np.asarray(rewards, np.float32), live))

    def reset_episode(self) -> None:
        self.episode += 1
        if self.prefix is not None:  # every episode starts from the fixed context alone
            self.state = self.prefix
        if self.mode == "online-episode" and self._ep:
            lives = np.stack([x[3] for x in self._ep], 1)  # (n, T)
            if not lives.all():
                raise DataError("online-episode mode re-reads the last episode and needs episodes of one length "
                                "(bandits, Dark Room); use online mode here")
            obs, act, rew = (np.stack([x[i] for x in self._ep], 1) for i in range(3))  # (n, T, ...)
            self.state = self.agent.encode(self._t(obs), self._t(act), self._t(rew))
        self._ep = []


def fixed_context(mk: Callable[[], Any], tasks: np.ndarray, policy: Callable, seed: int, T: int) -> dict[str, np.ndarray]:
    """The first T transitions of `policy`'s consecutive episodes on each task: {obs (n, T, ...), act, rew}."""
    E = 1
    while True:  # episodes that end early are followed by the next (a learning history's layout)
        h = L.learning_histories(mk, tasks, policy, E, seed)
        if h.lengths.sum(1).min() >= T:
            break
        E *= 2
    rows = [[(e, t) for e in range(E) for t in range(h.lengths[i, e])][:T] for i in range(len(tasks))]
    pick = lambda x: np.stack([np.stack([x[i, e, t] for e, t in r]) for i, r in enumerate(rows)])  # noqa: E731
    return {"obs": pick(h.obs), "act": pick(h.actions), "rew": pick(h.rewards)}


def expert_policy(family: str) -> Callable:
    """make_learner of the optimal policy: the best arm (bandits), the shortest path (grids)."""
    return L.Optimal.from_envs if family in BANDITS else GridOptimal.from_envs


class GridOptimal(L.NoisyDemonstrator):
    """The shortest-path policy of the grids (the demonstrator without noise)."""

    @classmethod
    def from_envs(cls, envs, **kw) -> "GridOptimal":
        return super().from_envs(envs, episodes=1)

    @property
    def epsilon(self) -> float:
        return 0.0


def baselines(family: str, env: Any) -> dict[str, Callable]:
    """The classic learners run beside the agents on this family: name -> make_learner(envs)."""
    noise = getattr(env, "noise", 0.5) or 0.5
    if family in BANDITS:
        out = {"random": L.Random.from_envs, "empirical-mean": L.EmpiricalMean.from_envs,
               "ucb": functools.partial(L.UCB.from_envs, c=noise)}
        if family == "gaussian-bandit":
            out["thompson"] = functools.partial(L.GaussianThompson.from_envs, noise=noise)
        if family == "bernoulli-bandit":
            out["thompson"] = L.BernoulliThompson.from_envs
        if family == "linear-bandit":
            m, v = env.theta_prior
            out["thompson"] = functools.partial(L.LinearThompson.from_envs, noise=noise, prior_mean=m, prior_var=v)
            out["linucb"] = L.LinUCB.from_envs
        out["optimal"] = L.Optimal.from_envs
        return out
    return {"random": L.Random.from_envs,
            "q-learning": functools.partial(L.QLearning.from_envs, reward_memory=family == "keytodoor"),
            "optimal": GridOptimal.from_envs}


@dataclasses.dataclass
class Curve:
    """One method's per-trial results: returns (n, E); regret (n, E*T) per step, bandits only."""

    returns: np.ndarray
    regret: np.ndarray | None

    def summary(self) -> dict[str, Any]:
        n = self.returns.shape[0]
        ci = lambda x: (1.96 * x.std(0, ddof=1) / np.sqrt(n)) if n > 1 else np.zeros(x.shape[1])  # noqa: E731
        out = {"trials": n, "return_mean": self.returns.mean(0).tolist(), "return_ci95": ci(self.returns).tolist()}
        if self.regret is not None:
            cum = self.regret.cumsum(1)
            out |= {"cum_regret_mean": cum.mean(0).tolist(), "cum_regret_ci95": ci(cum).tolist()}
        return out


def _curve(h: L.Histories) -> Curve:
    regret = None if h.regret is None else h.regret.reshape(h.regret.shape[0], -1)
    return Curve(h.returns(), regret)


def _repeat(tasks: Sequence[int], seeds: Sequence[int], fn: Callable[[int], L.Histories]) -> Curve:
    curves = [_curve(fn(s)) for s in seeds]
    return Curve(np.concatenate([c.returns for c in curves]),
                 None if curves[0].regret is None else np.concatenate([c.regret for c in curves]))


def check_tasks(agent: Any, tasks: Sequence[int], allow_overlap: bool, name: str) -> None:
    """DataError when an evaluation task is one the agent was trained on (warning with allow_overlap)."""
    rec = agent.spec.meta.get("icrl")
    if rec is None:
        warnings.warn(f"{name}: the checkpoint records no training tasks; cannot check that the test tasks are "
                      f"held out", stacklevel=2)
        return
    seen = np.asarray(tasks)[in_ranges(tasks, rec["train_tasks"])]
    if seen.size:
        msg = (f"{name}: {seen.size} of the {len(tasks)} evaluation tasks were training tasks of its dataset "
               f"(e.g. {seen[:5].tolist()}); in-context evaluation needs held-out tasks")
        if not allow_overlap:
            raise DataError(msg + " (pass --allow-overlap to run anyway)")
        warnings.warn("!!! " + msg + " -- results are NOT held-out !!!", stacklevel=2)


def evaluate_icrl(agents: dict[str, Any], family: str, env_kwargs: dict[str, Any], tasks: Sequence[int],
                  seeds: Sequence[int], episodes: int, modes: Sequence[str] = ("online",),
                  with_baselines: bool = True, extrapolate: bool = False, allow_overlap: bool = False,
                  device: str | torch.device = "cpu") -> dict[str, Curve]:
    """Run every agent in every mode and the family's baselines on `tasks` x `seeds`; name -> Curve."""
    env_id = FAMILIES[family]
    mk = functools.partial(make_env, env_id, env_kwargs)
    probe = mk()
    T = int(probe.horizon)
    tasks = np.asarray(tasks, np.int64)
    out: dict[str, Curve] = {}
    for name, agent in agents.items():
        check_spaces(agent.spec.observation_space, agent.spec.action_space, probe, name)  # arms out of range
        check_tasks(agent, tasks, allow_overlap, name)
        K = agent.config.context_len
        for mode in modes:
            if mode not in MODES:
                raise DataError(f"unknown mode {mode!r}; one of {MODES}")
            fixed = T + (T if agent.episode_joins_fixed_context else 1)  # the context, then the episode or a query
            length = {"online": episodes * T, "online-episode": 2 * T}.get(mode, fixed)
            if agent.config.backbone == "mamba" and length > K and not extrapolate:
                raise DataError(f"{name} ({mode}): a context of up to {length} transitions, but the Mamba model was "
                                f"trained on {K} (policy.context_len); train longer contexts or pass --extrapolate")
            agent.eval()

            def run(seed: int, agent=agent, mode=mode) -> L.Histories:
                ctx = None
                if mode == "offline":  # a random episode per task, from seeds the trial never uses
                    pol = functools.partial(random_context_policy, family, rng=np.random.default_rng([seed, 99]))
                    ctx = fixed_context(mk, tasks, pol, 10_000_019 + seed, T)
                elif mode == "offline-expert":
                    ctx = fixed_context(mk, tasks, expert_policy(family), 10_000_019 + seed, T)
                make = lambda envs: AgentLearner(agent, len(envs), mode, ctx, device)  # noqa: E731
                return L.learning_histories(mk, tasks, make, episodes, seed)

            with torch.no_grad():
                out[f"{name} ({mode})"] = _repeat(tasks, seeds, run)
    if with_baselines:
        for name, make in baselines(family, probe).items():
            out[name] = _repeat(tasks, seeds, lambda s, make=make: L.learning_histories(mk, tasks, make, episodes, s))
    return out


# ------------------------------------------------------------------------------------------- reports
def report(curves: dict[str, Curve], family: str, out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """results.json, results.md and curves.png in out_dir; returns the JSON dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summ = {k: c.summary() for k, c in curves.items()}
    data = {**meta, "family": family, "methods": summ}
    atomic_write_json(out_dir / "results.json", data)
    bandit = family in BANDITS
    lines = [f"# In-context evaluation: {FAMILIES[family]} {meta.get('env_kwargs', {})}", "",
             f"{meta.get('n_tasks')} held-out tasks x {len(meta.get('seeds', []))} seeds, {meta.get('episodes')} "
             f"episode(s) per trial; mean ± 95% interval over trials."
             + (f" The models were pretrained on {meta['trained_on']}: out of distribution."
                if meta.get("trained_on", family) != family else ""), ""]
    if bandit:
        total = len(next(iter(summ.values()))["cum_regret_mean"])
        marks = sorted({m for m in (10, 50, 100, 200, 500, total) if m <= total})
        lines += ["| method | " + " | ".join(f"regret@{m}" for m in marks) + " |",
                  "|---|" + "---|" * len(marks)]
        for k, s in summ.items():
            cells = [f"{s['cum_regret_mean'][m - 1]:.1f} ± {s['cum_regret_ci95'][m - 1]:.1f}" for m in marks]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    else:
        E = len(next(iter(summ.values()))["return_mean"])
        marks = sorted({m for m in (1, 2, 5, 10, 20, 40, E) if m <= E})
        lines += ["| method | " + " | ".join(f"return ep {m}" for m in marks) + " |", "|---|" + "---|" * len(marks)]
        for k, s in summ.items():
            cells = [f"{s['return_mean'][m - 1]:.1f} ± {s['return_ci95'][m - 1]:.1f}" for m in marks]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(out_dir / "results.md", lambda f: f.write(text.encode()))
    _plot(summ, bandit, out_dir / "curves.png", f"{FAMILIES[family]}")
    return data


def _plot(summ: dict[str, Any], bandit: bool, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = "cum_regret" if bandit else "return"
    colors = plt.get_cmap("tab20").colors
    for i, (name, s) in enumerate(summ.items()):
        m, c = np.asarray(s[f"{key}_mean"]), np.asarray(s[f"{key}_ci95"])
        x = np.arange(1, len(m) + 1)
        style = "-" if " (" in name else "--"  # agents "NAME (mode)" solid, baselines dashed
        ax.plot(x, m, style, label=name, lw=1.5, color=colors[i % 20], marker=None if bandit else ".")
        ax.fill_between(x, m - c, m + c, alpha=0.12, color=colors[i % 20])
    ax.set_xlabel("step" if bandit else "episode")
    ax.set_ylabel("cumulative regret" if bandit else "return per episode")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_icrl_agents(checkpoints: Sequence[str | Path], names: Sequence[str] | None = None,
                     device: str | torch.device = "cpu") -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Agents from checkpoints -> ({name: agent}, family, env_kwargs). All must be of one family and kwargs."""
    from seqrl.checkpoint import policy_from_checkpoint
    from seqrl.policies.icrl import InContextAgent

    agents, fam, kw = {}, None, None
    for i, ck in enumerate(checkpoints):
        policy, preset, _ = policy_from_checkpoint(ck, device=device)
        if not isinstance(policy, InContextAgent):
            raise DataError(f"{ck}: agent {preset.agent!r} is not an in-context agent (dpt, ad)")
        rec = policy.spec.meta.get("icrl") or {}
        f = rec.get("family") or family_of(policy.spec.env.env_id)
        k = dict(rec.get("env_kwargs", policy.spec.env.env_kwargs))
        if fam is not None and (f, k) != (fam, kw):
            raise DataError(f"{ck}: trained on {f} {k}, the others on {fam} {kw}: evaluate one task family at a time")
        fam, kw = f, k
        name = names[i] if names and i < len(names) else f"{preset.agent}-{policy.config.backbone}"
        while name in agents:
            name += "'"
        agents[name] = policy
    return agents, fam, kw
