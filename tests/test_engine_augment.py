import torch

from msfer.engine.augment import BatchAugment, flip_permutation, mirror_boxes
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
