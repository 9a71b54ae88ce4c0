"""The whole PEZ step as one CUDA graph.

A PEZ step is a few hundred small kernels; eagerly, a GPU spends most of it waiting for Python
and kernel launches. Every tensor a step touches is allocated once (see ``engine.Run``) and
updated in place, so the step can be captured once and replayed. Warm-up steps run on a side
stream first, as CUDA graph capture requires; they are real steps and are counted.

Capture picks its own attention kernels (``CAPTURE_SDPA``) and, when it fails, leaves the process
as it found it — the caller's stream current again — and the run goes on eagerly with the same
result. ``last_outcome()`` says how the most recent run in this process stepped, and why.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
# Attention kernels allowed while warming up and capturing. cuDNN attention is left out: inside CUDA
# graphs at sequence lengths that are not multiples of 128 (PEZ runs at L+2 = 18) some cuDNN versions
# crash with illegal memory accesses (pytorch issue 169849); at 18 positions attention is a sliver of
# the step, so the other kernels cost nothing noticeable. PEZ_CAPTURE_SDPA (comma list) overrides.
CAPTURE_SDPA = ("flash", "efficient", "math")
SDPA_ENV = "PEZ_CAPTURE_SDPA"
_SDPA_NAMES = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH",
               "cudnn": "CUDNN_ATTENTION"}
_REASON_CHARS = 400


@dataclass(frozen=True)
class Outcome:
    """How a run stepped: ``graphed`` True when its steps replayed a CUDA graph; ``reason`` says why not."""
    graphed: bool
    reason: str


_disabled_reason: str | None = None  # set to turn capture off, e.g. in equivalence tests
_last = Outcome(False, "no run yet")


def set_enabled(enabled: bool) -> None:
    global _disabled_reason
    _disabled_reason = None if enabled else "disabled by set_enabled(False)"


def last_outcome() -> Outcome:
    """How the most recent run in this process stepped (a benchmark records it with its timings)."""
    return _last


def capture_backends() -> list:
    """The SDPA backends capture may use: ``CAPTURE_SDPA``, or the names in $PEZ_CAPTURE_SDPA."""
    from torch.nn.attention import SDPBackend

    names = [n.strip().lower() for n in os.environ.get(SDPA_ENV, ",".join(CAPTURE_SDPA)).split(",") if n.strip()]
    unknown = [n for n in names if n not in _SDPA_NAMES]
    if unknown or not names:
        raise ValueError(f"{SDPA_ENV}={os.environ.get(SDPA_ENV)!r}: use a comma list of {', '.join(_SDPA_NAMES)}")
    return [getattr(SDPBackend, _SDPA_NAMES[n]) for n in names]


def _why_not(run, steps: int) -> str | None:
    if run.device.type != "cuda":
        return f"device is {run.device.type}"
    if _disabled_reason:
        return _disabled_reason
    if steps <= WARMUP_STEPS + 1:
        return "too few steps to pay for a capture"
    return None


def _record(graphed: bool, reason: str) -> None:
    global _last
    _last = Outcome(graphed, reason)


def graphed_step(run, steps: int) -> tuple[Callable[[], None], int]:
    """(a function doing one step, how many steps already ran). Falls back to eager with the reason logged."""
    reason = _why_not(run, steps)
    if reason:
        log.debug("eager steps: %s", reason)
        _record(False, reason)
        return run.step, 0
    from torch.nn.attention import sdpa_kernel

    caller = torch.cuda.current_stream()
    backends = capture_backends()
    # the flags are process-wide: the warm-up runs the kernels the capture will record
    with sdpa_kernel(backends):
        _warm_up(run, caller)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a server's other threads may use CUDA while this one captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                run.step()
        except Exception as e:  # capture can fail on exotic models, kernels or drivers: stay correct, go eager
            reason = f"capture failed: {_describe(e)}"
            _recover(graph, caller)
            log.warning("CUDA graph %s; running eagerly", reason)
            _record(False, reason)
            return run.step, WARMUP_STEPS
    _record(True, "captured (attention: " + ", ".join(b.name.lower() for b in backends) + ")")
    log.info("PEZ step captured as one CUDA graph")
    return graph.replay, WARMUP_STEPS


def _warm_up(run, caller) -> None:
    side = torch.cuda.Stream()
    side.wait_stream(caller)
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            run.step()
    caller.wait_stream(side)


def _describe(error: BaseException) -> str:
    """The error and what caused it: a step that fails inside capture surfaces as capture_end's error,
    with the step's own error as its context."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        first = (str(error).strip().splitlines() or [""])[0]
        parts.append(f"{type(error).__name__}: {first}" if first else type(error).__name__)
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)[:_REASON_CHARS]


def _recover(graph, caller) -> None:
    """Undo what a failed capture leaves behind: torch's graph context restores the caller's stream only
    after a successful capture_end, so later work would queue on the (dead) capture stream."""
    if torch.cuda.is_current_stream_capturing():  # capture_end never ran: end it, discarding the graph
        with contextlib.suppress(Exception):
            graph.capture_end()
    torch.cuda.set_stream(caller)
    with contextlib.suppress(Exception):
        graph.reset()
    torch.cuda.synchronize()  # an error that poisoned the device surfaces here, not in a later step
