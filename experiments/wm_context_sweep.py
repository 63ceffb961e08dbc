"""Where imagination loses what a world model knows: reward accuracy and generation MSE against the context.

For each checkpoint (trained world models, e.g. from wm_compare.py) and each context C of --contexts, imagine each
of --sequences dataset episodes from its first step (seqrl.runners.imagine.score_imagination: C real steps through
the posterior, then the prior to the episode's end under the dataset's actions), with the prior's mode or a sample
(--modes). On DistractingMemory (cue at step 0, doors at step W + 1) a context of C leaves W + 1 - C imagined
hallway steps before the doors: reward accuracy against C shows how many imagined steps the cue survives, beside
the posterior's accuracy (every frame real) and the more common sign's (no model).

    python experiments/wm_context_sweep.py runs/wm/*/checkpoint.pt --contexts 1 2 4 6 8 9 --modes mode sample
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from seqrl.data.store import ReplayStore
from seqrl.runners.imagine import score_imagination, world_model_from_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--contexts", type=int, nargs="+", required=True)
    ap.add_argument("--modes", nargs="+", default=["mode"], choices=["mode", "sample"],
                    help="the prior's latent in imagination: its mode, or a sample")
    ap.add_argument("--sequences", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="which episodes are imagined (the same for every checkpoint)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/wm_context_sweep.json")
    args = ap.parse_args()
    stores: dict[str, ReplayStore] = {}
    rows = []
    for ckpt in args.checkpoints:
        model, meta = world_model_from_checkpoint(ckpt, args.device)
        did = meta["spec"]["meta"].get("dataset_id")
        if did not in stores:
            stores[did] = ReplayStore.from_minari(did)
        length = int(stores[did].episode_lengths.min())
        name = f"{model.config.backbone} {Path(ckpt).parent.name}"
        for mode in args.modes:
            for c in args.contexts:
                if not 1 <= c < length:
                    ap.error(f"--contexts: {c} leaves no step to imagine in episodes of {length} steps")
                torch.manual_seed(0)
                res, _ = score_imagination(model, stores[did], c, length - c, sequences=args.sequences, seed=args.seed,
                                           sample=mode == "sample")
                row = {"checkpoint": str(ckpt), "name": name, "mode": mode, "context": c, "horizon": length - c,
                       **{k: res[k] for k in ("mse_mean", "mse_hold_mean", "reward_accuracy",
                                              "reward_accuracy_posterior", "reward_accuracy_constant",
                                              "reward_steps")}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"command": "python experiments/wm_context_sweep.py " + " ".join(os.sys.argv[1:]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(rows, args.contexts))


def table(rows: list[dict], contexts: list[int]) -> str:
    """Imagined reward accuracy per checkpoint and mode against the context; the posterior's and the constant
    sign's (which do not depend on the context) last."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    lines = ["| model | latent | " + " | ".join(f"C = {c}" for c in contexts) + " | posterior | more common sign |",
             "|---|---|" + "---|" * len(contexts) + "---|---|"]
    for key in dict.fromkeys((r["name"], r["mode"]) for r in rows):
        rs = {r["context"]: r for r in rows if (r["name"], r["mode"]) == key}
        first = rs[contexts[0]]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(pct(rs[c]["reward_accuracy"]) for c in contexts)
                     + f" | {pct(first['reward_accuracy_posterior'])} | {pct(first['reward_accuracy_constant'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
