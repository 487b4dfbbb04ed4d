r"""Suites of labelled sets: the sets ``msfer benchmark`` and ``msfer bundle`` score models on.

A **suite** is a small YAML file (:func:`load_suite`)::

    name: dev
    description: what the suite is for
    sets:
      - name: fer2013_public_test
        domain: crops            # the domain the set stands for; null: reported, outside the score
        format: fer2013          # a reader of msfer.data.readers
        root: fer2013            # relative: to --data-root, else to this file's folder
        split: public_test       # null: every sample the reader finds
        mode: crops              # crops: each image is a face crop, classified whole;
                                 # photos: the whole pipeline (detect, largest face, crop rule, classify)
        groups: '^(\d\d)'        # optional: a regular expression whose first group, searched in each file
                                 # name, names the image's group (a performer, a film): accuracy per group

A suite's score averages the sets of each domain, then the domains, so that a domain counts once
however many sets it has; a set whose domain is null is reported outside the score.
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MsferError
from ..outputs import printable
from ..values import parse_yaml, yaml_problem

log = logging.getLogger(__name__)

MODES = ("crops", "photos")  # crops: each image is a face, classified whole; photos: the whole pipeline
SUITE_KEYS = {"name", "description", "sets"}
SET_KEYS = {"name", "domain", "format", "root", "split", "mode", "reader_options", "description", "groups"}


@dataclass(frozen=True)
class SuiteSet:
    """One labelled set of a suite (see the module docstring for the keys)."""

    name: str
    format: str
    root: Path
    mode: str
    split: str | None = None
    domain: str | None = None
    reader_options: dict = field(default_factory=dict)
    description: str = ""
    groups: str | None = None


@dataclass(frozen=True)
class Suite:
    """A suite as :func:`load_suite` reads it: its ``name`` (the file's ``name``, else its stem), its ``sets`` in
    the file's order, its ``description`` and ``source``, the file it was read from."""

    name: str
    sets: tuple[SuiteSet, ...]
    description: str = ""
    source: str = ""

    @property
    def domains(self) -> list[str]:
        """The domains of the score, in the order of their first set."""
        return list(dict.fromkeys(s.domain for s in self.sets if s.domain is not None))


def load_suite(path: str | Path, data_root: str | Path | None = None) -> Suite:
    """Read a suite file; relative set roots are resolved against ``data_root`` (else the file's folder).

    Raises :class:`MsferError` naming the file and the set for a missing or unknown key, a mode
    other than :data:`MODES`, a duplicate set name, or a suite without sets.
    """
    from .readers import READERS

    path = Path(path)
    try:
        document = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MsferError(f"cannot read the suite {printable(path)}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise MsferError(f"{printable(path)} is not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("sets"), list) or not document["sets"]:
        raise MsferError(f"{printable(path)}: a suite needs 'sets:', a list of sets (see msfer benchmark --help)")
    if set(document) - SUITE_KEYS:
        raise MsferError(f"{printable(path)}: unknown keys {', '.join(sorted(map(str, set(document) - SUITE_KEYS)))}; "
                         f"a suite has {', '.join(sorted(SUITE_KEYS))}")
    base = Path(data_root) if data_root is not None else path.parent
    sets, names = [], set()
    for number, entry in enumerate(document["sets"], 1):
        where = f"{printable(path)}, set {number}"
        if not isinstance(entry, dict):
            raise MsferError(f"{where}: expected a mapping of {', '.join(sorted(SET_KEYS))}")
        if isinstance(entry.get("name"), str) and re.fullmatch(r"[\w.+-]+", entry["name"]):
            where += f" ({entry['name']})"
        unknown = set(entry) - SET_KEYS
        missing = {"name", "domain", "format", "root", "mode"} - set(entry)  # domain: null is said, never implied
        if unknown or missing:
            def known(key) -> str:
                close = difflib.get_close_matches(str(key), sorted(SET_KEYS), n=1)
                return f"{key} (did you mean {close[0]}?)" if close else str(key)

            raise MsferError(f"{where}: " + "; ".join(
                ([f"unknown keys {', '.join(known(k) for k in sorted(map(str, unknown)))}; a set has "
                  f"{', '.join(sorted(SET_KEYS))}"] if unknown else [])
                + ([f"missing keys {', '.join(sorted(missing))}"
                    + (" (domain: null for a set outside the score)" if "domain" in missing else "")]
                   if missing else [])))
        for key in ("name", "format", "mode"):
            if not isinstance(entry[key], str):
                raise MsferError(f"{where}: {key} must be a string, got {entry[key]!r}")
        if not re.fullmatch(r"[\w.+-]+", entry["name"]):
            raise MsferError(f"{where}: name {entry['name']!r} may hold only letters, digits, '_', '.', '+' and '-'")
        if not isinstance(entry.get("reader_options") or {}, dict):
            raise MsferError(f"{where}: reader_options must be a mapping of option: value")
        if entry["mode"] not in MODES:
            raise MsferError(f"{where}: mode {entry['mode']!r}; use one of {', '.join(MODES)}")
        if entry["format"] not in READERS:
            raise MsferError(f"{where}: unknown format {entry['format']!r}; formats: {', '.join(READERS)}")
        if entry["name"] in names:
            raise MsferError(f"{where}: a second set named {entry['name']!r}")
        names.add(entry["name"])
        if entry.get("groups") is not None:
            try:
                if re.compile(str(entry["groups"])).groups < 1:
                    raise re.error("it has no group: put the part that names the group in parentheses")
            except re.error as error:
                raise MsferError(f"{where}: groups {entry['groups']!r} is not a usable regular expression: "
                                 f"{error}") from None
        root = Path(str(entry["root"])).expanduser()
        sets.append(SuiteSet(
            name=str(entry["name"]), format=entry["format"], root=root if root.is_absolute() else base / root,
            mode=entry["mode"], split=entry.get("split"), domain=entry.get("domain"),
            reader_options=dict(entry.get("reader_options") or {}), description=str(entry.get("description", "")),
            groups=None if entry.get("groups") is None else str(entry["groups"])))
    return Suite(str(document.get("name", path.stem)), tuple(sets), str(document.get("description", "")).strip(),
                 str(path))


def set_samples(entry: SuiteSet, suite: str = "", warn: bool = True) -> list:
    """The samples of one suite set; :class:`MsferError` naming the suite file and the set if it cannot be read
    or has none. With ``warn``, files the reader left out (a broken link, a file that is not an image: its
    ``problems``, of any split under the set's root) are named in a warning."""
    from .readers import read_dataset

    if not entry.root.exists():
        raise MsferError(f"{suite + ', ' if suite else ''}set {entry.name}: its root {printable(entry.root)} does not "
                         "exist (a relative root is read under --data-root, or without it beside the suite file)")
    try:
        index = read_dataset(entry.root, entry.format, **entry.reader_options)
    except MsferError as error:
        raise MsferError(f"{suite + ', ' if suite else ''}set {entry.name}: {error}") from None
    if warn and index.problem_count:  # files a user may fix, not the exclusions a dataset defines (FER+'s contempt)
        named = index.problems[:3]
        log.warning("%sset %s: %d file(s) under %s (any split) left out by its reader: %s%s", suite + ", " if suite
                    else "", entry.name, index.problem_count, printable(entry.root), "; ".join(named),
                    f"; {index.problem_count - len(named)} more (msfer datasets inspect counts them by reason)"
                    if index.problem_count > len(named) else "")
    samples = [s for s in index.samples if entry.split is None or s.split == entry.split]
    if not samples:
        raise MsferError(f"{suite + ', ' if suite else ''}set {entry.name}: no samples in split {entry.split!r} of "
                         f"{printable(entry.root)}; "
                         f"splits present: {', '.join(index.splits()) or 'none'}")
    return samples
