"""Where things are in this checkout, for the tests, the demo (scripts/demo.py) and the benchmarks."""
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent  # these helper modules: what a test's child process puts on its path
REPO_ROOT = SUPPORT.parents[1]  # the repository root: the ComfyUI pack
SAMPLES = sorted((REPO_ROOT / "assets").glob("pez-demo-*.png"))  # the images the example workflows load
