"""edgeft bench through a real OpenSSH server on loopback: end to end, and every fault."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sshd import ALIAS, sshd  # noqa: F401  (fixture)

from conftest import SHARED
MODEL = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models is absent (a user's checkout)")


def _cat_npz(path: Path) -> Path:
    from PIL import Image

    image = np.asarray(Image.open(SHARED / "models" / "cat.bmp").convert("RGB").resize((224, 224)))
    np.savez(path, images=image[None], labels=np.array([286]))  # 286 = "Egyptian cat"
    return path


def _edgeft(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, timeout=timeout)


def _ssh_args(config: Path, device: Path) -> list[str]:
    return ["--ssh-config", str(config), "--python", sys.executable, "--remote-tmpdir", str(device)]


def _leftovers(device: Path) -> list[str]:
    return [p.name for p in device.glob("edgeft-bench.*")] if device.exists() else []


def test_bench_ssh_and_local_concurrently_find_the_cat_and_clean_up(sshd, tmp_path):
    device = tmp_path / "device"
    out = tmp_path / "bench"
    result = _edgeft("bench", str(MODEL), "--target", ALIAS, "--target", "local", "--runs", "5", "--warmup", "1",
                     "--threads", "1", "--eval", str(_cat_npz(tmp_path / "cat.npz")),
                     *_ssh_args(sshd.client_config(), device), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {ALIAS, "local"}
    for row in rows.values():
        assert row["accuracy"] == 1.0 and row["error"] is None
        assert row["runtime"] == "ai-edge-litert" and row["emulated"] is False
        assert row["p50_ms"] > 0 and row["throughput_ips"] > 0 and row["peak_rss_mb"] > 0
    assert rows[ALIAS]["shares_cores_with"] == ["local"]
    assert any("share its cores" in w for w in report["warnings"])
    assert report["targets"][ALIAS]["device"]["python"]
    assert _leftovers(device) == []
    for name in ("bench.md", "bench.csv", "bench_latency_accuracy.png"):
        assert (out / name).stat().st_size > 0


def test_doctor_over_ssh_reports_the_device(sshd, tmp_path):
    result = _edgeft("doctor", "--target", ALIAS, str(MODEL), *_ssh_args(sshd.client_config(), tmp_path / "d"),
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["facts"]["numpy"] and report["facts"]["cores"] >= 1
    assert isinstance(report["facts"]["int8_isa"], list) and isinstance(report["facts"]["simd"], list)


@pytest.mark.parametrize("case, expected", [
    ("wrong_client_key", "authentication failed"),
    ("wrong_host_key", "host key has CHANGED"),
    ("unknown_host", "unknown host key"),
])
def test_ssh_faults_are_one_line_errors_with_exit_7(sshd, tmp_path, case, expected):
    if case == "wrong_client_key":
        stranger = tmp_path / "stranger_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
        config = sshd.client_config("cfg_" + case, identity=stranger)
    else:
        config = sshd.client_config("cfg_" + case, known_hosts="wrong" if case == "wrong_host_key" else "empty")
    device = tmp_path / "device"
    out = tmp_path / "bench"
    result = _edgeft("bench", str(MODEL), "--target", ALIAS, "--target", "local", "--runs", "2", "--warmup", "0",
                     "--threads", "1", *_ssh_args(config, device), "--out", str(out))
    assert result.returncode == 7, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]
    report = json.loads((out / "bench.json").read_text())
    measured = [r for r in report["rows"] if r["target"] == "local"]
    assert measured and measured[0]["mean_ms"] > 0, "results of the healthy target are kept"
    assert [r for r in report["rows"] if r["target"] == ALIAS][0]["error"]
    assert _leftovers(device) == []


def test_unknown_host_is_accepted_with_the_explicit_flag(sshd, tmp_path):
    config = sshd.client_config("cfg_new", known_hosts="empty")
    result = _edgeft("bench", str(MODEL), "--target", ALIAS, "--runs", "2", "--warmup", "0", "--threads", "1",
                     "--accept-new-host-key", *_ssh_args(config, tmp_path / "device"), "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert ALIAS in (sshd.root / "known_hosts_cfg_new").read_text()


def test_connection_refused_is_reported(tmp_path):
    from sshd import _free_port

    config = tmp_path / "cfg"
    config.write_text(f"Host refused\n  HostName 127.0.0.1\n  Port {_free_port()}\n")
    result = _edgeft("bench", str(MODEL), "--target", "refused", "--runs", "1", "--ssh-config", str(config),
                     "--out", str(tmp_path / "b"))
    assert result.returncode == 7
    assert "connection refused" in result.stderr.strip().splitlines()[-1]


def test_server_killed_mid_run_is_reported_and_the_device_dir_goes_away(sshd, tmp_path):
    device = tmp_path / "device"
    proc = subprocess.Popen([sys.executable, "-m", "edgeft", "bench", str(MODEL), "--target", ALIAS, "--duration",
                             "30", "--warmup", "0", "--threads", "1", *_ssh_args(sshd.client_config(), device),
                             "--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(device.glob("edgeft-bench.*/job-0.json")):
        time.sleep(0.1)
    assert list(device.glob("edgeft-bench.*/job-0.json")), "the runner never started"
    time.sleep(1.0)  # the runner's child is timing the model now
    sshd.kill()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 7, stderr
    assert "connection dropped" in stderr.strip().splitlines()[-1]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _leftovers(device):
        time.sleep(0.1)
    assert _leftovers(device) == [], "the runner removes its directory when its connection is gone"
