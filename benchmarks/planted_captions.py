"""Planted captions: does the fluency prior help or hurt when the optimum is fluent English?

On a random-weight ViT-B-32 (real architecture, real vocabulary) each target is the text feature of a
written caption of an everyday scene, so the caption itself scores 1.0. All captions run as the problems of
one search, with fluency off and with SmolLM2-135M as the prior, under the same time budget. Per weight:
the mean similarity, the planted words recovered, and the prior's perplexity of the prompts (reported, not
evidence of readability: the prior is its own judge here).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/planted_captions.py   # needs `make judge`
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pez_core  # noqa: E402
from pez_core.clip.objective import optimize  # noqa: E402
from readability import load_judge  # noqa: E402

CAPTIONS = (
    "a dog runs on the beach", "two cups of coffee on a table", "a red car parked in the street",
    "a man riding a bike in the park", "a cat sleeping on a sofa", "children playing football on grass",
    "a bowl of fresh fruit", "a train at the station", "a woman reading a book by the window",
    "snow on the mountains at sunrise", "a plate of pasta with cheese", "boats in a small harbor",
    "a bird sitting on a branch", "an old house with a garden", "people walking in the rain",
    "a kitchen with a wooden table",
)
MODEL_SEED = 0


def recovered(caption: str, prompt: str) -> int:
    """Planted words the prompt holds, anywhere (a multiset overlap of words)."""
    return sum((Counter(caption.split()) & Counter(prompt.lower().split())).values())


def run(model, captions, targets, weight: float, prior, args) -> dict:
    objective = pez_core.Objective.stack([[(t, 1.0)] for t in targets])
    config = pez_core.PezConfig(prompt_len=args.length, steps=args.steps, seed=args.seed, fluency=weight,
                                time_budget=args.time_budget)
    started = time.perf_counter()
    results = optimize(model, objective, config, prior=prior if weight else None)
    seconds = time.perf_counter() - started
    prompts = [r.prompt for r in results]
    log_probs = prior.log_probs(prompts)
    return {"fluency": weight, "similarity": sum(r.similarity for r in results) / len(results),
            "recovered": sum(recovered(c, p) for c, p in zip(captions, prompts)),
            "planted": sum(len(c.split()) for c in captions), "steps": results[0].steps,
            "prior_perplexity": math.exp(-sum(log_probs) / len(log_probs)), "seconds": round(seconds, 1),
            "prompts": prompts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.02, 0.05])
    parser.add_argument("--prior", default="smollm2", help="smollm2 (make judge), or an LM folder / bundled LM")
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100_000, help="the time budget ends the run first")
    parser.add_argument("--time-budget", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captions", type=int, default=len(CAPTIONS))
    parser.add_argument("--results", type=Path, help="append each row here as one JSON line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(MODEL_SEED)  # random weights: the same model in every process
    model = pez_core.load_model("ViT-B-32", "none", device="cpu")
    captions = CAPTIONS[:args.captions]
    with torch.no_grad():
        targets = model.encode_texts(list(captions))
    prior = load_judge(args.prior)
    print(f"ViT-B-32 (random weights, seed {MODEL_SEED}); {len(captions)} planted captions; prior {prior.name}; "
          f"time budget {args.time_budget:g} s each; prompt length {args.length}")
    rows = []
    for weight in args.weights:
        row = run(model, captions, targets, weight, prior, args)
        rows.append(row)
        if args.results:
            with args.results.open("a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
        print(f"fluency {weight:<5g} similarity {row['similarity']:.4f}  recovered {row['recovered']}/{row['planted']}"
              f"  prior perplexity {row['prior_perplexity']:.1f}  {row['steps']} steps  {row['seconds']} s", flush=True)
        for caption, prompt in list(zip(captions, row["prompts"]))[:4]:
            print(f"    {caption!r:45} -> {prompt!r}")
    off = rows[0]
    for row in rows[1:]:
        ok = row["recovered"] >= off["recovered"] and row["similarity"] >= off["similarity"] - 1e-4
        print(f"target (fluency {row['fluency']:g}: recovered ≥ {off['recovered']} and similarity ≥ "
              f"{off['similarity']:.4f}): {row['recovered']}, {row['similarity']:.4f} — {'met' if ok else '**NOT met**'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
