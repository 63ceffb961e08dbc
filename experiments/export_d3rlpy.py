"""Export a local Minari dataset (e.g. one made by `seqrl collect`) to a flat .npz for d3rlpy.

Runs under seqrl's interpreter (it reads the dataset with seqrl.data.minari_io.read_episodes):

    MINARI_DATASETS_PATH=... python experiments/export_d3rlpy.py seqrl/walker2d/medium-v0 walker2d-medium.npz

The .npz holds the arrays of d3rlpy.dataset.MDPDataset's constructor, one row per transition, episodes
back to back: observations (N, obs_dim) float32 (each episode's obs[:-1]: T rows for its T actions, the
final observation is dropped), actions (N, act_dim) float32, rewards (N,) float32, terminals (N,) and
timeouts (N,) float32 (the episode's terminations / truncations, a step with both counts as terminal, as
d3rlpy after 2.8.1 does while 2.8.1 rejects it; an episode that ends with neither, which
Minari allows, is marked as a timeout on its last step so that d3rlpy still splits it there). Besides these:
env_id, ref_min_score, ref_max_score (0-d arrays, NaN / "" when the dataset lacks them), which
experiments/d3rlpy_dt_score.py takes as defaults for --env, --ref-min and --ref-max.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqrl.data.minari_io import read_episodes  # noqa: E402


def main(dataset_id: str, out: str) -> None:
    episodes, ds, env_id = read_episodes(dataset_id)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for e in episodes:
        if not isinstance(e["obs"], np.ndarray):
            raise SystemExit(f"{dataset_id}: Dict/Tuple observations cannot go into a flat MDPDataset")
        T = len(e["act"])
        term = np.asarray(e["term"], np.float32).reshape(T)
        trunc = np.asarray(e["trunc"], np.float32).reshape(T) * (term == 0)  # d3rlpy 2.8.1 asserts no overlap
        if term[-1] == 0 and trunc[-1] == 0:
            trunc[-1] = 1.0
        cols["observations"].append(np.asarray(e["obs"][:T], np.float32).reshape(T, -1))
        cols["actions"].append(np.asarray(e["act"], np.float32).reshape(T, -1))
        cols["rewards"].append(np.asarray(e["rew"], np.float32).reshape(T))
        cols["terminals"].append(term)
        cols["timeouts"].append(trunc)
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    md = ds.storage.metadata
    arrays["env_id"] = np.array(env_id or "")
    for k in ("ref_min_score", "ref_max_score"):
        arrays[k] = np.array(float(md[k]) if md.get(k) is not None else np.nan)
    np.savez(out, **arrays)
    returns = [float(np.sum(e["rew"])) for e in episodes]
    print(f"{dataset_id} -> {out}: {len(episodes)} episodes, {len(arrays['actions'])} transitions, "
          f"obs {arrays['observations'].shape[1]}, act {arrays['actions'].shape[1]}, env {env_id}, "
          f"return mean {np.mean(returns):.1f} (min {min(returns):.1f}, max {max(returns):.1f}), "
          f"ref [{arrays['ref_min_score']}, {arrays['ref_max_score']}]")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
