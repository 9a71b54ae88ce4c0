"""Planted prompts: how close PEZ gets to a known optimum, and how fast.

A target is the text feature of a planted prompt (random whole words), so the planted prompt itself
scores 1.0 and the gap 1 - similarity is how far a method is from the optimum. Every similarity is that
of the returned *string*, re-tokenized; the reference loop's own figure (of its best ids, which
may not survive decoding) is shown beside it, and the goals are judged against both. Per planted
prompt, in one process on one machine: the reference loop (``reference_loop.py``) recorded at several step
counts; the engine with its defaults and ``time_budget`` = a share (a tenth) of the reference's time at
``--budget-steps``; and the engine's time to the reference's similarity (``target_similarity``).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/planted.py --seeds 1 2
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pez_core  # noqa: E402
from reference_loop import reference_pez  # noqa: E402


PLANT_SEED_OFFSET = 1_000_003


def planted_ids(model: pez_core.PezModel, length: int, seed: int) -> list[int]:
    """A random prompt of whole words (ids that survive decoding and re-tokenizing)."""
    allowed = pez_core.allowed_token_ids(model.tokenizer, "words")
    # offset: the engine draws its start from the same vocabulary with a generator of the run's seed
    generator = torch.Generator().manual_seed(PLANT_SEED_OFFSET + seed)
    while True:
        ids = allowed[torch.randint(len(allowed), (length,), generator=generator)].tolist()
        if model.tokenize(model.decode(ids)) == ids:
            return ids


def recovered(planted: list[int], found: list[int]) -> int:
    """Planted tokens the found prompt holds, anywhere (a multiset overlap)."""
    return sum((Counter(planted) & Counter(found)).values())


def row(method: str, planted: list[int], prompt: str, ids: list[int], similarity: float, seconds: float,
        **extra) -> dict:
    return {"method": method, "similarity": similarity, "gap": 1 - similarity,
            "recovered": recovered(planted, ids), "length": len(planted), "seconds": seconds, "prompt": prompt, **extra}


def engine(model, target, planted, config: pez_core.PezConfig, method: str) -> dict:
    objective = pez_core.Objective.stack([[(target, 1.0)]])
    started = time.perf_counter()
    result = pez_core.optimize(model, objective, config)[0]
    seconds = time.perf_counter() - started
    return row(method, planted, result.prompt, result.token_ids, result.similarity, seconds, steps=result.steps,
               unpolished=result.unpolished_similarity)


@contextlib.contextmanager
def kick_candidates(count: int | None):
    """Polishing with another number of candidates per kick than the engine's (None: the engine's; 0: no kicks)."""
    default = pez_core.engine.polish.KICK_CANDIDATES
    pez_core.engine.polish.KICK_CANDIDATES = default if count is None else count
    try:
        yield
    finally:
        pez_core.engine.polish.KICK_CANDIDATES = default


def one_planted(model, args, seed: int, emit) -> list[dict]:
    ids = planted_ids(model, args.length, seed)
    text = model.decode(ids)
    with torch.no_grad():
        target = model.encode_texts([text])[0]
    logging.info("planted %d: %r", seed, text)
    ref = reference_pez(model, target, len(ids), steps=max(args.reference_steps), seed=seed,
                        record_at=set(args.reference_steps))
    rows = []
    for h in ref["history"]:
        # the loop keeps the best *ids*; the string a user gets from them re-tokenizes and may score lower
        with torch.no_grad():
            string_similarity = float(model.encode_texts([h["prompt"]])[0] @ target)
        rows.append(emit(row(f"reference loop, {h['step']} steps", ids, h["prompt"], model.tokenize(h["prompt"]),
                             string_similarity, h["seconds"], steps=h["step"], id_similarity=h["similarity"]),
                         text, seed))
    at = next(r for r in rows if r["steps"] == args.budget_steps)
    # judged against the reference's own figure (its ids) and against its string's
    r, r_string = at["id_similarity"], at["similarity"]
    budget = args.budget_share * at["seconds"]
    engine_seeds = args.engine_seeds or [seed]
    base = pez_core.PezConfig(prompt_len=len(ids), seed=engine_seeds[0], restarts=args.restarts)
    for polish, kicks in [(p, n) for p in args.polish for n in args.kick_candidates or [None]]:
        for engine_seed in engine_seeds:
            config = dataclasses.replace(base, time_budget=budget, polish=polish, seed=engine_seed)
            mode = polish if kicks is None else f"{polish} ({kicks} kick candidates)"
            label = f"engine, {budget:.1f} s budget, polish {mode}" + (
                f", engine seed {engine_seed}" if args.engine_seeds else "")
            with kick_candidates(kicks):
                found = engine(model, target, ids, config, label)
            rows.append(emit(found | {"polish": mode, "engine_seed": engine_seed, "goal": r + (1 - r) / 2,
                                      "goal_string": r_string + (1 - r_string) / 2}, text, seed))
    config = dataclasses.replace(base, time_budget=at["seconds"], target_similarity=min(1.0, r))
    found = engine(model, target, ids, config, f"engine, time to the reference's {r:.4f}")
    rows.append(emit(found | {"reached": found["similarity"] >= r}, text, seed))
    return rows


TABLE_HEAD = ["| planted (seed) | method | similarity (string) | reference's own figure (its ids) | gap to 1.0 "
              "| planted tokens recovered | wall s | goal: half the reference's gap (its ids; its string) | prompt |",
              "|---|---|---|---|---|---|---|---|---|"]


def table_row(r: dict) -> str:
    goal = ""
    if "goal" in r:
        goal = (f"≥ {r['goal']:.4f}: {'met' if r['similarity'] >= r['goal'] else 'NOT met'}; "
                f"≥ {r['goal_string']:.4f}: {'met' if r['similarity'] >= r['goal_string'] else 'NOT met'}")
    elif "reached" in r:
        goal = "reached" if r["reached"] else "not reached in the reference's time"
    own = f"{r['id_similarity']:.4f}" if "id_similarity" in r else ""
    return (f"| {r['seed']} | {r['method']} | {r['similarity']:.4f} | {own} | {r['gap']:.4f} | "
            f"{r['recovered']}/{r['length']} | {r['seconds']:.1f} | {goal} | `{r['prompt'][:50]}` |")


def table(rows: list[dict]) -> str:
    return "\n".join(TABLE_HEAD + [table_row(r) for r in rows])


def summary(rows: list[dict]) -> str:
    """Per polish mode, over every planted prompt and engine seed: goals met and the mean similarity."""
    lines = []
    for polish in dict.fromkeys(r["polish"] for r in rows if "goal" in r):
        runs = [r for r in rows if r.get("polish") == polish and "goal" in r]
        met = sum(r["similarity"] >= r["goal"] for r in runs)
        met_string = sum(r["similarity"] >= r["goal_string"] for r in runs)
        mean = sum(r["similarity"] for r in runs) / len(runs)
        lines.append(f"- polish {polish}: half the reference's gap met in {met} of {len(runs)} runs on its ids' "
                     f"figure, {met_string} of {len(runs)} on its string's; mean similarity {mean:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--length", type=int, default=8, help="planted prompt length in tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one planted prompt per seed")
    parser.add_argument("--reference-steps", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--budget-steps", type=int, default=1000, help="the reference step count the budget is cut from")
    parser.add_argument("--budget-share", type=float, default=0.1)
    parser.add_argument("--restarts", type=int, help="engine restarts (default: the engine's for the device)")
    parser.add_argument("--polish", nargs="+", default=["swap+prune", "swap", "off"], choices=pez_core.POLISH_MODES)
    parser.add_argument("--engine-seeds", type=int, nargs="+",
                        help="run the engine once per seed (default: once, with the planted prompt's seed)")
    parser.add_argument("--kick-candidates", type=int, nargs="+",
                        help="polish once per count of candidate tokens per kick (default: the engine's; 0: no kicks)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-seed", type=int, default=0,
                        help="seed of the random weights (the same model in every run and process)")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--results", type=Path, help="append each row here as one JSON line, as it is measured")
    args = parser.parse_args(argv)
    if args.budget_steps not in args.reference_steps:
        parser.error("--budget-steps must be one of --reference-steps")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.model_seed)  # random weights: without a seed every process has another model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pretrained = None if Path(args.model).is_file() else args.pretrained
    model = pez_core.load_model(args.model, pretrained, device=device)
    started = time.perf_counter()
    header = {"model": args.model, "pretrained": args.pretrained, "model_seed": args.model_seed,
              "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}

    def emit(item: dict, planted: str, seed: int) -> dict:
        item.update(planted=planted, seed=seed)
        sys.stderr.write(table_row(item) + "\n")
        if args.results:
            with args.results.open("a") as f:
                f.write(json.dumps(header | item) + "\n")
        return item

    sys.stderr.write("\n".join(TABLE_HEAD) + "\n")
    rows = [r for seed in args.seeds for r in one_planted(model, args, seed, emit)]
    sys.stdout.write(f"{args.model} ({args.pretrained}), {platform.processor() or platform.machine()}, "
                     f"torch threads {args.threads}, {time.strftime('%Y-%m-%d %H:%M')}, "
                     f"{time.perf_counter() - started:.0f} s in all\n\n{table(rows)}\n\n{summary(rows)}\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
