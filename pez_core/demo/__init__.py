"""The demo world: coloured shapes (``shapes``) and the bundled files trained on it and for the LM demo
(``bundled/``: the ``shapes-demo`` CLIP, its caption language model ``shapes-caption-lm``, the ``tiny-lm`` and
``tiny-lm-b`` language models and their task). Works offline; imports nothing else of pez_core."""
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
CAPTION_LM = "shapes-caption-lm"  # trained by training/train_caption_lm.py: the fluency prior of shapes-demo
