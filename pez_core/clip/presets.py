"""The CLIP presets and bundled models ``load_model`` knows by name (what open_clip keeps in ``pretrained.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..demo import BUNDLED_DIR, CAPTION_LM

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Preset:
    arch: str
    pretrained: str
    serves: str
    download_bytes: int = 0         # its weights file on the hub, about (fp32: 4 bytes a parameter); 0: unknown

    @property
    def file_stem(self) -> str:
        """The name its weights go by in a model folder (what the offline error and the examples ask for)."""
        return f"{self.arch}-{self.pretrained}"


PRESETS: dict[str, Preset] = {
    "ViT-L-14 · openai": Preset("ViT-L-14", "openai", "SD 1.x, SDXL's CLIP-L, Flux", 1_710_000_000),
    "ViT-H-14 · laion2b_s32b_b79k": Preset("ViT-H-14", "laion2b_s32b_b79k", "SD 2.x", 3_940_000_000),
    "ViT-bigG-14 · laion2b_s39b_b160k": Preset("ViT-bigG-14", "laion2b_s39b_b160k", "SDXL's G encoder",
                                               10_160_000_000),
    "ViT-B-32 · laion2b_s34b_b79k": Preset("ViT-B-32", "laion2b_s34b_b79k", "fast, for drafts", 605_000_000),
}
DEFAULT_MODEL = "ViT-L-14 · openai"


@dataclass(frozen=True)
class JointPreset:
    """Presets optimised for at once (``pez_core.joint``): one prompt for every text encoder of a pipeline."""
    parts: tuple[str, ...]          # names in PRESETS
    weights: tuple[float, ...]
    serves: str


JOINT_PRESETS: dict[str, JointPreset] = {
    "SDXL (ViT-L-14 · openai + ViT-bigG-14 · laion2b_s39b_b160k)": JointPreset(
        ("ViT-L-14 · openai", "ViT-bigG-14 · laion2b_s39b_b160k"), (1.0, 1.0),
        "SDXL's two encoders (also SD3's two CLIPs)"),
}


def preset_of_weights(arch: str, tag: str) -> Preset | None:
    """The preset of an architecture and pretrained tag, or None."""
    return next((p for p in PRESETS.values() if (p.arch, p.pretrained) == (arch, tag)), None)


def preset_of_file(filename: str) -> str | None:
    """The preset whose weights file this is (``ViT-L-14-openai.safetensors`` → ``ViT-L-14 · openai``), or None."""
    path = Path(filename)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return None
    return next((name for name, p in PRESETS.items() if p.file_stem == path.stem), None)


BUNDLED_DESCRIPTIONS = {
    "shapes-demo": "demo model trained here; it only knows coloured shapes (works offline)",
}
# the fluency prior of each bundled model (pez_core.lm.prior); every other CLIP reads English: GPT-2
FLUENCY_MODEL_OF = {"shapes-demo": CAPTION_LM}
DEFAULT_FLUENCY_MODEL = "gpt2"
# where fluency=None (auto) means readable: measured to pay there (benchmarks/README.md, "Readable prompts");
# elsewhere auto is off until measured (GPT-2 cannot be downloaded where this was built)
READABLE_BY_DEFAULT = frozenset({"shapes-demo"})


def bundled_models() -> dict[str, Path]:
    """Bundled model name → weights file (config JSON beside it)."""
    return {name: BUNDLED_DIR / f"{name}.safetensors" for name in BUNDLED_DESCRIPTIONS
            if (BUNDLED_DIR / f"{name}.safetensors").is_file()}


def available_models() -> list[tuple[str, str]]:
    """(usable name, description) for the presets and bundled models."""
    rows = [(name, f"{p.serves}; downloads on first use") for name, p in PRESETS.items()]
    rows += [(name, f"{p.serves}; downloads on first use") for name, p in JOINT_PRESETS.items()]
    rows += [(name, BUNDLED_DESCRIPTIONS[name]) for name in bundled_models()]
    return rows
