"""Reading image files (`priorswap.images`): 16-bit and float images are scaled to 8 bits, transparent pixels
are composited onto the task's background, and a file over Pillow's decompression-bomb limit is a clear error
(review items 3, 4 and 21)."""

from __future__ import annotations

import numpy as np
import pytest
from clihelp import run_cli
from PIL import Image

from priorswap.errors import PriorswapError
from priorswap.images import check_image_file, load_image, open_image


@pytest.fixture
def gray() -> np.ndarray:
    """A 16×16 8-bit ramp over the whole range, 0 … 255."""
    return np.arange(256, dtype=np.uint8).reshape(16, 16)


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I", ".tif"), ("I", ".pgm"), ("F", ".tif")])
def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path, gray, mode, suffix):
    """The same picture saved with 16 bits (×257), as 32-bit integers holding 16-bit values, or as floats in
    [0, 1] reads as the 8-bit original, in every mode priorswap converts to (Pillow alone clips at 255)."""
    if mode == "F":
        img = Image.fromarray(gray.astype(np.float32) / 255)
    elif mode == "I":
        img = Image.fromarray(gray.astype(np.int32) * 257)
    else:
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    path = tmp_path / f"img{suffix}"
    img.save(path)
    with Image.open(path) as stored:
        assert stored.mode == mode
    for target in ("L", "RGB", None):
        read = np.asarray(open_image(path, target))
        expected = gray if target != "RGB" else np.repeat(gray[..., None], 3, -1)
        assert np.array_equal(read, expected), target
    assert load_image(path).min() == -1 and load_image(path).max() == 1


def test_integer_images_with_8_bit_values_stay_as_they_are(tmp_path, gray):
    Image.fromarray(gray.astype(np.int32)).save(tmp_path / "i8.tif")
    assert np.array_equal(np.asarray(open_image(tmp_path / "i8.tif", "L")), gray)


def test_values_that_fit_no_8_bit_range_are_refused(tmp_path, gray):
    Image.fromarray(gray.astype(np.int32) * 1000).save(tmp_path / "wide.tif")  # up to 255000 > 65535
    with pytest.raises(PriorswapError, match=r"wide.tif is a 32-bit integer image with values from 0 to 255000"):
        open_image(tmp_path / "wide.tif")
    Image.fromarray(gray.astype(np.float32) - 10).save(tmp_path / "neg.tif")
    with pytest.raises(PriorswapError, match=r"neg.tif is a floating-point image with values from -10 to 245"):
        open_image(tmp_path / "neg.tif")


def test_transparent_pixels_are_composited_onto_white_or_the_given_background(tmp_path, gray):
    """A white image whose shape lives in its alpha channel is not a white square: on white (the default,
    objects as Zero-1-to-3 takes them) it is dark where transparent; on black (the toy digits) it is the shape."""
    alpha = Image.fromarray(gray)
    rgba = Image.merge("RGBA", [Image.new("L", (16, 16), 255)] * 3 + [alpha])
    rgba.save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "rgba.png", "L", background=0)), gray)
    assert (np.asarray(open_image(tmp_path / "rgba.png", "L")) == 255).all()  # white on white
    black = Image.merge("RGBA", [Image.new("L", (16, 16), 0)] * 3 + [alpha])
    black.save(tmp_path / "black.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "black.png", "L")), 255 - gray)
    la = Image.merge("LA", [Image.new("L", (16, 16), 255), alpha])
    la.save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png", None).mode == "L"
    assert np.array_equal(np.asarray(open_image(tmp_path / "la.png", None, background=0)), gray)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)  # every pixel the transparent colour
    assert (np.asarray(open_image(tmp_path / "p.png", "L", background=0)) == 0).all()


def test_toy_sources_are_composited_onto_black(tmp_path, gray):
    """The toy digits are light on dark: a digit drawn in alpha reads as that digit, not as a white square."""
    from priorswap.plugins.toy.tasks import ToyEditTask, ToyViewTask, load_png

    Image.merge("RGBA", [Image.new("L", (16, 16), 255)] * 3 + [Image.fromarray(gray)]).save(tmp_path / "d.png")
    Image.fromarray(gray).save(tmp_path / "plain.png")
    assert np.allclose(load_png(tmp_path / "d.png"), load_png(tmp_path / "plain.png"))
    assert ToyViewTask.image_background == ToyEditTask.image_background == 0


def test_an_image_over_the_decompression_bomb_limit_is_a_clear_error(tmp_path, gray, monkeypatch, capsys):
    """Pillow raises DecompressionBombError (not an OSError) past twice MAX_IMAGE_PIXELS: the file, its pixel
    count and what to do are named, for task inputs (`sample --image`) as for any image read."""
    Image.fromarray(gray).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 256 pixels > 2 × 100
    with pytest.raises(ValueError, match=r"big.png is too large \(256 pixels; Pillow refuses images over 200 pixels"):
        check_image_file(tmp_path / "big.png")
    with pytest.raises(PriorswapError, match=r"big.png is too large .*downscale it first"):
        open_image(tmp_path / "big.png")
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-view", "--image", str(tmp_path / "big.png"),
                           "--angle", "10", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert code == 2 and "big.png is too large" in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "s.png").exists()
