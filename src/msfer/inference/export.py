"""The emotion network as an ONNX file that runs without PyTorch (``msfer export``).

The graph has one input, ``images`` (N x 3 x S x S float32, normalised as
``mean``/``std`` say), a dynamic batch dimension, and the eval outputs of the
network: ``logits`` (N x 7), ``boxes`` (N x R x 4, input pixels), ``box_scores``
(N x R) and ``fallback`` (N, true where the default region layout was used); a plain
classifier has R = 0 (and ``region_names`` ``[]``) and ``fallback`` all false. What a
runtime needs to preprocess and to name the outputs is stored as JSON strings in the
model's ``metadata_props``: ``classes``, ``input_size``, ``mean``, ``std``,
``region_names``, ``balanced_offsets`` (the balanced decision rule's logit offsets, zeros
for a model without one or with one fitted at tau 0), ``calibration`` (how its probabilities
were calibrated, the held-out figures and, when the rule was fitted, ``balanced_tau``:
:func:`msfer.engine.calibration.calibration_summary`; null when they were not),
``crop_rule`` (how the model's faces are cropped from a photo,
:class:`msfer.faces.crop.CropRule` as ``{"method", "scale"}``), ``name`` (the model's, given when it
was bundled) and ``msfer_version``,
so the file is self-describing like a checkpoint. The
calibration itself is part of the graph (the model's ``logit_scale``/``logit_bias``), so
``logits`` are calibrated. Exported with PyTorch's TorchScript-based exporter, which needs no
extra package (the newer dynamo exporter needs ``onnxscript``).
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

from ..errors import MsferError
from ..faces.crop import CropRule
from ..files import atomic_output
from ..labels import EMOTIONS
from ..outputs import InputFiles, existing_out_mode

# Keys under which the model's description is stored in its metadata_props (the ONNX backend reads them).
ONNX_METADATA_KEYS = ("classes", "input_size", "mean", "std", "region_names")
# Also written (files exported by earlier versions may lack them): the balanced decision rule's logit
# offsets, the model's calibration summary (:func:`msfer.engine.calibration.calibration_summary`) and its
# crop rule (:class:`msfer.faces.crop.CropRule` as a dict; absent: box, scale 1.0) and name (absent: the file's stem).
ONNX_OPTIONAL_KEYS = ("balanced_offsets", "calibration", "crop_rule", "name")
OUTPUT_NAMES = ("logits", "boxes", "box_scores", "fallback")
DEFAULT_OPSET = 17


def onnx_bytes(model, source: str | Path, opset: int = DEFAULT_OPSET, calibration: dict | None = None,
               crop_rule: dict | None = None, name: str | None = None) -> bytes:
    """The serialised ONNX model of ``model`` (an eval-mode msfer network), with msfer's metadata.

    ``calibration``: the model's calibration summary, stored as metadata for reports. ``crop_rule``:
    the checkpoint's crop rule (``{"method", "scale"}``; None: box at scale 1.0, the default). ``name``: the
    model's name (None: the file's stem names it).
    """
    import onnx
    import torch


    class EvalOutputs(torch.nn.Module):
        """The network with its output dict as a tuple, the form ONNX outputs take."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, images):
            output = self.net(images)
            return tuple(output[name] for name in OUTPUT_NAMES)

    size = int(model.input_size)
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            torch.onnx.export(
                EvalOutputs().cpu().eval(), (example,), buffer, input_names=["images"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUT_NAMES)},
                opset_version=opset, dynamo=False,
            )
    except Exception as error:  # the exporter raises many types; the user needs the model and the reason
        raise MsferError(f"cannot export {source} to ONNX: {error}") from error
    proto = onnx.load_from_string(buffer.getvalue())
    from .._version import __version__

    metadata = {
        "classes": list(EMOTIONS),
        "input_size": size,
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "region_names": list(model.region_names),
        "balanced_offsets": [float(v) for v in model.balanced_offsets.float().cpu()],
        "calibration": calibration,
        "crop_rule": CropRule.from_dict(crop_rule).to_dict(),
        "name": name,
        "msfer_version": __version__,
    }
    onnx.helper.set_model_props(proto, {key: json.dumps(value) for key, value in metadata.items()})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(weights: str | Path | None, out: str | Path, opset: int = DEFAULT_OPSET,
                overwrite: bool = False) -> Path:
    """Export the checkpoint ``weights`` (default: the bundled model) to ``out``; return ``out``.

    An existing ``out`` is replaced only with ``overwrite``, and never when it is the checkpoint.
    """
    from ..engine.calibration import calibration_summary
    from ..model.checkpoint import load_model, resolve_checkpoint
    from ..weights import default_weights_path
    from .backends import checkpoint_name

    weights = Path(weights) if weights is not None else default_weights_path()
    if opset < 17:
        raise MsferError(f"opset {opset} is too old: msfer exports with opset 17 or newer")
    out = Path(out)
    # Refused before the export's seconds of work, and --overwrite never reaches the checkpoint itself.
    InputFiles([resolve_checkpoint(weights, prefer="best.pt")]).refuse(out, "--out")
    existing_out_mode(out, resume=False, overwrite=overwrite, resumable=False)
    model, meta = load_model(weights, "cpu")  # refuses a model of other classes
    crop_rule = CropRule.recorded(meta.get("crop_rule"), str(weights))
    data = onnx_bytes(model.eval(), weights, opset, calibration=calibration_summary(meta.get("calibration")),
                      crop_rule=crop_rule.to_dict(), name=checkpoint_name(meta, weights))
    with atomic_output(out) as temporary:
        temporary.write_bytes(data)
    return out
