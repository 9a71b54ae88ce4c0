"""Polish modes on the same PEZ prompts: attribute recall, similarity and words on held-out shapes images.

PEZ runs once per image set with the nodes' defaults and ``polish="off"``; every polish mode then starts
from those same prompts (what the engine does after its loop), so the modes differ only by polishing.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/polish_modes.py --sets 31337:30 31340:60
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time

import torch

import pez_core
from pez_core import ClipScorer, PezConfig
from pez_core.clip.tasks import _image_features
from pez_core.demo import shapes
from pez_core.demo.grading import match_single


def measure(model, seed: int, count: int, steps: int, floorless: list[float]) -> list[dict]:
    images, scenes = shapes.sample(seed, count, n_objects=1)
    started = time.perf_counter()
    found = pez_core.invert(model, images, PezConfig(steps=steps, polish="off"))
    loop_seconds = time.perf_counter() - started
    scorer = ClipScorer(model, pez_core.Objective.stack([[(f, 1.0)] for f in _image_features(model, images)]))
    rows = []
    # "prune -5 %": pruning allowed below PEZ's own score (no floor), within a total budget: what the
    # stray words are worth to the CLIP (not a mode the engine offers: it never goes below PEZ's score)
    modes = [*pez_core.POLISH_MODES, *(f"prune -{b:.0%}" for b in floorless)]
    for mode in modes:
        started = time.perf_counter()
        if mode == "off":
            prompts, sims = [r.prompt for r in found], [r.similarity for r in found]
        elif mode.startswith("prune -"):
            budget = floorless[modes.index(mode) - len(pez_core.POLISH_MODES)]
            polished = _floorless_prune(scorer, [r.prompt for r in found], budget)
            prompts, sims = [p.prompt for p in polished], [p.similarity for p in polished]
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


def _floorless_prune(scorer, prompts: list[str], budget: float):
    saved = pez_core.engine.polish.PRUNE_BUDGET
    pez_core.engine.polish.PRUNE_BUDGET = budget
    try:
        return pez_core.polish_prompts(scorer, prompts, "prune", floor=[-math.inf] * len(prompts))
    finally:
        pez_core.engine.polish.PRUNE_BUDGET = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo")
    parser.add_argument("--sets", nargs="+", default=["31337:30", "31340:60"],
                        help="held-out image sets as SEED:COUNT (31337 is quality.py's; training never uses these)")
    parser.add_argument("--steps", type=int, default=PezConfig().steps, help="PEZ steps (default: the nodes')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--floorless-budgets", type=float, nargs="*", default=[],
                        help="also prune with no floor (below PEZ's own score) within these total budgets, e.g. 0.01 0.05")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    model = pez_core.load_model(args.model, device="cpu", precision="fp32")
    rows = []
    for spec in args.sets:
        seed, count = (int(x) for x in spec.split(":"))
        rows += measure(model, seed, count, args.steps, args.floorless_budgets)
    print(f"{args.model}, {args.steps} steps, node defaults otherwise, {time.strftime('%Y-%m-%d')}\n")
    print("| image set | polish | attribute recall | mean sim | words | s (PEZ loop; polishing) | example (image 1) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['mode']} | {r['recall']}/{r['count']} ({100 * r['recall'] / r['count']:.0f} %) | "
              f"{r['similarity']:.4f} | {r['words']:.2f} | {r['seconds']:.1f} | `{r['example']}` |")
    totals: dict[str, list[int]] = {}
    for r in (r for r in rows if not r["mode"].startswith("prune -")):
        totals.setdefault(r["mode"], [0, 0])
        totals[r["mode"]][0] += r["recall"]
        totals[r["mode"]][1] += r["count"]
    print("\nAll sets: " + "; ".join(f"{m} {a}/{n} ({100 * a / n:.0f} %)" for m, (a, n) in totals.items())
          + " — target ≥ 90 % with ≤ 8 words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
