"""Partial fine-tuning on cached frozen activations (edgeft) vs the same fine-tune as plain Keras.

Same data (hymenoptera, 245 train / 153 val), backbone (MobileNetV2 alpha 0.35, the shared
ImageNet weights), image size, blocks unfrozen (the top 3 and the trailing 1x1 conv, BatchNorm
frozen), learning rates, augmentation (horizontal flip) and epochs. Both first train the head
with the backbone frozen; the figure compared is the fine-tuning phase:

- edgeft: ``finetune --strategy partial``: the frozen part's outputs for the training and
  validation images come from the head phase's backbone pass; the fine-tune phase computes
  those of the flips (``activation_pass``), then trains only the top on the cached activations
  with one traced step, its frozen BatchNorms folded into the convolutions before them
  (``fine_tuning``).
- plain Keras: the whole model in ``fit`` every epoch on images with a RandomFlip layer in
  the input pipeline, as a user would write it.

Each side runs in its own child process (own peak RSS, own decode cache). Prints wall and
user CPU seconds, validation accuracy and peak RSS side by side, and writes
benchmarks/results/partial_cached.json, with each side's validation accuracy per fine-tune
epoch (edgeft keeps the epoch of lowest validation loss, the plain Keras loop its last).

    .venv/bin/python benchmarks/bench_partial_cached.py [--epochs 5] [--fine-tune-epochs 10] [--unfreeze 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import HYMENOPTERA as DATA
from _common import MOBILENET_035_WEIGHTS as WEIGHTS
from _common import ROOT as REPO

UNFREEZE = 3  # edgeft's default

EDGEFT_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from edgeft.training import finetune
from edgeft.training.config import FinetuneConfig
from edgeft.tfcompat import keras
keras()
data, weights, out, epochs, ft_epochs, size, unfreeze = sys.argv[1:8]
phase = {}
original = finetune._run_phase

def timed_phase(context, index, phase_plan, model):
    wall, user = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    original(context, index, phase_plan, model)
    phase[phase_plan.name] = {"wall_s": time.perf_counter() - wall,
                              "user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime - user}

finetune._run_phase = timed_phase
start = time.perf_counter()
summary = finetune.main_finetune(FinetuneConfig.from_options(data_dir=Path(data), out_dir=Path(out),
    backbone="mobilenet_v2", alpha=0.35, image_size=int(size), weights=weights, strategy="partial",
    unfreeze=int(unfreeze), epochs=int(epochs), fine_tune_epochs=int(ft_epochs), patience=0, augment=True,
    augmentation="flip", seed=0))
metrics = json.loads((Path(out) / "metrics.json").read_text())
import csv
curve = [round(float(row["val_accuracy"]), 4) for row in csv.DictReader((Path(out) / "history.csv").open())
         if row["phase"] == "fine_tune"]
print(json.dumps({"total_wall_s": time.perf_counter() - start, "val_accuracy": summary["val_accuracy"],
                  "fine_tune_val_accuracy_per_epoch": curve, "best_epoch": metrics["phases"][-1]["best_epoch"],
                  "fine_tune": phase["fine_tune"], "head": phase["head"], "timings": summary["timings"],
                  "evaluated_on": metrics["evaluated_on"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

KERAS_CHILD = r"""
import json, os, re, resource, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
import tf_keras as keras
data, weights, epochs, ft_epochs, size, unfreeze = sys.argv[1:7]
epochs, ft_epochs, size, unfreeze = int(epochs), int(ft_epochs), int(size), int(unfreeze)
keras.utils.set_random_seed(0)
start = time.perf_counter()
train = keras.utils.image_dataset_from_directory(data + "/train", image_size=(size, size), batch_size=32, seed=0)
val = keras.utils.image_dataset_from_directory(data + "/val", image_size=(size, size), batch_size=32, shuffle=False)
prep = keras.applications.mobilenet_v2.preprocess_input
flip = keras.layers.RandomFlip("horizontal", seed=0)
train_plain = train.map(lambda x, y: (prep(x), y)).cache().prefetch(tf.data.AUTOTUNE)
train_flip = train.map(lambda x, y: (prep(flip(x, training=True)), y)).prefetch(tf.data.AUTOTUNE)
val = val.map(lambda x, y: (prep(x), y)).cache().prefetch(tf.data.AUTOTUNE)
inputs = keras.Input((size, size, 3))
base = keras.applications.MobileNetV2(input_tensor=inputs, include_top=False, weights=weights, alpha=0.35)
x = keras.layers.GlobalAveragePooling2D()(base.output)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(2, activation="softmax")(x)
model = keras.Model(inputs, outputs)
for layer in base.layers:
    layer.trainable = False
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train_plain, validation_data=val, epochs=epochs, verbose=0)
# The top blocks (and the trailing Conv_1 that belongs to the last one), BatchNorm frozen.
blocks = sorted({int(m.group(1)) for l in base.layers if (m := re.match(r"block_(\d+)_", l.name))})
chosen = set(blocks[-unfreeze:])
in_top = False
for layer in base.layers:
    m = re.match(r"block_(\d+)_", layer.name)
    if m:
        in_top = int(m.group(1)) in chosen
    layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)
