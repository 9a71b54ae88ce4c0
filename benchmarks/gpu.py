"""GPU speed: the naive reference loop against the engine, eager and as one CUDA graph per step.

    python benchmarks/gpu.py --models ViT-H-14 ViT-L-14            # on the device (gpu_check.sh)
    python benchmarks/gpu.py --device cpu --quick --models M.safetensors   # checks the script itself

Random weights (timing does not depend on them), built directly on the device. "ms/step" is the
marginal cost of one step: two runs of different lengths, so warm-up steps, graph capture and the
final decoding cancel out ("fixed" is what they cost). "3000 steps" is one whole run timed end to
end, as a user waits for it. Useful work is counted in FLOPs (text tower forward + input-gradient
backward on the L+2 positions, and the projection) and divided by the marginal step time.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

import pez_core
from pez_core import Objective, PezConfig, cuda_graph

try:
    from benchmarks.reference_loop import reference_pez
except ImportError:  # run as a script from benchmarks/
    from reference_loop import reference_pez

TARGET_TEXT = "a photograph of a red fox in the snow, golden hour, highly detailed"
PROMPT_LEN = 16
# dense bf16 tensor-core peak (no sparsity), from the vendor's data sheets; matched in this order
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4))


class Row(NamedTuple):
    case: "Case"
    ms: float            # marginal ms per step
    fixed: float         # seconds per run that do not grow with steps
    tflops: float        # useful TFLOP/s
    similarity: float
    memory: float | None  # peak GiB (CUDA only)


@dataclass(frozen=True)
class Case:
    restarts: int
    graphs: bool
    short: int   # steps of the short run
    long: int    # steps of the long run

    @property
    def name(self) -> str:
        return f"engine {'CUDA graph' if self.graphs else 'eager'}, {self.restarts} restart{'s' * (self.restarts > 1)}"


CASES = (Case(1, False, 10, 60), Case(1, True, 50, 1050), Case(16, True, 50, 550), Case(256, True, 20, 220))
# the GPU issue's targets: measurement -> (at least?, bound); "*" applies to every model
TARGETS = {
    "ViT-H-14": {"speed-up over the reference, 1 restart": (True, 20), "3000 steps (s)": (False, 8),
                 "peak memory, 1 restart (GiB)": (False, 2)},
    "ViT-L-14": {"3000 steps (s)": (False, 3)},
    "*": {"16 restarts / 1 restart": (False, 1.7), "share of the bf16 peak, 256 restarts": (True, 0.5)},
}
QUICK_CASES = (Case(1, False, 5, 10), Case(1, True, 5, 10), Case(2, True, 5, 10), Case(3, True, 5, 10))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed_run(model, objective, config) -> tuple[float, pez_core.PezResult]:
    synchronize(model.device)
    started = time.perf_counter()
    result = pez_core.optimize(model, objective, config)[0]
    synchronize(model.device)
    return time.perf_counter() - started, result


def marginal_step(model, objective, case: Case) -> tuple[float, float, pez_core.PezResult]:
    """(ms per step, fixed seconds per run, result of the long run) for one case."""
    cuda_graph.set_enabled(case.graphs)
    try:
        config = PezConfig(prompt_len=PROMPT_LEN, restarts=case.restarts, seed=0, steps=case.short)
        timed_run(model, objective, config)  # warm-up: kernels, cuBLAS handles, allocator
        short, _ = timed_run(model, objective, config)
        long, result = timed_run(model, objective, replace(config, steps=case.long))
    finally:
        cuda_graph.set_enabled(True)
    seconds_per_step = max(long - short, 1e-9) / (case.long - case.short)
    return 1000 * seconds_per_step, short - case.short * seconds_per_step, result


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


def load(arch: str, device: torch.device, precision: str) -> pez_core.PezModel:
    pretrained = None if Path(arch).is_file() else "none"
    with torch.device(device):  # random initialisation on the GPU is instant
        return pez_core.load_model(arch, pretrained, device=device, precision=precision)


def bench(arch: str, device: torch.device, precision: str, cases, full_steps: int, reference_steps: int) -> list[str]:
    model = load(arch, device, precision)
    objective = Objective.stack([[(model.encode_texts([TARGET_TEXT])[0], 1.0)]])
    vocab_rows = len(pez_core.allowed_token_ids(model.tokenizer, PezConfig().vocab))
    embed_dim = objective.features.shape[-1]
    rows = []
    for case in cases:
        reset_peak_memory(device)
        ms, fixed, result = marginal_step(model, objective, case)
        tflops = useful_flops_per_step(model, case.restarts, PROMPT_LEN, vocab_rows, embed_dim) / ms / 1e9
        rows.append(Row(case, ms, fixed, tflops, result.similarity, peak_memory_gib(device)))
    full_seconds, full_result = timed_run(model, objective, PezConfig(prompt_len=PROMPT_LEN, restarts=1, steps=full_steps))
    del model
    pez_core.clear_cache()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    reference_model = load(arch, device, "fp32")  # the reference code runs fp32
    ref_target = reference_model.encode_texts([TARGET_TEXT])[0]
    reference_pez(reference_model, ref_target, PROMPT_LEN, steps=3)  # warm-up
    reference = reference_pez(reference_model, ref_target, PROMPT_LEN, steps=reference_steps)
    ref_ms = reference["ms_per_step"]
    del reference_model
    pez_core.clear_cache()

    peak = peak_tflops(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    out = [f"### {arch}, L={PROMPT_LEN}, {precision} — {where} — torch {torch.__version__} — {datetime.date.today()}",
           "",
           "| loop | ms/step | fixed (s) | vs reference | useful TFLOP/s | of bf16 peak | peak memory (GiB) | best sim |",
           "|---|---|---|---|---|---|---|---|",
           f"| reference loop (fp32, 77 tokens, 2 passes, host sync every step) | {ref_ms:.2f} | | 1.0x | | | "
           f"| {reference['similarity']:.3f} |"]
    for row in rows:
        name = row.case.name if device.type == "cuda" or not row.case.graphs else f"{row.case.name} (no CUDA: runs eagerly)"
        share = f"{100 * row.tflops / peak:.0f} %" if peak else ""
        memory = f"{row.memory:.2f}" if row.memory is not None else ""
        out.append(f"| {name} | {row.ms:.2f} | {row.fixed:.2f} | {ref_ms / row.ms:.1f}x | {row.tflops:.1f} | {share} "
                   f"| {memory} | {row.similarity:.3f} |")
    graphed = {row.case.restarts: row for row in rows if row.case.graphs}
    one = graphed[1]
    ratios = "; ".join(f"{r} restarts / 1: {row.ms / one.ms:.2f}x" for r, row in graphed.items() if r > 1)
    out += ["", f"{full_steps} steps, 1 restart, one whole run: **{full_seconds:.2f} s** "
            f"(similarity {full_result.similarity:.3f}). {ratios}.", ""]
    measured = {"speed-up over the reference, 1 restart": ref_ms / one.ms,
                "peak memory, 1 restart (GiB)": one.memory,
                "16 restarts / 1 restart": graphed[16].ms / one.ms if 16 in graphed else None,
                "share of the bf16 peak, 256 restarts": graphed[256].tflops / peak if peak and 256 in graphed else None,
                "3000 steps (s)": full_seconds if full_steps == 3000 else None}
    if device.type == "cuda":
        out += [target_line(name, measured.get(name), *bound)
                for name, bound in {**TARGETS["*"], **TARGETS.get(arch, {})}.items()] + [""]
    return out


def target_line(name: str, value: float | None, at_least: bool, bound: float) -> str:
    if value is None:
        return f"- target {name} {'≥' if at_least else '≤'} {bound}: not measured in this run"
    met = value >= bound if at_least else value <= bound
    return f"- target {name} {'≥' if at_least else '≤'} {bound}: {value:.2f} — {'met' if met else '**NOT met**'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-H-14", "ViT-L-14"],
                        help="open_clip architectures (random weights) or checkpoint paths")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--full-steps", type=int, default=3000)
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a few steps per case: checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = pez_core.models.resolve_device(args.device)
    cases = QUICK_CASES if args.quick else CASES
    for arch in args.models:
        print("\n".join(bench(arch, device, args.precision, cases, args.full_steps, args.reference_steps)), flush=True)


if __name__ == "__main__":
    main()
