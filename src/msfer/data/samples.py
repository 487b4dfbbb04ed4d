"""The sample record every dataset reader yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass
class Sample:
    """One labelled face image.

    ``id`` is stable across runs and machines (derived from the file path relative to
    the dataset root, or from the row number for CSV datasets) and is the key that
    joins a sample to its region annotation. ``label`` is an index into
    ``msfer.labels.EMOTIONS``; ``soft_label`` (optional) a 7-vector of class
    probabilities in the same order. Exactly one of ``path`` and ``pixels`` is set.
    """

    id: str
    label: int
    split: str
    path: Optional[Path] = None
    pixels: Optional[np.ndarray] = field(default=None, repr=False)  # HxW or HxWx3 uint8 (CSV datasets)
    soft_label: Optional[tuple[float, ...]] = None
    subject: Optional[str] = None

    def load(self):
        """The image as an RGB ``PIL.Image``."""
        from .images import load_rgb, rgb_from_array

        return rgb_from_array(self.pixels) if self.pixels is not None else load_rgb(self.path)
