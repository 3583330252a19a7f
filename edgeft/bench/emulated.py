"""Emulated Raspberry Pi targets: the device's own aarch64 Python and wheels, run under QEMU user mode.

``edgeft targets setup rpi4-emu`` builds, on an x86-64 Debian/Ubuntu host, with apt and pip only
(no root-owned state is touched, no ARM code runs during set-up):

- ``qemu-aarch64-static``, taken out of Debian's ``qemu-user-static`` package (``apt-get download``);
- a Debian arm64 userland (bookworm: ``python3.11``, the Python of Raspberry Pi OS Bookworm; bullseye:
  ``python3.9``), each ``.deb`` unpacked with ``dpkg-deb -x`` into a sysroot, with a private apt state;
- the aarch64 wheels of the ``rpi4``/``rpi5`` profiles' own pip line for that Python, installed with
  ``pip install --target`` into the sysroot's ``dist-packages``;
- one view of the sysroot per CPU whose ``/proc/cpuinfo`` is a Raspberry Pi's (QEMU's ``-L`` makes the
  emulated programs read it instead of the host's x86 one).

Everything lives in :func:`cache_root` (``$EDGEFT_EMULATED_DIR``, else ``$EDGEFT_CACHE_DIR/emulated``, else
``~/.cache/edgeft/emulated``). :class:`EmulatedTransport` then runs the runner as
``qemu-aarch64-static -cpu CPU -L VIEW VIEW/usr/bin/python3.X -E -s edgeft-device.pyz ...``.

Latency measured this way is the emulator's, not a device's; accuracy, outputs and compatibility are real.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgeft.bench.transport import LocalTransport, _run_process
from edgeft.errors import MissingDependencyError, TargetError, UsageError
from edgeft.progress import log

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
READY_FILE = "ready.json"
# The emulated CPU must always be named: QEMU's default (``max``, with SME) gives wrong outputs silently.
UNSAFE_CPUS = ("max", "any", "host")
# Host variables that would change what the emulator or the emulated Python does.
LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "QEMU_CPU", "QEMU_LD_PREFIX",
                   "QEMU_SET_ENV", "QEMU_UNSET_ENV", "QEMU_GUEST_BASE", "QEMU_RESERVED_VA", "LD_PRELOAD",
                   "LD_LIBRARY_PATH")


class Userland(str, Enum):
    """A Debian arm64 release whose own python3 package stands in for Raspberry Pi OS's."""

    BOOKWORM = "bookworm"  # Debian 12, python3.11: Raspberry Pi OS Bookworm
    BULLSEYE = "bullseye"  # Debian 11, python3.9: Raspberry Pi OS Bullseye


@dataclass(frozen=True)
class UserlandSpec:
    """What one userland is made of."""

    userland: Userland
    python: str                   # "3.11": the profile's pip line key and the interpreter's name
    suites: tuple[tuple[str, str], ...]   # (mirror, suite)
    packages: tuple[str, ...]     # arm64 packages unpacked into the sysroot (with their dependencies)

    @property
    def python_path(self) -> str:
        """The interpreter inside the sysroot, relative to it."""
        return f"usr/bin/python{self.python}"


USERLANDS: dict[Userland, UserlandSpec] = {
    Userland.BOOKWORM: UserlandSpec(Userland.BOOKWORM, "3.11",
                                    ((DEBIAN_MIRROR, "bookworm"), (DEBIAN_MIRROR, "bookworm-updates"),
                                     (DEBIAN_SECURITY_MIRROR, "bookworm-security")),
                                    ("python3.11", "libstdc++6")),
    # bullseye-security's arm64 packages are not reachable from every registry mirror: the point
    # release in the main suite is enough to run the runner.
    Userland.BULLSEYE: UserlandSpec(Userland.BULLSEYE, "3.9",
                                    ((DEBIAN_MIRROR, "bullseye"), (DEBIAN_MIRROR, "bullseye-updates")),
                                    ("python3.9", "libstdc++6")),
}


