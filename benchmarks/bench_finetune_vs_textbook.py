"""edgeft finetune --strategy head vs its limit and vs the textbook Keras transfer-learning loop.

Same data, backbone, weights, image size and epochs. The textbook loop is the Keras
tutorial's: ``image_dataset_from_directory``, a frozen base model called inside the
classifier, ``model.fit`` on images every epoch. edgeft decodes once, computes the frozen
features once and trains the head on them. Each side runs in its own child process (cold
caches, its own peak RSS); both clocks start after TensorFlow is imported and include
decoding, training, the final evaluation and saving.

The limit of a head run is one decode and one backbone pass over the train and val images:
edgeft's own ``timings`` (``decode`` + ``backbone_pass``, measured in the same process as its
wall time) give it, and the ratio wall / limit is the goal's figure (at most 1.5). Prints the
figures for each epoch count and writes benchmarks/results/finetune_vs_textbook.json.

The costs a run has whatever its size (building the model, saving it, plots) weigh most on a
small set: ``--views K`` runs on a set K times as large made of the same photos (each one also
saved as K - 1 crops of 60-95 % of its area, some mirrored; validation crops come from
validation photos only), to show how the ratio falls as the set grows.

    .venv/bin/python benchmarks/bench_finetune_vs_textbook.py [--epochs 10,30] [--image-size 224] [--views K]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import HYMENOPTERA as DATA
from _common import MOBILENET_035_WEIGHTS as WEIGHTS
from _common import ROOT as REPO

EDGEFT_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from edgeft.training.config import FinetuneConfig
from edgeft.training.finetune import main_finetune
from edgeft.tfcompat import keras
keras()  # both sides start their clocks with TensorFlow already imported
data, weights, out, epochs, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
start = time.perf_counter()
start_user = resource.getrusage(resource.RUSAGE_SELF).ru_utime
summary = main_finetune(FinetuneConfig.from_options(data_dir=Path(data), out_dir=Path(out), backbone="mobilenet_v2",
    alpha=0.35, image_size=size, weights=weights, strategy="head", epochs=epochs, patience=0, augment=False, seed=0))
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
# edgeft decodes while TensorFlow sets up in a thread, which slows decoding a little: decode again on
# its own (fresh cache) so that the limit can also be given without that overlap.
import os, tempfile
from edgeft.data.dataset import class_folder_files, decode_files
files = [p for split in ("train", "val") for p, _ in class_folder_files(Path(data) / split, ("ants", "bees"))]
with tempfile.TemporaryDirectory() as cache:
    os.environ["EDGEFT_CACHE_DIR"] = cache
    decode_start = time.perf_counter()
    decode_files(files, size, label="decoding again, alone")
    decode_alone = time.perf_counter() - decode_start
print(json.dumps({"images": len(files), "wall_s": wall, "user_s": usage.ru_utime - start_user, "val_accuracy": summary["val_accuracy"],
                  "peak_rss_mb": usage.ru_maxrss / 1024, "timings": summary["timings"], "decode_alone_s": decode_alone}))
"""

