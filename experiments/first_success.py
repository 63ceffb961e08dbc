"""Env steps to a success rate: the first env step at which a run's training success rate, averaged over the
logs of the last WINDOW env steps, reaches THRESHOLD. Agents log at different intervals (PPO once a rollout of
2,048 env steps, the world-model agents every few hundred), so the window is in env steps, not in logs.

    python experiments/first_success.py runs/wm27/t100/tmaze100_* [--threshold 0.9] [--window 10000] [--json F]

Reads each run's TensorBoard scalar charts/success_rate (written by the online sources while they train).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def success_curve(run: Path) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/success_rate" not in acc.Tags()["scalars"]:
        raise SystemExit(f"{run}: no charts/success_rate in {run / 'tb'}")
    return [(e.step, e.value) for e in acc.Scalars("charts/success_rate")]


def first_step(curve: list[tuple[int, float]], threshold: float, window: int) -> int | None:
    """The first logged env step s whose logs in (s - window, s] average at least `threshold`, once the run has
    logged for a whole window (s >= window)."""
    for s, _ in curve:
        if s < window:
            continue
        recent = [v for t, v in curve if s - window < t <= s]
        if sum(recent) / len(recent) >= threshold:
            return s
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = {}
    for run in args.runs:
        if not (run / "tb").is_dir():
            continue
        curve = success_curve(run)
        rows[run.name] = {"first_step": first_step(curve, args.threshold, args.window), "last_step": curve[-1][0]}
        print(f"{run.name:40s} {rows[run.name]['first_step'] or 'never':>8} (logged to {curve[-1][0]:,})")
    if args.json:
        args.json.write_text(json.dumps({"threshold": args.threshold, "window": args.window, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
