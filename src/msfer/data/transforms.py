"""The one way a face crop becomes the network's input, and test-time augmentation's mirror.

Every path that classifies a crop uses these functions: the validation of ``msfer train``
and ``msfer evaluate`` (the datasets of :mod:`msfer.engine.datasets` resize with
:func:`resize_square`, :func:`msfer.engine.evaluate.predict_split` normalises with
:func:`model_input`), and the Python API, ``msfer predict``, the REST service and the ONNX
backend (:meth:`msfer.inference.recognizer.EmotionRecognizer.classify_crops`). So one crop
gives the same input tensor, and the same probabilities, whichever way it comes in: bit for bit on the
PyTorch paths, within float32 rounding on the ONNX one (``tests/test_data_transforms.py``).

1. **Resize** to ``S x S`` with Pillow's bilinear filter (:func:`resize_square`), ``uint8``
   in and out. Pillow widens the filter's support when shrinking, so a large face is
   averaged down without aliasing; FER2013's 48 px crops are enlarged by plain bilinear
   interpolation. The result is rounded to ``uint8``: it is what a dataset caches.
2. **Normalise** (:func:`normalize`): scale to [0, 1], subtract ``mean`` and divide by
   ``std`` (the model's, on the [0, 1] scale), channels first, ``float32``.
3. **Mirror** for test-time augmentation (:func:`mirror`): the probabilities of a crop and
   of its horizontal mirror image are averaged (:func:`class_probabilities`).

Steps 2 and 3 are written twice, in PyTorch (training, evaluation and the PyTorch backend) and in
numpy (:func:`model_input_array`, :func:`class_probabilities_array`: the ONNX backend, which so runs
without loading PyTorch); the two agree within float32 rounding (``tests/test_data_transforms.py``).
This module imports torch only where it makes a tensor.

Training does not resize here: its random augmentation (:mod:`msfer.engine.augment`) resamples
the stored images to ``S`` on the device, and normalises them with :func:`normalize`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def resize_square(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """``image`` as a ``size`` x ``size`` x 3 ``uint8`` RGB array, by Pillow's bilinear filter.

    ``image``: a PIL image (converted to RGB) or an H x W x 3 ``uint8`` RGB array. An image
    that already has that size is returned unchanged (as an array).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
        if image.shape[:2] == (size, size):
            return image
        image = Image.fromarray(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8``-range or [0, 1] float images ``N x C x H x W`` -> normalised ``float32``.

    ``mean``/``std`` are per channel, on the [0, 1] scale; a 1-channel (grey) batch broadcasts
    to 3 channels.
    """
    import torch

    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    scale = 1 / torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * scale
    return torch.addcmul(shift, images, scale)  # one fused pass


def model_input(crops: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Crops already resized to ``S x S`` -> the network's input, ``N x 3 x S x S`` ``float32``.

    ``crops``: ``uint8``, either ``N x S x S x 3`` (a numpy stack of :func:`resize_square`
    results, channels last) or ``N x 3 x S x S`` (a tensor, as the datasets batch them, on any
    device).
    """
    import torch

    if isinstance(crops, np.ndarray):
        # torch wants a writable array (an array of a PIL image is read-only): copied only then
        crops = torch.from_numpy(np.require(crops, requirements=["C", "W"])).permute(0, 3, 1, 2)
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"expected N x 3 x S x S uint8 crops, got {crops.dtype} {tuple(crops.shape)}")
    return normalize(crops, mean, std).contiguous()


def mirror(images: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror images of an ``N x C x H x W`` batch (a new tensor)."""
    return images.flip(-1)


def class_probabilities(logits: torch.Tensor, mirrored_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the classes of ``N x K`` logits, ``float32``.

    With the logits of the mirror images (test-time augmentation), the mean of both softmaxes.
    """
    probs = logits.float().softmax(dim=1)
    if mirrored_logits is not None:
        probs = (probs + mirrored_logits.float().softmax(dim=1)) / 2
    return probs


def model_input_array(crops: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """:func:`model_input` in numpy: ``N x S x S x 3`` ``uint8`` crops -> ``N x 3 x S x S`` ``float32``, C-contiguous
    (the same values within float32 rounding). ValueError for another dtype or shape."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"expected N x S x S x 3 uint8 crops, got {crops.dtype} {crops.shape}")
    scale = (1 / np.asarray(std, np.float32)).reshape(1, -1, 1, 1)
    shift = -np.asarray(mean, np.float32).reshape(1, -1, 1, 1) * scale
    images = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(images * scale + shift)


def class_probabilities_array(logits: np.ndarray, mirrored_logits: np.ndarray | None = None) -> np.ndarray:
    """:func:`class_probabilities` in numpy: softmax over the classes of ``N x K`` logits (``float32``), with the
    mirror images' logits the mean of both softmaxes."""

    def softmax(values: np.ndarray) -> np.ndarray:
        shifted = np.exp(values.astype(np.float32) - values.max(axis=1, keepdims=True).astype(np.float32))
        return shifted / shifted.sum(axis=1, keepdims=True)

    probs = softmax(logits)
    if mirrored_logits is not None:
        probs = (probs + softmax(mirrored_logits)) / 2
    return probs