@dataclass(frozen=True)
class EmulatedCpu:
    """A Raspberry Pi's CPU: QEMU's model name and the ``/proc/cpuinfo`` the device shows."""

    qemu_name: str
    board: str
    part: str
    variant: str
    revision: int
    features: str
    hardware: str | None
    board_revision: str

    def cpuinfo(self, cores: int = 4) -> str:
        """``/proc/cpuinfo`` as the board prints it, marked as emulated in its Model line."""
        blocks = []
        for index in range(cores):
            blocks.append(f"processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: {self.features}\n"
                          f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {self.variant}\n"
                          f"CPU part\t: {self.part}\nCPU revision\t: {self.revision}\n")
        tail = f"Hardware\t: {self.hardware}\n" if self.hardware else ""
        tail += (f"Revision\t: {self.board_revision}\nSerial\t\t: 10000000emulated\n"
                 f"Model\t\t: {self.board} (emulated: QEMU {self.qemu_name})\n")
        return "\n".join(blocks) + "\n" + tail


# Features lines of the real boards: the emulated programs see what the device would show.
CPUS: dict[str, EmulatedCpu] = {
    "cortex-a72": EmulatedCpu("cortex-a72", "Raspberry Pi 4 Model B Rev 1.4", "0xd08", "0x0", 3,
                              "fp asimd evtstrm crc32 cpuid", "BCM2835", "c03114"),
    "cortex-a76": EmulatedCpu("cortex-a76", "Raspberry Pi 5 Model B Rev 1.0", "0xd0b", "0x4", 1,
                              "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                              "lrcpc dcpop asimddp", None, "d04170"),
}


# ----------------------------------------------------------------------------- locations
def cache_root() -> Path:
    """Where userlands live: ``$EDGEFT_EMULATED_DIR``, ``$EDGEFT_CACHE_DIR/emulated`` or ``~/.cache/edgeft/emulated``."""
    explicit = os.environ.get("EDGEFT_EMULATED_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("EDGEFT_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "edgeft") / "emulated"


def qemu_path(root: Path | None = None) -> Path:
    """The ``qemu-aarch64-static`` binary set-up extracts."""
    return (root or cache_root()) / "qemu" / "qemu-aarch64-static"


def userland_dir(userland: Userland, root: Path | None = None) -> Path:
    """A userland's folder: ``sysroot/``, one view per CPU, ``ready.json``."""
    return (root or cache_root()) / userland.value


def cpu_view(userland: Userland, cpu: str, root: Path | None = None) -> Path:
    """The sysroot as QEMU's ``-L`` sees it for one CPU (its own ``proc/cpuinfo``)."""
    return userland_dir(userland, root) / f"view-{cpu}"


def read_ready(userland: Userland, root: Path | None = None) -> dict[str, Any] | None:
    """The record a finished set-up writes last, or None when the userland is missing or unfinished."""
    path = userland_dir(userland, root) / READY_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- the command line
def python_argv(cpu: str, userland: Userland, root: Path | None = None) -> list[str]:
    """The emulated Python's command prefix (append a script and its arguments)."""
    view = cpu_view(userland, cpu, root)
    spec = USERLANDS[userland]
    return [str(qemu_path(root)), "-cpu", cpu, "-L", str(view), str(view / spec.python_path), "-E", "-s"]


def command_problems(argv: list[str]) -> list[str]:
    """Pitfalls of an emulated-Python command line, each one line (empty when it is safe to run).

    Checks what, when wrong, makes the emulated runner crash or silently compute wrong numbers:
    an unnamed or unsafe CPU model, a missing or mismatched fake ``/proc/cpuinfo``, an interpreter
    outside the sysroot (``-L`` does not redirect the main program), and host Python variables
    leaking in (numpy then imports the host's x86 build).
    """
    problems = []
    cpu = argv[argv.index("-cpu") + 1] if "-cpu" in argv[:-1] else None
    if cpu is None:
        problems.append("QEMU's CPU is not named (-cpu): its default 'max' model gives wrong outputs silently")
    elif cpu in UNSAFE_CPUS:
        problems.append(f"QEMU CPU '{cpu}' is not a Raspberry Pi's: its extra features (SME) give wrong outputs "
                        "silently; use cortex-a72 (Pi 4) or cortex-a76 (Pi 5)")
    sysroot = argv[argv.index("-L") + 1] if "-L" in argv[:-1] else None
    if sysroot is None:
        problems.append("no sysroot (-L): the emulated Python would load the host's x86 libraries")
    else:
        cpuinfo = Path(sysroot) / "proc" / "cpuinfo"
        if not cpuinfo.is_file():
            problems.append(f"{cpuinfo} is missing: XNNPACK and onnxruntime would read the host's x86 "
                            "/proc/cpuinfo and crash; run `edgeft targets setup` again")
        elif cpu in CPUS and f"CPU part\t: {CPUS[cpu].part}" not in cpuinfo.read_text("utf-8", "replace"):
            problems.append(f"{cpuinfo} does not describe a {cpu} (CPU part {CPUS[cpu].part}): a cpuinfo that "
                            "does not match -cpu ends in SIGILL")
        python = next((a for a in argv if re.search(r"/python3(\.\d+)?$", a)), None)
        inside = os.path.abspath(sysroot).rstrip("/") + "/"
        if python is not None and not os.path.abspath(python).startswith(inside):
            problems.append(f"the interpreter {python} is outside the sysroot {sysroot}: QEMU's -L does not "
                            "redirect the main program")
    python_index = next((i for i, a in enumerate(argv) if re.search(r"/python3(\.\d+)?$", a)), None)
    flags = argv[python_index + 1:python_index + 3] if python_index is not None else []
    if "-E" not in flags or "-s" not in flags:
        problems.append("the emulated Python runs without -E -s: a host PYTHONPATH or user site-packages "
                        "would leak in and numpy would fail to import")
    return problems


def host_warnings() -> list[str]:
    """Host environment variables the emulated target ignores on purpose (worth saying, not fatal)."""
    found = [name for name in LEAKY_VARIABLES if os.environ.get(name)]
    if not found:
        return []
    verb, pronoun = ("is", "it") if len(found) == 1 else ("are", "them")
    return [f"{', '.join(found)} {verb} set on this host: the emulated target clears {pronoun} (left in, the "
            "emulated Python would import host x86 modules, or QEMU would change the CPU or sysroot)"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LEAKY_VARIABLES}


# ----------------------------------------------------------------------------- the transport
class EmulatedTransport(LocalTransport):
    """A Raspberry Pi emulated on this machine: the runner runs under ``qemu-aarch64-static``."""

    emulated = True

    def __init__(self, name: str, cpu: str, userland: Userland, root: Path | None = None) -> None:
        super().__init__(name)
        self.host_id = "localhost"
        if cpu not in CPUS:
            raise TargetError(f"target {name}: unknown emulated CPU '{cpu}' (known: {', '.join(CPUS)})")
        self.cpu = cpu
        self.userland = userland
        self.root = root or cache_root()

    @property
    def argv(self) -> list[str]:
        """The emulated Python's command prefix."""
        return python_argv(self.cpu, self.userland, self.root)

    @property
    def python(self) -> str:
        """The interpreter inside the sysroot (what ``prepare`` returns as the device's Python)."""
        return self.argv[5]

    def describe(self) -> dict[str, Any]:
        """What ``bench.json`` records about the emulation."""
        ready = read_ready(self.userland, self.root) or {}
        return {"emulated": True, "cpu": self.cpu, "userland": self.userland.value,
                "qemu": ready.get("qemu_version"), "python": ready.get("python_version"),
                "note": "latency is QEMU's on this host, not the device's; accuracy and outputs are real",
                "warnings": host_warnings()}

    def check(self) -> None:
        """Raise a one-line :class:`TargetError` when the userland is missing or a pitfall would be hit."""
        if read_ready(self.userland, self.root) is None or not qemu_path(self.root).is_file():
            raise TargetError(f"target {self.name}: the emulated {self.userland.value} userland is not set up in "
                              f"{self.root}: run `edgeft targets setup {self.name}` (needs apt-get, dpkg-deb, pip "
                              "and the Debian and PyPI registries)")
        problems = command_problems(self.argv)
        if problems:
            raise TargetError(f"target {self.name}: {problems[0]}")

    def prepare(self, tmp_root: str, python: str | None) -> tuple[str, str]:
        self.check()
        directory, _ = super().prepare(tmp_root, None)
        return directory, self.python

    def run(self, argv: list[str], timeout_s: float, stdin_data: bytes | None = None,
            keep_stdin_open: bool = False) -> str:
        if not argv or argv[0] not in (self.python, "python3", "python"):
            raise TargetError(f"target {self.name}: an emulated target runs only its own Python, not "
                              f"`{os.path.basename(argv[0]) if argv else ''}`: its packages are the rpi4 profile's "
                              f"pins, installed by `edgeft targets setup {self.name}` (doctor --install does not "
                              "apply)")
        self.check()
        prefix = self.argv
        # The runner starts one child Python per job: under QEMU without binfmt_misc it must exec the
        # emulator itself, not the arm binary in its sys.executable.
        env = ["env"] + [arg for name in LEAKY_VARIABLES if name in os.environ for arg in ("-u", name)]
        command = env + [f"EDGEFT_DEVICE_PYTHON_ARGV={json.dumps(prefix)}"] + prefix + argv[1:]
        code, out, err = _run_process(command, timeout_s, stdin_data, keep_stdin_open, f"target {self.name}")
        if code != 0 and not out.strip():
            raise TargetError(f"target {self.name}: {_explain_exit(code, err, self.cpu)}")
        return out.decode("utf-8", "replace")


def _explain_exit(code: int, err: bytes, cpu: str) -> str:
    """One line for an emulated program that failed: the program's own last error line, not QEMU's."""
    text = err.decode("utf-8", "replace").replace("\0", "")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(("qemu:", "INFO:"))]
    errors = [line for line in lines if "error" in line.lower()]
    last = (errors or lines or [""])[-1]
    if code in (-4, 132) or "Illegal instruction" in text:
        return (f"the emulated program died with SIGILL on {cpu}: it uses an instruction this CPU lacks "
                f"({last or 'no message'}); a real device with this CPU fails the same way")
    if code in (-11, 139):
        return f"the emulated program crashed (SIGSEGV) on {cpu}: {last or 'no message'}"
    return last or f"exit status {code}"


