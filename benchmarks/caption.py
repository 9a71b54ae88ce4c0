"""Captioning a dataset: throughput, quality, faults and scale of the caption job (``python -m pez_core caption``).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python benchmarks/caption.py --results .cache/caption.json

Held-out single-object images of the demo world (``shapes.sample(SEED, N)``), captioned with the same steps
and prompt length by every method. Each figure is printed next to its target (benchmarks/README.md,
"Captioning a dataset"):

1. **Throughput and quality**, side by side in one process: (a) the reference loop
   (``benchmarks/reference_loop.py``), one image at a time, its target the image's features, its prompt its
   best string; (b) the caption job (``pez_core.dataset.caption_images``) with batch size 1; (c) with the
   default batch; (c') the same batch with polishing and the fluency prior off, a diagnostic of where (c)'s
   time goes. The images are taken in rounds of one batch, and every method runs on a round before the next
   round starts (in a rotating order), so a change in the machine's load falls on all of them alike. Each
   method writes caption files; they are graded against the scenes (``pez_core.demo.grading.match_single``:
   the right colour and shape as whole words) and scored as strings against their image. (b)'s and (c)'s
   caption files must be byte-identical (a caption job is batch-invariant).
   Then on ``--workers`` cores (2), as command lines, wall time from start to exit: the local job with
   ``--threads 2``; two local one-thread jobs on the same folder (the job's locks share the images out); Ray with
   two one-thread workers, when ``ray`` is installed and ``pez_core.dataset.distributed`` exists. The last two
   also run on the first batch alone: the rest's cost per image, without the fixed costs (start-up, model
   loading, Ray's start), is what Ray's overhead is judged on, against the local jobs (the same one-thread
   arithmetic and captions, only Ray added; two threads in one process compute other floats, and on a shared
   2-core machine run slower, benchmarks/README.md "Threads on the CPU").
2. **Faults**: the command line on a folder, killed with SIGKILL after random delays and restarted, at least
   ``--kills`` times, then left to finish; against an uninterrupted run of the same command on a copy of the
   folder: images without a caption, images with more than one "written" manifest line, caption files that
   differ.
3. **Scale on paper**: what 1 M images take at the measured cost per image: on 1, 8 and 64 GPUs when the run
   was on a GPU, else on as many CPU cores (a GPU figure is never derived from a CPU one).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from statistics import median
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import pez_core  # noqa: E402
from pez_core import PezConfig  # noqa: E402
from pez_core.dataset import DEFAULT_BATCH, CaptionOptions, caption_images, open_image  # noqa: E402
from pez_core.demo import shapes  # noqa: E402
from pez_core.demo.grading import match_single  # noqa: E402

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:  # run as a script from benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_loop import reference_pez

REPO = Path(__file__).resolve().parent.parent
SEED = 31_350                # held out: no training run and no other benchmark draws images from it
SPEED_TARGET = 10.0          # the default batch against the reference loop, in images per minute
RAY_OVERHEAD_TARGET = 0.15   # Ray against as many local one-thread jobs, per image beyond the first batch
IMAGES_AT_SCALE = 1_000_000
SCALE_UNITS = (1, 8, 64)
REFERENCE, BATCH1, BATCH, LOOP_ONLY = "reference", "batch 1", "default batch", "loop only"


# --- helpers ---------------------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "met" if ok else "**NOT met**"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def caption_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.txt"))} if folder.is_dir() else {}


def same_files(a: dict[str, bytes], b: dict[str, bytes]) -> int:
    return sum(1 for name in a if b.get(name) == a[name])


def engine_config(args, **changes) -> PezConfig:
    chosen = {"steps": args.steps, "prompt_len": args.prompt_len, "seed": args.seed, "polish": args.polish,
              "fluency": args.fluency}
    return PezConfig(**{**{k: v for k, v in chosen.items() if v is not None}, **changes})


# --- 1. throughput and quality, in one process -------------------------------------------------------------------
def run_reference(model, files: list[Path], indices: list[int], out: Path, args) -> float:
    """The reference loop, one image at a time: open, encode, optimise, write its best string."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index, path in zip(indices, files):
        target = model.encode_images([open_image(path)])[0]
        prompt = reference_pez(model, target, args.prompt_len, steps=args.steps, seed=args.seed + index)["prompt"]
        (out / f"{path.stem}.txt").write_text(prompt.strip() + "\n", encoding="utf-8")
    return time.perf_counter() - started


