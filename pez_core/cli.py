"""Command line: ``python -m pez_core invert|style|distill|caption|score|models|lm``.

With ``--json`` stdout carries one JSON object per result, in input order; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

import torch

from . import lm
from .clip import DEFAULT_MODEL, MAX_PROMPT_TOKENS, PRECISIONS, available_models, combine, load_model, tasks
from .clip.tasks import DEFAULT_NEGATIVE_WEIGHT, check_negative_weight
from .common.errors import PezError
from .clip.presets import DEFAULT_FLUENCY_MODEL, FLUENCY_MODEL_OF, READABLE_BY_DEFAULT
from .engine import LR_SCHEDULES, POLISH_MODES, VOCAB_MODES, PezConfig
from .engine.prior import READABLE_FLUENCY
from .lm.prior import FLUENCY_PRESETS

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


def _shared_options() -> argparse.ArgumentParser:
    """What every subcommand that runs a model takes: where, how to print, and the vocabulary rules."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    shared.add_argument("--threads", type=int, default=CPU_THREADS, help=(
        "torch threads on the CPU (default %(default)s: 2.3-12x faster than one per core on a shared 2-core "
        "machine, benchmarks/README.md); the same seed gives the same prompt at the same thread count"))
    shared.add_argument("--json", action="store_true", help="one JSON object per result on stdout")
    shared.add_argument("-v", "--verbose", action="store_true")
    return shared


def _search_options() -> argparse.ArgumentParser:
    """What every PEZ search takes, CLIP's and the LM's alike."""
    search = argparse.ArgumentParser(add_help=False)
    search.add_argument("--seed", type=int, default=DEFAULTS.seed)
    search.add_argument("--lr", type=float, default=DEFAULTS.lr, help="AdamW learning rate (default %(default)s)")
    search.add_argument("--vocab", default=DEFAULTS.vocab, choices=VOCAB_MODES)
    search.add_argument("--blocklist", help="comma-separated words the prompt must not use")
    search.add_argument("--allowlist", help="comma-separated word bank: the only words the prompt may use")
    search.add_argument("--patience", type=int, help="stop after this many steps without improvement")
    search.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="end the whole run, polishing included, by then and return the best prompt (the "
                             "prompt then depends on the machine's speed; without it a seed always gives one prompt)")
    return search


def _model_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, parents=[_shared_options()])
    common.add_argument("--model", action="append", help=(
        f"preset, bundled model, open_clip architecture or checkpoint path (see `models`; default {DEFAULT_MODEL}); "
        "repeat it to learn one prompt for several models at once"))
    common.add_argument("--pretrained", action="append", help=(
        "pretrained tag, weights path, or 'none' for random weights; repeated, the n-th goes with the "
        "n-th --model"))
    common.add_argument("--model-weight", action="append", type=float, help=(
        "how much each --model counts in a joint prompt (default: equally); one per --model, in order"))
    common.add_argument("--precision", default="auto", choices=PRECISIONS)
    return common


