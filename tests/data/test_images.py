"""The one image decoder: odd encodings decode to the right pixels; bad files are named, all at once."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unmask.data.images import BadImagesError, ImageError, check_images, image_header, open_rgb, read_image


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of ``pixels`` (uint16, (H, W) gray or (H, W, C) gray+alpha, RGB, RGBA),
    written by hand: PIL cannot write 16-bit colour PNGs."""
    pixels = np.asarray(pixels, dtype=">u2")
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


GRADIENT = np.linspace(0, 65535, 8 * 32).reshape(8, 32).round().astype(np.uint16)
EXPECTED = (GRADIENT.astype(np.int64) * 255 + 32767) // 65535  # the nearest 8-bit values


def test_a_16_bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(GRADIENT).save(path)  # PIL writes uint16 arrays as 16-bit grayscale
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.shape == (3, 8, 32)
    assert np.array_equal(image[0].numpy(), EXPECTED) and (image[0] == image[2]).all()
    assert image.min() == 0 and image.max() == 255 and (image < 255).float().mean() > 0.9  # a gradient, not white
    write_png16(tmp_path / "by-hand.png", GRADIENT)  # the same through another encoder
    assert np.array_equal(read_image(tmp_path / "by-hand.png")[0].numpy(), EXPECTED)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_pngs_keep_their_gradient(tmp_path: Path, channels: int) -> None:
    path = tmp_path / f"colour{channels}.png"
    write_png16(path, np.repeat(GRADIENT[..., None], channels, axis=2))
    image = read_image(path).numpy()
    # PIL keeps the high byte of each 16-bit sample: within one level of rounding
    assert np.abs(image[0].astype(int) - EXPECTED).max() <= 1 and image.max() >= 254


def test_a_32_bit_integer_image_of_16_bit_values_is_scaled_and_a_float_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(GRADIENT.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.array_equal(read_image(path)[1].numpy(), EXPECTED)
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(wide)
    with pytest.raises(ImageError, match=r"wide.tif: .*beyond 16 bits"):
        read_image(wide)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(floats)
    with pytest.raises(ImageError, match=r"float.tif: PIL mode 'F'"):
        read_image(floats)
    with pytest.raises(ImageError, match="float.tif"):
        image_header(floats)


def test_cmyk_grayscale_palette_and_a_png_named_jpeg_decode_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(rgb).save(tmp_path / "png-inside.JPEG", format="PNG")
    for name in ("cmyk.jpg", "gray.png", "palette.gif", "png-inside.JPEG"):
        image = read_image(tmp_path / name)
        assert image.shape == (3, 6, 10), name
        assert abs(int(image[0].float().mean()) - 200) <= 3, name
    assert image_header(tmp_path / "png-inside.JPEG") == (10, 6)


def test_the_header_check_reports_every_bad_file_at_once(tmp_path: Path) -> None:
    good = []
    for number in range(4):
        Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(tmp_path / f"good{number}.png")
        good.append(tmp_path / f"good{number}.png")
    assert check_images(good) == 4
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    bad = [tmp_path / "text.jpg", tmp_path / "missing.png", tmp_path / "empty.png"]
    with pytest.raises(BadImagesError) as raised:
        check_images(good + bad, where="the test split")
    assert [path for path, _ in raised.value.failures] == bad
    message = str(raised.value)
    assert message.startswith("3 of 7 image files of the test split cannot be used: ")
    assert f"{tmp_path / 'missing.png'}: does not exist" in message
    assert isinstance(raised.value, ValueError)
    with pytest.raises(BadImagesError, match=r"good0.png: is 7x5 pixels but the annotations say 5x7"):
        check_images(good[:1], sizes=[(5, 7)])


def test_many_bad_files_are_counted_and_the_first_five_named(tmp_path: Path) -> None:
    paths = [tmp_path / f"{number:02d}.png" for number in range(12)]
    with pytest.raises(BadImagesError) as raised:
        check_images(paths)
    message = str(raised.value)
    assert message.startswith("12 of 12 image files cannot be used:") and "; and 7 more." in message
    assert "04.png" in message and "05.png" not in message


def test_open_rgb_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"cannot decode image .*broken.png: .*Expected a JPEG, PNG"):
        open_rgb(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="image .*nothing.png does not exist"):
        open_rgb(tmp_path / "nothing.png")
