"""Safe loading: every broken file is rejected with a readable reason; every odd valid one becomes RGB."""

from __future__ import annotations

import io
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from face_pipeline.vision.images import ImageRejected, image_size, load_rgb
from face_pipeline_eval.main_face import main_face

LIMITS = {"max_pixels": 80_000_000, "max_bytes": 200 * 1024 * 1024}


@pytest.fixture(scope="module")
def face_photo(lfw_mini: Path) -> Path:
    return lfw_mini / "Andre_Agassi" / "Andre_Agassi_0001.jpg"


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: Callable[[], bytes] | None) -> bytes:
    """A PNG written chunk by chunk. `rows` gives one filtered row; None leaves the pixel data out."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = b""
    if rows is not None:
        packer = zlib.compressobj(9)
        row = rows()
        # Streamed: the bomb's 112 MB of raw zeros never sit in memory at once.
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _noise_png(side: int = 96) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _corrupt_png() -> bytes:
    data = bytearray(_noise_png())
    start = data.index(b"IDAT") + 20
    for k in range(start, start + 200):  # scramble compressed pixel data; chunk headers stay intact
        data[k] ^= 0x5A
    return bytes(data)


# --- broken files -------------------------------------------------------------------------------------

BAD_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # name: (bytes from the real JPEG -> file content, regex the reason must match)
    "empty.jpg": (lambda jpeg: b"", r"empty file \(0 bytes\)"),
    "truncated.jpg": (lambda jpeg: jpeg[: len(jpeg) * 6 // 10], r"truncated"),
    "truncated.png": (lambda jpeg: (png := _noise_png())[: len(png) * 6 // 10], r"truncated"),
    "corrupt.png": (lambda jpeg: _corrupt_png(), r"corrupt or unreadable"),
    "noise.jpg": (lambda jpeg: np.random.default_rng(0).bytes(4096), r"not an image"),
    "notes.png": (lambda jpeg: b"this is a text file with a photo's name\n", r"not an image"),
    # 30000 x 30000 pixels in ~110 KB: Pillow's own guard (2 x 89 M pixels) fires at open.
    "bomb.png": (lambda jpeg: _png(30_000, 30_000, 1, 0, lambda: bytes(1 + 3750)), r"decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_broken_file_is_rejected_with_a_reason(name: str, tmp_path: Path, face_photo: Path) -> None:
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make(face_photo.read_bytes()))
    with pytest.raises(ImageRejected, match=reason) as caught:
        load_rgb(path, **LIMITS)
    assert name in caught.value.reason and "\n" not in caught.value.reason


def test_too_many_pixels_is_rejected_from_the_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "poster.png"  # 6000 x 5000 = 30 M pixels: under Pillow's guard, over our limit
    path.write_bytes(_png(6000, 5000, 1, 0, lambda: bytes(1 + 750)))
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match=r"6000x5000 = 30\.0 M pixels, over the limit of 10\.0 M"):
        load_rgb(path, max_pixels=10_000_000, max_bytes=LIMITS["max_bytes"])
    assert time.perf_counter() - started < 0.5  # decoding 30 M pixels would take far longer


def test_decompression_bomb_is_rejected_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(30_000, 30_000, 1, 0, lambda: bytes(1 + 3750)))
    assert path.stat().st_size < 200_000
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match="decompression bomb"):
        load_rgb(path, **LIMITS)
    assert time.perf_counter() - started < 0.5


def test_file_over_max_bytes_is_rejected(face_photo: Path) -> None:
    with pytest.raises(ImageRejected, match=r"bytes, over the limit of 1,024 bytes"):
        load_rgb(face_photo, max_pixels=LIMITS["max_pixels"], max_bytes=1024)


def test_missing_file_and_folder_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="does not exist"):
        load_rgb(tmp_path / "gone.jpg", **LIMITS)
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(ImageRejected, match="not a regular file"):
        load_rgb(tmp_path / "album.jpg", **LIMITS)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_rejected(tmp_path: Path, face_photo: Path) -> None:
    path = tmp_path / "private.jpg"
    path.write_bytes(face_photo.read_bytes())
    path.chmod(0)
    with pytest.raises(ImageRejected, match="permission denied"):
        load_rgb(path, **LIMITS)


def test_truncated_file_is_rejected_even_when_pillow_was_told_to_pad(
    tmp_path: Path, face_photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some library may set ImageFile.LOAD_TRUNCATED_IMAGES; we still never return a half-grey photo."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "half.jpg"
    path.write_bytes(face_photo.read_bytes()[:5000])
    with pytest.raises(ImageRejected, match="truncated"):
        load_rgb(path, **LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the other library's choice is restored


# --- odd but valid files ------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def _assert_rgb(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.dtype == np.uint8 and pixels.shape == (height, width, 3) and pixels.flags.c_contiguous


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), tmp_path / "red.jpg", quality=95)
    pixels = load_rgb(path, **LIMITS)
    _assert_rgb(pixels, 48, 64)
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    assert red > 230 and green < 30 and blue < 30


def test_cmyk_photo_keeps_its_picture(tmp_path: Path, face_photo: Path) -> None:
    original = Image.open(face_photo).convert("RGB")
    pixels = load_rgb(_save(original.convert("CMYK"), tmp_path / "scan.jpg", quality=95), **LIMITS)
    assert np.abs(pixels.astype(int) - np.asarray(original, dtype=int)).mean() < 6


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "sixteen.png")
    assert Image.open(path).mode.startswith("I")
    pixels = load_rgb(path, **LIMITS)
    _assert_rgb(pixels, 3, 4)
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_16_bit_rgb_png_keeps_its_range(tmp_path: Path) -> None:
    samples = [0, 0, 0, 0x8000, 0x4000, 0xFFFF]  # two pixels, big-endian 16-bit per channel
    path = tmp_path / "deep.png"
    path.write_bytes(_png(2, 1, 16, 2, lambda: b"\x00" + struct.pack(">6H", *samples)))
    pixels = load_rgb(path, **LIMITS)
    _assert_rgb(pixels, 1, 2)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert np.abs(pixels[0, 1].astype(int) - [128, 64, 255]).max() <= 1


def test_greyscale_becomes_three_equal_channels(tmp_path: Path, face_photo: Path) -> None:
    grey = Image.open(face_photo).convert("L")
    pixels = load_rgb(_save(grey, tmp_path / "grey.png"), **LIMITS)
    _assert_rgb(pixels, 250, 250)
    assert (pixels[..., 0] == np.asarray(grey)).all() and (pixels[..., 2] == np.asarray(grey)).all()


def test_palette_png_gives_its_colours(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[:, 10:] = (30, 160, 90)
    palette = Image.fromarray(rgb).quantize(colors=4)
    pixels = load_rgb(_save(palette, tmp_path / "palette.png"), **LIMITS)
    _assert_rgb(pixels, 10, 20)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 15].tolist() == [30, 160, 90]


def test_transparent_palette_and_alpha_pngs_are_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 3, 4), dtype=np.uint8)
    rgba[:, 0] = (255, 0, 0, 0)  # invisible red
    rgba[:, 1] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 2] = (0, 0, 0, 128)  # half-transparent black
    pixels = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png"), **LIMITS)
    _assert_rgb(pixels, 4, 3)
    assert pixels[0].tolist() == [[255, 255, 255], [0, 0, 255], [127, 127, 127]]

    grey_alpha = Image.fromarray(np.stack([np.full((2, 2), 40, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert (load_rgb(_save(grey_alpha, tmp_path / "la.png"), **LIMITS) == 255).all()

    palette = Image.fromarray(rgba[..., :3]).quantize(colors=4)
    transparent_index = palette.getpixel((0, 0))
    path = _save(palette, tmp_path / "p_transparent.png", transparency=transparent_index)
    pixels = load_rgb(path, **LIMITS)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 1].tolist() == [0, 0, 255]


def test_animated_gif_and_webp_give_their_first_frame(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (16, 12), (255, 0, 0)), Image.new("RGB", (16, 12), (0, 0, 255))
    gif = _save(red, tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    webp = _save(red, tmp_path / "anim.webp", save_all=True, append_images=[blue], duration=100, lossless=True)
    for path in (gif, webp):
        assert getattr(Image.open(path), "n_frames", 1) == 2
        pixels = load_rgb(path, **LIMITS)
        _assert_rgb(pixels, 12, 16)
        assert pixels[6, 8].tolist() == [255, 0, 0], path.name


def _exif_rotated_jpeg(face_photo: Path, path: Path) -> np.ndarray:
    """Save a portrait crop stored sideways with EXIF orientation 6; return the upright pixels."""
    upright = Image.open(face_photo).convert("RGB").crop((25, 0, 225, 250))  # 200 wide x 250 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    return np.asarray(upright)


def test_exif_orientation_is_applied(tmp_path: Path, face_photo: Path) -> None:
    path = tmp_path / "rotated.jpg"
    upright = _exif_rotated_jpeg(face_photo, path)
    assert Image.open(path).size == (250, 200)  # stored sideways
    pixels = load_rgb(path, **LIMITS)
    _assert_rgb(pixels, 250, 200)
    assert np.abs(pixels.astype(int) - upright.astype(int)).mean() < 4
    assert image_size(path) == (200, 250)


def test_face_is_found_only_once_exif_orientation_is_applied(tmp_path: Path, face_photo: Path, dlib_embedder) -> None:
    path = tmp_path / "rotated.jpg"
    _exif_rotated_jpeg(face_photo, path)
    sideways = np.asarray(Image.open(path).convert("RGB"))
    assert dlib_embedder.detect_and_embed(sideways) == []  # the frontal detector needs an upright face
    faces = dlib_embedder.detect_and_embed(load_rgb(path, **LIMITS))
    assert len(faces) >= 1
    x, y, w, h = main_face(faces).bbox
    assert 40 < x + w / 2 < 160 and 70 < y + h / 2 < 180  # the face sits in the middle of the portrait


def test_image_size_reads_the_header_and_rejects_non_images(tmp_path: Path, face_photo: Path) -> None:
    assert image_size(face_photo) == (250, 250)
    bomb = tmp_path / "poster.png"
    bomb.write_bytes(_png(6000, 5000, 1, 0, None))  # header only: the size needs no pixel data
    assert image_size(bomb) == (6000, 5000)
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(ImageRejected, match=re.escape("notes.jpg is not an image")):
        image_size(tmp_path / "notes.jpg")
