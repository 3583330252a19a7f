"""edgeft.runtime.Classifier: Google's int8 MobileNetV2 (a model edgeft did not make) and edgeft's own exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from export_helpers import mobilenet_run, session_export

from conftest import SHARED, pillow_two_passes

MODELS = SHARED / "models"
MODEL = MODELS / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
LABELS = MODELS / "imagenet_labels.txt"
CATS = ("Egyptian cat", "tabby, tabby cat", "tiger cat")
needs_google = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _cat() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(MODELS / "cat.bmp").convert("RGB"))


# --------------------------------------------------------------------------- a foreign model
@needs_google
def test_google_model_cat_and_macaw_with_labels_file() -> None:
    from edgeft.runtime import Classifier

    with Classifier.load(MODEL, labels=LABELS) as classifier:
        cat = classifier.classify(MODELS / "cat.bmp", top_k=3)
        macaw = classifier.classify(str(MODELS / "parrot.jpg"), top_k=3)
    assert cat[0][0] in CATS and 0.3 < cat[0][1] <= 1.0
    assert macaw[0][0] == "macaw" and macaw[0][1] > 0.5
    assert classifier.metadata_source == "arguments"
    from edgeft.errors import ModelFileError

    with pytest.raises(ModelFileError, match="is closed"):
        classifier.classify(MODELS / "cat.bmp")


@needs_google
def test_path_pil_and_array_give_the_same_answer() -> None:
    from PIL import Image

    from edgeft.runtime import Classifier

    classifier = Classifier.load(MODEL, labels=LABELS)
    by_path = classifier.scores(MODELS / "cat.bmp")
    with Image.open(MODELS / "cat.bmp") as image:
        by_pil = classifier.scores(image)
    np.testing.assert_array_equal(by_path, by_pil)
    np.testing.assert_array_equal(by_path, classifier.scores(_cat()))
    # grayscale and RGBA arrays are converted, not refused
    gray = _cat().mean(axis=2).astype(np.uint8)
    assert classifier.classify(gray, top_k=1)[0][0]
    rgba = np.dstack([_cat(), np.full(_cat().shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(classifier.scores(rgba), by_path)
    assert [r[0][0] for r in classifier.classify_batch([_cat(), MODELS / "parrot.jpg"], top_k=1)][1] == "macaw"


@needs_google
def test_sidecar_labels_and_float_preprocessing(tmp_path: Path) -> None:
    from edgeft.runtime import Classifier

    model = tmp_path / "model_int8.tflite"
    model.write_bytes(MODEL.read_bytes())
    (tmp_path / "model_int8.tflite.json").write_text(json.dumps({
        "labels": LABELS.read_text().splitlines(), "input_size": 224,
        "preprocessing": {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3, "channel_order": "RGB"}}))
    classifier = Classifier.load(model)
    assert classifier.metadata_source == "sidecar"
    assert classifier.classify(_cat(), top_k=1)[0][0] in CATS


@needs_google
def test_threads_get_the_single_thread_answers() -> None:
    from edgeft.runtime import Classifier

    classifier = Classifier.load(MODEL, labels=LABELS)
    rng = np.random.default_rng(0)
    images = [_cat()] + [rng.integers(0, 256, (120 + 7 * i, 160, 3), dtype=np.uint8) for i in range(7)]
    expected = [classifier.scores(image) for image in images]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(3):
                for index in range(len(images)):
                    k = (index + worker) % len(images)
                    results[(worker, round_ * 100 + k)] = (k, classifier.scores(images[k]))  # type: ignore[assignment]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 8 * 3 * len(images)
    for k, scores in results.values():  # type: ignore[misc]
        np.testing.assert_array_equal(scores, expected[k])


@needs_google
def test_bad_images_are_one_line_errors(tmp_path: Path) -> None:
    from edgeft.errors import ImageError, UsageError
    from edgeft.runtime import Classifier

    classifier = Classifier.load(MODEL, labels=LABELS)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    cases = {
        "float": np.zeros((4, 4, 3), np.float32), "shape": np.zeros((4, 4, 2), np.uint8),
        "zero": np.zeros((0, 0, 3), np.uint8), "empty": tmp_path / "empty.jpg", "text": tmp_path / "text.jpg",
        "missing": tmp_path / "nope.png", "folder": tmp_path, "object": object(),
    }
    for name, image in cases.items():
        with pytest.raises(ImageError) as caught:
            classifier.classify(image)
        assert isinstance(caught.value, UsageError)
        assert "\n" not in str(caught.value), name
    assert "0x0" in _message(classifier, cases["zero"])
    assert "uint8" in _message(classifier, cases["float"])
    assert "empty" in _message(classifier, cases["empty"])


def _message(classifier: object, image: object) -> str:
    try:
        classifier.classify(image)  # type: ignore[attr-defined]
    except Exception as error:  # noqa: BLE001
        return str(error)
    return ""


@needs_google
def test_bad_models_and_labels_are_one_line_errors(tmp_path: Path) -> None:
    from edgeft.errors import ModelFileError, UsageError
    from edgeft.runtime import Classifier

    (tmp_path / "empty.tflite").write_bytes(b"")
    (tmp_path / "junk.tflite").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "model.txt").write_bytes(MODEL.read_bytes())
    for name, fragment in [("nope.tflite", "not found"), ("empty.tflite", "empty"), ("junk.tflite", "junk.tflite"),
                           ("junk.onnx", "junk.onnx"), ("model.txt", "unsupported")]:
        with pytest.raises(ModelFileError, match=fragment) as caught:
            Classifier.load(tmp_path / name)
        assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="not found|No such"):
        Classifier.load(MODEL, labels=tmp_path / "labels.txt")
    with pytest.raises(UsageError, match="folder"):
        Classifier.load(MODEL, labels=tmp_path)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(UsageError, match="3 labels for a model with 1001 outputs"):
        Classifier.load(MODEL, labels=tmp_path / "three.txt")


def test_foreign_float_model_warns_once_about_the_convention(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgeft.runtime import Classifier

    # a float model that averages each channel: (1, 8, 8, 3) -> (1, 3)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)], "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = Classifier.load(path, labels=["r", "g", "b"])
    assert len(caught) == 1 and "pixel / 127.5 - 1" in str(caught[0].message)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(classifier.scores(red), [1.0, -1.0, -1.0], atol=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explicit = Classifier.load(path, labels=["r", "g", "b"], scale=1 / 255, offset=0.0)
    assert not caught
    np.testing.assert_allclose(explicit.scores(red), [1.0, 0.0, 0.0], atol=1e-6)


def test_runtime_does_not_import_tensorflow_keras_or_click() -> None:
    model = MODEL if MODEL.is_file() else None
    code = ("import sys; from edgeft.runtime import Classifier\n"
            + (f"c = Classifier.load({str(model)!r})\nimport numpy as np; c.classify(np.zeros((9, 9, 3), np.uint8))\n"
               if model else "")
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_resize_runs_the_horizontal_pass_first_under_any_pillow() -> None:
    """Pillow 13 runs the vertical pass first when the height shrinks much more than the width; Pillow 12 (on the
    Pi profiles) never does, and the order shows in the pixels. edgeft's resize is Pillow 12's under either."""
    from PIL import Image

    from edgeft.targets.images import load_image

    rng = np.random.default_rng(6)
    portrait = rng.integers(0, 256, (1322, 630, 3), dtype=np.uint8)
    landscape = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for frame in (portrait, landscape):
        reference = np.asarray(pillow_two_passes(Image.fromarray(frame), 224, 224))
        np.testing.assert_array_equal(load_image(frame, (224, 224)), reference)
    one_call = np.asarray(Image.fromarray(landscape).resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=3.0))
    np.testing.assert_array_equal(load_image(landscape, (224, 224)), one_call)
    one_call = np.asarray(Image.fromarray(portrait).resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=3.0))
    pillow_major = int(Image.__version__.split(".")[0])
    assert np.array_equal(load_image(portrait, (224, 224)), one_call) == (pillow_major < 13), Image.__version__


def test_resize_in_bands_gives_the_pixels_of_one_resize() -> None:
    """``threads`` > 1 resizes column bands of a repeated frame size at once: the pixels must be the one-piece
    resize's, bit for bit, for camera sizes, portrait ones and Pillow's box reduction (scale >= 3); sizes that
    cannot be banded exactly fall back to one piece."""
    from PIL import Image

    from edgeft.targets import images
    from edgeft.targets.images import load_image

    rng = np.random.default_rng(3)
    banded = [((480, 640), (224, 224)), ((720, 1280), (224, 224)), ((1080, 1920), (224, 224)),
              ((3040, 4056), (224, 224)), ((2464, 3280), (224, 224)), ((640, 480), (224, 224)), ((600, 800), (96, 96)),
              ((1322, 630), (224, 224))]
    whole = [((479, 641), (96, 96)), ((333, 1001), (96, 128)), ((2464, 3281), (224, 224))]  # 3281 / 4: no exact edge
    for (height, width), (out_h, out_w) in banded + whole:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frame[: height // 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]  # smooth half: rounding shows
        reference = np.asarray(pillow_two_passes(Image.fromarray(frame), out_w, out_h))
        _, box = images._reduce_as_pillow_does(Image.fromarray(frame), out_w, out_h)
        splits = images._band_edges(box[0], out_w, 2) is not None
        assert splits == (((height, width), (out_h, out_w)) in banded), (width, height)
        for threads in (2, 3, 4):
            for _ in range(2):  # the first sighting of a size is resized in one piece, the next in bands
                np.testing.assert_array_equal(load_image(frame, (out_h, out_w), threads=threads), reference,
                                              err_msg=f"{width}x{height} -> {out_w}x{out_h}, {threads} threads")
    assert images._band_edges(224.0, 224, 1) is None  # one thread: one piece


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_banded_resize_works_in_a_forked_child() -> None:
    """A web server forks its workers after the app loaded (and maybe classified): the child's resize must not
    wait for the parent's pool threads, which a fork does not copy."""
    import multiprocessing

    from edgeft.targets.images import load_image

    frame = np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = load_image(frame, (224, 224))
    for _ in range(2):
        load_image(frame, (224, 224), threads=2)  # the second call resizes in bands: the pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pixels = pool.apply_async(load_image, (frame, (224, 224), 2)).get(timeout=60)
    np.testing.assert_array_equal(pixels, expected)


