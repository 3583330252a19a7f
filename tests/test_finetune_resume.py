"""Kill a training mid-way, resume it, and check that nothing was lost or repeated."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_edgeft, write_digits


def test_killed_training_resumes_from_last_epoch(tmp_path: Path) -> None:
    data = write_digits(tmp_path / "data", per_class=30)
    out = tmp_path / "run"
    args = ["finetune", str(data), "--weights", "none", "--alpha", "0.35", "--image-size", "32",
            "--epochs", "6", "--patience", "0", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "edgeft", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    state_path = out / ".checkpoints" / "state.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if state_path.exists():
                done = json.loads(state_path.read_text())["phases"][0]["epochs_done"]
                if done >= 2:
                    break
            if process.poll() is not None:
                raise AssertionError(f"training ended before it could be killed: {process.stderr.read()}")
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (out / "edgeft.json").exists() and not (out / "model.keras").exists()
    killed_at = json.loads(state_path.read_text())["phases"][0]["epochs_done"]
    assert 2 <= killed_at < 6

    refused = run_edgeft(*args)
    assert refused.exit_code == 2
    assert refused.stderr.strip().endswith("holds an unfinished run; pass --resume to continue it or --force to start over")

    changed = run_edgeft(*[a if a != "6" else "7" for a in args], "--resume")
    assert changed.exit_code == 2 and "options or data differ" in changed.stderr
    assert "--epochs (was 6, now 7)" in changed.stderr and "hyperparameters" not in changed.stderr

    damaged = tmp_path / "damaged-run"
    shutil.copytree(out, damaged)
    (damaged / ".checkpoints" / "phase0_last.h5").write_bytes(b"not a checkpoint")
    unreadable = run_edgeft(*[a if a != str(out) else str(damaged) for a in args], "--resume")
    assert unreadable.exit_code == 2, unreadable.stderr
    assert unreadable.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot resume: checkpoint {damaged / '.checkpoints' / 'phase0_last.h5'} is unreadable (")
    assert "Traceback" not in unreadable.stderr

    resumed = run_edgeft(*args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"{killed_at} epoch(s) already done" in resumed.stderr
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads(resumed.stdout)["epochs"] == {"scratch": 6}
    assert (out / "edgeft.json").exists() and not (out / ".checkpoints").exists()


def test_resume_without_checkpoint_is_refused(tmp_path: Path) -> None:
    data = write_digits(tmp_path / "data", per_class=3, classes=2)
    result = run_edgeft("finetune", str(data), "--weights", "none", "--resume", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: nothing to resume in {tmp_path / 'run'}: no checkpoint found; run without --resume"
