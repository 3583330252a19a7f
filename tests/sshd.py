"""A real OpenSSH server on loopback that plays the device (imported by the bench tests).

Started as the current user on a free high port with its own config (``UsePAM no``, a throwaway
host key and client key), a throwaway known_hosts and a client config file for ``ssh -F``.
Tests skip when ``sshd`` or ``ssh-keygen`` is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
ALIAS = "edgeft-test-device"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   stdout=subprocess.DEVNULL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    result, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class SshServer:
    """A running sshd and the files a client needs to reach it."""

    root: Path
    port: int
    proc: subprocess.Popen
    client_key: Path
    host_key: Path

    def client_config(self, name: str = "ssh_config", identity: Path | None = None,
                      known_hosts: str | None = "good") -> Path:
        """An ``ssh -F`` file for alias ``edgeft-test-device``; known_hosts: "good", "wrong" or "empty"."""
        known = self.root / f"known_hosts_{name}"
        if known_hosts == "good":
            known.write_text(f"{ALIAS} {(self.host_key.with_suffix('.pub')).read_text()}")
        elif known_hosts == "wrong":
            other = self.root / "other_host_key"
            if not other.exists():
                _keygen(other)
            known.write_text(f"{ALIAS} {other.with_suffix('.pub').read_text()}")
        else:
            known.write_text("")
        config = self.root / name
        config.write_text(
            f"Host {ALIAS}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
            f"  IdentityFile {identity or self.client_key}\n  IdentitiesOnly yes\n  HostKeyAlias {ALIAS}\n"
            f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  IdentityAgent none\n")
        return config

    def kill(self) -> None:
        """Kill sshd and its session processes (not the user's commands): connections drop mid-run."""
        sshd_pids = [p for p in descendants(self.proc.pid) if _comm(p).startswith("sshd")]
        for pid in [self.proc.pid] + sshd_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


def start_sshd(root: Path) -> SshServer:
    """Start sshd in ``root`` (skips the test when OpenSSH is missing)."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    host_key, client_key = root / "host_key", root / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    (root / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nX11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\nLogLevel VERBOSE\n")
    log = open(root / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text()[-300:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    return SshServer(root, port, proc, client_key, host_key)


@pytest.fixture
def sshd(tmp_path):
    """A fresh loopback sshd for one test; stopped afterwards."""
    server = start_sshd(tmp_path / "sshd")
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
