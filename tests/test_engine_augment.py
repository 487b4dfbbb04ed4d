import io

import numpy as np
import pytest
import torch
from PIL import Image

from msfer.engine.augment import BatchAugment, flip_permutation, gaussian_blur, mirror_boxes
from msfer.engine.config import DEFAULTS
from msfer.labels import REGION_NAMES

EYE = REGION_NAMES.index("left_eye")


def make_batch(n=64, size=48):
    """A dark batch with a bright rectangle exactly at the left-eye box."""
    images = torch.full((n, 3, size, size), 20, dtype=torch.uint8)
    images[:, :, 12:20, 8:18] = 255  # y 12..20, x 8..18
    boxes = torch.tensor([[2, 2, 46, 46], [8, 12, 18, 20], [30, 12, 40, 20], [20, 20, 28, 30], [15, 32, 33, 40]],
                         dtype=torch.float32).expand(n, 5, 4).clone()
    return images, boxes, torch.ones(n, 5, dtype=torch.bool)


def augment(params, grey=False, seed=0):
    config = {**DEFAULTS["data"]["augment"], **params}
    return BatchAugment(config, 64, [0.0] * 3, [1.0] * 3, REGION_NAMES, torch.Generator().manual_seed(seed))


def test_boxes_move_with_the_pixels():
    images, boxes, valid = make_batch()
    geometry_only = augment({"brightness": 0, "contrast": 0, "erase": 0, "rotation": 15, "flip": 0.5})
    out, moved, moved_valid = geometry_only(images, boxes, valid, grey=True)
    assert out.shape == (64, 3, 64, 64) and moved.shape == (64, 5, 4)
    for i in range(len(out)):
        ys, xs = torch.nonzero(out[i, 0] > 0.6, as_tuple=True)
        if len(xs) == 0:
            assert not moved_valid[i].all()  # the eye left the picture
            continue
        # After a flip the bright eye is the image-right one: it is then stored as right_eye.
        candidates = [moved[i, k] for k in (EYE, EYE + 1) if moved_valid[i, k]]
        inside = [((xs + 0.5 >= b[0] - 1) & (xs + 0.5 <= b[2] + 1) & (ys + 0.5 >= b[1] - 1)
                   & (ys + 0.5 <= b[3] + 1)).all() for b in candidates]
        assert any(inside), f"image {i}: bright pixels outside the moved eye box"


def test_flip_swaps_the_eyes_and_mirrors_the_boxes():
    images, boxes, valid = make_batch(n=4)
    params = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "translate": 0.0, "rotation": 0.0, "flip": 1.0,
              "brightness": 0, "contrast": 0, "erase": 0}
    out, moved, _ = augment(params)(images, boxes, valid)
    scale = 64 / 48
    # the bright left eye (x 8..18) is now on the right (x 30..40) and named right_eye
    assert torch.allclose(moved[0, EYE + 1], torch.tensor([30, 12, 40, 20]) * scale, atol=1e-3)
    assert torch.allclose(moved[0, EYE], torch.tensor([8, 12, 18, 20]) * scale, atol=1e-3)  # the old right eye
    assert out[0, 0, 16 * 64 // 48, 35 * 64 // 48] > 0.9 and out[0, 0, 16 * 64 // 48, 12 * 64 // 48] < 0.2
    assert flip_permutation(["face", "eyes", "nose"]) == [0, 1, 2]
    assert torch.allclose(mirror_boxes(moved, 64, flip_permutation(REGION_NAMES)), boxes * scale, atol=1e-4)


def test_box_pushed_out_of_view_becomes_invalid_and_erasing_keeps_boxes():
    images, boxes, valid = make_batch(n=8)
    # a crop of the image's right half at 2x: the left eye (x 8..18) is out of view
    params = {"scale": [0.25, 0.25], "ratio": [1.0, 1.0], "translate": 0.0, "rotation": 0.0, "flip": 0.0, "erase": 1.0,
              "min_box_visible": 0.4}
    aug = augment(params)
    aug._uniform = lambda low, high, n, device: torch.full((n,), high)  # centre at the bottom-right corner
    _, moved, moved_valid = aug(images, boxes, valid)
    mouth = REGION_NAMES.index("mouth")  # x 15..33 of which 24..33 stays in view: 50% > 40%
    assert not moved_valid[:, EYE].any() and moved_valid[:, mouth].all()
    assert (moved >= 0).all() and (moved <= 64).all()


def test_generator_reproducibility():
    first = augment({}, seed=3)(*make_batch(n=4))
    second = augment({}, seed=3)(*make_batch(n=4))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# --- The camera-like operations (greyscale, hue, blur, noise, JPEG): each off by default. ---

# Geometry that leaves a same-size image as it is, and no other random operation: what an op changes is its own.
PLAIN = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "translate": 0.0, "rotation": 0.0, "flip": 0.0,
         "brightness": 0.0, "contrast": 0.0, "erase": 0.0}
