"""Language-model prompts: template alone / random prompts / PEZ / PEZ + fluency, with transfer.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/lm.py --seeds 0 1 --fluency 0 0.3 1 3

On the bundled demo task (``pez_core/demo/bundled/tiny-lm``: its training and validation reviews, template
"{input} {prompt} it was", verbalizer great/terrible), every method's prompt is scored by validation
accuracy and perplexity (the prompt tokens' own NLL in context, exponentiated) on the LM it was learnt on
and, unchanged as a string, on ``tiny-lm-b`` (trained independently, on a corpus drawn with another seed,
with another tokenizer). Random prompts: ``--random`` strings of the same length from the same vocabulary.
A GPT-2 Large / SST-2 row is measured only where ``--gpt2-large`` and ``--sst2`` point at local copies;
otherwise the script says it was not measured. Prints a Markdown table; ``--json`` writes every run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pez_core import POLISH_MODES, PezConfig
from pez_core import lm as L
from pez_core.lm.data import load_examples, parse_verbalizer


def _row(method: str, runs: list[dict]) -> str:
    def cell(key: str, transfer: bool = False) -> str:
        values = [(r["transfer"] if transfer else r)[key] for r in runs]
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        if key == "perplexity":  # spans orders of magnitude: geometric mean (range)
            spread = f" ({min(values):.0f}–{max(values):.0f})" if len(values) > 1 else ""
            return f"{statistics.geometric_mean(values):.0f}{spread}"
        spread = f" ± {statistics.pstdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"
    seconds = [r["seconds"] for r in runs if "seconds" in r]
    return (f"| {method} | {len(runs)} | {cell('valid_accuracy')} | {cell('perplexity')} | "
            f"{cell('valid_accuracy', True)} | {cell('perplexity', True)} | "
            f"{f'{statistics.mean(seconds):.0f}' if seconds else '-'} |")


def _score(lms, template, verbalizer, valid, prompt: str) -> dict:
    """Accuracy and perplexity of one prompt string on the LM it was learnt on and on the transfer LM."""
    mine, other = (L.evaluate_prompt(lm, template, verbalizer, valid, prompt) for lm in lms)
    return {"prompt": prompt, "valid_accuracy": mine.accuracy, "perplexity": mine.perplexity,
            "transfer": {"valid_accuracy": other.accuracy, "perplexity": other.perplexity}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fluency", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0])
    parser.add_argument("--steps", type=int, default=L.DEMO_STEPS)
    parser.add_argument("--restarts", type=int, default=L.DEMO_RESTARTS)
    parser.add_argument("--random", type=int, default=8, help="random prompts per seed")
    parser.add_argument("--polish", default=PezConfig.polish, choices=POLISH_MODES,
                        help="after each PEZ run (default: the engine's, %(default)s)")
    parser.add_argument("--gpt2-large", help="local folder of GPT-2 Large (not measured without it)")
    parser.add_argument("--sst2", type=Path, help="local SST-2 validation file (.jsonl/.csv, text/label)")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = L.bundled_lm(L.DEMO_LM)
    labels = list(parse_verbalizer(L.DEMO_VERBALIZER))
    train = load_examples(folder / "sentiment-train.jsonl", labels)
    valid = load_examples(folder / "sentiment-valid.jsonl", labels)
    lms = [L.load_lm(L.bundled_lm(name), "cpu") for name in (L.DEMO_LM, L.DEMO_TRANSFER_LM)]
    args_t = (L.DEMO_TEMPLATE, L.DEMO_VERBALIZER, valid)
    rows: dict[str, list[dict]] = {"template alone": [_score(lms, *args_t, "")]}
    scorer = L.LmScorer(lms[0], L.DEMO_TEMPLATE, L.DEMO_VERBALIZER, train)
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        for _ in range(args.random):
            ids = scorer.allowed[torch.randint(len(scorer.allowed), (L.DEFAULT_PROMPT_LEN,), generator=g)].tolist()
            rows.setdefault("random prompts", []).append(_score(lms, *args_t, scorer.decode(ids)))
        for weight in args.fluency:
            started = time.perf_counter()
            config = PezConfig(prompt_len=L.DEFAULT_PROMPT_LEN, steps=args.steps, restarts=args.restarts, seed=seed,
                               polish=args.polish)
            result = L.learn_prompt(lms[0], L.DEMO_TEMPLATE, L.DEMO_VERBALIZER, train, valid, config, fluency=weight)
            run = _score(lms, *args_t, result.prompt)
            run.update(seed=seed, fluency=weight, seconds=time.perf_counter() - started)
            name = "PEZ" if weight == 0 else f"PEZ + fluency {weight:g}"
            rows.setdefault(name, []).append(run)
            print(f"{name} seed {seed}: {run['valid_accuracy']:.3f} ppl {run['perplexity']:.1f} "
                  f"transfer {run['transfer']['valid_accuracy']:.3f} ({run['seconds']:.0f} s) {result.prompt!r}",
                  file=sys.stderr, flush=True)
    print(f"Accuracy: mean ± sd over runs on {len(valid)} validation reviews; perplexity: geometric mean (range).\n")
    print("| method | runs | accuracy (tiny-lm) | perplexity (tiny-lm) | accuracy (tiny-lm-b) "
          "| perplexity (tiny-lm-b) | s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        print(_row(name, runs))
    print(_gpt2_large_note(args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _gpt2_large_note(args) -> str:
    if not (args.gpt2_large and args.sst2):
        return ("\nGPT-2 Large on SST-2: not measured (its weights and the SST-2 data are not on this machine; "
                "pass --gpt2-large and --sst2 with local copies).")
    lm = L.load_lm(args.gpt2_large)
    valid = load_examples(args.sst2, ["positive", "negative"])
    alone = L.evaluate_prompt(lm, "{input} {prompt} It was", "positive:great,negative:terrible", valid, "")
    return f"\nGPT-2 Large on SST-2, template alone: accuracy {alone.accuracy:.3f} (n={len(valid)})"


if __name__ == "__main__":
    sys.exit(main())
