"""GPU speed: the naive reference loop against the engine, eager and as one CUDA graph per step.

    python benchmarks/gpu.py --models ViT-H-14 ViT-L-14 --results r.jsonl   # on the device (gpu_check.sh)
    python benchmarks/gpu.py --probe cudnn      # cuDNN attention inside a CUDA graph at L+2 positions
    python benchmarks/gpu.py --probe engine     # the engine's graph against its eager steps
    python benchmarks/gpu.py --device cpu --quick   # checks the script itself: small models, fp32, a few steps

Random weights (timing does not depend on them), built directly on the device. "ms/step" is the
marginal cost of one step: two runs of different lengths, so warm-up steps, graph capture and the
final decoding cancel out ("fixed" is what they cost). "3000 steps" is one whole run timed end to
end, as a user waits for it. Useful work is counted in FLOPs (text tower forward + input-gradient
backward on the L+2 positions, and the projection) and divided by the marginal step time.

Built for scarce device time: every row is printed as it is measured and, with ``--results``, appended
at once as one JSON line; a case that raises is recorded and the next one runs; with several models
each runs in its own process, so a CUDA error that poisons a process costs one model. For the tests
only: PEZ_BENCH_FAIL=<case> makes that case raise, PEZ_BENCH_ABORT=<model> kills that model's process
in its first engine case.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import pez_core
from pez_core import Objective, PezConfig
from pez_core.engine import cuda_graph

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:  # run as a script from benchmarks/
    from reference_loop import reference_pez

TARGET_TEXT = "a photograph of a red fox in the snow, golden hour, highly detailed"
PROMPT_LEN = 16
# dense bf16 tensor-core peak (no sparsity), from the vendor's data sheets; matched in this order
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4))
REFERENCE = "reference loop (fp32, 77 tokens, 2 passes, host sync every step)"
PROBE_TOLERANCE = {"cudnn": 2e-2, "engine": 0.02}  # bf16: max |graph - eager| feature / similarity


@dataclass(frozen=True)
class Case:
    restarts: int
    graphs: bool
    short: int   # steps of the short run
    long: int    # steps of the long run

    @property
    def name(self) -> str:
        return f"engine {'CUDA graph' if self.graphs else 'eager'}, {self.restarts} restart{'s' * (self.restarts > 1)}"


# most valuable first: a run cut short by its time limit has already written the figures that matter
CASES = (Case(1, True, 50, 1050), Case(16, True, 50, 550), Case(256, True, 20, 220), Case(1, False, 10, 60))
QUICK_CASES = (Case(1, True, 5, 10), Case(2, True, 5, 10), Case(3, True, 5, 10), Case(1, False, 5, 10))
# defaults of what was not given; --quick on the CPU checks the script's whole path in a minute or two
# (two small random-weight models, each in its own process; ViT-H-14 in bf16 takes ~19 s a step there)
DEFAULTS = {"models": ["ViT-H-14", "ViT-L-14"], "precision": "bf16", "full_steps": 3000, "reference_steps": 50,
            "polish": PezConfig.polish}
QUICK_CPU = {"models": ["ViT-S-32", "ViT-S-32-alt"], "precision": "fp32", "full_steps": 12, "reference_steps": 3,
             "polish": "prune"}  # swap polishing took ~55 s a run there (ViT-S-32), three runs a case
# the GPU issue's targets: measurement -> (at least?, bound); "*" applies to every model
TARGETS = {
    "ViT-H-14": {"speed-up over the reference, 1 restart": (True, 20), "3000 steps (s)": (False, 8),
                 "peak memory, 1 restart (GiB)": (False, 2)},
    "ViT-L-14": {"3000 steps (s)": (False, 3)},
    "*": {"16 restarts / 1 restart": (False, 1.7), "share of the bf16 peak, 256 restarts": (True, 0.5)},
}


class Recorder:
    """Appends one JSON line per record to ``path`` (when given) the moment it is made."""

    def __init__(self, path: str | None, **common):
        self.path, self.common = path, common

    def write(self, **fields) -> dict:
        record = {**self.common, **fields}
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return record


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    pez_core.clear_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed_run(model, objective, config) -> tuple[float, pez_core.PezResult]:
    synchronize(model.device)
    started = time.perf_counter()
    result = pez_core.optimize(model, objective, config)[0]
    synchronize(model.device)
    return time.perf_counter() - started, result


def outcome_fields() -> dict:
    outcome = cuda_graph.last_outcome()
    return {"ran_as": "cuda graph" if outcome.graphed else "eager", "how": outcome.reason}


def marginal_step(model, objective, case: Case, polish: str) -> dict:
    """ms per step, fixed seconds per run, and the long run's similarity and stepping, for one case."""
    cuda_graph.set_enabled(case.graphs)
    try:
        config = PezConfig(prompt_len=PROMPT_LEN, restarts=case.restarts, seed=0, steps=case.short, polish=polish)
        timed_run(model, objective, config)  # warm-up: kernels, cuBLAS handles, allocator
        short, _ = timed_run(model, objective, config)
        steps = case.long
        for attempt in range(3):  # where noise swamps the steps (a loaded CPU), a longer run until it shows
            steps *= 2 if attempt else 1
            long, result = timed_run(model, objective, replace(config, steps=steps))
            if long > short:
                break
    finally:
        cuda_graph.set_enabled(True)
    seconds_per_step = max(long - short, 1e-9) / (steps - case.short)
    return {"ms_per_step": 1000 * seconds_per_step, "fixed_s": short - case.short * seconds_per_step,
            "similarity": result.similarity, **outcome_fields()}


