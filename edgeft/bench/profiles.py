"""Target profiles: the TOML files shipped in ``edgeft.targets`` (the repository's ``targets/``)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.errors import TargetError

PROFILE_NAMES = ("local", "rpi4", "rpi5", "coral-usb", "coral-devboard")


def targets_dir() -> Path:
    """The device package's folder holding the profiles, in a source checkout or an installed wheel."""
    try:
        import edgeft.targets as package

        folder = Path(package.__file__).resolve().parent
        if (folder / "__main__.py").is_file():
            return folder
    except ImportError:
        pass
    folder = Path(__file__).resolve().parents[2] / "targets"
    if (folder / "__main__.py").is_file():
        return folder
    raise TargetError("edgeft's targets/ folder (device code, profiles) is missing from this install; reinstall edgeft")


@dataclass(frozen=True)
class Profile:
    """One target profile: connection defaults, runtime and delegate, threads, install lines."""

    name: str
    description: str
    kind: str  # "local" or "ssh"
    emulated: bool
    host: str | None
    user: str | None
    port: int | None
    python: str
    tflite_runtime: str
    delegate: str
    threads: tuple[int, ...]
    venv: str
    install: dict[str, str] = field(default_factory=dict)
    system_install: str | None = None
    path: str = ""

    def pip_line(self, python_version: str) -> str | None:
        """The pip arguments for this device's Python (``"3.11.2"`` -> the ``"3.11"`` line)."""
        short = ".".join(python_version.split(".")[:2])
        return self.install.get(short)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "kind": self.kind,
            "host": self.host, "user": self.user, "port": self.port, "python": self.python,
            "runtime": self.tflite_runtime, "delegate": self.delegate, "threads": list(self.threads),
            "install": dict(self.install), "system_install": self.system_install, "path": self.path,
        }


def parse_toml(text: str) -> dict[str, Any]:
    """Parse TOML with the standard library's tomllib (3.11+) or its backport tomli (3.10)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    return tomllib.loads(text)


def load_profile_file(path: Path) -> Profile:
    """Read one profile TOML file."""
    try:
        data = parse_toml(Path(path).read_text("utf-8"))
    except (OSError, ValueError, SyntaxError) as error:
        raise TargetError(f"cannot read target profile {path}: {error}") from None
    connection = data.get("connection", {})
    runtime = data.get("runtime", {})
    install = dict(data.get("install", {}))
    venv = str(install.pop("venv", "~/.edgeft/venv"))
    system = install.pop("system", None)
    return Profile(
        name=str(data.get("name", Path(path).stem)),
        description=str(data.get("description", "")),
        kind=str(data.get("kind", "ssh")),
        emulated=bool(data.get("emulated", False)),
        host=connection.get("host"),
        user=connection.get("user"),
        port=int(connection["port"]) if connection.get("port") else None,
        python=str(connection.get("python", "python3")),
        tflite_runtime=str(runtime.get("tflite", "auto")),
        delegate=str(runtime.get("delegate", "none")),
        threads=tuple(int(t) for t in runtime.get("threads", [1])),
        venv=venv,
        install={str(k): str(v) for k, v in install.items()},
        system_install=str(system) if system else None,
        path=str(path),
    )


def list_profiles() -> list[Profile]:
    """Every profile shipped in ``targets/``."""
    return [load_profile_file(p) for p in sorted(targets_dir().glob("*.toml"))]


PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def is_profile_name(name: str) -> bool:
    """Whether ``name`` can name a shipped profile (letters, digits, ``-``, ``_``: never a path)."""
    return bool(PROFILE_NAME.fullmatch(name))


def get_profile(name: str) -> Profile | None:
    """The profile called ``name`` in ``targets/``, or None (also for a name that is a path, e.g. ``../x``)."""
    if not is_profile_name(name):
        return None
    path = targets_dir() / f"{name}.toml"
    return load_profile_file(path) if path.is_file() else None


def list_targets() -> list[dict[str, Any]]:
    """What ``edgeft targets`` prints: one dict per profile."""
    return [profile.describe() for profile in list_profiles()]