PHOTOMETRIC = {"greyscale": {}, "blur": {"blur_sigma": [0.8, 1.5]}, "noise": {"noise_std": [4.0, 8.0]},
               "jpeg": {"jpeg_quality": [20, 60]}}


def colour_batch(n=256, size=16, seed=0):
    """Random colour pixels (every op changes them visibly), the usual five boxes scaled to ``size``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    _, boxes, valid = make_batch(n=n)
    return images, boxes * (size / 48), valid


def plain_augment(params, size=16, seed=0):
    config = {**DEFAULTS["data"]["augment"], **PLAIN, **params}
    return BatchAugment(config, size, [0.0] * 3, [1.0] * 3, REGION_NAMES, torch.Generator().manual_seed(seed))


def changed_images(a, b):
    return (a - b).abs().flatten(1).amax(dim=1) > 1e-3


def test_the_default_path_is_unchanged():
    """Pinned output of the default augmentation before the camera-like operations existed (same seed, same input).

    The generator's next number pins how many numbers were drawn: an op left off draws none.
    """
    generator = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (6, 3, 40, 40), generator=generator, dtype=torch.uint8)
    boxes = torch.tensor([[2, 2, 38, 38], [8, 10, 16, 16], [24, 10, 32, 16], [16, 16, 24, 26], [12, 28, 28, 34]],
                         dtype=torch.float32).expand(6, 5, 4).clone()
    valid = torch.ones(6, 5, dtype=torch.bool)
    expected = {  # sum, sum of squares, image 1's pixel (20, 30), boxes' sum, valid count (from msfer at 2c2f783)
        False: (14102.742974017834, 50026.81155565026, [-0.6883953809738159, -0.6239403486251831, 0.05446455255150795]),
        True: (13726.524393076324, 49777.93125808026, [-0.6900550127029419, -0.15204405784606934, 0.2066299468278885]),
    }
    for grey, (total, squares, pixel) in expected.items():
        batch = images.clone()
        if grey:
            batch[:] = batch[:, :1]
        generator = torch.Generator().manual_seed(7)
        aug = BatchAugment(dict(DEFAULTS["data"]["augment"]), 56, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], REGION_NAMES,
                           generator)
        out, moved, moved_valid = aug(batch, boxes, valid, grey=grey)
        assert out.double().sum().item() == pytest.approx(total, rel=1e-6)
        assert out.double().pow(2).sum().item() == pytest.approx(squares, rel=1e-6)
        assert out[1, :, 20, 30].tolist() == pytest.approx(pixel, abs=1e-5)
        assert moved.double().sum().item() == pytest.approx(3352.5579121112823, rel=1e-6)
        assert moved_valid.sum().item() == 30
        assert torch.rand(1, generator=generator).item() == pytest.approx(0.1469746232032776, abs=1e-7)


@pytest.mark.parametrize("op", sorted(PHOTOMETRIC))
def test_each_op_changes_only_its_chosen_share_and_keeps_the_boxes(op):
    images, boxes, valid = colour_batch()
    reference, ref_boxes, ref_valid = plain_augment({})(images, boxes, valid)
    off, _, _ = plain_augment({op: 0.0, **PHOTOMETRIC[op]})(images, boxes, valid)
    assert torch.equal(off, reference)  # off: not a pixel changes
    for probability, low, high in ((0.5, 100, 156), (1.0, 256, 256)):  # Binomial(256, 0.5): 128 +- 8
        out, moved, moved_valid = plain_augment({op: probability, **PHOTOMETRIC[op]})(images, boxes, valid)
        changed = changed_images(out, reference)
        assert low <= int(changed.sum()) <= high
        assert torch.equal(out[~changed], reference[~changed])  # the others exactly as they were
        assert torch.equal(moved, ref_boxes) and torch.equal(moved_valid, ref_valid)  # photometric: boxes stay


def test_greyscale_output_has_equal_channels_through_noise_and_jpeg():
    images, boxes, valid = colour_batch(n=32)
    params = {"greyscale": 1.0, "noise": 1.0, "jpeg": 1.0, "blur": 0.5}
    out, _, _ = plain_augment(params)(images, boxes, valid)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    # ITU-R 601 luma, as Pillow's "L" gives it (torchvision rounds the red weight to 0.2989)
    alone, _, _ = plain_augment({"greyscale": 1.0})(images, boxes, valid)
    luma = (images.float() / 255 * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(dim=1)
    assert torch.allclose(alone[:, 0], luma, atol=2e-4)
    # Images the dataset says are grey keep equal channels in a mixed batch (noise and JPEG act per image)
    mixed = images.clone()
    mixed[::2] = mixed[::2, :1]
    is_grey = torch.zeros(32, dtype=torch.bool)
    is_grey[::2] = True
    out, _, _ = plain_augment({"noise": 1.0, "jpeg": 1.0})(mixed, boxes, valid, grey=is_grey)
    assert torch.equal(out[::2, 0], out[::2, 1]) and torch.equal(out[::2, 1], out[::2, 2])
    assert not torch.equal(out[1::2, 0], out[1::2, 1])


def test_jpeg_output_differs_and_stays_in_the_uint8_range():
    images, boxes, valid = colour_batch(n=16, size=24)
    for grey in (False, True):
        batch = images.clone()
        if grey:
            batch[:] = batch[:, :1]
        out, _, _ = plain_augment({"jpeg": 1.0, "jpeg_quality": [40, 40]}, size=24)(batch, boxes, valid, grey=grey)
        pixels = out * 255
        assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # decoded uint8 values
        assert pixels.min() >= 0 and pixels.max() <= 255
        assert changed_images(out, batch.float() / 255).all()
        # the same as a JPEG file Pillow writes at that quality and reads back
        buffer = io.BytesIO()
        first = batch[0, 0] if grey else batch[0].permute(1, 2, 0)
        Image.fromarray(first.numpy()).save(buffer, format="JPEG", quality=40)
        expected = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(pixels[0].round().to(torch.uint8), expected)


def test_blur_is_torchvision_gaussian_blur_with_a_sigma_per_image():
    from torchvision.transforms.v2.functional import gaussian_blur as library_blur

    images = colour_batch(n=3, size=20)[0].float() / 255
    sigma = torch.tensor([0.6, 1.0, 2.0])
    blurred = gaussian_blur(images, sigma, max_sigma=2.0)
    for i, s in enumerate(sigma.tolist()):
        assert torch.allclose(blurred[i], library_blur(images[i], kernel_size=[13, 13], sigma=[s, s]), atol=1e-5)
    # a kernel wider than the image is cut to what reflect padding allows
    assert gaussian_blur(images[:, :, :4, :4], sigma, max_sigma=2.0).shape == (3, 3, 4, 4)


def test_noise_strength_is_in_pixel_units():
    images = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    boxes, valid = torch.zeros(64, 5, 4), torch.ones(64, 5, dtype=torch.bool)
    out, _, _ = plain_augment({"noise": 1.0, "noise_std": [6.0, 6.0]})(images, boxes, valid)
    assert (out * 255 - 128).std().item() == pytest.approx(6.0, rel=0.05)


def test_hue_rotates_colour_and_keeps_luma():
    images = torch.randint(80, 170, (8, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    boxes, valid = torch.zeros(8, 5, 4), torch.ones(8, 5, dtype=torch.bool)
    out, _, _ = plain_augment({"hue": 0.25}, size=8)(images, boxes, valid)
    weights = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    assert torch.allclose((out * weights).sum(1), (images / 255 * weights).sum(1), atol=1e-5)
    assert changed_images(out, images / 255).all()
    grey = images[:, :1].expand(-1, 3, -1, -1)
    out, _, _ = plain_augment({"hue": 0.25}, size=8)(grey, boxes, valid, grey=True)
    assert torch.allclose(out, grey / 255, atol=1e-6)  # a grey batch has no hue


ALL_ON = {"greyscale": 0.3, "hue": 0.1, "blur": 0.5, "noise": 0.5, "jpeg": 0.5}


def test_all_ops_reproduce_from_the_seed_and_resume_from_the_generator_state():
    first, second = colour_batch(n=8, size=24, seed=1), colour_batch(n=8, size=24, seed=2)
    a, b = augment(ALL_ON, seed=5), augment(ALL_ON, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a(*first), b(*first)))
    state = a.generator.get_state()
    expected = a(*second)
    resumed = augment(ALL_ON)
    resumed.generator.set_state(state)  # as if the run stopped after the first batch
    assert all(torch.equal(x, y) for x, y in zip(resumed(*second), expected))
    assert not torch.equal(augment(ALL_ON, seed=6)(*second)[0], expected[0])