def useful_flops_per_step(model, restarts: int, prompt_len: int, vocab_rows: int, embed_dim: int) -> float:
    """Forward + input-gradient backward of the text tower on L+2 positions, plus the projection."""
    width, layers = model.text_width, model.text_layers
    n = prompt_len + 2
    per_layer = 2 * n * 12 * width ** 2 + 2 * 2 * n * n * width   # q,k,v,out + MLP; scores and values
    forward = layers * per_layer + 2 * width * embed_dim
    return restarts * (2 * forward + 2 * prompt_len * width * vocab_rows)  # no weight gradients


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict:
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    flags = {k: os.environ[k] for k in ("TORCH_CUDNN_SDPA_DEPRIORITIZED", cuda_graph.SDPA_ENV) if k in os.environ}
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "flags": flags, "date": str(datetime.date.today())}


def load(arch: str, device: torch.device, precision: str) -> pez_core.PezModel:
    pretrained = None if Path(arch).is_file() else "none"
    return pez_core.load_model(arch, pretrained, device=device, precision=precision)


def isolated(rec: Recorder, case: str, measure, device: torch.device) -> dict:
    """Run one case; its record (figures, or the error) is written before the next case starts."""
    started = time.perf_counter()
    try:
        if os.environ.get("PEZ_BENCH_FAIL") == case:
            raise RuntimeError("failure injected by PEZ_BENCH_FAIL")
        fields = measure()
        return rec.write(kind="case", case=case, ok=True, seconds=time.perf_counter() - started, **fields)
    except Exception as e:
        record = rec.write(kind="case", case=case, ok=False, seconds=time.perf_counter() - started,
                           error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-3000:])
        print(f"| {case} | **failed**: {record['error'][:300]} |", flush=True)
        try:  # a sound device goes on; a poisoned one fails the next cases quickly, each recorded
            free(device)
        except Exception:
            pass
        return record


def load_case(holder: dict, arch: str, device: torch.device, precision: str) -> dict:
    model = holder["model"] = load(arch, device, precision)
    holder["objective"] = Objective.stack([[(model.encode_texts([TARGET_TEXT])[0], 1.0)]])
    synchronize(device)
    return {"resident_gib": torch.cuda.memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}


def reference_case(arch: str, device: torch.device, steps: int) -> dict:
    model = load(arch, device, "fp32")  # the reference code runs fp32
    try:
        target = model.encode_texts([TARGET_TEXT])[0]
        reference_pez(model, target, PROMPT_LEN, steps=3)  # warm-up
        result = reference_pez(model, target, PROMPT_LEN, steps=steps)
    finally:
        del model
        free(device)
    return {"ms_per_step": result["ms_per_step"], "similarity": result["similarity"], "ran_as": "eager",
            "restarts": 1, "precision": "fp32"}


