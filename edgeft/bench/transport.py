"""Getting files to a device and running the runner there: :class:`LocalTransport` and :class:`SshTransport`.

SSH drives the system ``ssh`` binary, so the user's ``~/.ssh/config`` (aliases, keys, agent,
ProxyJump) and ``known_hosts`` apply. Host keys are verified (``StrictHostKeyChecking=yes``
unless ``accept-new`` is asked for). Remote commands are built with :func:`shlex.join`.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from edgeft.bench.config import HostKeyPolicy, SshOptions
from edgeft.errors import TargetError

MARKER_FILE = ".edgeft-bench"
TEMP_PREFIX = "edgeft-bench."
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}

# Prepare a run: make a private temporary directory (with the runner's cleanup marker) and find Python.
_PREPARE_SCRIPT = (
    'mkdir -p "$1" 2>/dev/null; d=$(mktemp -d "$1/edgeft-bench.XXXXXXXX") || exit 90; touch "$d/.edgeft-bench"; echo "$d"; '
    'if [ -n "$2" ]; then echo "$2"; '
    'elif [ -x "$HOME/.edgeft/venv/bin/python" ]; then echo "$HOME/.edgeft/venv/bin/python"; '
    'else command -v python3 || echo python3; fi'
)


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


def _run_process(cmd: list[str], timeout_s: float, stdin_data: bytes | None, keep_stdin_open: bool,
                 describe: str) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` keeping its stdin open (its end tells the runner we are gone); kill it on timeout or Ctrl-C."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
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
    return proc.returncode, b"".join(out), b"".join(err)


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
        if Path(remote_dir).name.startswith(TEMP_PREFIX):
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
        self.host = host
        self.user = user
        self.port = port
        self.options = options
        self.name = name or destination
        self._host_id: str | None = None

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
        return cmd + [self.host, "--"]

    @property
    def host_id(self) -> str:  # type: ignore[override]
        """The real host name after ~/.ssh/config (``ssh -G``), to spot targets that share cores."""
        if self._host_id is None:
            name = self.host
            try:
                cmd = self.ssh_base()[:-2] + ["-G", self.host]
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
        code, out, err = self._ssh(["sh", "-c", _PREPARE_SCRIPT, "edgeft", tmp_root, python or ""],
                                   self.options.connect_timeout_s + 30, phase="connect")
        lines = out.decode("utf-8", "replace").split()
        if code != 0 or len(lines) < 2:
            raise TargetError(f"target {self.name}: cannot create a temporary directory in {tmp_root}: "
                              f"{_last_line(err) or f'exit status {code}'}")
        return lines[0], lines[1]

    def push(self, files: dict[str, Path], remote_dir: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
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
        if not Path(remote_dir).name.startswith(TEMP_PREFIX):
            return
        try:
            self._ssh(["rm", "-rf", remote_dir], self.options.connect_timeout_s + 10, phase="cleanup")
        except TargetError:
            pass


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def ssh_failure_message(name: str, stderr: str, phase: str) -> str:
    """One line for an ssh exit status 255, from what ssh printed."""
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
