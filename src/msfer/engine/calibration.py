"""Calibrated probabilities and an explicit decision rule.

A network trained with label smoothing and a focal loss gives flat, underconfident softmax
outputs. Post-hoc calibration rescales its logits ``z`` (N x 7) so that the softmax estimates
P(emotion | face) on data like the validation split it is fitted on, under that split's class
frequencies (vector scaling's per-class bias sets them; temperature scaling keeps the training
prior the network learned):

* temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017):
  ``z / T``, one parameter;
* vector scaling (same paper, section 4.2): ``z * w + b``, a scale and a bias per class, 14
  parameters; it can also correct how much probability mass each class receives.

Both are fitted by minimising the negative log-likelihood on validation logits with L-BFGS;
:func:`choose_calibration` picks one by 5-fold cross-validated likelihood within the fitting
half of a validation split and reports the other half. The result is written into the model's
``logit_scale``/``logit_bias`` buffers (``msfer.model.emotionnet``), so every path that runs
the network applies it.

The decision rule is separate from the probabilities. ``argmax`` takes the most probable
emotion. ``balanced`` adds ``balanced_offsets = -tau * log(prior)`` (the class-prior logit
adjustment of :mod:`.prior`) to the calibrated logits before the argmax, which trades overall
accuracy for mean class accuracy; it changes labels, never the reported probabilities.

A face the pipeline found in a photo gets one more step, the **photo temperature**
(:func:`fit_photo_temperature`, :func:`with_photo_temperature`): a temperature that rises with the
head's turn, ``T(yaw) = temperature * exp(per_degree * min(|yaw|, YAW_LIMIT))``, applied to the
calibrated probabilities' logarithms. A calibration fitted on frontal FER2013 crops is overconfident
on photos, the more so the more the head is turned (the accuracy falls with the turn, the
confidence does not), and the yaw is the one thing the pipeline knows of each face that says so. It is
fitted on the suite's photo sets (:func:`photo_temperature_study` reports it on halves it was not
fitted on) and changes no decision: the decision rule reads the probabilities before it. A face given
already cropped (no landmarks, no yaw) keeps the crop calibration.

Measures (:func:`calibration_metrics`): expected calibration error over 15 equal-width bins of
the top probability (Naeini et al. 2015; Guo et al. 2017, eq. 3), negative log-likelihood,
the multi-class Brier score (mean over faces of ``sum_c (p_c - y_c)^2``, range 0..2), and each
class's mean probability against its frequency.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import MsferError
from ..files import atomic_output
from ..labels import EMOTIONS

ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`` over equal-width bins of the top probability.

    ``probs`` N x C (rows sum to 1), ``labels`` N class indices; returns a value in [0, 1].
    A top probability on a bin edge goes to the upper bin; 1.0 to the last.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def calibrated_ece(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> np.ndarray:
    """The ECEs a perfectly calibrated model with these probabilities shows on these N faces: ``draws`` of them.

    ``probs`` N x C. Each draw marks every face correct with probability its top probability (what perfect
    calibration means) and measures :func:`expected_calibration_error`'s sum; values in [0, 1]. ECE is biased
    upwards on few faces (Kumar et al. 2019, "Verified Uncertainty Calibration", sec. 5), by an amount that
    depends on the number of faces and on the model's confidences: :func:`ece_floor` is its mean, and an ECE
    above the draws' 95th percentile is evidence of miscalibration at the 5% level.
    """
    confidence = np.asarray(probs, dtype=np.float64).max(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rng = np.random.default_rng(seed)
    error = np.zeros(draws)
    for b in np.unique(which):  # one bin at a time: memory of draws x (faces in the bin)
        members = confidence[which == b]
        hits = (rng.random((draws, len(members))) < members).mean(axis=1)
        error += len(members) / len(confidence) * np.abs(hits - members.mean())
    return error


def ece_floor(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these probabilities would show, in expectation, on these N faces:
    the mean of :func:`calibrated_ece`. On 90 faces with a model's typical confidences it is about 0.10, on
    1,800 about 0.025, so an ECE is read against it: one near it is no evidence of miscalibration."""
    return float(calibrated_ece(probs, bins, draws, seed).mean())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (natural log; probabilities floored at 1e-12)."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over faces of ``sum_c (p_c - [c == label])^2`` (0 is perfect, 2 the worst)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str] = EMOTIONS) -> dict:
    """``ece`` (with what a perfectly calibrated model would show on these faces, :func:`calibrated_ece`:
    ``ece_floor`` its mean, ``ece_floor_95`` its 95th percentile), ``nll``, ``brier``, ``mean_confidence``,
    ``accuracy`` and per class ``mean_probability`` against ``frequency`` (and their largest absolute gap,
    ``max_class_mass_gap``)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    null = calibrated_ece(probs)
    mass = probs.mean(axis=0)
    frequency = np.bincount(labels, minlength=len(classes)) / max(len(labels), 1)
    return {
        "n": int(len(labels)),
        "ece": expected_calibration_error(probs, labels),
        "ece_floor": float(null.mean()),
        "ece_floor_95": float(np.percentile(null, 95)),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "mean_confidence": float(probs.max(axis=1).mean()),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "class_mass": {name: {"mean_probability": float(mass[i]), "frequency": float(frequency[i])}
                       for i, name in enumerate(classes)},
        "max_class_mass_gap": float(np.abs(mass - frequency).max()),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit(logits: np.ndarray, labels: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``method`` (``"temperature"`` or ``"vector"``) by maximum likelihood; returns ``(scale, bias)``, 7 each.

    Temperature: ``scale = 1/T`` for every class, ``bias = 0``. Vector: free per-class scale and
    bias (the bias's mean is fixed at 0: a common shift changes no probability).
    """
    import torch  # here, not at the top: inference applies a calibration without PyTorch

    if method not in ("temperature", "vector"):
        raise MsferError(f"calibration method must be 'temperature' or 'vector', not {method!r}")
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classes = z.shape[1]
    log_scale = torch.zeros(1 if method == "temperature" else classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=method == "vector")
    parameters = [log_scale] + ([bias] if method == "vector" else [])
    optimizer = torch.optim.LBFGS(parameters, lr=0.5, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * log_scale.exp() + (bias - bias.mean()), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale = log_scale.detach().exp().expand(classes).numpy().copy()
    return scale, (bias.detach() - bias.detach().mean()).numpy().copy()


def apply(logits: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``softmax(z * scale + bias)``, N x 7."""
    return softmax(np.asarray(logits, dtype=np.float64) * scale + bias)


def _cross_validated_nll(logits: np.ndarray, labels: np.ndarray, method: str, folds: int, seed: int) -> float:
    order = np.random.default_rng(seed).permutation(len(labels))
    total = 0.0
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        scale, bias = fit(logits[rest], labels[rest], method)
        total += negative_log_likelihood(apply(logits[part], scale, bias), labels[part]) * len(part)
    return total / len(labels)


def choose_calibration(logits: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 5) -> dict:
    """Fit the calibration on one stratified half of a validation split and report the other.

    ``logits``: the model's uncalibrated logits, N x 7 (no TTA); ``labels``: N class indices.
    The method (temperature or vector scaling) is the one with the lower ``folds``-fold
    cross-validated NLL within the fitting half, so the held-out half judges only the result.
    Returns ``method``, ``scale``, ``bias`` (refitted on the whole fitting half), the
    cross-validated NLL of each method, and :func:`calibration_metrics` of the held-out half
    before and after.
    """
    from .prior import stratified_halves

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    fitting, held_out = stratified_halves(labels, seed)
    cv = {method: _cross_validated_nll(logits[fitting], labels[fitting], method, folds, seed)
          for method in ("temperature", "vector")}
    method = min(cv, key=cv.get)
    scale, bias = fit(logits[fitting], labels[fitting], method)
    alternative = "vector" if method == "temperature" else "temperature"
    other_scale, other_bias = fit(logits[fitting], labels[fitting], alternative)
    return {
        "method": method, "scale": scale.tolist(), "bias": bias.tolist(),
        "criterion": f"lower {folds}-fold cross-validated NLL on a stratified half (seed {seed}) "
                     "of the validation split",
        "cross_validated_nll": cv,
        "held_out": {
            "uncalibrated": calibration_metrics(softmax(logits[held_out]), labels[held_out]),
            "calibrated": calibration_metrics(apply(logits[held_out], scale, bias), labels[held_out]),
            alternative: calibration_metrics(apply(logits[held_out], other_scale, other_bias), labels[held_out]),
        },
    }


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path, title: str = "", bins: int = ECE_BINS) -> None:
    """Reliability diagram (accuracy against confidence per bin, with the diagonal).

    Below it, a histogram of the top probability.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = np.bincount(which, minlength=bins)
    accuracy = np.array([correct[which == b].mean() if counts[b] else np.nan for b in range(bins)])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres, np.nan_to_num(accuracy), width=1 / bins, edgecolor="black", color="tab:blue", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylabel("accuracy in bin")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(title or f"reliability (ECE {expected_calibration_error(probs, labels):.3f}, n = {len(labels)})")
    bottom.bar(centres, counts / max(len(labels), 1), width=1 / bins, edgecolor="black", color="tab:grey")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("share of faces")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def calibrated_checkpoint(checkpoint: dict, scale: Sequence[float], bias: Sequence[float],
                          balanced_offsets: Sequence[float], record: dict) -> dict:
    """A copy of ``checkpoint`` whose model applies ``scale``/``bias`` to its logits and carries the
    ``balanced_offsets`` of the balanced decision rule (7 values each, ``EMOTIONS`` order);
    ``record`` (how they were chosen) is kept as ``calibration``."""
    import torch  # here, not at the top: inference applies a calibration without PyTorch

    from ..model.checkpoint import model_state

    values = {"logit_scale": scale, "logit_bias": bias, "balanced_offsets": balanced_offsets}
    for name, value in values.items():
        if len(value) != len(EMOTIONS):
            raise MsferError(f"{name} needs {len(EMOTIONS)} values (EMOTIONS order), got {len(value)}")
    state = dict(model_state(checkpoint))
    dtype = state["classifier.bias"].dtype
    state.update({name: torch.tensor(value, dtype=torch.float32).to(dtype) for name, value in values.items()})
    out = {key: value for key, value in checkpoint.items() if key != "ema"}
    out.update(model=state, calibration=record)
    return out


def calibration_summary(record: dict | None) -> dict | None:
    """How a model's probabilities were calibrated and how well, or None when they were not.

    ``record`` is a checkpoint's ``calibration`` entry (``msfer bundle`` writes it:
    ``method`` and how it was chosen, the figures on the held-out half of the calibration set,
    ``held_out``, and on each other set of the suite it was judged on, ``suite``). Returns
    ``{"method", and if measured: "ece", "nll", "brier", "accuracy", "mean_confidence", "n"}`` (and
    ``"set"``, the calibration set's name, where the record names it: ``calibrated_on``),
    ``"balanced_tau"`` when the bundling step fitted the balanced decision rule, ``"decision"`` when it
    chose the model's default rule, and ``"sets"`` when it was judged on a suite: ``{set: {"domain",
    "n" (images), "missed" (photos without a face found, counted wrong), "ece" and "ece_floor_95" (on
    the faces found; the floor is what a perfectly calibrated model exceeds on 5% of draws,
    :func:`calibrated_ece`), "overall_accuracy"}}``, fractions, under the model's default rule; and ``"photos"``,
    the photo temperature (``method``, ``temperature``, ``per_degree``, ``yaw_limit``, ``fitted_on``;
    :func:`photo_temperatures`) where the model has one.
    """
    if not record:
        return None
    summary = {"method": record.get("method")}
    if record.get("decision") is not None:  # the model's default decision rule, chosen when it was bundled
        summary["decision"] = record["decision"]
    if record.get("balanced_tau") is not None:  # the balanced rule was fitted (tau 0: it equals argmax)
        summary["balanced_tau"] = record["balanced_tau"]
    held_out = record.get("held_out")
    if record.get("calibrated_on"):
        summary["set"] = record["calibrated_on"]
    if record.get("suite"):
        summary["sets"] = record["suite"]
    if record.get("photos"):  # the parameters alone: what inference needs and ONNX metadata carries
        summary["photos"] = {key: record["photos"][key] for key in PHOTO_TEMPERATURE_KEYS if key in record["photos"]}
    # "bundled": the shipped file itself (half precision); "calibrated": the float32 model before it was stored.
    figures = (held_out or {}).get("bundled") or (held_out or {}).get("calibrated") or {}
    summary.update({key: figures[key] for key in ("ece", "nll", "brier", "accuracy", "mean_confidence", "n")
                    if key in figures})
    return summary


PHOTO_TEMPERATURE_KEYS = ("method", "temperature", "per_degree", "yaw_limit", "fitted_on")

# Degrees: the yaw proxy (msfer.faces.quality.yaw_degrees) saturates beyond it, so a photo temperature stops rising.
YAW_LIMIT = 45.0


def check_photo_temperature(photo: dict | None, source: str) -> None:
    """:class:`MsferError` naming ``source`` (the model file) unless ``photo`` is None or a photo temperature:
    ``temperature`` a positive number, ``per_degree`` a number (of either sign), ``yaw_limit`` (optional, default
    :data:`YAW_LIMIT`) a non-negative one."""
    if photo is None:
        return
    values = {key: photo.get(key, YAW_LIMIT if key == "yaw_limit" else None) if isinstance(photo, dict) else None
              for key in ("temperature", "per_degree", "yaw_limit")}
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                  for value in values.values())
    if not (numbers and values["temperature"] > 0 and values["yaw_limit"] >= 0):
        raise MsferError(f"{source}: its calibration's photo temperature is not one (a positive 'temperature' and "
                         f"numbers 'per_degree' and 'yaw_limit' are wanted, got {photo!r}): bundle the model again")


def photo_temperatures(yaw: np.ndarray, photo: dict) -> np.ndarray:
    """The photo temperature of each face, ``photo["temperature"] * exp(photo["per_degree"] * min(|yaw|,
    YAW_LIMIT))`` (N); ``yaw`` N degrees (:func:`msfer.faces.quality.yaw_degrees`), ``photo`` a model's
    ``calibration["photos"]`` (:func:`fit_photo_temperature`'s)."""
    turn = np.minimum(np.abs(np.asarray(yaw, dtype=np.float64)), float(photo.get("yaw_limit", YAW_LIMIT)))
    return float(photo["temperature"]) * np.exp(float(photo["per_degree"]) * turn)


def with_photo_temperature(probs: np.ndarray, yaw: np.ndarray, photo: dict | None) -> np.ndarray:
    """``softmax(log(probs) / T(yaw))`` per row: the probabilities (N x 7) of faces found in photos with the photo
    temperature ``photo`` (None: ``probs`` unchanged); ``yaw``: N degrees, one per face. Rows of NaN (no face
    found) stay NaN; a row whose yaw is not a number (a face without landmarks) is left as it is."""
    probs = np.asarray(probs, dtype=np.float64)
    if photo is None or not len(probs):
        return probs
    yaw = np.asarray(yaw, dtype=np.float64)
    temperature = np.where(np.isfinite(yaw), photo_temperatures(np.nan_to_num(yaw), photo), 1.0)
    logits = np.log(np.clip(probs, 1e-12, None)) / temperature[:, None]
    return softmax(np.nan_to_num(logits)) + np.where(np.isnan(probs).any(axis=1, keepdims=True), np.nan, 0.0)


def fit_photo_temperature(probs: np.ndarray, yaw: np.ndarray, labels: np.ndarray,
                          weights: np.ndarray | None = None) -> dict:
    """Fit :func:`photo_temperatures`'s ``temperature`` and ``per_degree`` by (weighted) maximum likelihood.

    ``probs`` N x 7 calibrated probabilities of faces found in photos, ``yaw`` N degrees, ``labels`` N class
    indices, ``weights`` N (default equal; e.g. each set's faces summing to the same weight). Returns
    ``{"method": "yaw_temperature", "temperature", "per_degree", "yaw_limit"}``.
    """
    import torch  # here, not at the top: inference applies a calibration without PyTorch

    z = torch.as_tensor(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)))
    turn = torch.as_tensor(np.minimum(np.abs(np.asarray(yaw, dtype=np.float64)), YAW_LIMIT))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    w = torch.as_tensor(np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64))
    w = w / w.sum()
    # log T = a + b |yaw|; b per 10 degrees in the optimisation, so both parameters are of order 1
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        inverse = torch.exp(-(params[0] + params[1] * turn / 10))[:, None]
        loss = (torch.nn.functional.cross_entropy(z * inverse, y, reduction="none") * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = params.detach().tolist()
    return {"method": "yaw_temperature", "temperature": float(np.exp(a)), "per_degree": b / 10,
            "yaw_limit": YAW_LIMIT}


def photo_temperature_study(sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int = 0) -> dict:
    """Fit the photo temperature on photo sets and say how it holds on faces it was not fitted on.

    ``sets``: ``{name: (probs N x 7, yaw N degrees, labels N)}`` of the faces found in each set's photos, under
    the model's calibration. Each set counts equally in every fit. The fit (:func:`fit_photo_temperature`) is on
    all faces; the figures are cross-fitted: each set is split into stratified halves (seed ``seed``), the
    temperature fitted on one half of every set scores the other halves and the other way round, so each face
    is scored once by a fit that did not see it; a set with an empty half (no class with two faces) is left out.
    Returns the fit's fields and ``"fitted_on"`` (the sets), ``"too_few_faces"`` (those left out),
    ``"criterion"``, and ``"held_out"``: ``{set: {"without": ..., "with": ...}}``, :func:`calibration_metrics`
    of the set's faces without and with the photo temperature (the latter cross-fitted).
    """
    from .prior import stratified_halves

    halves = {name: stratified_halves(labels, seed) for name, (_, _, labels) in sets.items()}
    too_few = [name for name, (first, second) in halves.items() if not (len(first) and len(second))]
    sets = {name: faces for name, faces in sets.items() if name not in too_few}
    if not sets:
        raise MsferError("fitting a photo temperature needs a photo set with faces found in both of its stratified "
                         f"halves (a class with two faces or more); {', '.join(too_few) or 'none was given'}")

    def weighted(parts: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        chosen = [(sets[name], rows) for name, rows in parts.items()]
        return (np.concatenate([probs[rows] for (probs, _, _), rows in chosen]),
                np.concatenate([yaw[rows] for (_, yaw, _), rows in chosen]),
                np.concatenate([labels[rows] for (_, _, labels), rows in chosen]),
                np.concatenate([np.full(len(rows), 1 / len(rows)) for _, rows in chosen]))

    fitted = fit_photo_temperature(*weighted({name: np.arange(len(labels)) for name, (_, _, labels) in sets.items()}))
    crossed = {name: np.zeros_like(probs) for name, (probs, _, _) in sets.items()}
    for fit_half, score_half in ((0, 1), (1, 0)):
        photo = fit_photo_temperature(*weighted({name: halves[name][fit_half] for name in sets}))
        for name, (probs, yaw, _) in sets.items():
            rows = halves[name][score_half]
            crossed[name][rows] = with_photo_temperature(probs[rows], yaw[rows], photo)
    held_out = {name: {"without": calibration_metrics(probs, labels),
                       "with": calibration_metrics(crossed[name], labels)} for name, (probs, _, labels) in sets.items()}
    return {**fitted, "fitted_on": list(sets), "too_few_faces": too_few,
            "criterion": f"maximum likelihood on every face found in {', '.join(sets)}, each set weighted equally; "
                         f"held_out: cross-fitted on stratified halves (seed {seed})",
            "held_out": held_out}
