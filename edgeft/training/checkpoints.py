"""Per-epoch checkpoints inside the run directory, so that ``--resume`` continues an interrupted run.

``RUN_DIR/.checkpoints/`` holds ``state.json`` (phases done, epochs done per phase, early-stopping
state, history rows) and weight files. Every file is written atomically and ``state.json``
last, so a kill at any instant leaves a consistent checkpoint of the last completed epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeft.errors import RunDirError, first_line
from edgeft.fileio import atomic_path, write_json_atomic


@dataclass
class PhaseState:
    name: str
    epochs_done: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    wait: int = 0
    finished: bool = False
    wall_s: float = 0.0


@dataclass
class TrainingState:
    """Mutable progress of a run, mirrored to ``state.json`` after every epoch."""

    fingerprint: dict[str, Any]
    phases: list[PhaseState] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class CheckpointStore:
    """Reads and writes ``RUN_DIR/.checkpoints``."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir) / ".checkpoints"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def weights_path(self, phase: int, kind: str) -> Path:
        """``kind``: "last", "best" (during a phase) or "final" (phase finished; full model).

        Legacy HDF5 (``.h5``, not ``.weights.h5``): Keras' newer weights format fails to load into
        a model under MirroredStrategy (it assigns h5py datasets to sync-on-read metric variables).
        """
        return self.root / f"phase{phase}_{kind}.h5"

    def features_path(self, split: str) -> Path:
        return self.root / f"features_{split}.npy"

    def load(self) -> TrainingState:
        try:
            data = json.loads(self.state_path.read_text("utf-8"))
            phases = [PhaseState(**p) for p in data["phases"]]
            return TrainingState(data["fingerprint"], phases, data.get("history", []))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"cannot resume: checkpoint state {self.state_path} is unreadable ({error}); "
                              "start over with --force") from None

    def save(self, state: TrainingState) -> None:
        payload = {
            "fingerprint": state.fingerprint,
            "phases": [_finite(asdict(p)) for p in state.phases],
            "history": state.history,
        }
        write_json_atomic(self.state_path, payload)

    def save_weights(self, model: Any, path: Path) -> None:
        with atomic_path(path) as temp:
            model.save_weights(str(temp))

    def load_weights(self, model: Any, path: Path) -> None:
        """Load a checkpoint into ``model`` (a Keras model or the cached top's trainer).

        A file that is damaged, or was written in another layout (an older edgeft kept the cached top in
        HDF5), is one RunDirError naming it: the run cannot continue from it.
        """
        try:
            model.load_weights(str(path))
        except Exception as error:  # noqa: BLE001 - h5py, numpy and Keras each raise their own kinds
            raise RunDirError(f"cannot resume: checkpoint {path} is unreadable ({first_line(error)}); "
                              "start over with --force") from None


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("best_val_loss") == math.inf:
        record["best_val_loss"] = 1e300
    return record


def make_epoch_callback(
    store: CheckpointStore,
    state: TrainingState,
    phase_index: int,
    model: Any,
    patience: int,
    on_epoch: Any,
) -> Any:
    """A Keras callback: after each epoch, record history, keep best/last weights, early-stop."""
    from edgeft.tfcompat import keras

    phase = state.phases[phase_index]

    class EpochCheckpoint(keras().callbacks.Callback):  # type: ignore[misc, name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = dict(logs or {})
            row = {"phase": phase.name, "epoch": epoch + 1}
            row.update({key: round(float(value), 6) for key, value in logs.items()})
            state.history.append(row)
            val_loss = float(logs.get("val_loss", math.inf))
            if val_loss < phase.best_val_loss - 1e-6:
                phase.best_val_loss = val_loss
                phase.best_epoch = epoch + 1
                phase.wait = 0
                store.save_weights(model, store.weights_path(phase_index, "best"))
            else:
                phase.wait += 1
            store.save_weights(model, store.weights_path(phase_index, "last"))
            phase.epochs_done = epoch + 1
            if patience > 0 and phase.wait >= patience:
                self.model.stop_training = True
            store.save(state)
            on_epoch(row)

    return EpochCheckpoint()
