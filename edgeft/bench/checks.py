"""Host-side checks of the models given to ``edgeft bench`` and ``edgeft doctor``, before any target is contacted.

A damaged model file is the user's problem, not a target's: it is named by the user's path and
refused once (:class:`~edgeft.errors.CorruptModelError`, exit 10), not once per target and thread
count. An evaluation set whose classes do not fit a model's outputs is refused before anything
is measured (:class:`~edgeft.errors.EvalMismatchError`), unless its class names map onto the
model's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeft import targets as device
from edgeft.errors import CorruptModelError, EvalMismatchError, ModelFileError
from edgeft.targets import label_map  # the device's own matching, so both sides agree

TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class ModelFacts:
    """What the host learned about one model file: its class count (None when it could not load it here)."""

    path: Path
    outputs: int | None
    labels: tuple[str, ...]


def inspect_model(path: Path, sidecar: dict[str, Any] | None = None) -> ModelFacts:
    """Refuse a missing, empty or damaged model file; load it here when this host has its runtime.

    A model this host cannot run (no runtime installed, an Edge TPU model without the delegate, an
    op newer than the host's runtime) is left to the target to judge: only a file that no runtime
    could parse is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CorruptModelError(f"{path} is empty (0 bytes): export it again with `edgeft export`")
    if path.suffix == ".tflite":
        with path.open("rb") as handle:
            head = handle.read(8)
        if head[4:8] != TFLITE_IDENTIFIER:
            raise CorruptModelError(f"{path} is not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier): "
                                    "the file is damaged or not what its name says; export it again")
    labels = tuple(str(v) for v in ((sidecar or {}).get("labels") or []))
    outputs: int | None = None
    try:
        model = device.Model(str(path), sidecar, delegate="none")
        model.set_input(model.random_input())
        model.invoke()
        outputs = int(model.output().size)
    except device.ModelCorruptError as error:
        message = str(error)
        raise CorruptModelError(str(path) + message[len(path.name):] if message.startswith(path.name) else message
                                ) from None
    except (device.DeviceError, ValueError, RuntimeError):
        pass  # the target says what is wrong with it there
    return ModelFacts(path, outputs, labels)


def check_eval_fits(facts: ModelFacts, eval_names: Sequence[str], max_label: int, source: Path) -> None:
    """Refuse an evaluation set that cannot be scored against this model's outputs."""
    classes = len(facts.labels) or facts.outputs
    if classes is None:
        return
    if not eval_names:  # an .npz without class names: its labels must be output indices
        if max_label >= classes:
            raise EvalMismatchError(f"--eval {source} has label {max_label} but {facts.path.name} has only "
                                    f"{classes} outputs: evaluate it on a set with the model's classes")
        return
    if label_map(list(eval_names), list(facts.labels)) is not None:
        return  # the device maps the set's class names onto the model's labels
    if len(eval_names) != classes:
        shown = ", ".join(list(eval_names)[:6]) + (", ..." if len(eval_names) > 6 else "")
        labelled = f" and its labels do not include the set's class names ({shown})" if facts.labels else ""
        raise EvalMismatchError(f"--eval {source} has {len(eval_names)} classes but {facts.path.name} has "
                                f"{classes} outputs{labelled}: evaluate it on a set with the model's classes")