@needs_google
def test_classifier_threads_share_the_resize_with_the_same_pixels() -> None:
    from edgeft.runtime import Classifier

    frame = np.random.default_rng(4).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with Classifier.load(MODEL, labels=LABELS) as one, Classifier.load(MODEL, labels=LABELS, threads=2) as two:
        for _ in range(2):  # a size's first sighting is resized in one piece, the next in bands
            np.testing.assert_array_equal(two.pixels(frame), one.pixels(frame))
        np.testing.assert_allclose(two.scores(frame), one.scores(frame), atol=1e-6)


def _pillow_reference(path: Path, size: int) -> np.ndarray:
    """Training's decoding written out with plain Pillow calls: draft-decode JPEGs at twice the target,
    first frame, upright by EXIF, transparency over white, RGB, bilinear resize (reducing gap 3, horizontal pass
    first)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (2 * size, 2 * size))
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
        image = image.convert("RGB")
        if image.size != (size, size):
            image = pillow_two_passes(image, size, size)
        return np.asarray(image)


def test_runtime_and_training_decode_files_as_plain_pillow_does(tmp_path: Path) -> None:
    """The one decoder (runtime ``load_image``, training ``decode_image``) gives the pixels of the plain Pillow
    steps, file for file: a change of resize or colour handling fails here before it reaches a device."""
    from PIL import Image

    from edgeft.data.images import decode_image
    from edgeft.targets.images import load_image

    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (900, 1300, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=90)  # draft-mode decoding
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(photo[:300, :500]).save(tmp_path / "rotated.jpg", exif=exif)
    rgba = np.dstack([photo[:200, :150], rng.integers(0, 256, (200, 150), dtype=np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(photo[:50, :70, 0]).save(tmp_path / "gray.png")
    Image.fromarray(photo[:64, :64]).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(photo[:90, :90]).save(tmp_path / "small.bmp")
    for orientation in (3, 8):
        exif[0x0112] = orientation
        Image.fromarray(photo[:120, :80]).save(tmp_path / f"orientation{orientation}.jpg", exif=exif)
    files = sorted(tmp_path.iterdir())
    if MODELS.is_dir():
        files += [MODELS / "cat.bmp", MODELS / "parrot.jpg"]
    for path in files:
        for size in (32, 64, 224):
            reference = _pillow_reference(path, size)
            np.testing.assert_array_equal(load_image(path, (size, size)), reference, err_msg=str(path))
            np.testing.assert_array_equal(decode_image(path, size), reference, err_msg=str(path))
    # a caller's PIL image is read, never changed: an upright RGB one is not copied, so it must stay as it was
    with Image.open(tmp_path / "small.bmp") as image:
        image.load()
        pixels = load_image(image, (90, 90))
        pixels[:] = 0
        assert image.size == (90, 90) and np.array_equal(np.asarray(image), photo[:90, :90])
    with Image.open(tmp_path / "rotated.jpg") as image:
        before = np.asarray(image).copy()
        assert load_image(image, (500, 300)).shape == (500, 300, 3)  # the upright shape
        assert np.array_equal(np.asarray(image), before) and image.getexif().get(0x0112) == 6


# --------------------------------------------------------------------------- edgeft's own exports
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    run = mobilenet_run(tmp_path_factory)
    out, report = session_export(tmp_path_factory, run)
    return run, out, report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model_int8.tflite", "model_int8.onnx"])
def test_metadata_alone_gives_the_sidecar_answers(exported: tuple[Path, Path, dict], tmp_path: Path,
                                                   name: str) -> None:
    from edgeft.runtime import Classifier

    run, out, _ = exported
    alone = tmp_path / name
    shutil.copyfile(out / name, alone)  # only the model file: no sidecar
    images = _val_files(run)[:12]
    with_sidecar = Classifier.load(out / name)
    by_metadata = Classifier.load(alone)
    assert with_sidecar.metadata_source == "embedded" and by_metadata.metadata_source == "embedded"
    assert by_metadata.labels == tuple(json.loads((run / "edgeft.json").read_text())["class_names"])
    for image in images:
        np.testing.assert_array_equal(by_metadata.scores(image), with_sidecar.scores(image))
        assert by_metadata.classify(image, 2) == with_sidecar.classify(image, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model_int8.tflite", "model_int8.onnx"])
def test_corrupted_embedded_metadata_falls_back_to_the_sidecar(exported: tuple[Path, Path, dict], tmp_path: Path,
                                                               name: str) -> None:
    from edgeft.runtime import Classifier

    _, out, _ = exported
    data = (out / name).read_bytes()
    start = data.index(b'{"alpha"')  # the embedded JSON (sorted keys); same length keeps the container valid
    (tmp_path / name).write_bytes(data[:start] + b"#" + data[start + 1:])
    shutil.copyfile(out / (name + ".json"), tmp_path / (name + ".json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = Classifier.load(tmp_path / name)
    assert classifier.metadata_source == "sidecar"
    assert len(caught) == 1 and "corrupted embedded metadata" in str(caught[0].message)
    assert "its sidecar" in str(caught[0].message)
    assert classifier.labels == Classifier.load(out / name).labels


def _val_samples(run: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """The run's validation image files (absolute paths) with their class index, and the class names."""
    from edgeft.run.rundir import RunManifest

    manifest = RunManifest.from_dict(json.loads((run / "edgeft.json").read_text()))
    return [(s.path, s.label) for s in manifest.splits["val"]], list(manifest.class_names)


