"""Kicks bounded by work: what each kick budget buys, next to the old wall-clock rule.

Without a time budget, polishing starts a kick only while it has scored fewer strings than
``KICK_WORK_SHARE`` x the scorer's ``strings_per_step_prompt`` x the prompts the PEZ loop scored (steps x
restarts x problems). Until then the limit
was time: kicks started only until polishing had taken as long as the loop. Per case this runs the PEZ
loop once (``polish="off"``), traces unbounded kicks on its prompts (the strings scored and the seconds
spent when each kick starts), and then polishes the same prompts with each work share. "time rule" is
the old rule replayed on this run's own timings: the strings scored when polishing's clock reached the
loop's seconds, i.e. what the old code did at this run's speed (at another speed it differed).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/kicks.py
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pez_core  # noqa: E402
from pez_core import PezConfig  # noqa: E402
from pez_core.demo import shapes  # noqa: E402
from pez_core.engine.loop import KICK_WORK_SHARE  # noqa: E402
from pez_core import ClipScorer  # noqa: E402
from pez_core.engine.polish import _Polisher  # noqa: E402
from pez_core.clip.tasks import _image_features  # noqa: E402
from planted import planted_ids  # noqa: E402


def shapes_case(count: int, steps: int):
    model = pez_core.load_model("shapes-demo", device="cpu", precision="fp32")
    images, _ = shapes.sample(31337, count, n_objects=1)
    objective = pez_core.Objective.stack([[(f, 1.0)] for f in _image_features(model, images)])
    return f"shapes-demo, {count} held-out images, {steps} steps", model, objective, PezConfig(steps=steps)


def planted_case(seed: int, steps: int):
    model = pez_core.load_model("ViT-B-32", "none", device="cpu", precision="fp32")
    ids = planted_ids(model, 8, seed)
    with torch.no_grad():
        target = model.encode_texts([model.decode(ids)])[0]
    objective = pez_core.Objective.stack([[(target, 1.0)]])
    return f"planted {seed}, random ViT-B-32, {steps} steps", model, objective, PezConfig(steps=steps, seed=seed)


def trace_kicks(scorer, prompts: list[str]) -> tuple[list[tuple[float, int]], float]:
    """(seconds into polishing, strings scored) at each kick's start, unbounded; and the total seconds."""
    starts, kick = [], _Polisher.kick
    began = time.perf_counter()

    def traced(self, position, problems):
        starts.append((time.perf_counter() - began, self.scored))
        return kick(self, position, problems)

    _Polisher.kick = traced
    try:
        pez_core.polish_prompts(scorer, prompts, "swap+prune")
    finally:
        _Polisher.kick = kick
    return starts, time.perf_counter() - began


def polish_with(scorer, prompts: list[str], budget: int | None) -> tuple[float, float, int]:
    """(mean similarity, seconds, kicks started) with this kick budget."""
    count, kick = [0], _Polisher.kick

    def counted(self, position, problems):
        count[0] += 1
        return kick(self, position, problems)

    _Polisher.kick = counted
    try:
        began = time.perf_counter()
        found = pez_core.polish_prompts(scorer, prompts, "swap+prune", kick_budget=budget)
        seconds = time.perf_counter() - began
    finally:
        _Polisher.kick = kick
    return sum(f.similarity for f in found) / len(found), seconds, count[0]


def measure(label: str, model, objective, config: PezConfig, shares: list[float]) -> list[str]:
    scorer = ClipScorer(model, objective, config.vocab)
    began = time.perf_counter()
    found = pez_core.optimize(model, objective, dataclasses.replace(config, polish="off"))
    loop_seconds = time.perf_counter() - began
    prompts = [r.prompt for r in found]
    loop_prompts = found[0].steps * len(found) * config.for_device(torch.device("cpu")).restarts
    starts, unbounded_seconds = trace_kicks(scorer, prompts)
    # the old rule: kicks start until polishing has taken as long as the loop
    time_rule = next((scored for seconds, scored in starts if seconds >= loop_seconds), None)
    logging.info("%s: loop %.1f s, %d prompts; kick starts %s", label, loop_seconds, loop_prompts, starts)
    unpolished = sum(r.similarity for r in found) / len(found)
    lines = [f"\n{label}: PEZ loop {loop_seconds:.1f} s ({loop_prompts} prompts scored), similarity {unpolished:.4f}; "
             f"unbounded kicks: {len(starts)} started, polishing {unbounded_seconds:.1f} s",
             "| kick budget | strings | kicks started | mean similarity | polishing s |", "|---|---|---|---|---|"]
    budgets = [("time rule (this run's timings)", time_rule), ("no kicks", 0)]
    default = KICK_WORK_SHARE * scorer.strings_per_step_prompt  # strings per loop prompt the engine allows
    budgets += [(f"{s:g} strings per loop prompt" + (" (default)" if s == default else ""), int(s * loop_prompts))
                for s in shares]
    budgets.append(("unbounded", None))
    for name, budget in budgets:
        similarity, seconds, kicks = polish_with(scorer, prompts, budget)
        lines.append(f"| {name} | {'all' if budget is None else budget} | {kicks} | {similarity:.4f} | {seconds:.1f} |")
        logging.info("%s", lines[-1])
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--shapes", type=int, nargs=2, default=[10, 3000], metavar=("IMAGES", "STEPS"))
    parser.add_argument("--planted", type=int, nargs=2, default=[1, 300], metavar=("SEED", "STEPS"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    for case in (shapes_case(*args.shapes), planted_case(*args.planted)):
        print("\n".join(measure(*case, args.shares)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