def _optimisation_options() -> argparse.ArgumentParser:
    optim = argparse.ArgumentParser(add_help=False, parents=[_search_options()])
    optim.add_argument("--prompt-len", type=int, default=DEFAULTS.prompt_len,
                       help=f"prompt length in CLIP tokens, 1 to {MAX_PROMPT_TOKENS} (default %(default)s)")
    optim.add_argument("--steps", type=int, default=DEFAULTS.steps, help="optimisation steps (default %(default)s)")
    optim.add_argument("--restarts", type=int, help=f"parallel random starts (default: {_auto_restarts()})")
    optim.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    optim.add_argument("--lr-schedule", default=DEFAULTS.lr_schedule, choices=LR_SCHEDULES)
    optim.add_argument("--polish", default=DEFAULTS.polish, choices=POLISH_MODES,
                       help="after the PEZ loop: gradient-ranked token swaps and/or pruning of tokens that "
                            "do not pay; never scores below PEZ's own prompt (default %(default)s)")
    optim.add_argument("--target-similarity", type=float, metavar="X",
                       help="stop as soon as the best prompt string reaches this similarity")
    optim.add_argument("--fluency", type=float, default=DEFAULTS.fluency, metavar="W", help=(
        "weight of a language prior on how the prompt reads, in the final choice and polishing: the gain is "
        "the similarity plus W x the mean log-probability per token under --fluency-model. 0: off; default: "
        f"{READABLE_FLUENCY} for {', '.join(sorted(READABLE_BY_DEFAULT))} (measured), off for other models"))
    optim.add_argument("--fluency-model", metavar="LM", help=(
        f"the prior's causal LM: {', '.join(FLUENCY_PRESETS)}, a Hugging Face name or a folder (default: "
        f"{', '.join(f'{v} for {k}' for k, v in FLUENCY_MODEL_OF.items())}, else {DEFAULT_FLUENCY_MODEL}); "
        "giving one turns fluency on"))
    optim.add_argument("--template", default=DEFAULTS.template, help=(
        "your own words with one {} where the learned words go, e.g. 'a tiger, {}': the search sees the whole "
        "prompt; the result is the whole prompt, and learned_prompt in --json the words in the slot"))
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
    _caption_arguments(commands.add_parser("caption", parents=[common, optim], help=(
        "caption image folders: one <image>.txt per image, resumable, on one machine or a Ray cluster")))
    sub = commands.add_parser("distill", parents=[common, optim], help="a shorter prompt for a text")
    sub.add_argument("text")
    sub.add_argument("--ratio", type=float, help="prompt length as a share of the text's tokens (overrides --prompt-len)")
    sub = commands.add_parser("score", parents=[common], help="cosine similarity of texts to images")
    sub.add_argument("--text", action="append", required=True, help="text to score (repeatable)")
    sub.add_argument("images", nargs="+", type=Path)
    commands.add_parser("models", help="list usable model names")
    _lm_arguments(commands.add_parser("lm", parents=[_shared_options(), _search_options()],
                                      help="a prompt that makes a causal language model classify text"))
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
    """tqdm on stderr, showing the best prompt so far and its score (``label``: "sim" for a CLIP, "batch acc"
    for an LM). The bar opens at the first step, so an error found before the run is not printed after an
    empty bar."""

    def __init__(self, total: int, label: str = "sim", digits: int = 3):
        self.total, self.label, self.digits = total, label, digits
        self.bar = None

    def __call__(self, progress) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.update(progress.step - self.bar.n)
        stage = "polishing · " if progress.stage == "polishing" else ""
        self.bar.set_postfix_str(f"{stage}{self.label} {progress.similarity:.{self.digits}f} · {progress.prompt[:60]}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # ends its line: what is logged next starts on a line of its own
            self.bar = None


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


def _config(args: argparse.Namespace) -> PezConfig:
    return PezConfig(prompt_len=args.prompt_len, steps=args.steps, restarts=args.restarts, seed=args.seed,
                     lr=args.lr, weight_decay=args.weight_decay, vocab=args.vocab, blocklist=args.blocklist,
                     allowlist=args.allowlist, lr_schedule=args.lr_schedule, patience=args.patience,
                     polish=args.polish, time_budget=args.time_budget, target_similarity=args.target_similarity,
                     fluency=args.fluency, fluency_model=args.fluency_model, template=args.template)


def run(args: argparse.Namespace) -> list[dict]:
    if args.command == "caption":
        return [_run_caption(args)]
    model = _load_models(args)
    if args.command == "score":
        images = _open_images(args.images)
        sims, each = tasks.score(model, args.text, images), tasks.score_each(model, args.text, images)
        return [{"text": t, "image": str(p), "similarity": float(sims[i, j]),
                 "similarities": [float(s[i, j]) for s in each]}
                for i, t in enumerate(args.text) for j, p in enumerate(args.images)]
    config = _config(args)
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
        return main_lm(args)
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
        elif args.command == "caption":
            sys.stdout.write(f"{row['summary']}\n")
        elif "prompt" in row:
            # beside it, what a plain caption scores on the same targets: the model's baseline
            reference = ("" if row.get("reference_similarity") is None else
                         f"; plain caption {row['reference_caption']!r}: {row['reference_similarity']:.3f}")
            sys.stdout.write(f"{row['prompt']}\t(similarity {row['similarity']:.3f}{reference})\n")
        else:
            sys.stdout.write(f"{row['similarity']:.4f}\t{row['image']}\t{row['text']}\n")
    return 0


# ---- ``caption``: a dataset's images, one sidecar caption each (pez_core.dataset) ----
def _caption_arguments(sub) -> None:
    from .dataset import DEFAULT_BATCH, EXISTING_MODES
    sub.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image folders or image files")
    sub.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    sub.add_argument("--ext", default=".txt", help="caption file extension (default %(default)s)")
    sub.add_argument("--out", type=Path, help="write captions here, at each image's relative place "
                     "(default: beside each image)")
    sub.add_argument("--manifest", type=Path, metavar="FILE.jsonl", help=(
        "append a JSON line per image captioned or failed: image, caption file, prompt, similarity, error"))
    sub.add_argument("--existing", default="skip", choices=EXISTING_MODES, help=(
        "an image that already has a caption: skip it (so a rerun resumes), overwrite it, or append the new "
        "caption after a comma; overwrite and append resume from --manifest (default %(default)s)"))
    sub.add_argument("--prefix", default="", help="text before every caption, e.g. a LoRA trigger word "
                     "(joined with ', ')")
    sub.add_argument("--suffix", default="", help="text after every caption (joined with ', ')")
    sub.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=(
        "images learned together (default %(default)s); the captions are the same for every batch size"))
    sub.add_argument("--input-format", default="files", choices=("files", "webdataset"), help=(
        "files: image folders; webdataset: .tar shards (each written to --out with a .txt per sample)"))
    sub.add_argument("--ray", action="store_true", help="run on a local Ray instance (pip install "
                     "\"pez-hard-prompts[ray]\")")
    sub.add_argument("--ray-address", metavar="ADDRESS", help="run on this Ray cluster ('auto': the one this "
                     "machine joined with `ray start`)")
    sub.add_argument("--workers", type=int, help="Ray actors, each with its own model (default: one per GPU, "
                     "else one per CPU)")


