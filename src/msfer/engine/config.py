"""Run configuration: a YAML file, its ``_base_`` files, and ``key.sub=value`` overrides.

Design (after detectron2's LazyConfig / yacs):

* :data:`KEYS` is the schema, one row per key: its default, kind, allowed range or choices
  and a one-line doc (:data:`DEFAULTS`, :data:`CHOICES`, :data:`RANGES`, :data:`PAIRS` and
  :data:`PATHS` are views of it). Every key a config may set is there, so a typo
  (``train.lr_rate``) is an error naming the key and the keys that exist, not a silently
  ignored setting. The one open section is ``model``: it is handed to
  :func:`msfer.model.build_model`, which validates it (the registry's ``MODEL_RANGES``).
* ``_base_: other.yaml`` (a path relative to the file, or a list of paths) makes a file
  a small diff on another one, which keeps the ablation configs a few lines long.
  Mappings merge recursively; any other value (lists included) replaces.
* Overrides ``a.b=value`` are applied last; ``value`` is parsed as YAML, so ``true``,
  ``3e-4``, ``null`` and ``[0.8, 1.0]`` mean what they look like.
* The merged result is saved as ``config.yaml`` beside a run's outputs, and is what a
  checkpoint carries, so a run can be reproduced from either alone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
from numbers import Number
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import MsferError
from ..files import write_text
from ..values import Range, check_number, check_numbers, parse_yaml, yaml_problem

Config = dict[str, Any]


@dataclass(frozen=True)
class Key:
    """One config key: its dotted ``name``, ``default``, ``kind``, allowed values and a one-line ``doc``.

    ``kind``: ``number`` (``allowed`` a :class:`~msfer.values.Range`), ``pair`` (``[low, high]``, each
    in the ``allowed`` range), ``choice`` (``allowed`` the tuple of values), ``flag`` (a boolean),
    ``path`` (a string or null), ``text``, ``mapping`` (free-form: checked by whoever reads it) or
    ``entries`` (a data set mapping, or a list of them, checked by this module).
    """

    name: str
    default: Any
    kind: str
    doc: str
    allowed: Range | tuple | None = None


KINDS = ("number", "pair", "choice", "flag", "path", "text", "mapping", "entries")
_FRACTION = Range(0, 1)

# Every key a config may set, in the order a saved config lists them.
KEYS: tuple[Key, ...] = (
    Key("model", {}, "mapping", "passed to msfer.model.build_model, which checks it (e.g. {name: msfer_mobilenetv2})"),
    Key("data.format", "fer2013", "text", "the dataset's msfer.data.readers format name"),
    Key("data.root", None, "path", "the dataset folder (or CSV file)"),
    Key("data.reader_options", {}, "mapping", "extra keyword arguments of read_dataset"),
    Key("data.train_split", "train", "text", "the split trained on"),
    # It is validation: never the split reported as test.
    Key("data.val_split", "public_test", "text", "the split that selects best.pt (null: data.holdout)"),
    # For a dataset without a validation split (RAF-DB, CK+, a folder tree): the paper's 5:1 is
    # {fraction: 1/6, seed: 0} (msfer.data.splits.stratified_split); needs val_split: null.
    Key("data.holdout", None, "entries", "validate on a seeded, class-stratified part of train_split instead"),
    Key("data.annotations", None, "path", "JSONL of `msfer annotate`: region targets for the detector"),
    # box: a square on the detector's face box; roll: that square turned so the eyes are level;
    # similarity: the five landmarks fitted onto ArcFace's 112 px template. The checkpoint carries the
    # rule and inference crops detected faces by it.
    Key("data.crop_rule.method", "box", "choice", "how a face is cropped from a photo, in training and in use",
        ("box", "roll", "similarity")),
    Key("data.crop_rule.scale", 1.0, "number",
        "crop side over the face box's longer side (box, roll) or the template's framing (similarity)",
        Range(0.25, 4)),  # msfer.faces.crop.MIN_SCALE, MAX_SCALE
    # false: the images are face crops already (FER2013) and are used whole. Images without a usable
    # (status ok) face are left out, counted and logged.
    Key("data.crop", False, "flag", "crop this dataset's photos by crop_rule around their data.annotations faces"),
    # A list of {format, root, split, weight, annotations: null, crop: false, reader_options: {}}; weight
    # (0-1) is the set's share of each epoch's draws, the main set gets the rest. An epoch keeps the length
    # of all training sets together; each contributes exactly its share, a small set repeating its
    # images, a large one a random part of them (msfer.engine.distributed.EpochSampler).
    Key("data.extra_train", [], "entries", "more training sets, drawn together with train_split"),
    # Detect (RetinaFace, the largest face), crop by crop_rule, classify; a photo without a face counts
    # as wrong. {format, root, split, reader_options: {}} or null; never trained on.
    Key("data.photo_val", None, "entries", "a second validation through the whole pipeline on whole photos"),
    # The target is w * soft label + (1 - w) * one-hot label (before model.label_smoothing): 1 trains on
    # FER+ votes alone (format ferplus, reader option soft_labels), 0.5 mixes them with FER2013's own
    # labels (format fer2013, reader option ferplus); it applies to data.extra_train's sets too. Samples
    # without a soft label (a folder set's images, FER2013 images FER+ left out) train on their label.
    Key("data.soft_label_weight", 0.0, "number", "weight w of Sample.soft_label in the training target",
        _FRACTION),
    # Distillation: a teacher's (or an ensemble's) probabilities for the training images
    # (scripts/teacher_targets.py, msfer.engine.teacher), replacing any soft label a reader gave; trained on
    # at data.soft_label_weight, in every training set. Images the file does not name keep a reader's soft
    # label if they have one, else train on their label.
    Key("data.soft_label_file", None, "path", "soft labels of a teacher for the training images (.npz)"),
    Key("data.balanced_sampling", False, "flag", "draw classes equally often (sampling with replacement)"),
    Key("data.cache_images", False, "flag", "decode every image once into memory before the first epoch"),
    # The augmentation resamples them to the model's input size; 48 for FER2013 keeps its cache at
    # 200 MB. Validation images are always stored at the input size (resized once, as evaluation does).
    Key("data.image_size", None, "number", "side of the stored training images (null: the model's input size)",
        Range(1, whole=True, nullable=True)),
    Key("data.limit", None, "number", "train on a fixed random N of the training split (smoke runs, studies)",
        Range(1, whole=True, nullable=True)),
    Key("data.num_workers", 2, "number", "data-loading worker processes", Range(0, whole=True)),
    Key("data.augment.scale", [0.75, 1.0], "pair", "random resized crop: crop area as a fraction of the image",
        Range(0, 1, low_open=True)),
    Key("data.augment.ratio", [0.9, 1.1], "pair", "crop aspect ratio range", Range(0, low_open=True)),
    Key("data.augment.translate", 0.05, "number", "extra shift of the crop centre, fraction of the image side",
        _FRACTION),
    Key("data.augment.rotation", 10.0, "number", "degrees, uniform in [-rotation, rotation]", Range(0, 180)),
    Key("data.augment.flip", 0.5, "number", "probability of a horizontal flip (swaps left and right organs)",
        _FRACTION),
    Key("data.augment.brightness", 0.3, "number", "brightness factor in [1 - b, 1 + b]", _FRACTION),
    Key("data.augment.contrast", 0.3, "number", "contrast factor in [1 - c, 1 + c]", _FRACTION),
    Key("data.augment.saturation", 0.0, "number", "saturation factor range (colour images only)", _FRACTION),
    # The operations from hue to jpeg are off by default (probability 0). Each draws random numbers only
    # when on, so leaving them off trains exactly as before they existed (engine/augment.py).
    Key("data.augment.hue", 0.0, "number", "hue rotation of colour images, a fraction of a turn in [-hue, hue]",
        Range(0, 0.5)),
    Key("data.augment.greyscale", 0.0, "number", "probability of turning a colour image grey (ITU-R 601 luma)",
        _FRACTION),
    Key("data.augment.erase", 0.25, "number", "probability of random erasing (occlusion)", _FRACTION),
    Key("data.augment.erase_area", [0.02, 0.2], "pair", "erased area as a fraction of the image",
        Range(0, 1, low_open=True)),
    Key("data.augment.erase_ratio", [0.3, 3.3], "pair", "erased rectangle's aspect ratio, sampled in log space",
        Range(0, low_open=True)),
    Key("data.augment.blur", 0.0, "number", "probability of a Gaussian blur (defocus, motion, an enlarged face)",
        _FRACTION),
    Key("data.augment.blur_sigma", [0.5, 2.0], "pair", "the blur's standard deviation in model-input pixels",
        Range(0, 20, low_open=True)),
    Key("data.augment.noise", 0.0, "number", "probability of Gaussian pixel noise (grey images get grey noise)",
        _FRACTION),
    Key("data.augment.noise_std", [2.0, 10.0], "pair", "the noise's standard deviation in 0..255 pixel units",
        Range(0, 255)),
    # On the CPU (Pillow, one core): 0.37 ms per colour 112 px image chosen (0.24 ms grey), ~24 ms per
    # batch of 64 at jpeg 1.0: small beside a CPU step (~750 ms at batch 64), visible beside a fast GPU step.
    Key("data.augment.jpeg", 0.0, "number", "probability of a JPEG re-compression", _FRACTION),
    Key("data.augment.jpeg_quality", [30, 90], "pair", "its quality (libjpeg's 1..100), whole, uniform per image",
        Range(1, 100, whole=True)),
    Key("data.augment.min_box_visible", 0.5, "number", "a box with less of its area left in view becomes invalid",
        _FRACTION),
    Key("train.epochs", 30, "number", "epochs of the run", Range(1, whole=True)),
    Key("train.batch_size", 64, "number", "the global batch (each of N processes takes batch_size / N)",
        Range(1, whole=True)),
    Key("train.optimizer", "adamw", "choice", "the optimizer", ("adam", "adamw", "sgd")),
    Key("train.lr", 1e-3, "number", "the learning rate (onecycle: its peak)", Range(0, low_open=True)),
    Key("train.weight_decay", 0.05, "number", "weight decay of weights (never of biases and norms)", Range(0)),
    Key("train.momentum", 0.9, "number", "momentum (sgd only)", Range(0, 1, high_open=True)),
    Key("train.schedule", "onecycle", "choice", "the learning-rate schedule", ("onecycle", "cosine", "none")),
    Key("train.warmup_epochs", 1.0, "number", "linear warm-up (onecycle: its rising phase)", Range(0)),
    Key("train.class_weights", "none", "choice", "balanced: inverse class frequency in the emotion loss",
        ("none", "balanced")),
    Key("train.grad_clip", None, "number", "max gradient norm (null: no clipping)",
        Range(0, low_open=True, nullable=True)),
    Key("train.amp", False, "choice", "mixed precision on CUDA (bf16 needs no loss scaling)",
        (False, "bf16", "fp16")),
    Key("train.channels_last", False, "flag", "channels-last memory format"),
    Key("train.ema", None, "number", "decay of a moving average of the weights (e.g. 0.999; null: off)",
        Range(0, 1, low_open=True, high_open=True, nullable=True)),
    Key("train.seed", 0, "number", "the seed of every random draw", Range(0, 2**32 - 1, whole=True)),  # numpy's limit
    Key("train.max_minutes", None, "number", "time budget (see msfer.engine.trainer)",
        Range(0, low_open=True, nullable=True)),
    Key("train.val_every", 1, "number", "validate every N epochs (and always after the last)", Range(1, whole=True)),
    Key("train.select_metric", "mean_class_accuracy", "choice", "the validation metric best.pt is chosen by",
        ("overall_accuracy", "mean_class_accuracy")),
    Key("train.device", "auto", "text", "auto | cpu | cuda | cuda:N"),
    Key("eval.batch_size", 256, "number", "images per validation batch", Range(1, whole=True)),
    Key("eval.tta", False, "flag", "average the softmax of each image and its mirror image"),
    # null: the model's own (its model.region_source); pseudo: the data.annotations boxes (a
    # learned-detector model is then run without its detector).
    Key("eval.region_source", None, "choice", "where the head's regions come from when validating",
        (None, "pseudo")),
    Key("eval.photo_val_every", None, "number", "score data.photo_val every N epochs too (null: after the last)",
        Range(1, whole=True, nullable=True)),
    Key("output_dir", "runs/default", "text", "where the run writes"),
)


def _nested(keys: Iterable[Key]) -> Config:
    config: Config = {}
    for key in keys:
        *sections, last = key.name.split(".")
        parent = config
        for section in sections:
            parent = parent.setdefault(section, {})
        parent[last] = copy.deepcopy(key.default)
    return config


# The views of KEYS that validation reads.
DEFAULTS: Config = _nested(KEYS)
CHOICES: dict[str, tuple] = {key.name: key.allowed for key in KEYS if key.kind == "choice"}
# Sections whose contents are free-form (validated by whoever consumes them).
OPEN_SECTIONS = tuple(key.name for key in KEYS if key.kind == "mapping")
RANGES: dict[str, Range] = {key.name: key.allowed for key in KEYS if key.kind == "number"}
PAIRS: dict[str, Range] = {key.name: key.allowed for key in KEYS if key.kind == "pair"}
PATHS = tuple(key.name for key in KEYS if key.kind == "path")

# Keys that once existed but never acted -> (the value they always had, the key that acts). Saved
# configs still hold them at that value, which is dropped (it changed nothing); any other value is
# an error, since a setting that is silently ignored is worse than none.
RETIRED: dict[str, tuple[Any, str]] = {"train.label_smoothing": (0.0, "model.label_smoothing")}
# Keys that were renamed -> (the new key, old value -> new value). Saved configs (a checkpoint's, for
# --resume) still hold the old key: it is moved to the new one. ``eval.regions`` named the region source
# a third way (learned | pseudo, and "model" on the command line) beside model.region_source.
RENAMED: dict[str, tuple[str, dict[Any, Any]]] = {
    "eval.regions": ("eval.region_source", {"learned": None, "model": None, "pseudo": "pseudo"}),
    "data.soft_labels": ("data.soft_label_weight", {False: 0.0, True: 1.0}),
}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), base: Config | None = None) -> Config:
    """The defaults, merged with ``base`` (e.g. a checkpoint's config), the file ``path``, then ``overrides``."""
    config = copy.deepcopy(DEFAULTS)
    if base is not None:
        config = merge(config, _move_renamed(copy.deepcopy(base)))
    if path is not None:
        config = merge(config, _read_with_bases(Path(path), seen=()))
    for override in overrides:
        config = merge(config, _move_renamed(parse_override(override)))
    validate(config)
    return config


def merge(base: Config, update: Config) -> Config:
    """``update`` merged into a copy of ``base``: mappings recursively, other values replaced."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> Config:
    """``"train.lr=3e-4"`` -> ``{"train": {"lr": 0.0003}}`` (the value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise MsferError(f"override {text!r} is not of the form key.sub=value (e.g. train.lr=3e-4)")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise MsferError(f"override {text!r}: the value is not valid YAML ({yaml_problem(error)})") from None
    nested: Any = parsed
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def validate(config: Config) -> None:
    """Raise :class:`MsferError` for keys the schema does not know and values of the wrong type or out of range."""
    _drop_retired(config)
    _move_renamed(config)  # a config that did not come through load_config
    _check_keys(config, DEFAULTS, prefix="")
    for key, allowed in CHOICES.items():
        value = get(config, key)
        if value not in allowed:
            raise MsferError(f"config {key}={value!r} is not one of {', '.join(map(repr, allowed))}")
    for key, allowed in RANGES.items():
        check_number(key, get(config, key), allowed)
    for key, allowed in PAIRS.items():
        check_numbers(key, get(config, key), allowed, ordered=True)
    for key in PATHS:
        value = get(config, key)
        if value is not None and not isinstance(value, str):
            raise MsferError(f"config {key}={value!r} has the wrong type: expected a path or null")
    config["data"]["holdout"] = _check_holdout(config["data"])
    config["data"]["extra_train"] = _check_extra_train(config["data"]["extra_train"])
    config["data"]["photo_val"] = _check_photo_val(config["data"]["photo_val"])


# The keys of one data.extra_train entry: required ones map to None, optional ones to their default.
EXTRA_TRAIN_KEYS: dict[str, Any] = {"format": None, "root": None, "split": None, "weight": None,
                                    "annotations": None, "crop": False, "reader_options": {}}
PHOTO_VAL_KEYS: dict[str, Any] = {"format": None, "root": None, "split": None, "reader_options": {}}
_REQUIRED = ("format", "root", "split")


def _check_entry(key: str, entry: Any, schema: dict[str, Any], required: Iterable[str]) -> Config:
    """A data set mapping checked against ``schema`` (unknown keys, required keys, types) and completed."""
    if not isinstance(entry, dict):
        raise MsferError(f"config {key}={entry!r} must be a mapping with keys {', '.join(schema)}")
    unknown = set(entry) - set(schema)
    if unknown:
        raise MsferError(f"unknown key {sorted(unknown)[0]!r} in config {key}; known keys: {', '.join(schema)}")
    missing = [name for name in required if entry.get(name) is None]
    if missing:
        raise MsferError(f"config {key} needs {', '.join(missing)} (has {entry!r})")
    entry = {**copy.deepcopy(schema), **entry}
    for name in ("format", "root", "split"):
        if not isinstance(entry[name], str):
            raise MsferError(f"config {key}.{name}={entry[name]!r} has the wrong type: expected a string")
    if entry.get("annotations") is not None and not isinstance(entry["annotations"], str):
        raise MsferError(f"config {key}.annotations={entry['annotations']!r} has the wrong type: "
                         "expected a path or null")
    if not isinstance(entry.get("crop", False), bool):
        raise MsferError(f"config {key}.crop={entry['crop']!r} has the wrong type: expected a boolean")
    if not isinstance(entry["reader_options"], dict):
        raise MsferError(f"config {key}.reader_options must be a mapping, not {entry['reader_options']!r}")
    return entry


def _check_extra_train(entries: Any) -> list[Config]:
    """``data.extra_train`` checked and completed; the weights are shares that must leave the main set some."""
    if not isinstance(entries, list):
        raise MsferError(f"config data.extra_train={entries!r} must be a list of mappings (or [])")
    checked = []
    for i, entry in enumerate(entries):
        key = f"data.extra_train[{i}]"
        entry = _check_entry(key, entry, EXTRA_TRAIN_KEYS, (*_REQUIRED, "weight"))
        check_number(f"{key}.weight", entry["weight"], Range(0, 1, low_open=True, high_open=True))
        checked.append(entry)
    total = sum(entry["weight"] for entry in checked)
    if checked and total >= 1:
        raise MsferError(f"config data.extra_train weights sum to {total:g}: they are shares of each epoch and must "
                         "sum below 1, leaving the rest to data.train_split")
    return checked


def _check_photo_val(entry: Any) -> Config | None:
    return None if entry is None else _check_entry("data.photo_val", entry, PHOTO_VAL_KEYS, _REQUIRED)


def _drop_retired(config: Config) -> None:
    """Remove the :data:`RETIRED` keys that hold their inert value; raise for any other value."""
    for dotted, (inert_value, acting_key) in RETIRED.items():
        section, key = dotted.rsplit(".", 1)
        parent = config.get(section)
        if not isinstance(parent, dict) or key not in parent:
            continue
        if parent[key] != inert_value:
            raise MsferError(f"config key {dotted!r} does nothing: set {acting_key}={parent[key]!r} instead")
        del parent[key]


def _move_renamed(layer: Config) -> Config:
    """``layer`` (one config file, base or override) with its :data:`RENAMED` keys moved to their new names.

    Done per layer before merging, so a later layer's new key overrides an earlier layer's old one.
    An old value with no translation, or both keys in one layer with different values, is an error.
    """
    for dotted, (new_dotted, values) in RENAMED.items():
        section, key = dotted.rsplit(".", 1)
        new_section, new_key = new_dotted.rsplit(".", 1)
        parent = layer.get(section)
        if not isinstance(parent, dict) or key not in parent:
            continue
        old = parent.pop(key)
        if old not in values:
            raise MsferError(f"config key {dotted!r} is now {new_dotted!r}; {dotted}={old!r} is not one of "
                             f"{', '.join(map(repr, values))}")
        target = layer.setdefault(new_section, {})
        if new_key in target and target[new_key] != values[old]:
            raise MsferError(f"config gives both {dotted}={old!r} and {new_dotted}={target[new_key]!r}: "
                             f"keep {new_dotted} only")
        target[new_key] = values[old]
    return layer


def _check_holdout(data: Config) -> Config | None:
    """``data.holdout`` checked and completed (``seed`` defaults to 0; ``fraction`` may be written ``1/6``)."""
    holdout = data["holdout"]
    if holdout is None:
        if data["val_split"] is None:
            raise MsferError("config data.val_split is null: name the validation split, or validate on a "
                             "part of the training split with data.holdout={fraction: 1/6, seed: 0}")
        return None
    if not isinstance(holdout, dict) or "fraction" not in holdout or set(holdout) - {"fraction", "seed"}:
        raise MsferError(f"config data.holdout={holdout!r} must be null or a mapping {{fraction: F, seed: N}} "
                         "(e.g. {fraction: 1/6, seed: 0}, the paper's 5:1)")
    fraction, seed = holdout["fraction"], holdout.get("seed", 0)
    try:
        fraction = float(Fraction(fraction)) if isinstance(fraction, str) else fraction
    except (ValueError, ZeroDivisionError):
        pass  # left as the string: the check below names it
    if not isinstance(fraction, Number) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise MsferError(f"config data.holdout.fraction={holdout['fraction']!r} must be a number between 0 and 1 "
                         "(e.g. 1/6 for the paper's 5:1)")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MsferError(f"config data.holdout.seed={seed!r} must be an integer")
    if data["val_split"] is not None:
        raise MsferError(f"config data.holdout takes the validation samples from data.train_split, but "
                         f"data.val_split={data['val_split']!r} names one too: set data.val_split=null")
    return {"fraction": float(fraction), "seed": seed}


def validation_name(config: Config) -> str:
    """What the validation split is called in outputs: ``data.val_split``, or ``holdout``."""
    return config["data"]["val_split"] or "holdout"


def get(config: Config, dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        value = value[part]
    return value


def save_config(config: Config, out_dir: str | Path) -> Path:
    text = yaml.safe_dump(config, sort_keys=False)
    return write_text(Path(out_dir) / "config.yaml", text)


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> Config:
    path = path.resolve()
    if path in seen:
        raise MsferError(f"config {path}: _base_ files include each other in a cycle")
    try:
        loaded = parse_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise MsferError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise MsferError(f"config {path} is not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(loaded, dict):
        raise MsferError(f"config {path} must be a mapping of sections, not {type(loaded).__name__}")
    bases = loaded.pop("_base_", [])
    merged: Config = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, _read_with_bases(path.parent / base, seen + (path,)))
    return merge(merged, _move_renamed(loaded))


def _check_keys(config: Config, schema: Config, prefix: str) -> None:
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise MsferError(f"unknown config key {dotted!r}; known keys here: {', '.join(schema)}")
        if dotted in OPEN_SECTIONS:
            if not isinstance(value, dict):
                raise MsferError(f"config {dotted} must be a mapping, not {value!r}")
            continue
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise MsferError(f"config {dotted} must be a mapping of keys, not {value!r}")
            _check_keys(value, default, prefix=f"{dotted}.")
        elif dotted not in CHOICES and not _same_kind(value, default):
            raise MsferError(f"config {dotted}={value!r} has the wrong type: expected a {_kind(default)}")


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "boolean"
    return "number" if isinstance(default, Number) else type(default).__name__


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` may stand where the schema's ``default`` is.

    ``None``, and any value where the default is ``None``, match anything.
    """
    if value is None or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, Number):
        return isinstance(value, Number) and not isinstance(value, bool)
    return isinstance(value, type(default))
