"""What the example workflows find in ComfyUI's input folder besides the shipped samples (``paths.SAMPLES``): the
caption example's folder of demo shapes. The tests, ``make demo`` and ``make serve`` put it there alike."""
from __future__ import annotations

import shutil
from pathlib import Path

CAPTION_DEMO = "pez_caption_demo"  # the folder PEZ Caption Folder captions in example 2 ("Caption a LoRA dataset folder")
CAPTION_DEMO_SEED = 0  # four shapes of different colours on different backgrounds
CAPTION_DEMO_IMAGES = 4


def write_caption_demo(input_dir: Path, *, fresh: bool = True) -> Path:
    """``<input_dir>/pez_caption_demo`` with a few demo shapes (``pez_core.demo.shapes``). ``fresh``: without the
    captions of an earlier run; else what is there stays (a second run of the example skips its images)."""
    from pez_core.demo import shapes

    folder = Path(input_dir) / CAPTION_DEMO
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = shapes.sample(CAPTION_DEMO_SEED, CAPTION_DEMO_IMAGES)
    for i, image in enumerate(images, 1):
        path = folder / f"shape_{i}.png"
        if not path.exists():
            image.save(path)
    return folder
