"""Minari <-> ReplayStore: load any local Minari dataset, write new ones atomically.

Dataset ids follow Minari's naming, ``namespace/env/name-vN`` (ours: ``seqrl/hopper/medium-v0``).
Reference scores live in the dataset's metadata (`ref_min_score`, `ref_max_score`), so that
`minari.get_normalized_score` gives D4RL-comparable numbers; the store carries them in `meta` and
every checkpoint carries the store's `meta`, so evaluation needs nothing else.

Stream ids and per-episode meta. Each episode's stream id and meta dict travel as Minari episode
metadata: attributes of the episode's group in the HDF5 file (`seqrl_stream`, an int, and `seqrl_meta`,
the dict as a JSON string), written with `storage.update_episode_metadata` and read back with
`storage.get_episode_metadata`, the mechanism Minari's own `EpisodeMetadataCallback` uses. They are read
from the file, so they survive `minari.load_dataset` (and episode filtering), need no per-step copy
(episode `infos` would repeat them T+1 times), and leave Minari's own fields alone (reset `seed` and
`options`). `minari.combine_datasets` copies steps but not these attributes: a combined dataset loads as
stream 0 with empty meta, as does any dataset written without them (seqrl's own composite datasets go
through `read_episodes` and `write_dataset` and keep them).

Observations are written losslessly (`jpeg_encoding=False`): the store keeps uint8 images exact.
Dict and Tuple observations travel as Minari keeps them, nested dicts and tuples of arrays with T+1
rows each (`read_episodes` gives them so; the store keeps one column per leaf); `write_dataset` takes
them in that layout, as flat dicts of leaves ("a/b"), or as per-step observations, and writes Minari's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np

from seqrl.data.store import (COMPOSITE, ReplayStore, check_box_bounds, check_spaces, episode_extras, obs_columns,
                              unflatten_obs)
from seqrl.errors import DataError, WriteError
from seqrl.io import atomic_write
from seqrl.presets import differences


def datasets_root() -> Path:
    """Minari's local datasets folder: $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def dataset_path(dataset_id: str) -> Path:
    return datasets_root() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    return (dataset_path(dataset_id) / "data").is_dir()


def _missing_message(dataset_id: str) -> str:
    from seqrl.presets import find_env_for_dataset

    msg = f"dataset {dataset_id!r} is not in {datasets_root()} (set MINARI_DATASETS_PATH to look elsewhere)."
    env = find_env_for_dataset(dataset_id)
    if env is not None:
        quality = dataset_id[len(env.dataset_prefix) + 1 :].rsplit("-v", 1)[0]
        if quality in env.qualities and dataset_id == env.dataset_id(quality):
            msg += f" Create it here with: seqrl collect --env {env.name} --quality {quality}"
        else:
            msg += (f" Env preset {env.name!r} makes {[env.dataset_id(q) for q in env.qualities]} "
                    f"(seqrl collect --env {env.name} --quality Q)")
    else:
        msg += f" With network access: minari download {dataset_id}"
    return msg


def read_episodes(dataset_id: str) -> tuple[list[dict[str, Any]], Any, str | None]:
    """A local Minari dataset's episodes (obs with T+1 rows, for Dict/Tuple spaces nested dicts/tuples of
    such arrays; act, rew, term, trunc, stream, meta), the dataset and its env id.

    Raises DataError when it is missing (saying how to make it) or cannot be read."""
    import minari

    if not dataset_exists(dataset_id):
        raise DataError(_missing_message(dataset_id))
    try:
        ds = minari.load_dataset(dataset_id)
        episodes = [{"obs": e["observations"], "act": e["actions"], "rew": e["rewards"], "term": e["terminations"],
                     "trunc": e["truncations"], "stream": int(m.get("seqrl_stream", 0)),
                     "meta": json.loads(m.get("seqrl_meta", "{}"))}
                    for e, m in zip(ds.storage.get_episodes(ds.episode_indices),
                                    ds.storage.get_episode_metadata(ds.episode_indices))]
        env_spec = ds.storage.metadata.get("env_spec")
        env_id = json.loads(env_spec)["id"] if isinstance(env_spec, str) else None
    except Exception as e:  # h5py raises OSError on truncated files; json/KeyError on broken metadata
        raise DataError(f"dataset {dataset_id!r} at {dataset_path(dataset_id)} is corrupt or truncated "
                        f"({type(e).__name__}: {e})") from e
    return episodes, ds, env_id