# ----------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class SetupResult:
    """What :func:`setup_userland` did."""

    userland: Userland
    cpus: tuple[str, ...]
    root: Path
    seconds: float
    size_bytes: int
    built: bool          # False: it was already set up
    python_version: str
    packages: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"userland": self.userland.value, "cpus": list(self.cpus), "root": str(self.root),
                "seconds": round(self.seconds, 1), "size_bytes": self.size_bytes, "built": self.built,
                "python_version": self.python_version, "packages": dict(self.packages)}


def _host_problems() -> list[str]:
    problems = []
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        problems.append(f"emulated targets are built on an x86-64 Linux host (this is {platform.system()} "
                        f"{platform.machine()})")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is missing: emulated targets are set up on a Debian or Ubuntu host with apt")
    if shutil.which("apt-get") and not Path(DEBIAN_KEYRING).is_file():
        problems.append(f"{DEBIAN_KEYRING} is missing: install Debian's archive keys "
                        "(`sudo apt-get install debian-archive-keyring`)")
    return problems


def _check(cmd: list[str], what: str, timeout_s: float = 600) -> str:
    """Run a set-up command; returns stdout and stderr together, raises a one-line error on failure."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_clean_env())
    except subprocess.TimeoutExpired:
        raise TargetError(f"set-up: {what} timed out after {timeout_s:g} s (is the network slow or down?)") from None
    except OSError as error:
        raise MissingDependencyError(f"set-up: cannot run {cmd[0]} for {what}: {error}") from None
    if done.returncode != 0:
        raise TargetError(f"set-up: {what} failed: {_apt_pip_reason(done.stderr + done.stdout)}")
    return done.stdout + done.stderr


def _apt_pip_reason(text: str, fallback_network: bool = False) -> str:
    lowered = text.lower()
    if fallback_network or any(s in lowered for s in ("temporary failure resolving", "could not resolve", "failed to fetch",
                                  "network is unreachable", "connection refused", "name or service not known",
                                  "no matching distribution", "could not find a version", "connection timed out")):
        hint = " (no network, or the Debian/PyPI registry is unreachable from here)"
    elif "permission denied" in lowered or "are you root" in lowered:
        hint = " (permission denied: the cache folder must be writable; no root is needed otherwise)"
    else:
        hint = ""
    all_lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in all_lines if any(s in line.lower() for s in ("failed to fetch", "temporary failure",
                                                                             "could not", "unable to"))]
    errors = [line for line in all_lines if line.startswith(("E:", "ERROR", "error"))]
    line = (errors or causes or all_lines or ["no message"])[-1]
    return (line if len(line) <= 300 else line[:297] + "...") + hint


class _Apt:
    """apt with a private state (lists, cache, empty dpkg status) for one architecture."""

    def __init__(self, state: Path, arch: str, suites: tuple[tuple[str, str], ...]) -> None:
        self.state = state
        for sub in ("lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        (state / "status").touch()
        lines = [f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {mirror} {suite} main" for mirror, suite in suites]
        (state / "sources.list").write_text("\n".join(lines) + "\n", "utf-8")
        self.options = [
            "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}", "-o", f"Dir::State::status={state / 'status'}",
            "-o", f"Dir::Etc::SourceList={state / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", "Debug::NoLocking=1",
        ]
        if os.geteuid() == 0:
            # apt drops to the _apt user to download, which cannot write into a root-owned private cache.
            self.options += ["-o", "APT::Sandbox::User=root"]

    def run(self, args: list[str], what: str) -> str:
        return _check(["apt-get", "-q", *self.options, *args], what)

    def update(self) -> None:
        # apt-get update exits 0 when nothing could be fetched (warnings only): check that lists arrived.
        output = _check(["apt-get", "-q", *self.options, "update"], "apt-get update (private package lists)")
        if not any(self.state.joinpath("lists").glob("*_Packages*")):
            raise TargetError("set-up: apt-get update fetched no Debian package list: "
                              + _apt_pip_reason(output, fallback_network=True))

    def download_closure(self, packages: tuple[str, ...]) -> list[Path]:
        """``install --download-only`` against an empty status: the packages and all their dependencies."""
        archives = self.state / "cache" / "archives"
        for old in archives.glob("*.deb"):
            old.unlink()
        self.run(["-y", "--no-install-recommends", "install", "--download-only", *packages],
                 f"downloading {' '.join(packages)}")
        return sorted(archives.glob("*.deb"))

    def download(self, package: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        for old in into.glob("*.deb"):
            old.unlink()
        try:
            done = subprocess.run(["apt-get", "-q", *self.options, "download", package], capture_output=True,
                                  text=True, timeout=600, cwd=into, env=_clean_env())
        except subprocess.TimeoutExpired:
            raise TargetError(f"set-up: downloading {package} timed out (network?)") from None
        if done.returncode != 0:
            raise TargetError(f"set-up: downloading {package} failed: {_apt_pip_reason(done.stderr + done.stdout)}")
        found = sorted(into.glob("*.deb"))
        if not found:
            raise TargetError(f"set-up: apt-get download {package} wrote no .deb")
        return found[0]


def _unpack(deb: Path, into: Path) -> None:
    _check(["dpkg-deb", "-x", str(deb), str(into)], f"unpacking {deb.name}")


def _pip_args(spec: UserlandSpec) -> list[str]:
    platforms = [f"manylinux_2_{n}_aarch64" for n in (36, 35, 34, 31, 28, 27, 26, 24, 17)] + ["manylinux2014_aarch64"]
    args = ["--only-binary=:all:", "--python-version", spec.python, "--implementation", "cp",
            "--abi", f"cp{spec.python.replace('.', '')}"]
    for name in platforms:
        args += ["--platform", name]
    return args


def profile_requirements(python: str) -> list[str]:
    """The requirements of the ``rpi4`` profile's pip line for this Python: what users install on a real Pi."""
    from edgeft.bench.profiles import get_profile

    profile = get_profile("rpi4")
    line = profile.pip_line(python) if profile else None
    if not line:
        raise TargetError(f"the rpi4 profile has no pip line for Python {python}")
    words = shlex.split(line)
    if words[:2] != ["pip", "install"]:
        raise TargetError(f"the rpi4 profile's pip line for Python {python} is not `pip install ...`: {line}")
    return words[2:]