def _caption_options(args: argparse.Namespace):
    from .dataset import CaptionOptions
    return CaptionOptions(ext=args.ext, out=args.out, manifest=args.manifest, existing=args.existing,
                          prefix=args.prefix, suffix=args.suffix, batch_size=args.batch_size, recursive=args.recursive)


def _run_caption(args: argparse.Namespace) -> dict:
    """The ``caption`` job, on this machine or on Ray; its summary as a row."""
    from .dataset import caption_images
    config, options = _config(args), _caption_options(args)
    options.validate()
    config.validate()
    if config.time_budget or config.target_similarity is not None or config.patience is not None:
        log.warning("--time-budget, --target-similarity and --patience stop a batch as a whole: a caption then "
                    "depends on the images beside it")
    bar = _CaptionBar()
    try:
        if args.ray or args.ray_address:
            from .dataset.distributed import caption_on_ray
            summary = caption_on_ray(functools.partial(_load_models, args), args.paths, config, options,
                                     address=args.ray_address, workers=args.workers, threads=args.threads,
                                     webdataset=args.input_format == "webdataset", gpu=args.device != "cpu",
                                     progress=bar)
        elif args.input_format == "webdataset":
            from .dataset.shards import caption_shards, plan_shards
            plan_shards(args.paths, options)  # bad input is refused before the model loads (seconds)
            summary = caption_shards(_load_models(args), args.paths, config, options, progress=bar)
        else:
            from .dataset.job import plan
            plan(args.paths, options)  # bad input is refused before the model loads (seconds)
            summary = caption_images(_load_models(args), args.paths, config, options, progress=bar)
    finally:
        bar.close()
    row = {"summary": str(summary), **{k: v for k, v in vars(summary).items() if k != "manifest"}}
    return {**row, "manifest": str(summary.manifest) if summary.manifest else None}