def load_store(dataset_id: str) -> ReplayStore:
    """Read a local Minari dataset into a ReplayStore (one concatenation per column, no per-step loop)."""
    episodes, ds, env_id = read_episodes(dataset_id)
    metadata = ds.storage.metadata
    meta = {"dataset_id": dataset_id, "env_id": env_id, "ref_min_score": metadata.get("ref_min_score"),
            "ref_max_score": metadata.get("ref_max_score")}
    store = ReplayStore.from_episodes(episodes, ds.observation_space, ds.action_space, meta)  # checks observations
    if isinstance(ds.action_space, gym.spaces.Box):
        check_box_bounds("actions", np.concatenate([np.asarray(e["act"], np.float32).reshape(len(e["act"]), -1)
                                                    for e in episodes]), ds.action_space, dataset_id)
    return store


def check_env_matches(store: ReplayStore, env_or_id: gym.Env | str,
                      env_kwargs: Mapping[str, Any] | None = None) -> None:
    """Raise DataError when the store was recorded on another env id (its Minari env_spec), or when its
    spaces differ from the environment's (an id is made with `env_kwargs`)."""
    recorded, name = store.meta.get("env_id"), store.meta.get("dataset_id", "store")
    if isinstance(env_or_id, str) and recorded and recorded != env_or_id:
        raise DataError(f"dataset {name!r} was recorded on {recorded}, not on {env_or_id}: evaluate it on the env "
                        f"it was recorded on (--env {recorded} or its preset)")
    env = gym.make(env_or_id, **(env_kwargs or {})) if isinstance(env_or_id, str) else env_or_id
    try:
        check_spaces(store.observation_space, store.action_space, env, store.meta.get("dataset_id", "store"))
    finally:
        if isinstance(env_or_id, str):
            env.close()


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Point Minari at another datasets root for the duration (it reads the variable on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_dataset(
    dataset_id: str,
    episodes: Sequence[Mapping[str, np.ndarray]],
    env_id: str,
    ref_min_score: float,
    ref_max_score: float,
    algorithm_name: str,
    description: str,
    observation_space: gym.Space | None = None,
    recipe: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write episodes (obs with T+1 rows, act, rew, term, trunc; optionally stream, an int, and meta, a
    JSON-able dict) as a Minari HDF5 dataset, atomically. `observation_space` defaults to the env's (made
    once, only when it is needed: for Dict/Tuple observations).

    The dataset is first created under a temporary root beside the real one and moved into place only
    once complete, so an interrupted write never leaves a half-made dataset holding the id. `recipe` (a
    JSON-able dict of what made the data) is kept in the dataset's metadata (`dataset_recipe` reads it back).
    `replace`: an existing dataset of that id is swapped for the new one once the new one is complete.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    if not episodes:
        raise DataError(f"{dataset_id}: no episodes to write")
    final = dataset_path(dataset_id)
    if final.exists() and not replace:
        raise DataError(f"dataset {dataset_id!r} already exists at {final}")
    buffers, ep_meta = [], []
    space = observation_space
    size = 0  # bytes of the episodes' arrays, for the free-space check
    for i, e in enumerate(episodes):
        T, name = len(e["rew"]), f"{dataset_id}: episode {i}"
        obs = e["obs"]
        if isinstance(obs, (Mapping, tuple)) or (len(obs) and isinstance(obs[0], (Mapping, tuple))):
            if space is None:
                space = _env_observation_space(env_id)
            if not isinstance(space, COMPOSITE):
                raise DataError(f"{name}: observations are dicts or tuples, {env_id}'s space is {space}")
            leaves = obs_columns(obs, space, name)  # {leaf: (T+1, ...)}, keys checked against the space
        else:
            leaves = {"": np.asarray(obs)}
        for k, x in leaves.items():
            if T == 0 or len(x) != T + 1:
                raise DataError(f"{dataset_id}: episode {i} needs T+1 observations for T>0 steps, got {len(x)}"
                                f"{f' of {k!r}' if k else ''} for {T}")
        fields = [("obs" + (f" {k!r}" if k else ""), x) for k, x in leaves.items()]
        for what, x in [*fields, ("act", e["act"]), ("rew", e["rew"])]:
            if not np.isfinite(np.asarray(x, np.float64)).all():
                raise DataError(f"{name}: {what} holds NaN or inf")
        stream, meta = episode_extras(e, name)
        ep_meta.append({"seqrl_stream": stream, "seqrl_meta": json.dumps(meta)})
        obs = leaves[""] if "" in leaves else unflatten_obs(leaves, space)  # Minari's nested layout
        buffers.append(EpisodeBuffer(id=i, observations=obs, actions=np.asarray(e["act"]),
                                     rewards=np.asarray(e["rew"], np.float64),
                                     terminations=np.asarray(e["term"], bool), truncations=np.asarray(e["trunc"], bool)))
        size += sum(x.nbytes for x in leaves.values()) + buffers[-1].actions.nbytes + buffers[-1].rewards.nbytes
    root = datasets_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_roots(root)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".seqrl-tmp-{os.getpid()}-", dir=root))
    except OSError as e:
        raise WriteError(f"cannot write datasets to {root} (MINARI_DATASETS_PATH): {e.strerror or e}") from e
    free = shutil.disk_usage(root).free
    if free < 2 * size:  # h5py can crash the process on a full disk; the old dataset would survive, this one not
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise WriteError(f"not enough free disk space in {root} for dataset {dataset_id!r}: about {size / 1e6:.0f} MB "
                         f"needed twice over, {free / 1e6:.0f} MB free")
    try:
        try:
            with _minari_root(tmp_root):
                storage = minari.create_dataset_from_buffers(
                    dataset_id, buffers, env=env_id, eval_env=env_id, algorithm_name=algorithm_name, author="seqrl",
                    author_email="seqrl@localhost", code_permalink="https://github.com/seqrl/seqrl",
                    ref_min_score=float(ref_min_score), ref_max_score=float(ref_max_score),
                    description=description, data_format="hdf5", jpeg_encoding=False, observation_space=space,
                ).storage
                storage.update_episode_metadata(ep_meta, range(len(ep_meta)))
                if recipe is not None:
                    storage.update_metadata({"seqrl_recipe": json.dumps(recipe, sort_keys=True)})
        except (OSError, RuntimeError) as e:  # h5py reports a failed write (a full disk) as RuntimeError
            raise WriteError(f"cannot write dataset {dataset_id!r} under {root}: {str(e).splitlines()[0][:200]}; "
                             f"any previous dataset of that id is unchanged") from e
        # namespace metadata files (seqrl/, seqrl/hopper/) first, then the dataset folder in one rename
        for path in (tmp_root / dataset_id).rglob("*"):  # on disk before the rename makes them visible
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        for meta in tmp_root.rglob("namespace_metadata.json"):
            target = root / meta.relative_to(tmp_root)
            if not target.exists():
                atomic_write(target, lambda f, m=meta: f.write(m.read_bytes()))
        final.parent.mkdir(parents=True, exist_ok=True)
        if replace and final.exists():  # the old one moves aside only now that the new one is complete
            os.replace(final, tmp_root / "replaced")
        try:
            os.replace(tmp_root / dataset_id, final)
        except OSError as e:  # another process made it since the check above
            raise DataError(f"dataset {dataset_id!r} already exists at {final}") from e
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def reuse_dataset(dataset_id: str, recipe: Mapping[str, Any], rebuild: bool, legacy_ok: bool = False) -> bool:
    """Whether a local dataset of that id, made with `recipe`, is there to reuse. False: build it (replacing
    the one there, if any, which `rebuild` allows). DataError when one was made with another recipe and not
    `rebuild`. `legacy_ok`: one that records no recipe (made before seqrl kept them) is reused, with a warning."""
    if rebuild or not dataset_exists(dataset_id):
        return False
    have = dataset_recipe(dataset_id)
    if have is None and legacy_ok:
        warnings.warn(f"dataset {dataset_id!r} records no recipe (made before seqrl kept them); reusing it as "
                      f"it is. `seqrl collect ... --rebuild` makes it again", stacklevel=3)
        return True
    if have == recipe:
        return True
    diff = "no recipe recorded" if have is None else "; ".join(differences(have, dict(recipe)))
    raise DataError(f"dataset {dataset_id!r} exists but was made with another recipe ({diff}). Pass --rebuild "
                    f"to make it again and replace it, or set MINARI_DATASETS_PATH to another folder to keep both")


def dataset_recipe(dataset_id: str) -> dict[str, Any] | None:
    """The recipe `write_dataset` recorded for a local dataset (None for datasets made without one)."""
    import minari

    try:
        raw = minari.load_dataset(dataset_id).storage.metadata.get("seqrl_recipe")
        return None if raw is None else json.loads(raw)
    except Exception as e:  # as read_episodes: h5py, json and key errors of a broken dataset
        raise DataError(f"dataset {dataset_id!r} at {dataset_path(dataset_id)} is corrupt or truncated "
                        f"({type(e).__name__}: {e})") from e


def _env_observation_space(env_id: str) -> gym.Space:
    env = gym.make(env_id)
    try:
        return env.observation_space
    finally:
        env.close()


def _remove_stale_temp_roots(root: Path) -> None:
    """Remove temporary roots left by writers that were killed (their process is gone)."""
    for tmp in root.glob(".seqrl-tmp-*"):
        try:
            pid = int(tmp.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def store_meta_scores(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    return None if lo is None or hi is None else (float(lo), float(hi))