TEXTBOOK_CHILD = r"""
import json, os, resource, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import tf_keras as keras
start_user = resource.getrusage(resource.RUSAGE_SELF).ru_utime
data, weights, epochs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
start = time.perf_counter()
train = keras.utils.image_dataset_from_directory(data + "/train", image_size=(size, size), batch_size=32, seed=0)
val = keras.utils.image_dataset_from_directory(data + "/val", image_size=(size, size), batch_size=32, shuffle=False)
train = train.prefetch(tf.data.AUTOTUNE)
val = val.prefetch(tf.data.AUTOTUNE)
base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=weights, alpha=0.35)
base.trainable = False
inputs = keras.Input((size, size, 3))
x = keras.applications.mobilenet_v2.preprocess_input(inputs)
x = base(x, training=False)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(2, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, validation_data=val, epochs=epochs, verbose=0)
accuracy = model.evaluate(val, verbose=0)[1]
import tempfile
with tempfile.TemporaryDirectory() as folder:
    model.save(os.path.join(folder, "model.keras"))
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "user_s": usage.ru_utime - start_user, "val_accuracy": accuracy,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def _expanded_set(views: int, folder: Path) -> Path:
    """``DATA`` with each photo also saved as ``views - 1`` crops (seeded), in the same split and class."""
    import numpy as np
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    for photo in sorted(path for path in DATA.glob("*/*/*") if path.is_file()):
        split, label = photo.parent.parent.name, photo.parent.name
        target = folder / split / label
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target / photo.name)  # as it is, so that a file edgeft skips is still skipped
        try:
            with Image.open(photo) as opened:
                image = opened.convert("RGB")
        except OSError:
            continue
        width, height = image.size
        for view in range(1, views):
            side = float(np.sqrt(rng.uniform(0.6, 0.95)))
            crop_w, crop_h = max(1, int(width * side)), max(1, int(height * side))
            left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
            crop = image.crop((left, top, left + crop_w, top + crop_h))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            crop.save(target / f"{photo.stem}-view{view}.jpg", quality=92)
    return folder


def _child(code: str, *args: str, env: dict[str, str]) -> dict:
    completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _compare(data: Path, epochs: int, image_size: int, skip_textbook: bool) -> dict:
    """Both sides at ``epochs``, each child with its own empty decode cache."""
    with tempfile.TemporaryDirectory() as scratch:
        def env(name: str) -> dict[str, str]:
            return dict(os.environ, EDGEFT_CACHE_DIR=str(Path(scratch) / f"cache-{name}"), TF_CPP_MIN_LOG_LEVEL="3",
                        TF_USE_LEGACY_KERAS="1")

        edgeft = _child(EDGEFT_CHILD, str(data), str(WEIGHTS), str(Path(scratch) / "run"), str(epochs),
                        str(image_size), env=env("edgeft"))
        textbook = None if skip_textbook else _child(TEXTBOOK_CHILD, str(data), str(WEIGHTS), str(epochs),
                                                     str(image_size), env=env("textbook"))
    timings = edgeft["timings"]
    limit = timings["decode"] + timings["backbone_pass"]
    limit_alone = edgeft["decode_alone_s"] + timings["backbone_pass"]
    return {
        "epochs": epochs,
        "edgeft": edgeft,
        "textbook": textbook,
        "limit_s": limit,
        "ratio_to_limit": edgeft["wall_s"] / limit,
        "limit_with_decode_alone_s": limit_alone,
        "ratio_to_limit_with_decode_alone": edgeft["wall_s"] / limit_alone,
        "speedup_over_textbook": textbook["wall_s"] / edgeft["wall_s"] if textbook else None,
        "user_speedup_over_textbook": textbook["user_s"] / edgeft["user_s"] if textbook else None,
    }


def _views(text: str) -> int:
    """``--views``: a whole number, 1 (the set as it is) or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1 (1 = the set as it is)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="10,30", help="comma-separated epoch counts [10,30]")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-textbook", action="store_true", help="edgeft and its limit only")
    parser.add_argument("--views", type=_views, default=1, help="each photo K times (itself and K - 1 crops) [1]")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "finetune_vs_textbook.json")
    args = parser.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (the shared offline assets)")
    with tempfile.TemporaryDirectory() as scratch:
        data = DATA if args.views == 1 else _expanded_set(args.views, Path(scratch) / "data")
        runs = [_compare(data, int(epochs), args.image_size, args.skip_textbook) for epochs in args.epochs.split(",")]
    result = {
        "benchmark": "finetune_head_vs_limit_and_textbook",
        "dataset": "hymenoptera_data (245 train / 153 val)" if args.views == 1 else
                   f"hymenoptera_data, each photo and {args.views - 1} crops of it (see --views)",
        "backbone": "mobilenet_v2 alpha 0.35, ImageNet weights",
        "image_size": args.image_size,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "load_average_1min": os.getloadavg()[0]},
        "goal_ratio_to_limit": 1.5,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':<18}{'wall s':>8}{'user s':>8}{'val acc':>9}{'peak RSS MB':>13}")
    for run in runs:
        for name in ("edgeft", "textbook"):
            row = run[name]
            if row:
                print(f"{name + ' ' + str(run['epochs']) + ' ep':<18}{row['wall_s']:>8.1f}{row['user_s']:>8.1f}"
                      f"{row['val_accuracy']:>9.3f}{row['peak_rss_mb']:>13.0f}")
        textbook = (f", {run['speedup_over_textbook']:.1f}x faster than the textbook loop (user CPU "
                    f"{run['user_speedup_over_textbook']:.1f}x)" if run["textbook"] else "")
        print(f"{run['epochs']} epochs: {run['ratio_to_limit']:.2f}x the limit (decode + backbone pass "
              f"{run['limit_s']:.1f} s; goal <= 1.5x), {run['ratio_to_limit_with_decode_alone']:.2f}x with the "
              f"decode timed alone ({run['limit_with_decode_alone_s']:.1f} s){textbook}")
        print("  timings: " + ", ".join(f"{k} {v:.2f}" for k, v in run["edgeft"]["timings"].items()))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
