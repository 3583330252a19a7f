"""Decoding and discovery of real image files, good and bad (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HYMENOPTERA, require_shared, run_edgeft, write_shapes
from edgeft.data import SkipReason, decode_image, load_dataset
from edgeft.targets import ImageError, load_image


def _solid(mode: str, colour: object, size: tuple[int, int] = (20, 10)) -> Image.Image:
    return Image.new(mode, size, colour)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name,make",
    [
        ("a.jpg", lambda: _solid("RGB", (200, 10, 10))),
        ("a.png", lambda: _solid("RGB", (200, 10, 10))),
        ("a.bmp", lambda: _solid("RGB", (200, 10, 10))),
        ("a.webp", lambda: _solid("RGB", (200, 10, 10))),
        ("gray.png", lambda: _solid("L", 128)),
        ("palette.gif", lambda: _solid("RGB", (200, 10, 10)).convert("P")),
        ("rgba.png", lambda: _solid("RGBA", (200, 10, 10, 255))),
    ],
)
def test_formats_and_modes_decode_to_rgb(tmp_path: Path, name: str, make: object) -> None:
    path = tmp_path / name
    make().save(path)  # type: ignore[operator]
    pixels = decode_image(path, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    if name.startswith("gray"):
        assert np.all(np.abs(pixels.astype(int) - 128) <= 1)
    else:
        assert abs(int(pixels[8, 8, 0]) - 200) < 12 and pixels[8, 8, 2] < 30


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [_solid("RGB", (250, 0, 0)), _solid("RGB", (0, 0, 250))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixels = decode_image(path, 8)
    assert pixels[4, 4, 0] > 200 and pixels[4, 4, 2] < 50


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # A 40x20 image, left half red, right half blue, stored with EXIF "rotate 90 CW" (orientation 6).
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    pixels = decode_image(path, 20)
    # After rotating 90 degrees clockwise the red half is on top.
    assert pixels[2, 10, 0] > 180 and pixels[2, 10, 2] < 80
    assert pixels[17, 10, 2] > 180 and pixels[17, 10, 0] < 80


def test_la_and_cmyk_images_decode_to_their_rgb_values(tmp_path: Path) -> None:
    # LA: gray 100 at alpha 128 over white -> 100 * 128/255 + 255 * 127/255 = 177.2
    Image.new("LA", (12, 12), (100, 128)).save(tmp_path / "la.png")
    # CMYK (0, 255, 255, 0) is pure red; (0, 0, 0, 128) a mid gray
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)
    Image.new("CMYK", (12, 12), (0, 0, 0, 128)).save(tmp_path / "gray.tiff")
    expected = {"la.png": (177, 177, 177), "red.jpg": (255, 0, 0), "gray.tiff": (127, 127, 127)}
    for name, rgb in expected.items():
        pixels = decode_image(tmp_path / name, 8)
        assert np.abs(pixels.reshape(-1, 3).astype(int) - rgb).max() <= 2, (name, pixels[4, 4].tolist())


def test_runtime_decodes_sixteen_bit_files_and_images_as_training_does(tmp_path: Path) -> None:
    """One decoder: an app handing a 16-bit file, or the PIL image of one, gets training's pixels."""
    gradient = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "gray16.png")  # mode I;16
    training = decode_image(tmp_path / "gray16.png", 32)
    assert abs(int(training[..., 0].max()) - 255) <= 2 and int(training[..., 0].min()) <= 2  # not clipped to white
    np.testing.assert_array_equal(load_image(tmp_path / "gray16.png", (32, 32)), training)
    with Image.open(tmp_path / "gray16.png") as image:
        np.testing.assert_array_equal(load_image(image, (32, 32)), training)