def _pip() -> list[str]:
    command = [sys.executable, "-m", "pip"]
    try:
        subprocess.run(command + ["--version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        raise MissingDependencyError(f"pip is missing for {sys.executable}: emulated targets install the device's "
                                     "wheels with pip (python -m ensurepip, or apt-get install python3-pip)") from None
    return command + ["--disable-pip-version-check", "--no-input"]


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = Path(dirpath, name)
            if not full.is_symlink():
                try:
                    total += full.stat().st_size
                except OSError:
                    pass
    return total


def _make_view(userland_root: Path, sysroot_name: str, cpu: str) -> None:
    """``view-CPU/``: relative links to the sysroot's top-level entries, and the CPU's own ``proc/cpuinfo``."""
    view = userland_root / f"view-{cpu}"
    if view.exists():
        shutil.rmtree(view)
    (view / "proc").mkdir(parents=True)
    for entry in sorted((userland_root / sysroot_name).iterdir()):
        if entry.name != "proc":
            os.symlink(Path("..") / sysroot_name / entry.name, view / entry.name)
    (view / "proc" / "cpuinfo").write_text(CPUS[cpu].cpuinfo(), "utf-8")


def _qemu_version(qemu: Path) -> str:
    try:
        out = subprocess.run([str(qemu), "-version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "?"


class _Lock:
    """An exclusive lock on the cache folder (two set-ups, or a set-up and a test session, at once)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.handle = open(root / ".lock", "w")

    def __enter__(self) -> "_Lock":
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _ensure_qemu(root: Path, work: Path) -> str:
    qemu = qemu_path(root)
    if qemu.is_file() and os.access(qemu, os.X_OK):
        return _qemu_version(qemu)
    apt = _Apt(work / "apt-amd64", "amd64", ((DEBIAN_MIRROR, "bookworm"), (DEBIAN_MIRROR, "bookworm-updates"),
                                             (DEBIAN_SECURITY_MIRROR, "bookworm-security")))
    log("set-up: fetching Debian's qemu-user-static (amd64) package lists")
    apt.update()
    deb = apt.download("qemu-user-static", work / "qemu-deb")
    qemu.parent.mkdir(parents=True, exist_ok=True)
    partial = qemu.with_name(qemu.name + ".partial")
    # Only the one binary out of the package's ~370 MB of emulators.
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        found = False
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as archive:
            for member in archive:
                if member.isfile() and member.name.lstrip("./") == "usr/bin/qemu-aarch64-static":
                    source = archive.extractfile(member)
                    if source is not None:
                        with open(partial, "wb") as target:
                            shutil.copyfileobj(source, target)
                        found = True
                    break
        if proc.stdout is not None:
            proc.stdout.close()
        proc.kill()
    if not found:
        raise TargetError(f"set-up: {deb.name} holds no usr/bin/qemu-aarch64-static")
    partial.chmod(0o755)
    partial.replace(qemu)
    return _qemu_version(qemu)


def setup_userland(userland: Userland = Userland.BOOKWORM, cpus: tuple[str, ...] = ("cortex-a72", "cortex-a76"),
                   force: bool = False, root: Path | None = None) -> SetupResult:
    """Build (or find already built) an emulated userland with a view per CPU; idempotent.

    Raises :class:`MissingDependencyError` when the host lacks apt, dpkg-deb or pip, and
    :class:`TargetError` when a download or an install fails (one line, with the likely reason).
    """
    root = root or cache_root()
    for cpu in cpus:
        if cpu not in CPUS:
            raise UsageError(f"unknown emulated CPU '{cpu}' (known: {', '.join(CPUS)})")
    spec = USERLANDS[userland]
    requirements = profile_requirements(spec.python)
    started = time.monotonic()
    folder = userland_dir(userland, root)
    try:
        lock = _Lock(root)
    except OSError as error:
        raise TargetError(f"set-up: cannot write the cache folder {root}: {error} (set EDGEFT_EMULATED_DIR "
                          "to a writable folder)") from None
    with lock:
        ready = read_ready(userland, root)
        if (ready and not force and ready.get("requirements") == requirements and qemu_path(root).is_file()
                and all((folder / f"view-{cpu}" / "proc" / "cpuinfo").is_file() for cpu in cpus)):
            return SetupResult(userland, tuple(cpus), root, time.monotonic() - started, int(ready.get("size_bytes", 0)),
                               False, str(ready.get("python_version")), dict(ready.get("packages", {})))
        if ready and not force and ready.get("requirements") == requirements and qemu_path(root).is_file():
            for cpu in cpus:  # only a CPU view is missing
                _make_view(folder, "sysroot", cpu)
            ready["cpus"] = sorted(set(ready.get("cpus", [])) | set(cpus))
            _write_json(folder / READY_FILE, ready)
            return SetupResult(userland, tuple(cpus), root, time.monotonic() - started, int(ready.get("size_bytes", 0)),
                               False, str(ready.get("python_version")), dict(ready.get("packages", {})))
        problems = _host_problems()
        if problems:
            raise MissingDependencyError(f"cannot set up the emulated target: {problems[0]}")
        pip = _pip()
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        qemu_version = _ensure_qemu(root, work)
        build = Path(tempfile.mkdtemp(prefix=f".{userland.value}.", dir=root))
        try:
            sysroot = build / "sysroot"
            sysroot.mkdir()
            apt = _Apt(work / f"apt-{userland.value}-arm64", "arm64", spec.suites)
            log(f"set-up: fetching Debian {userland.value} arm64 package lists")
            apt.update()
            debs = apt.download_closure(spec.packages)
            log(f"set-up: unpacking {len(debs)} arm64 packages into {sysroot}")
            for deb in debs:
                _unpack(deb, sysroot)
            python = sysroot / spec.python_path
            if not python.is_file():
                raise TargetError(f"set-up: the {userland.value} packages hold no {spec.python_path}")
            site = sysroot / "usr" / "lib" / "python3" / "dist-packages"
            site.mkdir(parents=True, exist_ok=True)
            wheels = work / f"wheels-{userland.value}"
            wheels.mkdir(parents=True, exist_ok=True)
            log(f"set-up: aarch64 wheels for Python {spec.python}: {' '.join(requirements)}")
            common = _pip_args(spec)
            _check(pip + ["download", "-q", *common, "-d", str(wheels), *requirements],
                   f"pip download of the aarch64 wheels ({' '.join(requirements)})")
            # --ignore-requires-python: pip compares requires-python with this host's Python, not the device's.
            _check(pip + ["install", "-q", *common, "--no-index", "--find-links", str(wheels), "--target", str(site),
                          "--no-compile", "--ignore-requires-python", "--no-warn-script-location", *requirements],
                   "pip install --target of the aarch64 wheels")
            packages = _installed(site)
            _write_os_release(sysroot, userland)
            if sys.version_info[:2] == tuple(int(p) for p in spec.python.split(".")):
                # Byte-code written by the host's same-version Python spares the emulated first import.
                subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", r"test|lib2to3|idlelib",
                                str(sysroot / "usr" / "lib" / f"python{spec.python}"), str(site)],
                               capture_output=True, timeout=600)
            for cpu in cpus:
                _make_view(build, "sysroot", cpu)
            size = _dir_size(build)
            record = {"userland": userland.value, "python_version": _deb_version(debs, f"python{spec.python}"),
                      "requirements": requirements, "packages": packages, "debs": [d.name for d in debs],
                      "qemu_version": qemu_version, "cpus": list(cpus), "size_bytes": size,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_json(build / READY_FILE, record)
            if folder.exists():
                shutil.rmtree(folder)
            build.rename(folder)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
            # Downloads (package lists, .debs, wheels) are not needed once unpacked; pip keeps its own cache.
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.monotonic() - started
        return SetupResult(userland, tuple(cpus), root, seconds, size, True, str(record["python_version"]), packages)


# Runs a script with only the standard library and one folder on sys.path (the interpreter runs with -S):
# argv after it is FOLDER SCRIPT ARGS...; the script's folder replaces -c's current directory, as
# `python SCRIPT` would have it.
_ONLY_FOLDER_BOOT = ("import os, runpy, sys; folder = sys.argv.pop(1); sys.argv.pop(0); "
                     "sys.path[0:1] = [os.path.dirname(os.path.abspath(sys.argv[0])), folder]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")


def requirements_for(text: str, python: str) -> list[str]:
    """The lines of a ``requirements.txt`` that apply to a device Python (its markers evaluated for it).

    pip evaluates markers against the Python that runs pip, not the ``--python-version`` it downloads
    for; this evaluates them for the emulated aarch64 Linux Python instead.
    """
    try:
        from packaging.markers import Marker
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
    environment = {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": "aarch64",
                   "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise UsageError(f"cannot read requirement {line!r}: {error}") from None
        if requirement.marker is None or Marker(str(requirement.marker)).evaluate(environment):
            requirement.marker = None
            lines.append(str(requirement))
    return lines


def install_requirements(requirements: Path, into: Path, userland: Userland = Userland.BOOKWORM) -> dict[str, str]:
    """``pip install -r requirements`` for the emulated userland's Python into the folder ``into``.

    The aarch64 wheels come from the package registry, as on a device; nothing from the userland's
    own ``dist-packages`` is used. Returns the installed distributions and versions. Run a script
    with only these packages with :func:`only_folder_argv`.
    """
    spec = USERLANDS[userland]
    lines = requirements_for(Path(requirements).read_text("utf-8"), spec.python)
    if not lines:
        raise UsageError(f"{requirements} has no requirement for Python {spec.python}")
    pip = _pip()
    _check(pip + ["install", "-q", *_pip_args(spec), "--target", str(into), "--no-compile", "--ignore-requires-python",
                  "--no-warn-script-location", *lines],
           f"pip install of {Path(requirements).name} for aarch64 Python {spec.python} ({' '.join(lines)})")
    return _installed(Path(into))


def only_folder_argv(cpu: str, userland: Userland, folder: Path, root: Path | None = None) -> list[str]:
    """The emulated Python seeing its standard library and ``folder`` only (append a script and its arguments).

    ``-S`` leaves out the userland's ``dist-packages`` (numpy, LiteRT, onnxruntime of the profile):
    the script runs as in a fresh venv where only ``folder``'s packages were installed.
    """
    return python_argv(cpu, userland, root) + ["-S", "-c", _ONLY_FOLDER_BOOT, str(folder)]


def _deb_version(debs: list[Path], package: str) -> str:
    for deb in debs:
        name, _, rest = deb.name.partition("_")
        if name == package:
            return rest.split("_")[0].replace("%3a", ":")
    return "?"


def _installed(site: Path) -> dict[str, str]:
    found = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[name.lower().replace("_", "-")] = version
    return dict(sorted(found.items()))


def _write_os_release(sysroot: Path, userland: Userland) -> None:
    number = {Userland.BOOKWORM: "12", Userland.BULLSEYE: "11"}[userland]
    path = sysroot / "etc" / "os-release"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(f'PRETTY_NAME="Debian GNU/Linux {number} ({userland.value}) arm64, emulated by edgeft"\n'
                    f'NAME="Debian GNU/Linux"\nVERSION_ID="{number}"\nVERSION_CODENAME={userland.value}\nID=debian\n',
                    "utf-8")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True), "utf-8")
    partial.replace(path)


# ----------------------------------------------------------------------------- targets
def emulation_of(profile: Any) -> tuple[str, Userland]:
    """(CPU, userland) of an emulated profile: its ``[emulation]`` table (``cpu``, ``userland``)."""
    from edgeft.bench.profiles import parse_toml

    try:
        table = parse_toml(Path(profile.path).read_text("utf-8")).get("emulation", {})
    except (OSError, ValueError, SyntaxError) as error:
        raise TargetError(f"cannot read target profile {profile.path}: {error}") from None
    cpu = str(table.get("cpu", ""))
    if cpu not in CPUS:
        raise TargetError(f"profile {profile.name}: [emulation] cpu must be one of {', '.join(CPUS)} (got {cpu!r})")
    try:
        userland = Userland(str(table.get("userland", "bookworm")))
    except ValueError:
        raise TargetError(f"profile {profile.name}: [emulation] userland must be one of "
                          f"{', '.join(u.value for u in Userland)}") from None
    return cpu, userland


def transport_for(profile: Any, name: str | None = None) -> EmulatedTransport:
    """The transport of an emulated profile."""
    cpu, userland = emulation_of(profile)
    return EmulatedTransport(name or profile.name, cpu, userland)


def setup_targets(names: tuple[str, ...] | list[str], force: bool = False,
                  userland: str | None = None) -> list[dict[str, Any]]:
    """``edgeft targets setup NAME...``: set up the userland of each emulated profile named."""
    from edgeft.bench.profiles import get_profile

    wanted: dict[Userland, list[str]] = {}
    for name in names:
        profile = get_profile(name)
        if profile is None:
            raise UsageError(f"unknown target profile '{name}' (see `edgeft targets`)")
        if profile.kind != "emulated":
            raise UsageError(f"profile {name} is a real device ({profile.kind}); only emulated profiles "
                             "(rpi4-emu, rpi5-emu) are set up on this machine")
        cpu, chosen = emulation_of(profile)
        if userland:
            try:
                chosen = Userland(userland)
            except ValueError:
                raise UsageError(f"--userland must be one of {', '.join(u.value for u in Userland)}") from None
        wanted.setdefault(chosen, [])
        if cpu not in wanted[chosen]:
            wanted[chosen].append(cpu)
    results = []
    for chosen, cpus in wanted.items():
        result = setup_userland(chosen, tuple(cpus), force=force)
        log(f"set-up: {chosen.value} ({', '.join(cpus)}) {'built' if result.built else 'already set up'} in "
            f"{result.seconds:.1f} s, {result.size_bytes / 1e6:.0f} MB in {result.root}")
        results.append(result.to_dict())
    return results
