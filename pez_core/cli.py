"""Command line: ``python -m pez_core invert|style|distill|score|models|lm``.

With ``--json`` stdout carries one JSON object per result, in input order; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .engine import LR_SCHEDULES, PezConfig
from .errors import PezError
from .joint import combine
from .polish import POLISH_MODES
from .models import DEFAULT_MODEL, MAX_PROMPT_TOKENS, PRECISIONS, available_models, load_model
from .tasks import DEFAULT_NEGATIVE_WEIGHT, check_negative_weight
from .vocab import VOCAB_MODES

log = logging.getLogger("pez_core")
DEFAULTS = PezConfig()
CPU_THREADS = 1


def _auto_restarts() -> str:
    gpu, cpu = (DEFAULTS.for_device(torch.device(d)).restarts for d in ("cuda", "cpu"))
    return f"{gpu} on CUDA, {cpu} on CPU"


def _negative_weight(text: str) -> float:
    """--negative-weight, refused before any model loads: inf or nan would optimise nothing."""
    try:
        return check_negative_weight(float(text))
    except ValueError as e:  # PezError is a ValueError too
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number >= 0") from e


def _model_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", action="append", help=(
        f"preset, bundled model, open_clip architecture or checkpoint path (see `models`; default {DEFAULT_MODEL}); "
        "repeat it to learn one prompt for several models at once"))
    common.add_argument("--pretrained", action="append", help=(
        "pretrained tag, weights path, or 'none' for random weights; repeated, the n-th goes with the "
        "n-th --model"))
    common.add_argument("--model-weight", action="append", type=float, help=(
        "how much each --model counts in a joint prompt (default: equally); one per --model, in order"))
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    common.add_argument("--precision", default="auto", choices=PRECISIONS)
    common.add_argument("--threads", type=int, default=CPU_THREADS, help=(
        "torch threads on the CPU (default %(default)s: 2.3-12x faster than one per core on a shared 2-core "
        "machine, benchmarks/README.md); the same seed gives the same prompt at the same thread count"))
    common.add_argument("--json", action="store_true", help="one JSON object per result on stdout")
    common.add_argument("-v", "--verbose", action="store_true")
    return common


def _optimisation_options() -> argparse.ArgumentParser:
    optim = argparse.ArgumentParser(add_help=False)
    optim.add_argument("--prompt-len", type=int, default=DEFAULTS.prompt_len,
                       help=f"prompt length in CLIP tokens, 1 to {MAX_PROMPT_TOKENS} (default %(default)s)")
    optim.add_argument("--steps", type=int, default=DEFAULTS.steps, help="optimisation steps (default %(default)s)")
    optim.add_argument("--restarts", type=int, help=f"parallel random starts (default: {_auto_restarts()})")
    optim.add_argument("--seed", type=int, default=DEFAULTS.seed)
    optim.add_argument("--lr", type=float, default=DEFAULTS.lr, help="AdamW learning rate (default %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    optim.add_argument("--vocab", default=DEFAULTS.vocab, choices=VOCAB_MODES)
    optim.add_argument("--blocklist", help="comma-separated words the prompt must not use")
    optim.add_argument("--allowlist", help="comma-separated word bank: the only words the prompt may use")
    optim.add_argument("--lr-schedule", default=DEFAULTS.lr_schedule, choices=LR_SCHEDULES)
    optim.add_argument("--patience", type=int, help="stop after this many steps without improvement")
    optim.add_argument("--polish", default=DEFAULTS.polish, choices=POLISH_MODES,
                       help="after the PEZ loop: gradient-ranked token swaps and/or pruning of tokens that "
                            "do not pay; never scores below PEZ's own prompt (default %(default)s)")
    optim.add_argument("--time-budget", type=float, metavar="SECONDS",
                       help="end the whole run, polishing included, by then and return the best prompt (the "
                            "prompt then depends on the machine's speed; without it a seed always gives one prompt)")
    optim.add_argument("--target-similarity", type=float, metavar="X",
                       help="stop as soon as the best prompt string reaches this similarity")
    optim.add_argument("--negative-text", action="append", default=[], help="text to push away from (repeatable)")
    optim.add_argument("--negative-image", action="append", default=[], type=Path, help="image to push away from")
    optim.add_argument("--negative-weight", type=_negative_weight, default=DEFAULT_NEGATIVE_WEIGHT,
                       help="how hard the negatives push away, all together: the similarity to the images "
                            "minus this times the mean similarity to the negatives (default %(default)s)")
    return optim


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pez_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common, optim = _model_options(), _optimisation_options()
    for name, helptext in (("invert", "one prompt per image"), ("style", "one prompt shared by all images")):
        sub = commands.add_parser(name, parents=[common, optim], help=helptext)
        sub.add_argument("images", nargs="+", type=Path)
    sub = commands.add_parser("distill", parents=[common, optim], help="a shorter prompt for a text")
    sub.add_argument("text")
    sub.add_argument("--ratio", type=float, help="prompt length as a share of the text's tokens (overrides --prompt-len)")
    sub = commands.add_parser("score", parents=[common], help="cosine similarity of texts to images")
    sub.add_argument("--text", action="append", required=True, help="text to score (repeatable)")
    sub.add_argument("images", nargs="+", type=Path)
    commands.add_parser("models", help="list usable model names")
    from .lm import add_cli_arguments  # language-model prompts (pez_core.lm)
    add_cli_arguments(commands.add_parser("lm", help="a prompt that makes a causal language model classify text"))
    return parser


def _open_images(paths: list[Path]) -> list:
    from PIL import Image, UnidentifiedImageError
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.copy())
        except FileNotFoundError as e:
            raise PezError(f"image not found: {path}") from e
        except (UnidentifiedImageError, OSError) as e:
            raise PezError(f"cannot read {path} as an image: {e}") from e
    return images


class _ProgressBar:
    """tqdm on stderr, showing the best prompt so far."""

    def __init__(self, total: int):
        from tqdm import tqdm
        self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)

    def __call__(self, progress) -> None:
        self.bar.update(progress.step - self.bar.n)
        stage = "polishing · " if progress.stage == "polishing" else ""
        self.bar.set_postfix_str(f"{stage}sim {progress.similarity:.3f} · {progress.prompt[:60]}")

    def close(self) -> None:
        self.bar.close()


def _load_models(args: argparse.Namespace):
    """One model, or several (repeated --model, or a joint preset) combined with their --model-weight."""
    names = args.model or [DEFAULT_MODEL]
    tags, weights = args.pretrained or [], args.model_weight
    if len(tags) > len(names):
        raise PezError(f"{len(tags)} --pretrained for {len(names)} --model; give at most one per --model, in order")
    if weights is not None and len(weights) != len(names):
        raise PezError(f"{len(weights)} --model-weight for {len(names)} --model; give one per --model, in order")
    models = [load_model(name, tags[i] if i < len(tags) else None, args.device, args.precision)
              for i, name in enumerate(names)]
    return models[0] if len(models) == 1 and weights is None else combine(models, weights)


def run(args: argparse.Namespace) -> list[dict]:
    from . import tasks

    model = _load_models(args)
    if args.command == "score":
        images = _open_images(args.images)
        sims, each = tasks.score(model, args.text, images), tasks.score_each(model, args.text, images)
        return [{"text": t, "image": str(p), "similarity": float(sims[i, j]),
                 "similarities": [float(s[i, j]) for s in each]}
                for i, t in enumerate(args.text) for j, p in enumerate(args.images)]
    config = PezConfig(prompt_len=args.prompt_len, steps=args.steps, restarts=args.restarts, seed=args.seed,
                       lr=args.lr, weight_decay=args.weight_decay, vocab=args.vocab, blocklist=args.blocklist,
                       allowlist=args.allowlist, lr_schedule=args.lr_schedule, patience=args.patience,
                       polish=args.polish, time_budget=args.time_budget, target_similarity=args.target_similarity)
    negatives = dict(negative_images=_open_images(args.negative_image) or None, negative_texts=args.negative_text,
                     negative_weight=args.negative_weight)
    bar = _ProgressBar(args.steps)
    try:
        if args.command == "invert":
            results = tasks.invert(model, _open_images(args.images), config, callback=bar, **negatives)
            named = zip(map(str, args.images), results)
        elif args.command == "style":
            named = [(", ".join(map(str, args.images)), tasks.style(model, _open_images(args.images), config,
                                                                      callback=bar, **negatives))]
        else:
            named = [(args.text, tasks.distill(model, args.text, config, ratio=args.ratio, callback=bar))]
    finally:
        bar.close()
    # "similarities": each model's, in --model order (one model: its similarity alone)
    return [{"input": source, "similarities": [result.similarity], **result.to_dict()} for source, result in named]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            log.error("--threads must be at least 1, got %d", args.threads)
            return 2
        torch.set_num_threads(args.threads)
    if args.command == "lm":
        from .lm import main_cli
        return main_cli(args)
    if args.command == "models":
        for name, description in available_models():
            sys.stdout.write(f"{name}\t{description}\n")
        return 0
    try:
        rows = run(args)
    except PezError as e:
        log.error("%s", e)
        return 2
    for row in rows:
        if args.json:
            sys.stdout.write(json.dumps(row) + "\n")
        elif "prompt" in row:
            sys.stdout.write(f"{row['prompt']}\t(similarity {row['similarity']:.3f})\n")
        else:
            sys.stdout.write(f"{row['similarity']:.4f}\t{row['image']}\t{row['text']}\n")
    return 0