def table_row(record: dict, ref_ms: float | None, peak: float | None) -> str:
    ms = record["ms_per_step"]
    ratio = f"{ref_ms / ms:.1f}x" if ref_ms else ""
    fixed = f"{record['fixed_s']:.2f}" if "fixed_s" in record else ""
    tflops = f"{record['tflops']:.1f}" if record.get("tflops") is not None else ""
    share = f"{100 * record['peak_share']:.0f} %" if record.get("peak_share") is not None else ""
    memory = f"{record['peak_memory_gib']:.2f}" if record.get("peak_memory_gib") is not None else ""
    how = record["ran_as"] if record["ran_as"] == "cuda graph" or "how" not in record else f"eager ({record['how']})"
    return f"| {record['case']} | {ms:.2f} | {fixed} | {ratio} | {tflops} | {share} | {memory} | {record['similarity']:.3f} | {how} |"


def engine_case(model, objective, case: Case, flops: float, peak: float | None, polish: str) -> dict:
    if os.environ.get("PEZ_BENCH_ABORT") == model.name:
        os.abort()  # stands in for a CUDA error that kills the process
    reset_peak_memory(model.device)
    fields = marginal_step(model, objective, case, polish)
    tflops = flops / fields["ms_per_step"] / 1e9
    return {**fields, "restarts": case.restarts, "graphs_requested": case.graphs, "tflops": tflops,
            "peak_share": tflops / peak if peak else None, "peak_memory_gib": peak_memory_gib(model.device)}


def full_case(model, objective, steps: int, polish: str) -> dict:
    config = PezConfig(prompt_len=PROMPT_LEN, restarts=1, steps=steps, polish=polish)
    seconds, result = timed_run(model, objective, config)
    return {"steps": steps, "run_s": seconds, "similarity": result.similarity, **outcome_fields()}