wall, user = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(train_flip, validation_data=val, epochs=ft_epochs, verbose=0)
fine_tune = {"wall_s": time.perf_counter() - wall, "user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime - user}
accuracy = model.evaluate(val, verbose=0)[1]
curve = [round(float(value), 4) for value in history.history["val_accuracy"]]
print(json.dumps({"total_wall_s": time.perf_counter() - start, "val_accuracy": accuracy, "fine_tune": fine_tune,
                  "fine_tune_val_accuracy_per_epoch": curve,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str, *args: str, env: dict[str, str]) -> dict:
    completed = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="head epochs (both sides)")
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--unfreeze", type=int, default=UNFREEZE, help="top blocks fine-tuned [3]")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "partial_cached.json")
    args = parser.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (the shared offline assets)")
    common = [str(args.epochs), str(args.fine_tune_epochs), str(args.image_size), str(args.unfreeze)]
    with tempfile.TemporaryDirectory() as scratch:
        def env(name: str) -> dict[str, str]:
            return dict(os.environ, EDGEFT_CACHE_DIR=str(Path(scratch) / f"cache-{name}"), TF_CPP_MIN_LOG_LEVEL="3",
                        TF_USE_LEGACY_KERAS="1")

        edgeft = _child(EDGEFT_CHILD, str(DATA), str(WEIGHTS), str(Path(scratch) / "run"), *common, env=env("e"))
        plain = _child(KERAS_CHILD, str(DATA), str(WEIGHTS), *common, env=env("k"))
    result = {
        "benchmark": "partial_finetune_cached_activations_vs_plain_keras",
        "dataset": "hymenoptera_data (245 train / 153 val)",
        "backbone": "mobilenet_v2 alpha 0.35, ImageNet weights",
        "image_size": args.image_size,
        "unfreeze": args.unfreeze,
        "head_epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        "augmentation": "horizontal flip",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "load_average_1min": os.getloadavg()[0]},
        "edgeft": edgeft,
        "plain_keras": plain,
        "fine_tune_speedup_wall": plain["fine_tune"]["wall_s"] / edgeft["fine_tune"]["wall_s"],
        "fine_tune_speedup_user": plain["fine_tune"]["user_s"] / edgeft["fine_tune"]["user_s"],
        "val_accuracy_difference_points": 100 * (edgeft["val_accuracy"] - plain["val_accuracy"]),
        "goal": {"speedup": 4.0, "accuracy_within_points": 1.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'fine-tune phase':<14}{'wall s':>9}{'user s':>9}{'val acc':>9}{'peak RSS MB':>13}")
    for name, row in (("edgeft", edgeft), ("plain Keras", plain)):
        print(f"{name:<14}{row['fine_tune']['wall_s']:>9.1f}{row['fine_tune']['user_s']:>9.1f}"
              f"{row['val_accuracy']:>9.3f}{row['peak_rss_mb']:>13.0f}")
    for name, row in (("edgeft", edgeft), ("plain Keras", plain)):
        print(f"{name} val accuracy per fine-tune epoch: {row['fine_tune_val_accuracy_per_epoch']}"
              + (f" (kept: epoch {row['best_epoch']})" if "best_epoch" in row else " (kept: the last)"))
    print(f"speed-up: {result['fine_tune_speedup_wall']:.1f}x wall, {result['fine_tune_speedup_user']:.1f}x user CPU "
          f"(goal >= 4x); accuracy difference {result['val_accuracy_difference_points']:+.1f} points "
          f"(goal within 1) -> {args.out}")


if __name__ == "__main__":
    main()