class _CaptionBar:
    """tqdm over images on stderr: done and remaining, images per minute, the ETA and the last caption."""

    def __init__(self):
        self.bar = None

    def __call__(self, progress) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=progress.total, file=sys.stderr, unit="img", dynamic_ncols=True)
        self.bar.update(progress.done - self.bar.n)
        eta = "" if progress.eta_seconds is None else f" · ETA {progress.eta_seconds / 60:.1f} min"
        self.bar.set_postfix_str(f"{progress.images_per_minute:.1f} img/min{eta} · failed {progress.failed} · "
                                 f"{progress.prompt[:50]}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---- ``lm``: a prompt that makes a causal language model classify text (pez_core.lm) ----
def _lm_arguments(sub) -> None:
    """The ``lm`` subcommand's own options (the shared ones come from ``_shared_options``, ``_search_options``)."""
    sub.add_argument("--demo", action="store_true", help=f"the bundled tiny LM and its task ({lm.DEMO_LM}; "
                     f"transfer to {lm.DEMO_TRANSFER_LM}); other options still apply")
    sub.add_argument("--lm", help="Hugging Face causal LM: name or local folder")
    sub.add_argument("--train", type=Path, help="training examples: .csv or .jsonl with text and label")
    sub.add_argument("--valid", type=Path, help="validation examples (chooses the best prompt string)")
    sub.add_argument("--template", help=f"where the input and the prompt go, e.g. {lm.DEMO_TEMPLATE!r}")
    sub.add_argument("--verbalizer", help=f"label:word pairs, e.g. {lm.DEMO_VERBALIZER!r} (word|word for several)")
    sub.add_argument("--prompt-len", type=int, default=lm.DEFAULT_PROMPT_LEN, help="prompt tokens (default %(default)s)")
    sub.add_argument("--fluency", type=float, default=0.0, help="weight of the prompt's own NLL (default %(default)s)")
    sub.add_argument("--steps", type=int, help=f"optimisation steps (default {DEFAULTS.steps}; demo {lm.DEMO_STEPS})")
    sub.add_argument("--restarts", type=int, help=f"parallel random starts (default: engine's; demo {lm.DEMO_RESTARTS})")
    sub.add_argument("--batch-size", type=int, default=lm.DEFAULT_BATCH, help="training examples per step")
    sub.add_argument("--shots", type=int, help="few-shot: train on this many examples per label "
                     "(default: every example)")
    sub.add_argument("--polish", default=DEFAULTS.polish, choices=POLISH_MODES,
                     help="after the PEZ loop: token swaps and/or pruning; never scores below PEZ's own prompt; "
                          "on a CPU it can take several times the loop (default %(default)s)")
    sub.add_argument("--eval-lm", action="append", default=[],
                     help="also score the prompt on this LM (repeatable; checked before training)")
    sub.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    sub.add_argument("--allow-download", action="store_true", help="let Hugging Face download missing models")


def _lm_demo_defaults(args) -> None:
    if not args.demo:
        missing = [flag for flag, value in (("--lm", args.lm), ("--train", args.train), ("--template", args.template),
                                            ("--verbalizer", args.verbalizer)) if value is None]
        if missing:
            raise PezError(f"lm needs {', '.join(missing)} (or --demo for the bundled tiny LM)")
        return
    folder = lm.bundled_lm(lm.DEMO_LM)
    args.lm = args.lm or lm.DEMO_LM
    args.train = args.train or folder / "sentiment-train.jsonl"
    args.valid = args.valid or folder / "sentiment-valid.jsonl"
    args.template, args.verbalizer = args.template or lm.DEMO_TEMPLATE, args.verbalizer or lm.DEMO_VERBALIZER
    # only when not given: 0 must reach validation and be refused, not become the default
    args.steps = lm.DEMO_STEPS if args.steps is None else args.steps
    args.restarts = lm.DEMO_RESTARTS if args.restarts is None else args.restarts
    args.eval_lm = args.eval_lm or [lm.DEMO_TRANSFER_LM]


def run_lm(args, callback=None) -> dict:
    """The ``lm`` subcommand's result: the prompt, its accuracy and perplexity, and transfer to ``--eval-lm``
    (``{"lm", "error"}`` for an LM that failed: the learned prompt is kept all the same)."""
    _lm_demo_defaults(args)
    labels = list(lm.parse_verbalizer(args.verbalizer))
    if args.shots is not None and args.shots < 1:
        raise PezError(f"--shots must be at least 1 example per label, got {args.shots}; "
                       "omit it to train on every example")
    train = lm.load_examples(args.train, labels)
    train = lm.few_shot(train, args.shots, args.seed) if args.shots is not None else train
    valid = lm.load_examples(args.valid, labels) if args.valid else None
    config = PezConfig(prompt_len=args.prompt_len, steps=PezConfig.steps if args.steps is None else args.steps,
                       restarts=args.restarts, seed=args.seed, lr=args.lr, vocab=args.vocab,
                       blocklist=args.blocklist, allowlist=args.allowlist, patience=args.patience,
                       polish=args.polish, time_budget=args.time_budget)
    config.validate(lm.LmScorer)
    for name in args.eval_lm:  # a typo must not cost a whole training run
        lm.check_lm(name, args.allow_download)
    model = lm.load_lm(args.lm, args.device, args.dtype, args.allow_download)
    result = lm.learn_prompt(model, args.template, args.verbalizer, train, valid, config, args.fluency, args.batch_size,
                          callback)
    if hasattr(callback, "close"):
        callback.close()  # training is over: what loading and scoring the LMs print goes below the bar
    examples = valid or train
    report = lm.prompt_report(model, args.template, args.verbalizer, examples, result.prompt)
    transfer = []
    for name in args.eval_lm:
        try:
            transfer.append(lm.prompt_report(lm.load_lm(name, args.device, args.dtype, args.allow_download),
                                          args.template, args.verbalizer, examples, result.prompt))
        except Exception as e:  # anything (even out of memory): the prompt is learned and must still be reported
            log.debug("evaluation on %s failed", name, exc_info=True)
            transfer.append({"lm": str(name), "error": str(e) or type(e).__name__})
    return {"prompt": result.prompt, "token_ids": result.token_ids, **report,
            "scored_on": "valid" if valid else "train",
            "fluency": args.fluency, "steps": result.steps, "seconds": round(result.seconds, 2),
            "stopped_early": result.stopped_early, "polish": config.polish,
            "unpolished_prompt": result.unpolished_prompt, "transfer": transfer}


def main_lm(args) -> int:
    """Run ``lm`` and print its result (JSON with ``--json``); 2 on bad input, also when an ``--eval-lm``
    fails after training (the learned prompt is printed first)."""
    errors = logging.getLogger("pez_core")
    try:
        _lm_demo_defaults(args)
        bar = _ProgressBar(PezConfig.steps if args.steps is None else args.steps, "batch acc", 2)
        try:
            row = run_lm(args, bar)
        finally:
            bar.close()  # before any error is logged
    except PezError as e:
        errors.error("%s", e)
        return 2
    failed = [t for t in row["transfer"] if "error" in t]
    if args.json:
        sys.stdout.write(json.dumps(row) + "\n")
    else:
        ppl = "-" if row["perplexity"] is None else f"{row['perplexity']:.1f}"
        sys.stdout.write(f"{row['prompt']}\t(accuracy {row['valid_accuracy']:.3f}, template alone "
                         f"{row['template_accuracy']:.3f}, perplexity {ppl})\n")
        for t in row["transfer"]:
            sys.stdout.write(f"  on {t['lm']}: not scored (the error follows)\n" if "error" in t else
                             f"  on {t['lm']}: accuracy {t['valid_accuracy']:.3f}, template alone "
                             f"{t['template_accuracy']:.3f}\n")
    for t in failed:
        errors.error("--eval-lm %s: %s", t["lm"], t["error"])
    return 2 if failed else 0
