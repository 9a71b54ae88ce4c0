"""Polish modes on the same PEZ prompts: attribute recall, similarity and words on held-out shapes images.

PEZ runs once per image set with the nodes' defaults and ``polish="off"``; every polish mode then starts
from those same prompts (what the engine does after its loop), so the modes differ only by polishing.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/polish_modes.py --sets 31337:30 31340:60
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pez_core  # noqa: E402
from pez_core import PezConfig, shapes  # noqa: E402
from pez_core.objective import ClipScorer  # noqa: E402
from pez_core.tasks import _image_features  # noqa: E402
from quality import match_single  # noqa: E402


def measure(model, seed: int, count: int, steps: int) -> list[dict]:
    images, scenes = shapes.sample(seed, count, n_objects=1)
    started = time.perf_counter()
    found = pez_core.invert(model, images, PezConfig(steps=steps, polish="off"))
    loop_seconds = time.perf_counter() - started
    scorer = ClipScorer(model, pez_core.Objective.stack([[(f, 1.0)] for f in _image_features(model, images)]))
    rows = []
    for mode in pez_core.POLISH_MODES:
        started = time.perf_counter()
        if mode == "off":
            prompts, sims = [r.prompt for r in found], [r.similarity for r in found]
        else:
            polished = pez_core.polish_prompts(scorer, [r.prompt for r in found], mode)
            prompts, sims = [p.prompt for p in polished], [p.similarity for p in polished]
        recall = sum(match_single(p, s).recall for p, s in zip(prompts, scenes))
        rows.append({"set": f"{count} images, seed {seed}", "mode": mode, "recall": recall, "count": count,
                     "similarity": sum(sims) / count, "words": sum(len(p.split()) for p in prompts) / count,
                     "seconds": loop_seconds if mode == "off" else time.perf_counter() - started,
                     "example": prompts[0]})
        logging.info("%s", rows[-1])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo")
    parser.add_argument("--sets", nargs="+", default=["31337:30", "31340:60"],
                        help="held-out image sets as SEED:COUNT (31337 is quality.py's; training never uses these)")
    parser.add_argument("--steps", type=int, default=PezConfig().steps, help="PEZ steps (default: the nodes')")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    model = pez_core.load_model(args.model, device="cpu", precision="fp32")
    rows = []
    for spec in args.sets:
        seed, count = (int(x) for x in spec.split(":"))
        rows += measure(model, seed, count, args.steps)
    print(f"{args.model}, {args.steps} steps, node defaults otherwise, {time.strftime('%Y-%m-%d')}\n")
    print("| image set | polish | attribute recall | mean sim | words | s (PEZ loop; polishing) | example (image 1) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['mode']} | {r['recall']}/{r['count']} ({100 * r['recall'] / r['count']:.0f} %) | "
              f"{r['similarity']:.4f} | {r['words']:.2f} | {r['seconds']:.1f} | `{r['example']}` |")
    totals: dict[str, list[int]] = {}
    for r in rows:
        totals.setdefault(r["mode"], [0, 0])
        totals[r["mode"]][0] += r["recall"]
        totals[r["mode"]][1] += r["count"]
    print("\nAll sets: " + "; ".join(f"{m} {a}/{n} ({100 * a / n:.0f} %)" for m, (a, n) in totals.items())
          + " — target ≥ 90 % with ≤ 8 words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