def test_decoder_refusals_carry_a_reason_and_a_one_line_message(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    for path, reason in ((tmp_path / "empty.png", SkipReason.EMPTY), (tmp_path / "missing.png", SkipReason.UNREADABLE),
                         (tmp_path, SkipReason.UNREADABLE)):
        with pytest.raises(ImageError) as caught:
            decode_image(path, 16)
        assert caught.value.reason is reason
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        assert str(path) not in caught.value.detail  # the manifest lists the path separately


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", SkipReason.EMPTY),
        (b"this is a text file, not a photo\n", SkipReason.NOT_AN_IMAGE),
    ],
)
def test_bad_files_raise_with_reason(tmp_path: Path, content: bytes, reason: SkipReason) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        decode_image(path, 16)
    assert caught.value.reason is reason


def test_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "truncated.jpg"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as caught:
        decode_image(path, 16)
    assert caught.value.reason is SkipReason.TRUNCATED


def test_huge_image_decodes_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10000, 10000), (30, 160, 60)).save(path, quality=80)
    code = (
        "import resource, sys; from edgeft.data import decode_image; "
        f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; p = decode_image({str(path)!r}, 96); "
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "print(p.shape, p[48, 48].tolist(), (after - before) // 1024)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grown_mb = int(output[-1])
    # A full RGB decode would need 300 MB; JPEG draft decoding keeps it far below.
    assert grown_mb < 150, f"decoding a 10000x10000 JPEG grew RSS by {grown_mb} MB"
    assert "(96," in output[0]


def test_dataset_skips_and_reports_bad_files(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", per_class=10)
    (data / "disc" / "zero.jpg").write_bytes(b"")
    (data / "disc" / "notes.txt").write_text("not an image")
    good = next((data / "square").glob("*.jpg")).read_bytes()
    (data / "square" / "cut.jpg").write_bytes(good[: len(good) // 3])
    index, splits = load_dataset(data, 32, val_split=0.3, seed=1)
    reasons = sorted(s.reason for s in index.skipped)
    assert reasons == sorted([SkipReason.EMPTY.value, SkipReason.NOT_AN_IMAGE.value, SkipReason.TRUNCATED.value])
    assert len(splits["train"].samples) + len(splits["val"].samples) == 20
    # Stratified: both classes in both splits, 3 of 10 per class in val.
    assert sorted(np.bincount(splits["val"].labels).tolist()) == [3, 3]
    report = index.report(splits)
    assert report["skipped_by_reason"][SkipReason.EMPTY.value] == 1


def test_split_is_seeded_and_repeatable(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", per_class=10)
    first = load_dataset(data, 32, 0.3, seed=5)[1]["val"].samples
    again = load_dataset(data, 32, 0.3, seed=5)[1]["val"].samples
    other = load_dataset(data, 32, 0.3, seed=6)[1]["val"].samples
    assert first == again
    assert first != other


def test_hymenoptera_quirks_are_handled() -> None:
    root = require_shared(HYMENOPTERA)
    index, splits = load_dataset(root, 32)
    assert index.layout == "split_folders"
    used = {Path(s.path).name for s in splits["train"].samples}
    assert "formica.jpeg" in used  # the .jpeg suffix is a normal JPEG
    # The GIF placeholder decodes (palette -> RGB) or is reported; it never crashes the loader.
    placeholder = "imageNotFound.gif"
    assert placeholder in used or any(s.path.endswith(placeholder) for s in index.skipped)
    assert len(splits["val"].samples) == 153


# ---------------------------------------------------------------- errors through the CLI


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_single_class_is_a_one_line_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_shapes(data, per_class=3)
    import shutil

    shutil.rmtree(data / "square")
    before = _snapshot(data)
    result = run_edgeft("finetune", str(data), "--weights", "none", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: need at least 2 class folders in {data.resolve()}, found 1 (disc)"]
    assert "Traceback" not in result.stderr
    assert _snapshot(data) == before
    assert not (tmp_path / "run" / "edgeft.json").exists()


def test_class_without_usable_image_names_the_folder(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "data", per_class=3)
    for path in (data / "square").iterdir():
        path.write_bytes(b"")
    result = run_edgeft("finetune", str(data), "--weights", "none", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: class 'square' has no usable image in {(data / 'square').resolve()}"


def test_missing_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_edgeft("finetune", str(tmp_path / "nope"), "--weights", "none", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: data directory not found: {tmp_path / 'nope'}"