def _val_files(run: Path) -> list[str]:
    return [path for path, _ in _val_samples(run)[0]]


@pytest.mark.slow
def test_image_files_reproduce_the_export_accuracy(exported: tuple[Path, Path, dict]) -> None:
    from edgeft.data.images import decode_image
    from edgeft.runtime import Classifier

    run, out, report = exported
    samples, names = _val_samples(run)
    figures = {}
    for fmt, name in (("tflite", "model_int8.tflite"), ("onnx", "model_int8.onnx")):
        classifier = Classifier.load(out / name)
        hits = [classifier.classify(path, 1)[0][0] == names[label] for path, label in samples]
        # the scores of a file are those of training's decoded pixels, bit for bit
        size = classifier.input_size[0]
        for path, _ in samples[:6]:
            np.testing.assert_array_equal(classifier.scores(path), classifier.scores(decode_image(Path(path), size)))
        accuracy = float(np.mean(hits))
        expected = next(a["accuracy"] for a in report["artifacts"] if a["format"] == fmt and a["precision"] == "int8")
        figures[name] = (accuracy, expected)
        assert abs(accuracy - expected) <= 0.005, (name, accuracy, expected)
    print("image-file accuracy vs export report:", figures, f"({len(samples)} files)")


# --------------------------------------------------------------------------- pixels -> input by table
@pytest.mark.parametrize("dtype, quant", [("int8", (0.0078125, 0)), ("uint8", (0.02, 3)), ("float32", (0.0, 0)),
                                          ("float16", (0.0, 0))])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_input_table_gives_exactly_what_prepare_gives(dtype: str, quant: tuple, order: str, layout: str) -> None:
    from types import SimpleNamespace

    from edgeft.targets import Model
    from edgeft.targets.classifier import input_table

    model = Model.__new__(Model)  # the mapping only: no interpreter needed
    model.backend = SimpleNamespace(input_dtype=np.dtype(dtype), input_quant=quant, layout=layout,
                                    input_shape=[1, 40, 40, 3])  # backends give the shape as NHWC
    per_channel = {"scale": [0.017, 0.0175, 0.0174], "offset": [-2.1, -2.03, -1.8], "channel_order": order}
    same = {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3, "channel_order": order}
    images = np.random.default_rng(7).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    for prep in (per_channel, same):
        model.sidecar = {"preprocessing": prep}
        table = input_table(model)
        assert table is not None and (table.column is not None) == (prep is same)
        expected = model.prepare(images)
        got = table.lookup(images)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    model.sidecar = {}
    if dtype == "uint8" and layout == "NHWC":  # raw pixels are the input: no table, no copy
        assert input_table(model) is None
