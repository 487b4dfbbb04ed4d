"""Face tracks across video frames: IoU matching, stable ids, optional temporal smoothing.

Faces move little between consecutive (processed) frames, so a face is the same
person as the track whose last box overlaps it most, if that overlap is at least
``iou_threshold``; pairs are matched greedily from the highest IoU down, each track
and face at most once. An unmatched face starts a new track; a track unmatched for
more than ``max_missed`` processed frames ends (its id is never reused).

A **scene cut** ends every track: a face after a cut is a new track even where a face of the
previous shot stood (film scenes, edited clips, two recordings joined). A cut is where two
successive processed frames differ by more than ``cut_threshold`` in mean absolute HSV
difference on a 64-pixel-wide copy (0..255 per channel; also any change of frame size): the
measure and default of PySceneDetect's ``ContentDetector``. With a large ``--every`` a fast
camera move can read as a cut and split one person's track in two; joining two people is the
worse error for a report of each face.

Smoothing is an exponential moving average of each track's probabilities:
``smoothed = smoothing * previous + (1 - smoothing) * current``, so 0 is off and
values near 1 follow slowly. It steadies labels that flicker between neighbouring
emotions from frame to frame. A smoothed face's label is chosen again from the smoothed
probabilities, by the same decision rule as its frame's (``decide``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..labels import EMOTIONS
from .results import FaceResult

# PySceneDetect's ContentDetector default: mean absolute HSV difference between frames, 0..255 scale.
CUT_THRESHOLD = 27.0
SIGNATURE_WIDTH = 64


def scene_signature(rgb: np.ndarray) -> np.ndarray:
    """A small HSV copy of an H x W x 3 uint8 RGB frame (64 px wide, float32), what :func:`is_cut` compares."""
    import cv2

    height, width = rgb.shape[:2]
    size = (SIGNATURE_WIDTH, max(1, round(height * SIGNATURE_WIDTH / width)))
    small = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.float32)


def is_cut(before: np.ndarray, after: np.ndarray, threshold: float = CUT_THRESHOLD) -> bool:
    """Whether two :func:`scene_signature` s are of different shots (see the module docstring)."""
    return before.shape != after.shape or float(np.abs(before - after).mean()) > threshold


@dataclass
class Track:
    id: int
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0


class FaceTracker:
    """Assigns ``track_id`` to the faces of successive frames; see the module docstring."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, smoothing: float = 0.0,
                 decide: Callable[[np.ndarray], int] | None = None, cut_threshold: float | None = CUT_THRESHOLD
                 ) -> None:
        """``decide``: the class index of a smoothed probability vector (7,), default the most probable.
        ``cut_threshold``: see the module docstring (None: tracks run across cuts)."""
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.iou_threshold, self.max_missed, self.smoothing = iou_threshold, max_missed, smoothing
        self.decide = decide or (lambda probs: int(np.argmax(probs)))
        self.cut_threshold = cut_threshold
        self.tracks: list[Track] = []
        self.next_id = 1
        self.signature: np.ndarray | None = None
        self.cuts = 0

    def update(self, faces: list[FaceResult], image: np.ndarray | None = None) -> list[FaceResult]:
        """Set each face's ``track_id`` (and, when smoothing, its probs, label and confidence); return ``faces``.

        ``image``: the frame (H x W x 3 uint8 RGB) the faces are from, to end every track at a scene
        cut; without it tracks run across cuts.
        """
        if image is not None and self.cut_threshold is not None:
            signature = scene_signature(image)
            if self.signature is not None and is_cut(self.signature, signature, self.cut_threshold):
                self.tracks = []
                self.cuts += 1
            self.signature = signature
        matches = self._match(faces)
        matched_tracks = set(matches.values())
        for track_index, track in enumerate(self.tracks):
            if track_index not in matched_tracks:
                track.missed += 1
        for face_index, face in enumerate(faces):
            probs = np.array([face.probs[name] for name in EMOTIONS])
            if face_index in matches:
                track = self.tracks[matches[face_index]]
                track.box, track.missed = np.asarray(face.box, dtype=np.float64), 0
                track.probs = self.smoothing * track.probs + (1 - self.smoothing) * probs
            else:
                track = Track(self.next_id, np.asarray(face.box, dtype=np.float64), probs)
                self.tracks.append(track)
                self.next_id += 1
            face.track_id = track.id
            if self.smoothing:
                best = self.decide(track.probs)
                face.probs = {name: round(float(p), 5) for name, p in zip(EMOTIONS, track.probs)}
                face.label, face.confidence = EMOTIONS[best], round(float(track.probs[best]), 5)
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        return faces

    def _match(self, faces: list[FaceResult]) -> dict[int, int]:
        """Face index -> track index, greedy by decreasing IoU above the threshold."""
        if not faces or not self.tracks:
            return {}
        import torch

        from ..model.boxes import box_iou

        iou = box_iou(torch.as_tensor(np.array([face.box for face in faces]), dtype=torch.float64),
                      torch.as_tensor(np.array([t.box for t in self.tracks]), dtype=torch.float64)).numpy()
        matches: dict[int, int] = {}
        for face_index, track_index in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
            if iou[face_index, track_index] < self.iou_threshold:
                break
            if face_index not in matches and track_index not in matches.values():
                matches[int(face_index)] = int(track_index)
        return matches
