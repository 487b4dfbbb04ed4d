"""What every reader returns, and the checks and messages the readers share."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import MsferError
from ...labels import EMOTIONS
from ..samples import Sample

# Problems listed per skip reason; the rest are only counted, so a labels-only copy of a
# 400k-image dataset gives a readable report rather than 400k lines.
PROBLEMS_LISTED_PER_REASON = 10

# Conventional order of split names in reports; other names follow alphabetically.
_SPLIT_ORDER = ("train", "val", "valid", "validation", "public_test", "test", "private_test", "all")


class DatasetError(MsferError):
    """A dataset that cannot be read: missing root or label file, unparseable line, unknown label."""


def at(path: Path, line: int | None = None) -> str:
    """``file:line`` for messages."""
    return f"{path}:{line}" if line is not None else str(path)


@dataclass
class DatasetIndex:
    """The samples of one dataset, plus what was left out and why.

    ``skipped`` counts samples left out by reason (``"contempt"``, ``"missing image"``, ...);
    ``problems`` are human-readable lines naming file (and line) for the skips a user may
    want to fix, at most :data:`PROBLEMS_LISTED_PER_REASON` per reason, and ``problem_count`` how many such skips
    there were in all. Exclusions that are part of a dataset's definition (FER+ ``unknown`` votes, AffectNet
    ``None``) are counted only.
    """

    format: str
    root: Path
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    problem_count: int = 0

    def skip(self, reason: str, problem: str | None = None) -> None:
        """Count one left-out sample; list ``problem`` unless this reason has been listed enough."""
        self.skipped[reason] += 1
        if problem is None:
            return
        self.problem_count += 1
        listed = self.skipped[reason]
        if listed <= PROBLEMS_LISTED_PER_REASON:
            self.problems.append(problem)
        elif listed == PROBLEMS_LISTED_PER_REASON + 1:
            self.problems.append(f"more '{reason}' problems: counted in skipped, not listed")

    def splits(self) -> list[str]:
        """The split names present, in conventional order (train first)."""
        return sort_splits({sample.split for sample in self.samples})

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: count}}`` with every canonical class, in ``EMOTIONS`` order."""
        table = {split: dict.fromkeys(EMOTIONS, 0) for split in self.splits()}
        for sample in self.samples:
            table[sample.split][EMOTIONS[sample.label]] += 1
        return table


def sort_splits(names) -> list[str]:
    rank = {name: i for i, name in enumerate(_SPLIT_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {problem}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        problem = "is a folder, not a file" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {problem}")
    return path


def is_hidden(path: Path) -> bool:
    """Dot-files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are never data."""
    return path.name.startswith(".")


def relative_id(path: Path, root: Path) -> str:
    """The stable sample id: ``path`` relative to the dataset root, POSIX separators."""
    return path.relative_to(root).as_posix()


LABELS_ONLY_HINT = (
    "pass require_images=False (msfer datasets inspect -o require_images=false) to count from the labels alone"
)


def keep_if_present(index: DatasetIndex, image: Path, where: str, require_images: bool) -> bool:
    """Whether to keep the sample whose label is at ``where`` and whose image is ``image``.

    A missing image is a counted skip (``"missing image"``) with a problem naming the label
    line and the file, never an error: one lost file should not stop a training run. With
    ``require_images=False`` (a labels-only copy) samples are kept; loading one then
    raises ``UnreadableImageError`` naming the file.
    """
    if not require_images or image.is_file():
        return True
    index.skip("missing image", f"{where}: image {image} does not exist; {LABELS_ONLY_HINT}")
    return False
