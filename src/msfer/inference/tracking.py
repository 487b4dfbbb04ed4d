"""Face tracks across video frames: IoU matching, stable ids, optional temporal smoothing.

Faces move little between consecutive (processed) frames, so a face is the same
person as the track whose last box overlaps it most, if that overlap is at least
``iou_threshold``; pairs are matched greedily from the highest IoU down, each track
and face at most once. An unmatched face starts a new track; a track unmatched for
more than ``max_missed`` processed frames ends (its id is never reused).

Two checks keep the faces of different people apart, both on colour histograms (HSV, 8 x 4 x 4
bins, compared by half their L1 distance: 0 identical, 1 disjoint), which a camera pan or a
moving head barely changes:

* a **scene cut** ends every track: where the histograms of two successive processed frames
  differ by more than ``cut_threshold`` (0.4; also any change of frame size), a face after it
  is a new track even where a face of the previous shot stood (film scenes, edited clips, two
  recordings joined);
* a face joins a track only if its own histogram (its box's pixels) is within
  ``face_threshold`` (0.5) of the track's last face: a different person who steps into the
  same place, or a shot cut that leaves the background alike, starts a new track.

Measured on scikit-image's astronaut photo: a shift of the face by 5 px changes its histogram by
0.03 and a brightness change of 30 levels by 0.20, while the same face in grey differs by 0.71
and a cat's face by 0.55; two unrelated photos differ by 0.65. Two people of alike skin, hair and
lighting at the same place across an undetected cut can still be joined.

Smoothing is an exponential moving average of each track's probabilities:
``smoothed = smoothing * previous + (1 - smoothing) * current``, so 0 is off and
values near 1 follow slowly. It steadies labels that flicker between neighbouring
emotions from frame to frame. A smoothed face's label is chosen again from the smoothed
probabilities, by the same decision rule as its frame's (``decide``): from its ``decision_probs``
(those before the photo temperature, smoothed alike), so the temperature changes no smoothed label
either; the shown ``probs`` and ``confidence`` are the smoothed tempered ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..faces.crop import pixel_window
from ..labels import EMOTIONS
from .results import FaceResult

CUT_THRESHOLD = 0.4  # frame histograms further apart than this: a new shot
FACE_THRESHOLD = 0.5  # a face's histogram further than this from a track's: another person


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """The HSV histogram (8 x 4 x 4 bins, summing to 1, float32) of H x W x 3 uint8 RGB pixels."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    counts = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return counts / max(float(counts.sum()), 1.0)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two :func:`colour_histogram` s: 0 identical, 1 disjoint."""
    return 0.5 * float(np.abs(a - b).sum())


def face_histogram(image: np.ndarray, box) -> np.ndarray | None:
    """:func:`colour_histogram` of the pixels of ``box`` ([x1, y1, x2, y2]) in ``image``; None if it holds none."""
    x1, y1, x2, y2 = pixel_window(box, image.shape[1], image.shape[0])
    return colour_histogram(image[y1:y2, x1:x2]) if x2 > x1 and y2 > y1 else None


@dataclass
class Track:
    id: int
    box: np.ndarray
    probs: np.ndarray
    decision_probs: np.ndarray  # smoothed apart: the label reads them, never the photo-tempered probs
    missed: int = 0
    appearance: np.ndarray | None = None  # the colour histogram of its last face


class FaceTracker:
    """Assigns ``track_id`` to the faces of successive frames; see the module docstring."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, smoothing: float = 0.0,
                 decide: Callable[[np.ndarray], int] | None = None, cut_threshold: float | None = CUT_THRESHOLD,
                 face_threshold: float | None = FACE_THRESHOLD) -> None:
        """``decide``: the class index of a smoothed probability vector (7,), default the most probable.
        ``cut_threshold``, ``face_threshold``: see the module docstring (None: that check is off)."""
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.iou_threshold, self.max_missed, self.smoothing = iou_threshold, max_missed, smoothing
        self.decide = decide or (lambda probs: int(np.argmax(probs)))
        self.cut_threshold, self.face_threshold = cut_threshold, face_threshold
        self.tracks: list[Track] = []
        self.next_id = 1
        self.signature: np.ndarray | None = None  # the last processed frame's colour histogram
        self.frame_size: tuple[int, ...] | None = None
        self.cuts = 0

    def update(self, faces: list[FaceResult], image: np.ndarray | None = None) -> list[FaceResult]:
        """Set each face's ``track_id`` (and, when smoothing, its probs, label and confidence); return ``faces``.

        ``image``: the frame (H x W x 3 uint8 RGB) the faces are from, to end every track at a scene
        cut and to tell people apart by their faces' colours; without it faces are matched by place alone.
        """
        if image is not None and self.cut_threshold is not None:
            signature = colour_histogram(image)
            if self.signature is not None and (image.shape[:2] != self.frame_size
                                               or histogram_distance(self.signature, signature) > self.cut_threshold):
                self.tracks = []
                self.cuts += 1
            self.signature, self.frame_size = signature, image.shape[:2]
        looks = [face_histogram(image, face.box) if image is not None and self.face_threshold is not None else None
                 for face in faces]
        matches = self._match(faces, looks)
        matched_tracks = set(matches.values())
        for track_index, track in enumerate(self.tracks):
            if track_index not in matched_tracks:
                track.missed += 1
        for face_index, face in enumerate(faces):
            probs = np.array([face.probs[name] for name in EMOTIONS])
            decision_probs = np.array([(face.decision_probs or face.probs)[name] for name in EMOTIONS])
            if face_index in matches:
                track = self.tracks[matches[face_index]]
                track.box, track.missed = np.asarray(face.box, dtype=np.float64), 0
                track.appearance = looks[face_index] if looks[face_index] is not None else track.appearance
                track.probs = self.smoothing * track.probs + (1 - self.smoothing) * probs
                track.decision_probs = self.smoothing * track.decision_probs + (1 - self.smoothing) * decision_probs
            else:
                track = Track(self.next_id, np.asarray(face.box, dtype=np.float64), probs, decision_probs,
                              appearance=looks[face_index])
                self.tracks.append(track)
                self.next_id += 1
            face.track_id = track.id
            if self.smoothing:
                best = self.decide(track.decision_probs)
                face.probs = {name: round(float(p), 5) for name, p in zip(EMOTIONS, track.probs)}
                face.decision_probs = {name: round(float(p), 5) for name, p in zip(EMOTIONS, track.decision_probs)}
                face.label, face.confidence = EMOTIONS[best], round(float(track.probs[best]), 5)
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        return faces

    def _match(self, faces: list[FaceResult], looks: list[np.ndarray | None]) -> dict[int, int]:
        """Face index -> track index, greedy by decreasing IoU above the threshold, between faces and tracks that
        look alike (``looks``: each face's colour histogram, None where unknown)."""
        if not faces or not self.tracks:
            return {}
        import torch

        from ..model.boxes import box_iou

        iou = box_iou(torch.as_tensor(np.array([face.box for face in faces]), dtype=torch.float64),
                      torch.as_tensor(np.array([t.box for t in self.tracks]), dtype=torch.float64)).numpy()
        for face_index, look in enumerate(looks):
            for track_index, track in enumerate(self.tracks):
                if (look is not None and track.appearance is not None
                        and histogram_distance(look, track.appearance) > self.face_threshold):
                    iou[face_index, track_index] = 0.0  # another person where this one was
        matches: dict[int, int] = {}
        for face_index, track_index in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
            if iou[face_index, track_index] < self.iou_threshold:
                break
            if face_index not in matches and track_index not in matches.values():
                matches[int(face_index)] = int(track_index)
        return matches
