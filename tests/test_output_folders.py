"""Output folders: location checks, the OS lock between processes, and replacement only when complete."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeft.errors import OutputLockedError, OutputWriteError, UsageError
from edgeft.outputs import LOCK_FILE, OutputLock, check_output_location, open_output, write_failure

REPO = Path(__file__).resolve().parents[1]


def test_empty_out_is_refused() -> None:
    with pytest.raises(UsageError, match="--out is empty"):
        check_output_location("")


def test_out_inside_the_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    (data / "cats").mkdir(parents=True)
    with pytest.raises(UsageError, match="inside .*photos"):
        check_output_location(data / "run", inputs=[data])
    with pytest.raises(UsageError, match="inside"):
        check_output_location(data, inputs=[data])
    assert check_output_location(tmp_path / "run", inputs=[data]) == tmp_path / "run"


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(UsageError, match="is not a folder"):
        check_output_location(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgeft.outputs import OutputLock
    from edgeft.errors import OutputLockedError
    lock = OutputLock(Path(sys.argv[1]))
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
    try:
        lock.acquire()
    except OutputLockedError as error:
        print("refused:", error)
        sys.exit(2)
    print("holding")
    sys.stdout.flush()
    time.sleep(1.5)
    lock.release()
""")


def test_two_processes_started_together_exactly_one_proceeds(tmp_path: Path) -> None:
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "out"), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    results = [(p.wait(timeout=60), p.stdout.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(out for code, out in results if code == 2)
    holder = next(p for p, (code, _) in zip(procs, results) if code == 0)
    assert f"PID {holder.pid}" in refused and "another edgeft process" in refused
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # released and removed


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.replace("time.sleep(1.5)", "time.sleep(60)"),
                               str(tmp_path / "out"), "0"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "holding"  # type: ignore[union-attr]
    with pytest.raises(OutputLockedError, match=f"PID {holder.pid}"):
        OutputLock(tmp_path / "out").acquire()
    holder.kill()
    holder.wait(timeout=30)
    with OutputLock(tmp_path / "out"):
        pass  # the kernel released the dead holder's lock; its file is reused


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replace_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.keras").write_bytes(b"old model")
    (out / "metrics.json").write_text("{}")
    before = _snapshot(out)
    for failure in (RuntimeError("conversion failed"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with open_output(out, replace=True) as folder:
                assert folder.staged and folder.work != out
                (folder.work / "model.keras").write_bytes(b"half")
                raise failure
        assert _snapshot(out) == before
        assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging left behind
    with open_output(out, replace=True) as folder:
        (folder.work / "model.keras").write_bytes(b"new model")
    assert _snapshot(out) == {"model.keras": b"new model"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_without_replace_the_folder_is_written_in_place(tmp_path: Path) -> None:
    with open_output(tmp_path / "fresh", replace=False) as folder:
        assert folder.work == folder.final == tmp_path / "fresh" and not folder.staged
        assert (folder.work / LOCK_FILE).exists()
    assert not (tmp_path / "fresh" / LOCK_FILE).exists()


def test_write_failures_become_one_line() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/model.keras")
    error = write_failure(full)
    assert isinstance(error, OutputWriteError) and error.exit_code == 8
    assert str(error) == "could not write /data/run/model.keras: no space left on the device"
    wrapped = RuntimeError("Unable to synchronously create file")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/ro/x.h5")
    assert "read-only" in str(write_failure(wrapped))
    assert write_failure(ValueError("a bug")) is None
    assert write_failure(OSError(errno.ENOENT, "No such file", "x")) is None


def test_sixteen_bit_and_float_images_decode_to_their_values(tmp_path: Path) -> None:
    from PIL import Image

    from edgeft.data.images import decode_image

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    expected = np.round(gradient / 257.0)
    Image.fromarray(gradient).save(tmp_path / "gray16.png")  # mode I;16
    Image.frombytes("I;16B", (64, 64), gradient.astype(">u2").tobytes()).save(tmp_path / "gray16b.tiff")
    Image.fromarray(gradient.astype(np.int32), mode="I").save(tmp_path / "gray32.tiff")
    Image.fromarray((gradient / 65535.0).astype(np.float32), mode="F").save(tmp_path / "float.tiff")
    for name in ("gray16.png", "gray16b.tiff", "gray32.tiff", "float.tiff"):
        pixels = decode_image(tmp_path / name, 64)
        assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
        assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1, name
        assert (pixels[..., 0] == pixels[..., 2]).all()
