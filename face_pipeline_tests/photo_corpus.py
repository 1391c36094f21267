"""Builds folders of real and deliberately broken photos for ingest tests (never kept in the repo)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def copy_people(source: Path, target: Path, *, people: int, photos_each: int) -> list[Path]:
    """Copy `photos_each` photos of the first `people` identities that have that many."""
    copied: list[Path] = []
    for person in sorted(p for p in source.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) < photos_each:
            continue
        (target / person.name).mkdir(parents=True, exist_ok=True)
        for photo in photos[:photos_each]:
            copied.append(Path(shutil.copy(photo, target / person.name / photo.name)))
        if len(copied) >= people * photos_each:
            break
    return copied


def copy_mini_library(lfw_mini: Path, photos: Path, *, photos_each: int = 6) -> None:
    """lfw-mini as a library: its 12 people (`photos_each` photos each, the rest held back as later
    arrivals) under people/, its one-photo strangers under strangers/."""
    copy_people(lfw_mini, photos / "people", people=12, photos_each=photos_each)
    for stranger in sorted(p for p in lfw_mini.iterdir() if len(list(p.glob("*.jpg"))) == 1):
        shutil.copytree(stranger, photos / "strangers" / stranger.name)


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height pixels: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    data = zlib.compress(row * 4, 9)  # a few rows: enough to look real, tiny on disk
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def write_bad_inputs(folder: Path, real_photo: Path) -> dict[str, str]:
    """Files that must be skipped, each mapped to a word its skip reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = real_photo.read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.png").write_text("this is a text file with a photo's name\n")
    (folder / "noise.jpeg").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "bomb.png").write_bytes(huge_png_header(40_000, 40_000))
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncat",
        "notes.png": "not an image|cannot identify|unrecognised|unknown",
        "noise.jpeg": "not an image|cannot identify|unrecognised|unknown|corrupt",
        "bomb.png": "pixels|too large|decompression",
    }


def write_odd_but_valid(folder: Path, real_photo: Path) -> list[str]:
    """Real faces saved in modes and formats a library contains: all must be processed."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(real_photo).convert("RGB")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("L").save(folder / "grey.png")
    alpha = rgb.convert("RGBA")
    alpha.putalpha(200)
    alpha.save(folder / "alpha.png")
    sixteen = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")  # 16-bit greyscale
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], duration=100)
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif.tobytes())
    (folder / "rotated.JPG").write_bytes(buffer.getvalue())
    rgb.save(folder / "plain.bmp")
    rgb.save(folder / "scan.tiff")
    return [
        "cmyk.jpg",
        "grey.png",
        "alpha.png",
        "sixteen.png",
        "animated.webp",
        "rotated.JPG",
        "plain.bmp",
        "scan.tiff",
    ]
