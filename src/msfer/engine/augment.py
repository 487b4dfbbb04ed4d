"""Box-aware augmentation of whole batches, on the device the model trains on.

The DataLoader only decodes (or reads from the in-memory cache) fixed-size ``uint8``
images; everything random happens here, vectorised over the batch with torch, so the
same code serves a 2-core CPU and a GPU at batch 256 without a CPU bottleneck, and a
single ``torch.Generator`` makes it reproducible (and resumable: its state after a batch
gives the same next batch). Every operation draws its random numbers only when it is
switched on, so a config that leaves an operation off trains exactly as before it existed.

Order. The operations imitate how a face photo reaches the model, as a camera and the
face detector make it, in this order:

1. Geometry and resampling (the detector's crop): one affine map per image, applied with
   ``F.grid_sample`` (which also resizes from the stored image size to the model's input
   size): a random resized crop (area ``scale``, aspect ``ratio``), a small shift, a
   rotation (roll) and a horizontal flip. Region boxes go through the same map: their 4
   corners are transformed, the box becomes their min/max, clipped to the image; a box
   with less than ``min_box_visible`` of its area left in view is marked invalid. A flip
   also swaps the ``left_eye`` and ``right_eye`` boxes, because the names mean "the eye on
   the image's left" (see :mod:`msfer.labels`). Random erasing then paints one rectangle
   with the mean grey of the normalisation (an occluder is part of the scene, so the
   camera's blur, noise and compression below act on it too); erased organs keep their
   boxes, as the point is robustness to occlusion.
2. Colour: brightness, contrast, saturation, hue, then greyscale conversion (last, so a
   greyed image is grey whatever the jitter did). These are per-pixel linear maps, so they
   commute with the bilinear resampling (up to the clamp to [0, 1]): they are applied to the
   stored, usually smaller, images before it, where they cost a fraction.
3. Blur (defocus, motion, a small face enlarged to the input size), in pixels of the model's
   input: before the noise, because a lens blurs the scene, not the sensor's noise.
4. Noise (the sensor's), after the blur so that it stays sharp and per pixel; a grey image
   gets the same noise in its three channels (the luminance noise of a grey photo).
5. JPEG re-compression last, as a camera or a website writes the file last: its 8 x 8 block
   artefacts and quantised colours are never smoothed by anything after it. It runs on the
   CPU (libjpeg-turbo through Pillow); a grey image is encoded as a one-channel JPEG.

Library functions do the work where they handle a batch with one parameter per image
(``torchvision.transforms.v2.functional.rgb_to_grayscale``, ``F.grid_sample``) and Pillow
writes and reads the JPEGs (torchvision's JPEG functions are deprecated). Written here, because torchvision's take
one parameter for the whole batch: the colour jitter (per-image factors), the hue rotation
(a per-image 3 x 3 matrix in YIQ space, an approximation of an HSV hue shift that stays
linear), the Gaussian blur (a separable grouped convolution with one kernel per image; the
same kernel and reflect padding as ``torchvision.transforms.v2.functional.gaussian_blur``,
against which the tests check it) and the noise.
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import rgb_to_grayscale

from ..data.transforms import class_probabilities, mirror, normalize
from ..labels import FLIP_SWAP


def flip_permutation(region_names: Sequence[str]) -> list[int]:
    """Index ``i`` of the result is the region whose box becomes region ``i`` after a horizontal flip."""
    index = {name: i for i, name in enumerate(region_names)}
    return [index[FLIP_SWAP.get(name, name)] for name in region_names]


class BatchAugment:
    """Random box-aware augmentation of a ``uint8`` batch (see the module docstring).

    ``params`` is the ``data.augment`` config section. Call it with images ``B x 3 x H x W``
    ``uint8``, boxes ``B x R x 4`` (pixels of the stored image), ``box_valid`` ``B x R``;
    it returns normalised float images ``B x 3 x S x S``, boxes in their pixels, validity.
    """

    def __init__(self, params: dict[str, Any], input_size: int, mean, std, region_names: Sequence[str],
                 generator: torch.Generator):
        self.params = params
        self.input_size = input_size
        self.mean, self.std = mean, std
        self.flip_index = flip_permutation(region_names)
        self.generator = generator

    def _uniform(self, low: float, high: float, n: int, device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) * (high - low) + low

    def _chosen(self, probability: float, n: int, device) -> torch.Tensor:
        """``B`` bools, each True with ``probability``."""
        return self._uniform(0, 1, n, device) < probability

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, box_valid: torch.Tensor,
                 grey: bool | torch.Tensor = False):
        """``grey``: whether each image has 3 equal channels (one bool for the batch, or ``B`` bools).

        A batch of grey images is resampled in one channel; a grey image keeps equal channels
        through the noise and JPEG.
        """
        n, _, height, width = images.shape
        grey = torch.as_tensor(grey, dtype=torch.bool).expand(n)
        one_channel = bool(grey.all())
        grey = grey.to(images.device)
        if one_channel:
            images = images[:, :1]
        # Brightness, contrast, saturation, hue and greyscale are per-pixel linear maps, so they commute with
        # bilinear resampling: applied to the stored (usually smaller) images they cost a fraction.
        images, grey = self._colour(images.float().div_(255), grey)
        theta, flip = self._sample_affine(n, images.device)
        out = F.grid_sample(images, self._grid(theta), mode="bilinear", padding_mode="zeros", align_corners=False)
        out = self._jpeg(self._noise(self._blur(self._erase(out)), grey), grey)
        out = normalize(out, self.mean, self.std)  # a grey batch becomes 3 channels here
        boxes, box_valid = self._move_boxes(theta, boxes, box_valid, width, height)
        boxes = torch.where(flip[:, None, None], boxes[:, self.flip_index], boxes)
        box_valid = torch.where(flip[:, None], box_valid[:, self.flip_index], box_valid)
        return out, boxes, box_valid
    def _sample_affine(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: ``theta`` (B x 2 x 3) mapping output to input coordinates in [-1, 1], and the flip flags."""
        p = self.params
        # Crop side lengths as fractions of the image (area `scale`, aspect `ratio` sampled in log space).
        area = self._uniform(*p["scale"], n, device)
        ratio = self._uniform(math.log(p["ratio"][0]), math.log(p["ratio"][1]), n, device).exp()
        crop_w = (area * ratio).sqrt().clamp(max=1.0)
        crop_h = (area / ratio).sqrt().clamp(max=1.0)
        # Crop centre: anywhere the crop fits, plus a shift.
        shift = p["translate"] * 2
        centre_x = (1 - crop_w) * self._uniform(-1, 1, n, device) + self._uniform(-shift, shift, n, device)
        centre_y = (1 - crop_h) * self._uniform(-1, 1, n, device) + self._uniform(-shift, shift, n, device)
        angle = self._uniform(-p["rotation"], p["rotation"], n, device) * (math.pi / 180)
        flip = self._uniform(0, 1, n, device) < p["flip"]
        sign = 1.0 - 2.0 * flip.float()
        cos, sin = angle.cos(), angle.sin()
        # input = R(angle) @ diag(sign * crop_w, crop_h) @ output + centre
        row_x = torch.stack([cos * crop_w * sign, -sin * crop_h, centre_x], dim=1)
        row_y = torch.stack([sin * crop_w * sign, cos * crop_h, centre_y], dim=1)
        return torch.stack([row_x, row_y], dim=1), flip

    def _grid(self, theta: torch.Tensor) -> torch.Tensor:
        """``F.affine_grid(theta, (B, C, S, S), align_corners=False)`` in one broadcast pass (10x faster on CPU)."""
        size = self.input_size
        coords = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1  # pixel centres
        along_x = torch.addcmul(theta[:, None, None, :, 2], theta[:, None, None, :, 0], coords.view(1, 1, size, 1))
        return torch.addcmul(along_x, theta[:, None, None, :, 1], coords.view(1, size, 1, 1))

    def _move_boxes(self, theta, boxes, box_valid, width: int, height: int):
        """Send boxes (input pixels) through the inverse of ``theta`` into output pixels."""
        size = self.input_size
        x1, y1, x2, y2 = boxes.unbind(-1)
        corners = [(x1, y1), (x2, y1), (x1, y2), (x2, y2)]
        corners = torch.stack([torch.stack(c, dim=-1) for c in corners], dim=2)  # B R 4 2
        # Pixel edges 0..W map to -1..1 (align_corners=False).
        scale_in = torch.tensor([2 / width, 2 / height], device=boxes.device)
        normalised = corners * scale_in - 1
        linear, offset = theta[:, :, :2], theta[:, :, 2]
        inverse = torch.linalg.inv(linear)  # B 2 2
        out = torch.einsum("bij,brkj->brki", inverse, normalised - offset[:, None, None, :])
        out = (out + 1) * (size / 2)
        lo, hi = out.amin(dim=2), out.amax(dim=2)  # B R 2
        moved = torch.cat([lo, hi], dim=-1)
        clipped = moved.clamp(0, size)
        area = (moved[..., 2] - moved[..., 0]) * (moved[..., 3] - moved[..., 1])
        kept = (clipped[..., 2] - clipped[..., 0]) * (clipped[..., 3] - clipped[..., 1])
        visible = kept > self.params["min_box_visible"] * area.clamp(min=1e-6)
        return clipped, box_valid & visible

    def _colour(self, images: torch.Tensor, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] after the colour jitter and greyscale conversion, and which images are now grey."""
        p, n, device = self.params, images.shape[0], images.device
        view = (n, 1, 1, 1)
        if p["brightness"]:
            images = images * self._uniform(1 - p["brightness"], 1 + p["brightness"], n, device).view(view)
        if p["contrast"]:
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * self._uniform(1 - p["contrast"], 1 + p["contrast"], n, device).view(view) + mean
        if p["saturation"]:
            grey_level = images.mean(dim=1, keepdim=True)
            factor = self._uniform(1 - p["saturation"], 1 + p["saturation"], n, device).view(view)
            images = (images - grey_level) * factor + grey_level
        if p["hue"]:
            turn = self._uniform(-p["hue"], p["hue"], n, device)
            if images.shape[1] == 3:  # a one-channel (grey) batch has no hue
                images = torch.einsum("bij,bjhw->bihw", _hue_rotation(turn), images)
        if p["greyscale"]:
            chosen = self._chosen(p["greyscale"], n, device)
            if images.shape[1] == 3:
                # ITU-R 601 luma, as Pillow's "L" (FER2013's grey crops, the grey photos msfer is given)
                luma = rgb_to_grayscale(images.clamp(0, 1), num_output_channels=3)
                images = torch.where(chosen.view(view), luma, images)
            grey = grey | chosen
        return images.clamp(0, 1), grey

    def _erase(self, images: torch.Tensor) -> torch.Tensor:
        p, n, device = self.params, images.shape[0], images.device
        if not p["erase"]:
            return images
        size = images.shape[-1]
        area = self._uniform(*p["erase_area"], n, device)
        log_ratio = self._uniform(math.log(p["erase_ratio"][0]), math.log(p["erase_ratio"][1]), n, device)
        erase_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        erase_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        x0 = self._uniform(0, 1, n, device) * (1 - erase_w)
        y0 = self._uniform(0, 1, n, device) * (1 - erase_h)
        chosen = self._chosen(p["erase"], n, device)
        coords = (torch.arange(size, device=device) + 0.5) / size
        inside_x = (coords[None] >= x0[:, None]) & (coords[None] < (x0 + erase_w)[:, None])  # B S
        inside_y = (coords[None] >= y0[:, None]) & (coords[None] < (y0 + erase_h)[:, None])
        mask = inside_y[:, :, None] & inside_x[:, None, :] & chosen[:, None, None]
        return images.masked_fill_(mask[:, None], sum(self.mean) / len(self.mean))

    def _blur(self, images: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of a ``blur`` share of the images, sigma uniform in ``blur_sigma`` (input pixels)."""
        p, n, device = self.params, images.shape[0], images.device
        if not p["blur"]:
            return images
        chosen = self._chosen(p["blur"], n, device)
        sigma = self._uniform(*p["blur_sigma"], n, device)
        return torch.where(chosen.view(n, 1, 1, 1), gaussian_blur(images, sigma, p["blur_sigma"][1]), images)

    def _noise(self, images: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """Gaussian noise on a ``noise`` share of the images, std uniform in ``noise_std`` (0..255 units)."""
        p, n, device = self.params, images.shape[0], images.device
        if not p["noise"]:
            return images
        chosen = self._chosen(p["noise"], n, device)
        std = self._uniform(*p["noise_std"], n, device).div_(255).view(n, 1, 1, 1)
        noise = torch.randn(images.shape, device=device, generator=self.generator, dtype=images.dtype)
        if images.shape[1] == 3:  # a grey image's noise is grey too
            noise = torch.where(grey.view(n, 1, 1, 1), noise[:, :1].expand_as(noise), noise)
        return torch.where(chosen.view(n, 1, 1, 1), (images + noise * std).clamp_(0, 1), images)

    def _jpeg(self, images: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
        """JPEG re-compression of a ``jpeg`` share of the images, quality a whole number in ``jpeg_quality``.

        Pixels are rounded to ``uint8``, written and read back by Pillow (libjpeg-turbo, its default
        4:2:0 chroma subsampling) on the CPU, one image at a time, a grey one as a one-channel JPEG.
        Pillow rather than ``torchvision.io.encode_jpeg``, which torchvision 0.29 deprecates (it is
        0.24 ms where Pillow is 0.37). Cost, measured once (best of 9 on the shared 2-core CPU): 0.37 ms
        per colour 112 px image (0.24 ms grey) on one core, so ~24 ms per batch of 64 with ``jpeg: 1.0``;
        on a GPU the batch also waits for one transfer each way.
        """
        p, n, device = self.params, images.shape[0], images.device
        if not p["jpeg"]:
            return images
        chosen = self._chosen(p["jpeg"], n, device)
        low, high = p["jpeg_quality"]
        quality = self._uniform(low, high + 1, n, device).floor_().clamp_(max=high)
        # One transfer for the chosen images and their settings (a GPU waits here once per batch).
        index = chosen.nonzero().squeeze(1)
        if len(index) == 0:
            return images
        pixels = images[index].mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        qualities, greys = quality[index].int().tolist(), grey[index].tolist()
        decoded = [jpeg_roundtrip(image[..., 0] if is_grey else image, q).reshape(*image.shape[:2], -1)
                   for image, q, is_grey in zip(pixels, qualities, greys)]
        decoded = np.stack([np.broadcast_to(d, pixels.shape[1:]) for d in decoded])  # grey: its one channel, 3 times
        images = images.clone()
        images[index] = torch.from_numpy(decoded).permute(0, 3, 1, 2).to(device).float().div_(255)
        return images


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """``pixels`` (``H x W`` grey or ``H x W x 3`` RGB, ``uint8``) as a JPEG of ``quality`` (1..100), read back."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def _hue_rotation(turn: torch.Tensor) -> torch.Tensor:
    """``B x 3 x 3`` RGB matrices rotating the hue by ``turn`` (fractions of a full turn) about the grey axis in YIQ."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=turn.device)
    angle = turn * (2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                            torch.stack([zero, sin, cos], -1)], -2)  # B 3 3
    return torch.linalg.inv(to_yiq) @ rotation @ to_yiq


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each image of ``B x C x H x W`` with a Gaussian of its own ``sigma`` (``B``, pixels).

    The kernel is that of ``torchvision.transforms.v2.functional.gaussian_blur`` with a side of
    ``2 * ceil(3 * max_sigma) + 1`` (at most what the image can reflect), applied separably with
    reflect padding as there; torchvision's takes one sigma for the whole batch.
    """
    n, channels, height, width = images.shape
    radius = min(math.ceil(3 * max_sigma), height - 1, width - 1)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.softmax(-0.5 * (offsets[None] / sigma[:, None]) ** 2, dim=1)  # B K, rows sum to 1
    kernel = kernel.repeat_interleave(channels, dim=0)  # one per channel of each image: B*C K
    flat = F.pad(images.reshape(1, n * channels, height, width), [radius] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * channels)  # along y
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * channels)  # along x
    return flat.reshape(n, channels, height, width)


def mirror_boxes(boxes: torch.Tensor, width: int, flip_index: Sequence[int]) -> torch.Tensor:
    """Boxes of the horizontally mirrored image (``B x R x 4``), left and right organs swapped."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=-1)[:, list(flip_index)]


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, tta: bool = False, boxes: torch.Tensor | None = None,
                  box_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Softmax probabilities of ``model`` on normalised ``images``; with ``tta`` the mean of each image and its mirror.

    ``boxes``/``box_valid`` are given regions (models with ``region_source="pseudo"``); the
    mirror pass gets them mirrored. Returns ``(probs, output on the unflipped images)``.
    The mirror and the mean of both softmaxes are those of :mod:`msfer.data.transforms`, as in the API.
    """
    output = model(images, boxes=boxes, box_valid=box_valid)
    mirrored = None
    if tta:
        if boxes is not None:
            flip_index = flip_permutation(model.region_names)
            boxes, box_valid = mirror_boxes(boxes, images.shape[-1], flip_index), box_valid[:, flip_index]
        mirrored = model(mirror(images), boxes=boxes, box_valid=box_valid)["logits"]
    return class_probabilities(output["logits"], mirrored), output
