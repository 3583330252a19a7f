"""Getting files to a device and running the runner there: :class:`LocalTransport` and :class:`SshTransport`.

SSH drives the system ``ssh`` binary, so the user's ``~/.ssh/config`` (aliases, keys, agent,
ProxyJump) and ``known_hosts`` apply. Host keys are verified (``StrictHostKeyChecking=yes``
unless ``accept-new`` is asked for). Remote commands are built with :func:`shlex.join`.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from edgeft.bench.config import HostKeyPolicy, SshOptions
from edgeft.bench.results import MAX_OUTPUT_BYTES, clean_text
from edgeft.errors import TargetError

MARKER_FILE = ".edgeft-bench"
TEMP_PREFIX = "edgeft-bench."
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BAD_NAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}

# Prepare a run: make a private temporary directory (with the runner's cleanup marker) and find Python. Each
# value is printed on its own labelled line, so a space in a path or a login banner cannot shift it.
_PREPARE_SCRIPT = (
    'mkdir -p "$1" 2>/dev/null; d=$(mktemp -d "$1/edgeft-bench.XXXXXXXX") || exit 90; touch "$d/.edgeft-bench"; '
    'printf "edgeft-dir=%s\\n" "$d"; '
    'if [ -n "$2" ]; then p="$2"; '
    'elif [ -x "$HOME/.edgeft/venv/bin/python" ]; then p="$HOME/.edgeft/venv/bin/python"; '
    'else p=$(command -v python3 || echo python3); fi; printf "edgeft-python=%s\\n" "$p"'
)
_TEMP_NAME = re.compile(r"edgeft-bench\.[A-Za-z0-9_]{8}")


class Transport:
    """One device: make a temporary directory, push files, run a command, remove the directory."""

    name: str
    host_id: str
    emulated: bool = False

    def prepare(self, tmp_root: str, python: str | None) -> tuple[str, str]:
        """Create the run's temporary directory; returns (directory, python to use)."""
        raise NotImplementedError

    def push(self, files: dict[str, Path], remote_dir: str) -> None:
        """Copy ``{name: local path}`` into ``remote_dir``."""
        raise NotImplementedError

    def run(self, argv: list[str], timeout_s: float, stdin_data: bytes | None = None,
            keep_stdin_open: bool = False) -> str:
        """Run ``argv`` on the device and return its stdout; a failure raises :class:`TargetError`."""
        raise NotImplementedError

    def remove(self, remote_dir: str) -> None:
        """Remove a directory made by :meth:`prepare` (best effort, never raises)."""
        raise NotImplementedError


def _read_capped(stream: Any, sink: bytearray, cap: int, keep_tail: bool, on_overflow: Any) -> None:
    """Read ``stream`` to its end into ``sink``, never holding more than ``cap`` bytes.

    stdout (the result document) stops at the cap and ``on_overflow`` kills the process; stderr keeps
    its last ``cap`` bytes (the last line is what the error message needs).
    """
    while True:
        block = stream.read(1 << 16)
        if not block:
            return
        sink.extend(block)
        if len(sink) > cap:
            if keep_tail:
                del sink[:-cap]
            else:
                del sink[cap:]
                on_overflow()
                return


_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Kill every device process this process is waiting for (Ctrl-C while targets run in worker threads)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        if proc.poll() is None:
            proc.kill()


