"""Datasets: readers to :class:`Sample` records, image decoding, splits, ``msfer datasets inspect``."""
from .images import UnreadableImageError, load_rgb, load_rgb_array, rgb_from_array
from .readers import READERS, DatasetError, DatasetIndex, read_dataset
from .samples import Sample
from .splits import stratified_split, subject_split

__all__ = [
    "READERS", "DatasetError", "DatasetIndex", "Sample", "UnreadableImageError", "load_rgb", "load_rgb_array",
    "read_dataset", "rgb_from_array", "stratified_split", "subject_split",
]
