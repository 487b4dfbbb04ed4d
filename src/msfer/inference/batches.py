"""Emotion recognition over columnar batches: the predictor a data-parallel engine maps over its shards.

With Ray Data (``pip install "msfer[ray]"``), one :class:`BatchPredictor` per worker::

    import ray
    from msfer.inference.batches import BatchPredictor

    faces = ray.data.read_binary_files("photos/", include_paths=True).map_batches(
        BatchPredictor, fn_constructor_kwargs={"weights": None}, compute=ray.data.ActorPoolStrategy(size=4),
        batch_size=32)
    faces.write_csv("results/")

A batch is a mapping of equally long columns (numpy arrays or lists) holding the inputs in one of:

- ``bytes``: each file's content (``ray.data.read_binary_files``), read by msfer, so an unreadable
  file becomes a row whose ``error`` names it;
- ``image``: H x W x 3 uint8 RGB arrays (``ray.data.read_images``);
- ``frame``: video frames as ``ray.data.read_videos`` gives them (RGB), each classified on its own
  (no tracking), with ``frame_index`` and, where present, ``frame_timestamp`` (seconds);
- only ``path``: each file read by msfer: a photo, or a whole video with its faces tracked
  (``every`` classifies every n-th frame), one row per face of each processed frame.

``path`` names each row's source (without it, the row's index in the batch). The result is a
``pandas.DataFrame`` with one row per face in the columns of ``msfer predict``'s CSV
(:data:`msfer.inference.results.CSV_FIELDS`), in Arrow types: numeric columns float64 (null where
empty), the others strings (empty where empty), so every batch has one schema and the batches'
files (``write_parquet``) read back as one table. An image without a face, or
one that failed, is one row with empty face columns, and ``error`` set for a failure.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MsferError
from ..outputs import source_fields
from .results import CSV_FIELDS, csv_rows

__all__ = ["BatchPredictor", "TEXT_FIELDS"]

TEXT_FIELDS = ("source", "label", "decision", "quality", "quality_issues", "error", "source_hex")
INPUT_COLUMNS = ("bytes", "image", "frame")


class BatchPredictor:
    """A callable over columnar batches (see the module docstring): ``BatchPredictor(weights, every=1, **options)``,
    where ``weights`` and ``options`` are :class:`msfer.inference.recognizer.EmotionRecognizer`'s (the bundled
    model by default) and ``every`` (1 or more) the video frames to classify (every n-th)."""

    def __init__(self, weights: str | os.PathLike | None = None, every: int = 1, **options: Any) -> None:
        from .recognizer import EmotionRecognizer

        if int(every) < 1:
            raise MsferError(f"every must be 1 or more, got {every}")
        self.recognizer = EmotionRecognizer(weights, **options)
        self.every = int(every)

    def __call__(self, batch: Mapping[str, Sequence]):
        """One row per face of every input of ``batch``: a ``pandas.DataFrame`` with the columns of
        :data:`~msfer.inference.results.CSV_FIELDS`. Raises :class:`MsferError` for a batch without an input column
        or with columns of different lengths; an input that cannot be read is a row with ``error``, never an
        exception."""
        import pandas
        import pyarrow

        columns = {name: list(values) for name, values in batch.items()}
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise MsferError(f"the batch's columns differ in length: {', '.join(map(str, sorted(lengths)))}")
        count = lengths.pop() if lengths else 0
        named = "path" in columns
        sources = [_text(path) for path in columns["path"]] if named else list(range(count))
        kind = next((name for name in INPUT_COLUMNS if name in columns), None)
        if kind is None and not named:
            raise MsferError(f"a batch needs one of the columns {', '.join(INPUT_COLUMNS)} or path; it has "
                             f"{', '.join(columns) or 'none'}")
        if kind is None:
            records = [record for source in sources for record in self._file(source)]
        else:
            records = self._inputs(columns, kind, sources, named)
        rows = [row for record in records for row in csv_rows(record)]
        table = pandas.DataFrame(rows, columns=CSV_FIELDS)
        # One Arrow type per column, whatever this batch held: a column left empty in one batch must not become
        # Arrow's null type there, or the batches' files (write_parquet) no longer read back as one table.
        for name in CSV_FIELDS:
            table[name] = (table[name].map(_text_or_empty).astype(pandas.ArrowDtype(pyarrow.string()))
                           if name in TEXT_FIELDS else
                           pandas.to_numeric(table[name], errors="coerce").astype(pandas.ArrowDtype(pyarrow.float64())))
        return table

    def _inputs(self, columns: dict[str, list], kind: str, sources: list, named: bool) -> list[dict]:
        """The records of the images or frames in column ``kind``."""
        from .video import is_video

        images = [bytes(value) if kind == "bytes" else np.asarray(value) for value in columns[kind]]
        outcomes = self.recognizer.predict_batch(images, errors="return")
        records = []
        for index, (source, outcome) in enumerate(zip(sources, outcomes)):
            record: dict[str, Any] = dict(source_fields(source))
            if kind == "frame" and "frame_index" in columns:
                record["frame"] = int(columns["frame_index"][index])
            if kind == "frame" and "frame_timestamp" in columns:
                record["time"] = float(np.ravel(columns["frame_timestamp"][index])[0])  # decord gives [start, end]
            if isinstance(outcome, MsferError):
                record["error"] = f"{source}: {outcome}" if named else str(outcome)
                if kind == "bytes" and named and is_video(Path(source)):
                    record["error"] += ("; a video is read whole from its path: a dataset of paths alone "
                                        "(ray.data.from_items([{'path': ...}]))")
            else:
                record["faces"] = outcome
            records.append(record)
        return records

    def _file(self, source: str) -> list[dict]:
        """The records of one file read by msfer: a photo's, or one per processed frame of a video."""
        from .video import is_video

        records = []
        try:
            if not is_video(Path(source)):
                return [{**source_fields(source), "faces": self.recognizer.predict(source)}]
            for frame in self.recognizer.predict_video(source, every=self.every):
                if frame.processed:
                    records.append({**source_fields(source), "frame": frame.index, "time": frame.time,
                                    "faces": frame.faces})
        except MsferError as error:  # after the frames read: they stay
            records.append({**source_fields(source), "error": str(error)})
        return records


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _text_or_empty(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
