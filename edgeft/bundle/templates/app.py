#!/usr/bin/env python3
"""Classify images with the bundled model and print one JSON line per image on stdout.

    python3 app.py INBOX_DIR          # classify the images there, then every new one (Ctrl-C stops)
    python3 app.py INBOX_DIR --once   # classify what is there and exit
    python3 app.py photo.jpg ...      # classify these files and exit
    python3 app.py --camera 0         # classify camera frames (needs opencv-python-headless)

Each line: {"file": ..., "top": [[label, score], ...]} or {"file": ..., "error": ...}; for a
camera {"frame": n, "top": [...]}. Only numpy, Pillow and the interpreter (requirements.txt)
are needed: the classifier comes from edgeft-device.pyz next to this file.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "edgeft-device.pyz"))

from edgeft_device.classifier import Classifier  # noqa: E402  (after the sys.path line above)
from edgeft_device.contract import DeviceError  # noqa: E402

MODEL = os.path.join(HERE, "@MODEL@")
LABELS = os.path.join(HERE, "labels.txt")  # optional: only for a model without edgeft metadata
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def emit(record):
    print(json.dumps(record), flush=True)


def classify_file(classifier, path, top_k):
    try:
        emit({"file": path, "top": classifier.classify(path, top_k)})
    except DeviceError as error:  # an unreadable image: say so and go on
        emit({"file": path, "error": str(error)})


def images_in(folder):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    return [os.path.join(folder, n) for n in names]


def watch_folder(classifier, folder, top_k, once, poll_s=1.0):
    seen = set()
    while True:
        for path in images_in(folder):
            if path not in seen:
                seen.add(path)
                classify_file(classifier, path, top_k)
        if once:
            return
        time.sleep(poll_s)


def watch_camera(classifier, index, top_k, once):
    try:
        import cv2
    except ImportError:
        sys.exit("error: --camera needs OpenCV: pip install opencv-python-headless")
    camera = cv2.VideoCapture(index)
    frame_number = 0
    try:
        while True:
            ok, frame = camera.read()
            if not ok:
                sys.exit("error: camera %d gave no frame" % index)
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # OpenCV frames are BGR; the model wants RGB
            emit({"frame": frame_number, "top": classifier.classify(rgb, top_k)})
            frame_number += 1
            if once:
                return
    finally:
        camera.release()


def main():
    parser = argparse.ArgumentParser(description="Classify images with the bundled model (JSON lines).")
    parser.add_argument("inputs", nargs="*", help="image files, or one folder to watch")
    parser.add_argument("--camera", type=int, default=None, help="OpenCV camera index (e.g. 0)")
    parser.add_argument("--once", action="store_true", help="classify what is there now, then exit")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    if args.camera is None and not args.inputs:
        parser.error("give image files, a folder, or --camera N")
    try:
        labels = LABELS if os.path.isfile(LABELS) else None
        classifier = Classifier.load(args.model, threads=args.threads, labels=labels)
    except DeviceError as error:
        sys.exit("error: %s" % error)
    try:
        if args.camera is not None:
            watch_camera(classifier, args.camera, args.top_k, args.once)
        elif len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
            watch_folder(classifier, args.inputs[0], args.top_k, args.once)
        else:
            for path in args.inputs:
                classify_file(classifier, path, args.top_k)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