def bench(arch: str, device: torch.device, precision: str, cases, full_steps: int, reference_steps: int,
          results: str | None, polish: str) -> bool:
    """Every case of one model, each recorded as it ends; True when none failed."""
    env = environment(device)
    rec = Recorder(results, model=arch, precision=precision, prompt_len=PROMPT_LEN, polish=polish)
    rec.write(kind="run", **env)
    print(f"\n### {arch}, L={PROMPT_LEN}, {precision} — {env['device']} — torch {env['torch']} — {env['date']}"
          + (f" — {env['flags']}" if env["flags"] else "") + "\n\n"
          "| loop | ms/step | fixed (s) | vs reference | useful TFLOP/s | of bf16 peak | peak memory (GiB) "
          "| best sim | steps ran as |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    peak = peak_tflops(device)
    reference = isolated(rec, REFERENCE, lambda: reference_case(arch, device, reference_steps), device)
    ref_ms = reference["ms_per_step"] if reference["ok"] else None
    if reference["ok"]:
        print(table_row(reference, ref_ms, peak), flush=True)
    holder = {}
    if not isolated(rec, "load", lambda: load_case(holder, arch, device, precision), device)["ok"]:
        return False
    model, objective = holder.pop("model"), holder.pop("objective")
    vocab_rows = len(pez_core.allowed_token_ids(model.tokenizer, PezConfig().vocab))
    measured, failed = {}, not reference["ok"]
    for case in cases:
        flops = useful_flops_per_step(model, case.restarts, PROMPT_LEN, vocab_rows, objective.features.shape[-1])
        record = isolated(rec, case.name, lambda: engine_case(model, objective, case, flops, peak, polish), device)
        if record["ok"]:
            measured[case] = record
            print(table_row(record, ref_ms, peak), flush=True)
        failed = failed or not record["ok"]
    full = isolated(rec, f"{full_steps} steps, one run", lambda: full_case(model, objective, full_steps, polish),
                    device)
    if full["ok"]:
        print(f"\n{full_steps} steps, 1 restart, one whole run: **{full['run_s']:.2f} s** (similarity "
              f"{full['similarity']:.3f}, {full['ran_as']})." + ratio_line(measured), flush=True)
    judge(rec, arch, measured, ref_ms, full if full["ok"] and full_steps == 3000 else None)
    return not failed and full["ok"]


def ratio_line(measured: dict) -> str:
    graphed = {case.restarts: r for case, r in measured.items() if case.graphs}
    if 1 not in graphed:
        return ""
    return " " + "; ".join(f"{n} restarts / 1: {r['ms_per_step'] / graphed[1]['ms_per_step']:.2f}x"
                           for n, r in graphed.items() if n > 1) + "."


def judge(rec: Recorder, arch: str, measured: dict, ref_ms: float | None, full: dict | None) -> None:
    graphed = {case.restarts: r for case, r in measured.items() if case.graphs and r["ran_as"] == "cuda graph"}
    one = graphed.get(1)
    values = {"speed-up over the reference, 1 restart": ref_ms / one["ms_per_step"] if one and ref_ms else None,
              "peak memory, 1 restart (GiB)": one["peak_memory_gib"] if one else None,
              "16 restarts / 1 restart": graphed[16]["ms_per_step"] / one["ms_per_step"] if one and 16 in graphed else None,
              "share of the bf16 peak, 256 restarts": graphed[256]["peak_share"] if 256 in graphed else None,
              "3000 steps (s)": full["run_s"] if full else None}
    print()
    for name, (at_least, bound) in {**TARGETS["*"], **TARGETS.get(arch, {})}.items():
        value = values.get(name)
        met = None if value is None else (value >= bound if at_least else value <= bound)
        rec.write(kind="target", target=name, value=value, bound=bound, at_least=at_least, met=met)
        print(target_line(name, value, at_least, bound), flush=True)


def target_line(name: str, value: float | None, at_least: bool, bound: float) -> str:
    if value is None:
        return f"- target {name} {'≥' if at_least else '≤'} {bound}: not measured in this run"
    met = value >= bound if at_least else value <= bound
    return f"- target {name} {'≥' if at_least else '≤'} {bound}: {value:.2f} — {'met' if met else '**NOT met**'}"


def probe_cudnn(model) -> dict:
    """Forward + input gradient of the text tower at L+2 positions with cuDNN attention forced, eager and
    replayed from a CUDA graph, at 1 and 16 prompts: the two must agree and the device must stay sound."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    worst = 0.0
    for batch in (1, 16):
        prompt = torch.randn(batch, PROMPT_LEN, model.text_width, device=model.device, requires_grad=True)

        def step():
            prompt.grad = None
            features = model.encode_embeddings(prompt)
            features.sum().backward()
            return features.detach(), prompt.grad

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), torch.enable_grad():
            try:
                eager = [t.clone() for t in step()]
            except RuntimeError as e:  # cuDNN refuses this attention: the default dispatch cannot pick it either
                return {"ok": True, "cudnn_used": False, "why": str(e).splitlines()[0][:300]}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = step()
        graph.replay()
        torch.cuda.synchronize()  # an illegal memory access surfaces here (or kills the process)
        worst = max(worst, *(float((c.float() - e.float()).abs().max()) for c, e in zip(captured, eager)))
    return {"ok": worst <= PROBE_TOLERANCE["cudnn"], "cudnn_used": True, "max_difference": worst}


def probe_engine(model) -> dict:
    """The engine with and without its CUDA graph on the same problem: same search, same landing."""
    objective = Objective.stack([[(model.encode_texts([TARGET_TEXT])[0], 1.0)]])
    config = PezConfig(prompt_len=PROMPT_LEN, restarts=4, seed=0, steps=300)
    cuda_graph.set_enabled(False)
    try:
        eager = pez_core.optimize(model, objective, config)[0]
    finally:
        cuda_graph.set_enabled(True)
    graphed = pez_core.optimize(model, objective, config)[0]
    outcome = outcome_fields()
    difference = abs(graphed.similarity - eager.similarity)
    return {"ok": outcome["ran_as"] == "cuda graph" and difference <= PROBE_TOLERANCE["engine"],
            "eager_similarity": eager.similarity, "graph_similarity": graphed.similarity,
            "same_prompt": graphed.token_ids == eager.token_ids, **outcome}


def probe(kind: str, arch: str, device: torch.device, precision: str, results: str | None) -> int:
    """0 when the probe passed; 1 when it failed or raised (its record says how)."""
    rec = Recorder(results, model=arch, precision=precision, prompt_len=PROMPT_LEN)
    rec.write(kind="run", probe=kind, **environment(device))
    if device.type != "cuda":
        record = rec.write(kind="probe", probe=kind, ok=False, error=f"needs a CUDA device, not {device.type}")
    else:
        try:
            model = load(arch, device, precision)
            record = rec.write(kind="probe", probe=kind, **(probe_cudnn if kind == "cudnn" else probe_engine)(model))
        except Exception as e:
            record = rec.write(kind="probe", probe=kind, ok=False, error=f"{type(e).__name__}: {e}"[:2000],
                               traceback=traceback.format_exc()[-3000:])
    print(f"probe {kind} ({arch}, {precision}, {PROMPT_LEN + 2} positions): "
          f"{'passed' if record['ok'] else 'FAILED'} — {json.dumps(record)}", flush=True)
    return 0 if record["ok"] else 1


def per_model_processes(args, argv: list[str]) -> int:
    """Each model in a child process; one that dies is recorded and the next model still runs."""
    status = 0
    for arch in args.models:
        child = [sys.executable, __file__, *argv, "--models", arch]
        try:
            code = subprocess.run(child, timeout=args.model_timeout).returncode
            failure = exit_reason(code) if code != 1 else None  # 1: a case failed, and its record says so
        except subprocess.TimeoutExpired:
            code, failure = -1, f"was stopped at its {args.model_timeout} s limit"
        status = status or int(code != 0)
        if failure:
            print(f"\n**{arch}: the benchmark process {failure}**; the rows above are all it measured.", flush=True)
            Recorder(args.results, model=arch).write(kind="process", ok=False, error=failure)
    return status


def exit_reason(code: int) -> str | None:
    if code == 0:
        return None
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
        return f"was killed by signal {-code} ({name})"
    return f"exited with {code}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="open_clip architectures (random weights) or checkpoint paths (default ViT-H-14 "
                             "ViT-L-14, with --quick on the CPU ViT-S-32 ViT-S-32-alt; for --probe ViT-L-14)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", help="default bf16, with --quick on the CPU fp32")
    parser.add_argument("--full-steps", type=int, help="default 3000, with --quick on the CPU 12")
    parser.add_argument("--reference-steps", type=int, help="default 50, with --quick on the CPU 3")
    parser.add_argument("--polish", choices=pez_core.POLISH_MODES,
                        help=f"polishing after each run (default {PezConfig.polish}, with --quick on the CPU prune)")
    parser.add_argument("--quick", action="store_true", help="a few steps per case: checks the script, not the speed")
    parser.add_argument("--results", help="append one JSON line per record to this file as it is measured")
    parser.add_argument("--probe", choices=("cudnn", "engine"), help="run one probe instead of the benchmark")
    parser.add_argument("--model-timeout", type=float, default=None, help="seconds per model process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = pez_core.common.devices.resolve_device(args.device)
    if args.probe and not args.models:
        args.models = ["ViT-L-14"]
    for name, value in (QUICK_CPU if args.quick and device.type == "cpu" else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.probe:
        return probe(args.probe, args.models[0], device, args.precision, args.results)
    if len(args.models) > 1:
        without_models = [a for i, a in enumerate(argv) if not _is_models_arg(argv, i)]
        return per_model_processes(args, without_models)
    cases = QUICK_CASES if args.quick else CASES
    ok = bench(args.models[0], device, args.precision, cases, args.full_steps, args.reference_steps, args.results,
               args.polish)
    return 0 if ok else 1


def _is_models_arg(argv: list[str], i: int) -> bool:
    """True for ``--models`` and the values after it."""
    start = next((j for j, a in enumerate(argv) if a == "--models"), None)
    if start is None or i < start:
        return False
    end = next((j for j in range(start + 1, len(argv)) if argv[j].startswith("--")), len(argv))
    return i < end


if __name__ == "__main__":
    sys.exit(main())
