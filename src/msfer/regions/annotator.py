"""RetinaFace pseudo-labels of the emotion regions for a whole dataset (what ``msfer annotate`` runs).

The pipeline per batch: decode (in a background thread, overlapping the network),
resize to the detection size, detect (batched onnxruntime calls, one per image size), map back to the
original pixels, pick the single-face crop's face, filter, derive the regions, append
the lines and flush (:func:`annotate_samples`). The output is resumable: ids already in
the file are skipped.

Detection size. RetinaFace's smallest anchors are 16 px and it was trained on faces
inside larger scenes, so a 48 x 48 FER2013 crop, all face, must be enlarged. On 3,000
FER2013 train images, scaling to 128 / 144 / 160 px accepted 97.8 / 97.4 / 98.0%
(a face at score >= 0.2 in 99.2 / 99.3 / 99.5%); on 1,500 of them a face at score
>= 0.5 was found in 96.3 / 97.5 / 98.9 / 99.1% at 96 / 112 / 128 / 160 px. Padding the
enlarged crop (16 to 32 px of the mean grey or the replicated border) never helped
(112 + 16: 97.3%, 128 + 16: 98.5%) and costs compute, so images are only resized, to
``DETECT_SIZE`` = 128: nearly 160 px's rate at two thirds of its cost. Large photos are shrunk to ``MAX_DETECT_SIZE``
(faces there are large; RetinaFace's largest anchor is 512 px).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..faces.retinaface import Face, RetinaFaceDetector, resize_by
from ..labels import EMOTIONS
from .annotations import REJECTED_PREFIX, STATUS_NO_FACE, STATUS_OK, STATUS_UNREADABLE, AnnotationWriter
from .filter import QualityRules, rejection_reason, select_face
from .geometry import derive_regions

log = logging.getLogger(__name__)

DETECT_SIZE = 128
MAX_DETECT_SIZE = 640
# Detections from this confidence up are kept as candidates, so that a weak face is
# reported as rejected:low_score (and can be looked at) rather than as no_face.
CANDIDATE_SCORE = 0.2
JPEG_SUFFIXES = (".jpg", ".jpeg")
LOW_SCORE = REJECTED_PREFIX + "low_score"


def detection_scale(width: int, height: int, detect_size: int = DETECT_SIZE) -> float:
    """The factor an image is resized by before detection: small ones up to ``detect_size``, huge ones down."""
    longer = max(width, height)
    if longer < detect_size:
        return detect_size / longer
    return min(1.0, MAX_DETECT_SIZE / longer)


def decode(sample) -> np.ndarray | None:
    """The sample's pixels (H x W grey or H x W x 3 RGB uint8), or None if they cannot be read.

    JPEGs (no alpha, no 16 bits) are decoded with OpenCV, grey ones staying one channel,
    which is several times faster than PIL; everything else goes through ``sample.load()``.
    The file is read by Python and its bytes handed to OpenCV: ``cv2.imread`` crashes the
    process on a file name that is not valid UTF-8.
    """
    from ..data.images import UnreadableImageError

    if sample.path is not None and Path(sample.path).suffix.lower() in JPEG_SUFFIXES:
        try:
            data = np.frombuffer(Path(sample.path).read_bytes(), np.uint8)
        except OSError:
            data = np.zeros(0, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR) if data.size else None
        if image is not None:
            return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        return np.asarray(sample.load())
    except (UnreadableImageError, ValueError):
        return None


class Annotator:
    """Turns decoded images into annotation records (detect, select, filter, derive)."""

    def __init__(
        self,
        detector: RetinaFaceDetector,
        rules: QualityRules = QualityRules(),
        merge_eyes: bool = False,
        detect_size: int = DETECT_SIZE,
    ) -> None:
        self.detector, self.rules, self.merge_eyes, self.detect_size = detector, rules, merge_eyes, detect_size

    def annotate(self, samples: Sequence, images: Sequence[np.ndarray | None]) -> list[dict]:
        """One record per sample, in order; ``images[i]`` is None when sample i could not be decoded."""
        readable = [i for i, image in enumerate(images) if image is not None]
        scales = [detection_scale(images[i].shape[1], images[i].shape[0], self.detect_size) for i in readable]
        resized = [resize_by(images[i], scale, cv2.INTER_LINEAR) for i, scale in zip(readable, scales)]
        detections = dict(zip(readable, zip(self._detect(resized, [samples[i] for i in readable]), scales)))
        records = []
        for i, (sample, image) in enumerate(zip(samples, images)):
            record = {"id": sample.id, "split": sample.split, "label": sample.label}
            if image is None or detections[i][0] is None:
                records.append({**record, "status": STATUS_UNREADABLE})
                continue
            faces, scale = detections[i]
            records.append({**record, **self._describe(faces, scale, image.shape[1], image.shape[0])})
        return records

    def _detect(self, images: list[np.ndarray], samples: list) -> list[list[Face] | None]:
        """The detector's faces per image; should the batch fail, image by image, None for an image that fails.

        One image that breaks the detector must not cost the rest of its batch (or the run) their records.
        """
        try:
            return self.detector.detect(images)
        except Exception:  # noqa: BLE001 - narrowed down below, image by image
            faces: list[list[Face] | None] = []
            for image, sample in zip(images, samples):
                try:
                    faces.append(self.detector.detect([image])[0])
                except Exception as error:  # noqa: BLE001
                    log.warning("%s: detection failed (%s: %s); written as unreadable", sample.id,
                                type(error).__name__, error)
                    faces.append(None)
            return faces

    def _describe(self, faces: list, scale: float, width: int, height: int) -> dict:
        """The record fields of one decoded image from its detections (in detector pixels)."""
        record = {
            "width": width, "height": height, "status": STATUS_NO_FACE, "regions": {}, "landmarks": None,
            "score": None, "faces": len(faces), "transform": {"scale": round(scale, 6)},
        }
        faces = [Face(face.box / scale, face.score, face.landmarks / scale) for face in faces]
        face = select_face(faces, width, height, self.rules.min_score)
        if face is None:
            return record
        reason = rejection_reason(face, self.rules)
        regions = derive_regions(face.box, face.landmarks, width, height, self.merge_eyes)
        record.update(
            status=STATUS_OK if reason is None else REJECTED_PREFIX + reason,
            regions={name: [round(v, 2) for v in box] for name, box in regions.items()},
            # The detector's own box, not clipped like regions["face"]: what a crop is framed by, as
            # inference frames the same detection (msfer.faces.crop).
            face_box=[round(float(v), 2) for v in face.box],
            landmarks=np.round(face.landmarks.astype(np.float64), 2).tolist(),
            score=round(face.score, 4),
        )
        return record


def prefetched(batches: Sequence[list], load) -> Iterator[tuple[list, list]]:
    """``(batch, [load(item) ...])`` per batch, decoding the next batch in a thread while the caller works."""
    def decode_batch(batch: list) -> list:
        return [load(item) for item in batch]

    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(decode_batch, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            images = upcoming.result()
            upcoming = pool.submit(decode_batch, batches[k + 1]) if k + 1 < len(batches) else None
            yield batch, images


def rates_table(samples: Sequence, records: dict[str, dict]) -> str:
    """A table of detection and acceptance rates per split and class, then the rejection reasons.

    Detected: a face at ``--score-threshold`` or more, whether or not it then passed the filter.
    """
    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    multiple_faces = 0
    for sample in samples:
        record = records.get(sample.id)
        if record is None:
            continue
        status = record["status"]
        for key in ((sample.split, EMOTIONS[sample.label]), (sample.split, "all")):
            table[key]["images"] += 1
            table[key]["detected"] += status not in (STATUS_NO_FACE, STATUS_UNREADABLE, LOW_SCORE)
            table[key]["accepted"] += status == STATUS_OK
        if status != STATUS_OK:
            reasons[status] += 1
        multiple_faces += (record.get("faces") or 0) > 1
    lines = [f"{'split':<14}{'class':<10}{'images':>8}{'detected':>10}{'accepted':>10}"]
    for split in sorted({split for split, _ in table}):
        for name in (*EMOTIONS, "all"):
            counts = table.get((split, name))
            if counts:
                n = counts["images"]
                detected, accepted = counts["detected"] / n, counts["accepted"] / n
                lines.append(f"{split:<14}{name:<10}{n:>8}{detected:>10.1%}{accepted:>10.1%}")
    not_accepted = ", ".join(f"{status} {count}" for status, count in reasons.most_common()) or "none"
    lines.append(f"not accepted: {not_accepted}")
    lines.append(f"images with several faces (the largest, most central one kept): {multiple_faces}")
    return "\n".join(lines)


def annotate_samples(annotator: Annotator, samples: Sequence, out: Path, batch_size: int) -> tuple[dict, int, float]:
    """Annotate the ``samples`` that ``out`` (an annotation file, appended to) does not have yet, in batches.

    Returns every record ``out`` then holds (by id), how many samples were annotated now and the seconds it took.
    """
    started = time.perf_counter()
    with AnnotationWriter(out) as writer:
        todo = [sample for sample in samples if sample.id not in writer.records]
        if len(todo) < len(samples):
            log.info("%s already has %d of these images; annotating the other %d", out,
                     len(samples) - len(todo), len(todo))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        with tqdm(total=len(todo), unit="img", desc="annotate") as progress:
            for batch, images in prefetched(batches, decode):
                writer.write(annotator.annotate(batch, images))
                progress.update(len(batch))
        records = writer.records
    return records, len(todo), time.perf_counter() - started