def run_job(model, files: list[Path], out: Path, config: PezConfig, batch: int) -> float:
    started = time.perf_counter()
    summary = caption_images(model, files, config, CaptionOptions(out=out, batch_size=batch))
    if summary.written != len(files):
        raise RuntimeError(f"the caption job wrote {summary.written} of {len(files)} captions: {summary.failures}")
    return time.perf_counter() - started


def warm_up(model, files: list[Path], work: Path, args) -> None:
    """First calls load what later ones reuse (the fluency prior, the vocabulary tables): not timed."""
    reference_pez(model, model.encode_images([open_image(files[0])])[0], args.prompt_len, steps=2)
    for config in (engine_config(args, steps=2), engine_config(args, steps=2, polish="off", fluency=0)):
        caption_images(model, files[:1], config, CaptionOptions(out=Path(tempfile.mkdtemp(dir=work))))


def in_process(model, files: list[Path], work: Path, args) -> dict[str, float]:
    """Seconds of each method over all images, taken in rounds of one batch (rotating the order)."""
    methods = {
        REFERENCE: lambda chunk, idx: run_reference(model, chunk, idx, work / "out" / REFERENCE, args),
        BATCH1: lambda chunk, idx: run_job(model, chunk, work / "out" / BATCH1, engine_config(args), 1),
        BATCH: lambda chunk, idx: run_job(model, chunk, work / "out" / BATCH, engine_config(args), args.batch),
        LOOP_ONLY: lambda chunk, idx: run_job(model, chunk, work / "out" / LOOP_ONLY,
                                              engine_config(args, polish="off", fluency=0), args.batch),
    }
    seconds = dict.fromkeys(methods, 0.0)
    names = list(methods)
    for round_, first in enumerate(range(0, len(files), args.batch)):
        indices = list(range(first, min(first + args.batch, len(files))))
        chunk = [files[i] for i in indices]
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            seconds[name] += methods[name](chunk, indices)
            print(f"  round {round_ + 1}: {name} on {len(chunk)} images, {seconds[name]:.1f} s so far "
                  f"(load {load()})", file=sys.stderr, flush=True)
    return seconds


def grade(model, folder: Path, files: list[Path], scenes, targets: torch.Tensor) -> dict:
    """Colour, shape and full recall of the caption files against the scenes; each caption's similarity as a
    string to its image."""
    texts = [(folder / f"{p.stem}.txt").read_text(encoding="utf-8").strip() for p in files]
    matches = [match_single(t, s) for t, s in zip(texts, scenes)]
    sims = [float(model.encode_texts([t])[0] @ f) if model.tokenize(t) else float("nan") for t, f in zip(texts, targets)]
    return {"colour": sum(m.colour for m in matches), "shape": sum(m.shape for m in matches),
            "recall": sum(m.recall for m in matches), "similarity": sum(sims) / len(sims), "captions": texts}


# --- 1b. two cores, as command lines -------------------------------------------------------------------------------
def cli_command(args, paths: list[Path], out: Path | None, threads: int, batch: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "pez_core", "caption", *map(str, paths), "--model", args.model, "--device",
               args.device, "--steps", str(args.steps), "--prompt-len", str(args.prompt_len), "--seed",
               str(args.seed), "--threads", str(threads), "--batch-size", str(batch), "--json", *extra]
    if out is not None:
        command += ["--out", str(out)]
    if args.polish is not None:
        command += ["--polish", args.polish]
    if args.fluency is not None:
        command += ["--fluency", str(args.fluency)]
    return command


def start(command: list[str], log_to: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    with open(log_to.with_suffix(".out"), "w") as out, open(log_to.with_suffix(".err"), "w") as err:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)


