"""CPU threads for the CLI: wall time of the same run with 1 thread and with one per core, quiet and busy.

Each run is a fresh ``python -m pez_core`` process (its set-up counted), with ``--threads`` set. "busy"
runs it while one other process spins on a core, as a second job or a browser would on a 2-core machine.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/threads.py
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "demo (shapes-demo, 300 steps)": ["invert", str(REPO / "assets" / "pez-demo-shape.png"), "--model", "shapes-demo",
                                      "--steps", "300"],
    "ViT-B-32 (random weights, 20 steps, L = 16)": [
        "distill", "a photo of a red fox in the snow, golden hour, sharp focus", "--model", "ViT-B-32",
        "--pretrained", "none", "--steps", "20", "--prompt-len", "16"],
}
SPIN = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass"


def timed(args: list[str], threads: int) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pez_core", *args, "--threads", str(threads), "--json"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores; seconds per run (best of {args.repeats})")
    print("| case | machine | 1 thread | %d threads | ratio |" % cores)
    print("|---|---|---|---|---|")
    for name, case in CASES.items():
        for machine in ("quiet", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if machine == "busy" else None
            try:
                one, many = (min(timed(case, n) for _ in range(args.repeats)) for n in (1, cores))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            print(f"| {name} | {machine} | {one:.1f} | {many:.1f} | {many / one:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
