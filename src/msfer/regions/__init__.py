"""Emotion-region pseudo-labels (paper sections 3.1 and 4.3).

``retinaface``: the face detector (RetinaFace, ONNX, batched); ``geometry``: face, eye, nose and mouth
boxes from the face box and five landmarks; ``quality``: the automatic filter that
replaces the paper's manual removal; ``annotations``: the JSON Lines file;
``annotate``: the ``msfer annotate`` command; ``review``: the contact sheet.
"""
from .annotations import load_annotations
from .geometry import derive_regions
from .retinaface import Face, RetinaFaceDetector

__all__ = ["Face", "RetinaFaceDetector", "derive_regions", "load_annotations"]