def finish(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    for process, log_to in zip(processes, logs):
        if process.wait() != 0:
            raise RuntimeError(f"{' '.join(process.args[:5])} ... exited {process.returncode}: "
                               f"{log_to.with_suffix('.err').read_text()[-2000:]}")


def timed_cli(jobs: list[tuple[list[str], int]], logs: Path, name: str) -> float:
    """Wall seconds of command lines started together, until the last one ends."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"{name.replace(' ', '-')}-{i}" for i in range(len(jobs))]
    started = time.perf_counter()
    processes = [start(command, path, threads) for (command, threads), path in zip(jobs, paths)]
    finish(processes, paths)
    return time.perf_counter() - started


def ray_missing() -> str | None:
    """Why the Ray row cannot be measured here, or None."""
    if importlib.util.find_spec("pez_core.dataset.distributed") is None:
        return "pez_core.dataset.distributed does not exist in this checkout"
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed in this environment (pip install \"pez-hard-prompts[ray]\")"
    return None


def parallel(args, files: list[Path], work: Path) -> tuple[list[dict], str | None]:
    """The command lines on ``args.workers`` cores, each row with its wall seconds (the median of ``args.repeats``
    runs, taken in rotating order) and caption folder: the local job with that many threads; as many one-thread
    local jobs on one folder (the job's locks share the images out); Ray with as many one-thread workers. The last
    two also on the first batch alone, so that the cost of the rest, per image, is free of the fixed costs
    (start-up, model loading, Ray's start). Also why Ray was not run."""
    cores, logs, folder = args.workers, work / "logs", files[0].parent
    small = files[:args.batch] if len(files) > args.batch else []
    kinds = [("threads", f"local job, --threads {cores}", cores, 1, ()),
             ("jobs", f"{cores} local jobs x 1 thread, one folder", 1, cores, ())][int("threads" in args.skip):]
    why = "left out (--skip ray)" if "ray" in args.skip else ray_missing()
    if why is None:
        kinds.append(("ray", f"Ray, {cores} workers x 1 thread", 1, 1, ("--ray", "--workers", str(cores))))
    runs = [(kind, size) for kind in kinds for size in ("all", "first batch")
            if size == "all" or (kind[0] != "threads" and small)]
    walls: dict[tuple[str, str], list[float]] = {(kind[0], size): [] for kind, size in runs}
    for repeat in range(args.repeats):
        for (key, name, threads, processes, extra), size in runs[repeat % len(runs):] + runs[:repeat % len(runs)]:
            if key == "ray" and why is not None:
                continue
            tag = f"{key}-{'all' if size == 'all' else 'small'}-{repeat}"
            command = cli_command(args, [folder] if size == "all" else small, work / "out" / tag, threads, args.batch,
                                  *extra)
            try:
                walls[key, size].append(timed_cli([(command, threads)] * processes, logs, tag))
            except RuntimeError as e:
                if key != "ray":
                    raise
                why = f"the Ray run failed ({str(e).splitlines()[0][:300]}; logs in --work's logs/ray-*.err)"
                continue
            print(f"  {name}, {size}: {walls[key, size][-1]:.1f} s (load {load()})", file=sys.stderr, flush=True)
    rows = []
    for key, name, *_ in kinds:
        if not walls[key, "all"] or (key == "ray" and why is not None):
            continue
        row = {"run": name, "kind": key, "folder": work / "out" / f"{key}-all-0", "seconds": median(walls[key, "all"]),
               "walls": walls[key, "all"]}
        if walls.get((key, "first batch")):
            row.update(small_seconds=median(walls[key, "first batch"]), small_walls=walls[key, "first batch"])
            row["marginal_seconds_per_image"] = (row["seconds"] - row["small_seconds"]) / (len(files) - len(small))
        rows.append(row)
    return rows, why


# --- 2. faults --------------------------------------------------------------------------------------------------
def manifest_rows(path: Path) -> tuple[list[dict], int]:
    """The manifest's rows and the number of lines that do not parse (cut by a kill)."""
    rows, cut = [], 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            cut += 1
    return rows, cut


def polled_run(command: list[str], folder: Path, log_to: Path) -> tuple[float, list[float]]:
    """Run the job to its end: its wall seconds and the second at which each caption file appeared."""
    started, seen = time.perf_counter(), []
    process = start(command, log_to, 1)
    while process.poll() is None:
        count = len(list(folder.glob("*.txt")))
        seen += [time.perf_counter() - started] * (count - len(seen))
        time.sleep(0.1)
    finish([process], [log_to])
    wall = time.perf_counter() - started
    seen += [wall] * (len(list(folder.glob("*.txt"))) - len(seen))
    return wall, seen


def start_up_estimate(wall: float, seen: list[float], batch: int) -> float:
    """Seconds before the first batch starts: the first captions' time less one batch's (the time between the
    first batch's captions and the next batch's), or half the first captions' time with one batch only."""
    if not seen:
        return wall / 2
    if len(seen) > batch:
        return max(0.0, seen[0] - (seen[batch] - seen[0]))
    return seen[0] / 2


def killed_runs(command: list[str], folder: Path, logs: Path, n_images: int, clean: dict, args) -> dict:
    """Start the job, SIGKILL it after a random delay, restart it, until ``args.kills`` kills landed on a running
    job; then let it finish. A delay is drawn between half the start-up and the start-up plus the uninterrupted
    run's work still left (by the share of images without a caption): kills land in start-up, in a batch and
    around the writes, while there is work."""
    rng = random.Random(args.kill_seed)
    landed, ended = [], []
    work = clean["seconds"] - clean["start_up"]
    for attempt in range(1, 4 * args.kills + 1):
        left = n_images - len(list(folder.glob("*.txt")))
        if len(landed) >= args.kills or left == 0:
            break
        delay = rng.uniform(clean["start_up"] / 2, clean["start_up"] + work * left / n_images)
        process = start(command, logs / f"killed-{attempt}", 1)
        try:
            process.wait(timeout=delay)
            ended.append({"delay": round(delay, 2), "exit": process.returncode})
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            landed.append({"delay": round(delay, 2), "captions_after": len(list(folder.glob("*.txt")))})
        print(f"  run {attempt}: {'killed' if process.returncode == -signal.SIGKILL else 'ended'} after "
              f"{delay:.1f} s, {len(list(folder.glob('*.txt')))}/{n_images} captions", file=sys.stderr, flush=True)
    started = time.perf_counter()
    finish([start(command, logs / "killed-final", 1)], [logs / "killed-final"])
    return {"kills": landed, "ended_before_kill": ended, "final_seconds": time.perf_counter() - started}


def faults(args, images: list[Path], work: Path) -> dict:
    base, logs = work / "faults", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    folders = {"clean": base / "clean", "killed": base / "killed"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        for path in images:
            shutil.copy(path, folder / path.name)
    command = {k: cli_command(args, [f], None, 1, args.fault_batch, "--manifest", str(base / f"{k}.jsonl"))
               for k, f in folders.items()}
    wall, seen = polled_run(command["clean"], folders["clean"], logs / "clean")
    clean = {"seconds": wall, "start_up": start_up_estimate(wall, seen, args.fault_batch)}
    print(f"  uninterrupted: {wall:.1f} s, start-up about {clean['start_up']:.1f} s", file=sys.stderr, flush=True)
    killed = killed_runs(command["killed"], folders["killed"], logs, len(images), clean, args)
    return {**compare(folders, images, base), **killed, "clean_seconds": wall, "clean_start_up": clean["start_up"],
            "images": len(images)}


def compare(folders: dict[str, Path], images: list[Path], base: Path) -> dict:
    clean, killed = caption_files(folders["clean"]), caption_files(folders["killed"])
    rows, cut = manifest_rows(base / "killed.jsonl")
    written = Counter(Path(r["image"]).name for r in rows if r.get("status") == "written")
    names = [p.name for p in images]
    captions = [f"{Path(n).stem}.txt" for n in names]
    hidden = [p.name for p in folders["killed"].iterdir() if p.name.startswith(".")]
    return {
        "clean_captions": sum(c in clean for c in captions),
        "lost": sum(c not in killed for c in captions),
        "duplicated": sum(written[n] > 1 for n in names),
        "differ": sum(c in killed and c in clean and killed[c] != clean[c] for c in captions),
        "failed_rows": sum(r.get("status") == "failed" for r in rows),
        "not_in_manifest": sum(written[n] == 0 for n in names),
        "cut_manifest_lines": cut,
        "left_temp_files": sum(n.endswith(".tmp") for n in hidden),
        "left_lock_files": sum(n.endswith(".pez-lock") for n in hidden),
    }


# --- 3. scale on paper ------------------------------------------------------------------------------------------
def scale(seconds_per_image: float, device: torch.device, threads: int) -> dict:
    """Days for 1 M images on 1, 8 and 64 units at the measured cost, scaling linearly (an assumption)."""
    gpu = device.type == "cuda"
    unit = "GPU" if gpu else "CPU core" if threads == 1 else f"{threads}-thread CPU process"
    return {"unit": unit, "gpu_measured": gpu, "seconds_per_image": seconds_per_image, "threads": threads,
            "days": {n: IMAGES_AT_SCALE * seconds_per_image / n / 86_400 for n in SCALE_UNITS}}


# --- report -----------------------------------------------------------------------------------------------------
LABELS = {REFERENCE: "(a) reference loop, one image at a time", BATCH1: "(b) caption job, batch 1",
          BATCH: "(c) caption job, default batch", LOOP_ONLY: "(c') default batch, polish off, fluency 0 (diagnostic)"}


def throughput_rows(rows: list[dict], grades: dict[str, dict], n: int) -> list[dict]:
    reference = next(n / r["seconds"] * 60 for r in rows if r["kind"] == REFERENCE)
    return [{**r, "folder": str(r["folder"]), "images": n, "images_per_minute": n / r["seconds"] * 60,
             "vs_reference": n / r["seconds"] * 60 / reference, **grades[r["run"]]} for r in rows]


def print_table(rows: list[dict], why_no_ray: str | None, cores: int) -> None:
    print("| run | images | s | images/min | vs (a) | colour | shape | recall | mean sim |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["images"]
        print(f"| {LABELS.get(r['run'], r['run'])} | {n} | {r['seconds']:.1f} | {r['images_per_minute']:.1f} | "
              f"{r['vs_reference']:.2f}x | {r['colour']}/{n} | {r['shape']}/{n} | {r['recall']}/{n} | "
              f"{r['similarity']:.4f} |")
    if why_no_ray:
        print(f"| Ray, {cores} workers x 1 thread | — | — | not measured: {why_no_ray} | — | — | — | — | — |")


def print_marginal(rows: list[dict], n: int, batch: int) -> None:
    measured = [r for r in rows if r.get("marginal_seconds_per_image") is not None]
    if not measured:
        return
    print(f"\nThe same command lines on the first batch alone ({batch} images), and what the other {n - batch} cost "
          "beyond it (fixed costs cancel); medians, each run's seconds in brackets:\n")
    print("| run | first batch, s | all, s | s per further image | further images/min |")
    print("|---|---|---|---|---|")
    for r in measured:
        m = r["marginal_seconds_per_image"]
        rate = f"{60 / m:.1f}" if m > 0 else "—"
        print(f"| {r['run']} | {r['small_seconds']:.1f} ({', '.join(f'{w:.1f}' for w in r['small_walls'])}) | "
              f"{r['seconds']:.1f} ({', '.join(f'{w:.1f}' for w in r['walls'])}) | {m:.2f} | {rate} |")


def throughput_targets(rows: list[dict], identical: int, why_no_ray: str | None, cores: int) -> list[dict]:
    by = {r["kind"]: r for r in rows}
    a, c, n = by[REFERENCE], by[BATCH], by[BATCH]["images"]
    targets = [
        {"target": f"(c) ≥ {SPEED_TARGET:g}x the reference loop's images/min",
         "measured": f"{c['vs_reference']:.2f}x ({c['images_per_minute']:.1f} against {a['images_per_minute']:.1f})",
         "met": c["vs_reference"] >= SPEED_TARGET},
        {"target": "(c): colour and shape recall ≥ the reference loop's",
         "measured": f"colour {c['colour']} against {a['colour']}, shape {c['shape']} against {a['shape']} of {n} "
                     f"(both, no other shape: {c['recall']} against {a['recall']})",
         "met": c["colour"] >= a["colour"] and c["shape"] >= a["shape"]},
        {"target": "caption files of (b) and (c) byte-identical", "measured": f"{identical}/{n} identical",
         "met": identical == n},
    ]
    goal = (f"Ray overhead ≤ {RAY_OVERHEAD_TARGET:.0%} against {cores} local one-thread jobs on one folder, per further "
            "image")
    ray, jobs = by.get("ray"), by.get("jobs")
    if ray is None or jobs is None:
        why = why_no_ray or "the parallel runs were skipped"
        targets.append({"target": goal, "measured": f"not measured: {why}", "met": None})
    elif ray.get("marginal_seconds_per_image") is None or jobs.get("marginal_seconds_per_image") is None:
        targets.append({"target": goal, "measured": "not measured: too few images for a second size", "met": None})
    elif not (ray["marginal_seconds_per_image"] > 0 and jobs["marginal_seconds_per_image"] > 0):
        targets.append({"target": goal, "measured": "not measured: a first batch alone took as long as all images "
                        "(the fixed costs vary more than the further images cost; more --images or --repeats)",
                        "met": None})
    else:
        overhead = ray["marginal_seconds_per_image"] / jobs["marginal_seconds_per_image"] - 1
        walls = "; ".join(f"{ray['seconds'] / r['seconds'] - 1:+.0%} against {r['run']}"
                          for r in (by.get("threads"), jobs) if r)
        targets.append({"target": goal, "measured": f"{overhead:+.0%} (whole command lines, start-up included: "
                                                    f"{walls})", "met": overhead <= RAY_OVERHEAD_TARGET})
    return targets


def print_faults(f: dict, kills_wanted: int) -> list[dict]:
    kills = f["kills"]
    delays = ", ".join(f"{k['delay']:.1f}" for k in kills) or "-"
    after = ", ".join(str(k["captions_after"]) for k in kills) or "-"
    print(f"{len(kills)} kills landed (SIGKILL after {delays} s; captions on disk after each: {after} of "
          f"{f['images']}); {len(f['ended_before_kill'])} runs ended before their kill; the last run took "
          f"{f['final_seconds']:.1f} s (the uninterrupted run {f['clean_seconds']:.1f} s, its start-up about "
          f"{f['clean_start_up']:.1f} s, {f['clean_captions']}/{f['images']} captions)")
    print(f"left behind by the kills (hidden names, which the job ignores): {f['left_temp_files']} temporary files, "
          f"{f['left_lock_files']} lock files; manifest lines cut: {f['cut_manifest_lines']}; captions without a "
          f"'written' manifest line: {f['not_in_manifest']}; failed rows: {f['failed_rows']}\n")
    return [
        {"target": f"≥ {kills_wanted} kills landed on a running job", "measured": str(len(kills)),
         "met": len(kills) >= kills_wanted},
        {"target": "lost captions (images without a caption file) = 0", "measured": str(f["lost"]), "met": f["lost"] == 0},
        {"target": "duplicated captions (> 1 'written' manifest line) = 0", "measured": str(f["duplicated"]),
         "met": f["duplicated"] == 0},
        {"target": "caption files that differ from the uninterrupted run = 0", "measured": str(f["differ"]),
         "met": f["differ"] == 0 and f["clean_captions"] == f["images"]},
    ]


def print_scale(s: dict, args, jobs: dict | None) -> None:
    print(f"measured: {s['seconds_per_image']:.2f} s per image with (c) ({args.steps} steps, batch {args.batch}) on one "
          f"{s['unit']}")
    if not s["gpu_measured"]:
        print("GPU: **missing**. No GPU has measured the caption job (benchmarks/README.md, 'GPU': no GPU run yet), "
              "so no GPU figure is given; below, the CPU figure per core.")
    print(f"\n| 1 M images, {args.steps} steps | " + " | ".join(f"{n} {s['unit']}{'s' if n > 1 else ''}"
                                                            for n in SCALE_UNITS) + " |")
    print("|---|" + "---|" * len(SCALE_UNITS))
    print("| days (linear in the units: an assumption) | " + " | ".join(f"{s['days'][n]:.2f}" for n in SCALE_UNITS) + " |")
    if jobs and (jobs.get("marginal_seconds_per_image") or 0) > 0:
        speedup = s["seconds_per_image"] / jobs["marginal_seconds_per_image"]
        print(f"\nlinearity checked on {args.workers} cores: {jobs['run']}, per further image "
              f"{jobs['marginal_seconds_per_image']:.2f} s, {speedup:.2f}x (c) on one core")


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        print(f"- {t['target']}: {t['measured']} — {verdict(t['met'])}")


# --- main -------------------------------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=24, help=f"held-out single-object images (seed {SEED})")
    parser.add_argument("--steps", type=int, default=300, help="PEZ steps, the same for every method")
    parser.add_argument("--prompt-len", type=int, default=PezConfig().prompt_len)
    parser.add_argument("--seed", type=int, default=PezConfig().seed, help="PEZ seed (the reference loop's: seed + "
                        "the image's index)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="the default batch (c)")
    parser.add_argument("--polish", help="the engine's polish mode (default: the caption job's)")
    parser.add_argument("--fluency", type=float, help="the engine's fluency weight (default: the caption job's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the one-process runs (a)-(c')")
    parser.add_argument("--workers", type=int, default=2, help="cores of the parallel runs: Ray workers, local "
                        "jobs, threads of the one local job")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each parallel command line (the median "
                        "counts)")
    parser.add_argument("--fault-images", type=int, default=12)
    parser.add_argument("--fault-batch", type=int, default=4, help="batch size of the fault runs")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("parallel", "threads", "ray", "faults"),
                        help="leave out the parallel command lines, or only the --threads one or Ray's, or the "
                             "fault runs")
    parser.add_argument("--work", type=Path, help="keep the images, captions, manifests and logs here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--results", type=Path, help="write every figure here, as one JSON object")
    return parser.parse_args()


def measure(args, work: Path) -> dict:
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    pictures, scenes = shapes.sample(SEED, args.images, n_objects=1)
    files = [folder / f"{i:04d}.png" for i in range(args.images)]
    for picture, path in zip(pictures, files):
        picture.save(path)
    model = pez_core.load_model(args.model, device=args.device)
    targets = model.encode_images(pictures)
    print(f"# 1. throughput and quality: {args.images} images, {args.steps} steps", file=sys.stderr, flush=True)
    warm_up(model, files, work, args)
    rows = [{"run": name, "kind": name, "folder": work / "out" / name, "seconds": s}
            for name, s in in_process(model, files, work, args).items()]
    parallel_rows, why_no_ray = parallel(args, files, work) if "parallel" not in args.skip else \
        ([], "left out (--skip parallel)")
    rows += parallel_rows
    grades = {r["run"]: grade(model, r["folder"], files, scenes, targets) for r in rows}
    batch_files = caption_files(work / "out" / BATCH)
    result = {"rows": throughput_rows(rows, grades, args.images), "why_no_ray": why_no_ray, "device": model.device,
              "identical": same_files(caption_files(work / "out" / BATCH1), batch_files),
              "same_as_c": {r["run"]: same_files(caption_files(r["folder"]), batch_files) for r in parallel_rows}}
    if "faults" not in args.skip:
        print(f"# 2. faults: {args.fault_images} images, batch {args.fault_batch}", file=sys.stderr, flush=True)
        result["faults"] = faults(args, files[:args.fault_images], work)
    return result


def report(args, m: dict, began: float, load_before: str) -> dict:
    rows, n = m["rows"], args.images
    device = str(m["device"]) if m["device"].type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"\n{args.model} on {device}; {n} held-out single-object images (shapes.sample({SEED}, {n})), {args.steps} "
          f"steps, L = {args.prompt_len}, seed {args.seed}; one-process runs with {args.threads} torch thread(s); "
          f"{datetime.date.today().isoformat()}; load average {load_before} at the start, {load()} at the end; "
          f"{time.perf_counter() - began:.0f} s in all\n")
    print("## 1. Throughput and quality\n")
    print_table(rows, m["why_no_ray"], args.workers)
    print_marginal(rows, n, args.batch)
    same = ", ".join(f"{name} {k}/{n}" for name, k in m["same_as_c"].items()) or "-"
    print(f"\n(a)-(c'): one process, the model loaded, timed from image file to caption file. The {args.workers}-core "
          f"rows: command lines, wall time from start to exit, start-up included (median of {args.repeats}). "
          f"Caption files byte-identical to "
          f"(c)'s: {same}.\n")
    targets = throughput_targets(rows, m["identical"], m["why_no_ray"], args.workers)
    print_targets(targets)
    if "faults" in m:
        print("\n## 2. Faults\n")
        targets += print_faults(m["faults"], args.kills)
        print_targets(targets[-4:])
    print("\n## 3. Scale on paper\n")
    by = {r["kind"]: r for r in rows}
    at_scale = scale(by[BATCH]["seconds"] / n, m["device"], args.threads)
    print_scale(at_scale, args, by.get("jobs"))
    return {"run": {"model": args.model, "device": device, "date": datetime.date.today().isoformat(), "images": n,
                    "seed": SEED, "steps": args.steps, "prompt_len": args.prompt_len, "threads": args.threads,
                    "workers": args.workers, "batch": args.batch, "load_before": load_before, "load_after": load(),
                    "seconds": time.perf_counter() - began},
            "throughput": rows, "identical_b_c": m["identical"], "same_as_default_batch": m["same_as_c"],
            "ray_not_measured": m["why_no_ray"], "targets": targets, "faults": m.get("faults"), "scale": at_scale}


def main() -> int:
    args = parse()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    began, load_before = time.perf_counter(), load()
    work = args.work or Path(tempfile.mkdtemp(prefix="pez-caption-bench-"))
    try:
        results = report(args, measure(args, work), began, load_before)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
