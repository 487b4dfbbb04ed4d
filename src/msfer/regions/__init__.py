"""Emotion-region pseudo-labels (paper sections 3.1 and 4.3).

``geometry``: face, eye, nose and mouth boxes from the face box and five landmarks; ``filter``:
the automatic filter that replaces the paper's manual removal; ``annotations``: the JSON Lines
file; ``annotate``: the ``msfer annotate`` command; ``review``: the contact sheet. The face
detector they run is :mod:`msfer.faces`.
"""
from .annotations import load_annotations
from .geometry import derive_regions

__all__ = ["derive_regions", "load_annotations"]
