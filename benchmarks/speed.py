"""Speed: the naive reference loop against the engine, same model, same target, one process.

    python benchmarks/speed.py --model ViT-B-32 --pretrained none --steps 30

Prints ms/step of each, their ratio, the cost of 8 restarts over 1, and the best similarity
each reached at equal steps; then the time to polish the engine's prompt (swap+prune, no kicks) with
candidates sharing their common start and with every candidate run through the whole tower.
"""
from __future__ import annotations

import argparse
import logging
import platform
import time

import torch

import pez_core
from pez_core import Objective, PezConfig
from pez_core.clip import model as models
from pez_core import ClipScorer
from pez_core import polish_prompts

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:  # run as a script from benchmarks/
    from reference_loop import reference_pez


def engine_ms_per_step(model, objective, prompt_len, steps, restarts, vocab, seed=0):
    """The PEZ loop alone (polishing off: it is timed on its own below)."""
    config = PezConfig(prompt_len=prompt_len, steps=steps, restarts=restarts, vocab=vocab, seed=seed, polish="off")
    pez_core.optimize(model, objective, PezConfig(prompt_len=prompt_len, steps=3, restarts=restarts, vocab=vocab,
                                                  polish="off"))
    started = time.perf_counter()
    result = pez_core.optimize(model, objective, config)[0]
    return 1000 * (time.perf_counter() - started) / steps, result


def polish_seconds(model, objective, prompt: str, shared_starts: bool):
    """Seconds to polish ``prompt`` (swap+prune, no kicks: the same work either way), and the result."""
    before, models.SHARED_STARTS = models.SHARED_STARTS, shared_starts
    try:
        started = time.perf_counter()
        result = polish_prompts(ClipScorer(model, objective, "words"), [prompt], "swap+prune", kick_budget=0)[0]
        return time.perf_counter() - started, result
    finally:
        models.SHARED_STARTS = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--restarts", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = pez_core.load_model(args.model, args.pretrained, args.device, args.precision)
    target = model.encode_texts(["a photograph of a red fox in the snow, golden hour, highly detailed"])[0]
    objective = Objective.stack([[(target, 1.0)]])
    L, steps = args.prompt_len, args.steps

    reference_pez(model, target, L, steps=2)  # warm-up
    reference = reference_pez(model, target, L, steps=steps)
    rows = [("reference loop (77 tokens, 2 passes, full vocab, host sync)", reference["ms_per_step"],
             reference["similarity"])]
    ms_full, res_full = engine_ms_per_step(model, objective, L, steps, 1, "full")
    rows.append(("engine, 1 restart, full vocab", ms_full, res_full.similarity))
    ms_words, res_words = engine_ms_per_step(model, objective, L, steps, 1, "words")
    rows.append(("engine, 1 restart, words vocab (default)", ms_words, res_words.similarity))
    ms_many, res_many = engine_ms_per_step(model, objective, L, steps, args.restarts, "full")
    rows.append((f"engine, {args.restarts} restarts, full vocab", ms_many, res_many.similarity))

    print(f"# {args.model} ({args.pretrained}) on {model.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {model.dtype}, L={L}, {steps} steps")
    print(f"{'loop':<62} {'ms/step':>9} {'best sim':>9}")
    for name, ms, sim in rows:
        print(f"{name:<62} {ms:>9.1f} {sim:>9.4f}")
    print(f"speed-up of the engine over the reference loop (1 restart, full vocab): {reference['ms_per_step'] / ms_full:.2f}x")
    print(f"cost of {args.restarts} restarts over 1 restart (full vocab): {ms_many / ms_full:.2f}x")
    # shared starts first: the tokenizer's word cache then favours the plain run, not the one measured
    shared_s, shared = polish_seconds(model, objective, res_words.prompt, shared_starts=True)
    plain_s, plain = polish_seconds(model, objective, res_words.prompt, shared_starts=False)
    print(f"polishing the words prompt (swap+prune, no kicks): {shared_s:.2f} s with shared starts, "
          f"{plain_s:.2f} s running every candidate whole: {plain_s / shared_s:.2f}x; "
          f"same prompt: {'yes' if shared.prompt == plain.prompt else 'no'} (similarity {shared.similarity:.4f} / {plain.similarity:.4f})")


if __name__ == "__main__":
    main()