def _run_process(cmd: list[str], timeout_s: float, stdin_data: bytes | None, keep_stdin_open: bool,
                 describe: str) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` keeping its stdin open (its end tells the runner we are gone); kill it on timeout or Ctrl-C.

    At most :data:`MAX_OUTPUT_BYTES` of stdout are read: a device that sends more fails as a target.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    out = bytearray()
    err = bytearray()
    overflow = threading.Event()

    def stop() -> None:
        overflow.set()
        proc.kill()

    readers = [threading.Thread(target=_read_capped, args=(proc.stdout, out, MAX_OUTPUT_BYTES, False, stop),
                                daemon=True),
               threading.Thread(target=_read_capped, args=(proc.stderr, err, 1 << 16, True, stop), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if stdin_data is not None:
            try:
                proc.stdin.write(stdin_data)
                proc.stdin.flush()
            except BrokenPipeError:
                pass
        if not keep_stdin_open:
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TargetError(f"{describe}: timed out after {timeout_s:g} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        for reader in readers:
            reader.join(timeout=5)
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    if overflow.is_set():
        raise TargetError(f"{describe}: the device sent more than {MAX_OUTPUT_BYTES >> 20} MiB of output; "
                          "stopped reading it")
    return proc.returncode, bytes(out), bytes(err)


class LocalTransport(Transport):
    """This machine: a temporary directory and a subprocess."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.host_id = "localhost"

    def prepare(self, tmp_root: str, python: str | None) -> tuple[str, str]:
        Path(tmp_root).mkdir(parents=True, exist_ok=True)
        directory = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=tmp_root)
        Path(directory, MARKER_FILE).touch()
        return directory, python or sys.executable

    def push(self, files: dict[str, Path], remote_dir: str) -> None:
        for name, source in files.items():
            target = Path(remote_dir) / name
            source = Path(source).resolve()  # a symlinked model: link the file, not the link
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)

    def run(self, argv: list[str], timeout_s: float, stdin_data: bytes | None = None,
            keep_stdin_open: bool = False) -> str:
        code, out, err = _run_process(argv, timeout_s, stdin_data, keep_stdin_open, f"target {self.name}")
        if code != 0 and not out.strip():
            raise TargetError(f"target {self.name}: {_last_line(err) or f'exit status {code}'}")
        return out.decode("utf-8", "replace")

    def remove(self, remote_dir: str) -> None:
        if _TEMP_NAME.fullmatch(Path(remote_dir).name) and not Path(remote_dir).is_symlink():
            shutil.rmtree(remote_dir, ignore_errors=True)


class SshTransport(Transport):
    """A device reached with the system ``ssh`` (``[user@]host[:port]`` or an ~/.ssh/config alias)."""

    def __init__(self, destination: str, options: SshOptions, name: str | None = None,
                 user: str | None = None, port: int | None = None) -> None:
        host, _, port_text = destination.rpartition(":") if destination.count(":") == 1 else (destination, "", "")
        if port_text:
            if not port_text.isdigit():
                raise TargetError(f"bad target '{destination}': the port after ':' must be a number")
            port = int(port_text)
        if "@" in host:
            user, host = host.split("@", 1)
        if not host:
            raise TargetError(f"bad target '{destination}': expected [user@]host[:port]")
        for what, value in (("host", host), ("user", user)):
            if value is not None and (value.startswith("-") or _BAD_NAME_CHARS.search(value)):
                raise TargetError(f"bad target '{clean_text(destination, 100)}': the {what} "
                                  f"'{clean_text(value, 100)}' starts with '-' or holds spaces or control "
                                  "characters (ssh would read it as an option)")
        self.host = host
        self.user = user
        self.port = port
        self.options = options
        self.name = name or destination
        self._host_id: str | None = None
        self._prepared: set[str] = set()

    # -- command lines
    def ssh_base(self) -> list[str]:
        """``ssh`` with edgeft's options; ``-F`` only when a config file was given."""
        ssh = shutil.which("ssh")
        if ssh is None:
            raise TargetError("the `ssh` client is not installed on this computer (apt-get install openssh-client)")
        policy = "accept-new" if self.options.host_key_policy == HostKeyPolicy.ACCEPT_NEW else "yes"
        cmd = [ssh]
        if self.options.config_file is not None:
            cmd += ["-F", str(self.options.config_file)]
        if self.port is not None:
            cmd += ["-p", str(self.port)]
        if self.user:
            cmd += ["-l", self.user]
        cmd += ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={policy}",
                "-o", f"ConnectTimeout={int(self.options.connect_timeout_s)}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        # "--" ends ssh's options: the host that follows is never read as one
        return cmd + ["--", self.host]

    @property
    def host_id(self) -> str:  # type: ignore[override]
        """The real host name after ~/.ssh/config (``ssh -G``), to spot targets that share cores."""
        if self._host_id is None:
            name = self.host
            try:
                cmd = self.ssh_base()[:-2] + ["-G", "--", self.host]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
                for line in out.splitlines():
                    if line.startswith("hostname "):
                        name = line.split(None, 1)[1].strip()
            except (OSError, subprocess.SubprocessError, TargetError):
                pass
            local = _LOCAL_NAMES | {socket.gethostname().lower()}
            self._host_id = "localhost" if name.lower() in local else name.lower()
        return self._host_id

    def _ssh(self, remote_argv: list[str], timeout_s: float, stdin_data: bytes | None = None,
             keep_stdin_open: bool = False, phase: str = "run") -> tuple[int, bytes, bytes]:
        cmd = self.ssh_base() + [shlex.join(remote_argv)]
        code, out, err = _run_process(cmd, timeout_s, stdin_data, keep_stdin_open, f"target {self.name} ({phase})")
        if code == 255:
            raise TargetError(ssh_failure_message(self.name, err.decode("utf-8", "replace"), phase))
        return code, out, err

    # -- Transport
    def prepare(self, tmp_root: str, python: str | None) -> tuple[str, str]:
        root = _check_tmp_root(self.name, tmp_root)
        code, out, err = self._ssh(["sh", "-c", _PREPARE_SCRIPT, "edgeft", root, python or ""],
                                   self.options.connect_timeout_s + 30, phase="connect")
        if code != 0:
            raise TargetError(f"target {self.name}: cannot create a temporary directory in {clean_text(tmp_root)}: "
                              f"{_last_line(err) or f'exit status {code}'}")
        directory, python_path = parse_prepare_output(self.name, out.decode("utf-8", "replace"), root)
        self._prepared.add(directory)
        return directory, python_path

    def push(self, files: dict[str, Path], remote_dir: str) -> None:
        if remote_dir not in self._prepared:
            raise TargetError(f"target {self.name}: refusing to copy files into {clean_text(remote_dir)}, "
                              "a directory this run did not create")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:  # a symlinked model: its file
            for name, source in files.items():
                archive.add(str(source), arcname=name)
        code, _, err = self._ssh(["tar", "-C", remote_dir, "-xf", "-"], 600, stdin_data=buffer.getvalue(),
                                 phase="copying files")
        if code != 0:
            raise TargetError(f"target {self.name}: copying files failed: {_last_line(err) or f'exit status {code}'}")

    def run(self, argv: list[str], timeout_s: float, stdin_data: bytes | None = None,
            keep_stdin_open: bool = False) -> str:
        code, out, err = self._ssh(argv, timeout_s, stdin_data, keep_stdin_open)
        if code != 0 and not out.strip():
            raise TargetError(f"target {self.name}: the runner failed: {_last_line(err) or f'exit status {code}'}")
        return out.decode("utf-8", "replace")

    def remove(self, remote_dir: str) -> None:
        if remote_dir not in self._prepared:
            return  # only the directory prepare() made and checked is ever removed
        self._prepared.discard(remote_dir)
        try:
            self._ssh(["rm", "-rf", "--", remote_dir], self.options.connect_timeout_s + 10, phase="cleanup")
        except TargetError:
            pass


def _check_tmp_root(name: str, tmp_root: str) -> str:
    """``--remote-tmpdir`` without trailing slashes; a leading ``-`` or control characters (a newline) are refused."""
    if not tmp_root or tmp_root.startswith("-") or _CONTROL_CHARS.search(tmp_root):
        raise TargetError(f"target {name}: bad --remote-tmpdir {clean_text(repr(tmp_root), 100)}: "
                          "give a directory path that does not start with '-', without control characters")
    return tmp_root.rstrip("/") or "/"


def parse_prepare_output(name: str, output: str, root: str) -> tuple[str, str]:
    """(temporary directory, python) from the prepare script's labelled lines; other lines (banners) are ignored.

    The directory must be ``ROOT/edgeft-bench.XXXXXXXX``, exactly what ``mktemp`` makes there, or nothing is
    copied into it or removed.
    """
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("edgeft-dir", "edgeft-python"):
            values[key] = value
    directory, python = values.get("edgeft-dir", ""), values.get("edgeft-python", "")
    prefix = "/" if root == "/" else root + "/"
    if not (directory.startswith(prefix) and _TEMP_NAME.fullmatch(directory[len(prefix):])):
        raise TargetError(f"target {name}: the device did not report a temporary directory under {clean_text(root)} "
                          f"(got {clean_text(repr(directory), 120)})")
    if not python:
        raise TargetError(f"target {name}: the device reported no Python to run the runner with")
    return directory, python


def _last_line(data: bytes) -> str:
    """The device's last non-empty stderr line, cleaned of control characters (terminal escapes)."""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return clean_text(lines[-1], 300) if lines else ""


def ssh_failure_message(name: str, stderr: str, phase: str) -> str:
    """One line for an ssh exit status 255, from what ssh printed."""
    stderr = "\n".join(clean_text(line, 300) for line in stderr.splitlines())
    text = stderr.lower()
    if "remote host identification has changed" in text or "host key for" in text and "has changed" in text:
        return (f"target {name}: the host key has CHANGED since it was recorded in known_hosts "
                "(possible man-in-the-middle, or the device was reinstalled); verify it, then remove the "
                "old key with `ssh-keygen -R HOST`")
    if "host key verification failed" in text or "no ed25519 host key is known" in text or "is not known" in text:
        return (f"target {name}: unknown host key (not in known_hosts); connect once with `ssh` to verify it, "
                "or pass --accept-new-host-key")
    if "permission denied" in text or "too many authentication failures" in text:
        return (f"target {name}: authentication failed (permission denied): check the user and that your key "
                "is in the device's ~/.ssh/authorized_keys (ssh-copy-id)")
    if "connection refused" in text:
        return f"target {name}: connection refused: is the SSH server running on the device, and the port right?"
    if "could not resolve hostname" in text or "name or service not known" in text:
        return f"target {name}: unknown host name: check the name or use the device's IP address"
    if "timed out" in text:
        return f"target {name}: connection timed out: is the device on and reachable from this network?"
    if "no route to host" in text or "network is unreachable" in text or "host is down" in text:
        return f"target {name}: host unreachable: is the device on and on this network?"
    if phase == "run" or "closed by" in text or "broken pipe" in text or "connection reset" in text:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message from ssh"
        return f"target {name}: the connection dropped during the {phase} ({detail})"
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh exited with status 255"
    return f"target {name}: ssh failed during {phase}: {detail}"
