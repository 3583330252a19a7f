"""Post-training int8 on fresh runs: nearest vs adaptive weight rounding, TFLite and ONNX, through the CLI.

For each evaluation set and seed: ``edgeft finetune --seed S`` (hymenoptera at 224 px with the shared
ImageNet MobileNetV2 0.35, head strategy; the same photos first downscaled to 128x128; scikit-learn's
digits at 32 px from scratch), then ``edgeft export --int8 --weight-rounding nearest|adaptive``. Every
figure is the export report's own (the artifact in the device layer on the val split's uint8 pixels).
Prints a table and writes ``benchmarks/results/int8_rounding.json``.

    .venv/bin/python benchmarks/bench_int8_rounding.py --sets hymenoptera-224 --seeds 0,1,2 --work /tmp/int8-rounding
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import HYMENOPTERA, MOBILENET_035_WEIGHTS, ROOT

SETS = ("hymenoptera-224", "hymenoptera-128", "digits-32")


def edgeft(*args: str) -> None:
    """Run the CLI in a child process; stop with its message on failure."""
    done = subprocess.run([sys.executable, "-m", "edgeft", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"edgeft {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


def data_for(name: str, work: Path) -> tuple[Path, list[str]]:
    """The data folder and finetune options of one evaluation set (written under ``work`` when needed)."""
    if name == "digits-32":
        from edgeft.demo import write_digits

        data = work / "data-digits"
        if not data.is_dir():
            write_digits(data)
        return data, ["--image-size", "32", "--weights", "none", "--strategy", "full", "--epochs", "30",
                      "--learning-rate", "2e-3", "--patience", "4"]
    options = ["--image-size", "224", "--weights", str(MOBILENET_035_WEIGHTS), "--strategy", "head"]
    if name == "hymenoptera-224":
        return HYMENOPTERA, options
    data = work / "data-photos128"
    if not data.is_dir():
        from PIL import Image, ImageOps

        for path in HYMENOPTERA.rglob("*"):
            if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                out = (data / path.relative_to(HYMENOPTERA)).with_suffix(".png")
                out.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(path) as image:
                    ImageOps.exif_transpose(image).convert("RGB").resize((128, 128), Image.BILINEAR).save(out)
    return data, options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs and exports")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_rounding.json")
    args = parser.parse_args()
    if not MOBILENET_035_WEIGHTS.is_file() or not HYMENOPTERA.is_dir():
        sys.exit(f"needs the shared offline assets ({MOBILENET_035_WEIGHTS}, {HYMENOPTERA})")
    rows = []
    for name in args.sets.split(","):
        data, options = data_for(name, args.work)
        for seed in (int(s) for s in args.seeds.split(",")):
            run = args.work / f"run-{name}-s{seed}"
            if not (run / "edgeft.json").is_file():
                edgeft("finetune", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", *options,
                       "--seed", str(seed), "--out", str(run))
            for rounding in ("nearest", "adaptive"):
                out = args.work / f"export-{name}-s{seed}-{rounding}"
                edgeft("export", str(run), "--int8", "--formats", "tflite,onnx", "--weight-rounding", rounding,
                       "--max-drop", "100", "--force", "--out", str(out))
                report = json.loads((out / "export_report.json").read_text("utf-8"))
                for row in report["artifacts"]:
                    if row["precision"] == "int8":
                        rows.append({"set": name, "seed": seed, "rounding": rounding, "format": row["format"],
                                     "keras_accuracy": report["keras_accuracy"], "accuracy": row["accuracy"],
                                     "drop_pts": row["accuracy_drop_pts"], "agreement": row["agreement"],
                                     "convert_s": row["convert_s"]})
                        print(f"{name:16s} seed {seed}  {row['format']:6s} {rounding:8s}  float "
                              f"{report['keras_accuracy']:.4f}  int8 {row['accuracy']:.4f}  drop "
                              f"{row['accuracy_drop_pts']:+.2f} pt  agreement {row['agreement']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n", "utf-8")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
