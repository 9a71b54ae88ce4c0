"""Caption datasets: a folder (or WebDataset shards) in, one sidecar caption per image out, resumable, on one
machine or on a Ray cluster (``pez_core.dataset.distributed``)."""
from .files import IMAGE_EXTENSIONS
from .job import (DEFAULT_BATCH, EXISTING_MODES, CaptionOptions, CaptionProgress, CaptionSummary, caption_images,
                  open_image)

__all__ = ["DEFAULT_BATCH", "EXISTING_MODES", "IMAGE_EXTENSIONS", "CaptionOptions", "CaptionProgress", "CaptionSummary",
           "caption_images", "open_image"]
