"""Turning ``--target`` values into (transport, profile) pairs: local, a profile, ``user@host[:port]``, a fleet file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeft.bench.config import SshOptions
from edgeft.bench.profiles import Profile, get_profile, is_profile_name, parse_toml
from edgeft.bench.results import clean_text
from edgeft.bench.transport import LocalTransport, SshTransport, Transport
from edgeft.errors import TargetError


@dataclass
class ResolvedTarget:
    """A target ready to run: its name, how to reach it, and its profile (None for a bare SSH host)."""

    name: str
    transport: Transport
    profile: Profile | None
    python: str | None


def resolve_targets(values: tuple[str, ...] | list[str], ssh: SshOptions) -> list[ResolvedTarget]:
    """Expand ``--target`` values (fleet files included) into targets with unique names."""
    resolved: list[ResolvedTarget] = []
    for value in values:
        path = Path(value)
        if value.endswith((".toml", ".json")) or (path.is_file() and get_profile(value) is None and "@" not in value):
            resolved.extend(_fleet(path, ssh))
        else:
            resolved.append(resolve_target(value, ssh))
    names = [t.name for t in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TargetError(f"target named more than once: {', '.join(duplicates)}")
    if not resolved:
        raise TargetError("no target given: use --target local, a profile (see `edgeft targets`), or user@host")
    return resolved


def resolve_target(value: str, ssh: SshOptions, name: str | None = None, profile_name: str | None = None,
                   python: str | None = None) -> ResolvedTarget:
    """One target: ``local``, a profile name (its connection defaults), or ``[user@]host[:port]``."""
    if profile_name is not None and not is_profile_name(str(profile_name)):
        raise TargetError(f"bad profile name {clean_text(repr(profile_name), 100)}: a profile is named by letters, "
                          "digits, '-' and '_' (see `edgeft targets`), never by a path")
    profile = get_profile(profile_name or value) if (profile_name or get_profile(value)) else None
    if profile_name and profile is None:
        raise TargetError(f"unknown target profile '{profile_name}' (see `edgeft targets`)")
    python = python or ssh.python
    if value == "local" or (profile is not None and profile.kind == "local" and value == profile.name):
        return ResolvedTarget(name or "local", LocalTransport(name or "local"), profile or get_profile("local"),
                              python or None)
    if profile is not None and profile.kind == "emulated" and value == profile.name:
        from edgeft.bench.emulated import transport_for

        emulated = transport_for(profile, name or profile.name)
        return ResolvedTarget(name or profile.name, emulated, profile, emulated.python)
    if profile is not None and value == profile.name:
        if not profile.host:
            raise TargetError(f"profile {profile.name} has no host: use --target user@host with --profile")
        transport = SshTransport(profile.host, ssh, name=name or profile.name, user=profile.user, port=profile.port)
        return ResolvedTarget(name or profile.name, transport, profile, python or _profile_python(profile))
    if not value.startswith("-") and ("/" in value or any(c.isspace() for c in value)):  # "-": SshTransport says
        raise TargetError(f"bad target '{value}': expected local, a profile name, or [user@]host[:port]")
    transport = SshTransport(value, ssh, name=name or value)
    return ResolvedTarget(name or value, transport, profile, python or (_profile_python(profile) if profile else None))


def _profile_python(profile: Profile) -> str | None:
    return profile.python if profile.python and profile.python != "python3" else None


def _fleet(path: Path, ssh: SshOptions) -> list[ResolvedTarget]:
    """A fleet file: ``[[target]]`` tables (TOML) or a JSON list, each with name, host or profile, user, port, python."""
    if not path.is_file():
        raise TargetError(f"fleet file not found: {path}")
    try:
        text = path.read_text("utf-8")
        if path.suffix == ".json":
            import json

            entries = json.loads(text)
            entries = entries.get("target", entries) if isinstance(entries, dict) else entries
        else:
            entries = parse_toml(text).get("target", [])
    except (OSError, ValueError, SyntaxError) as error:
        raise TargetError(f"cannot read fleet file {path}: {error}") from None
    result = []
    if not isinstance(entries, list):
        raise TargetError(f"fleet file {path}: expected a list of targets")
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not (entry.get("host") or entry.get("profile")):
            raise TargetError(f"fleet file {path}: target {number} needs a host or a profile")
        for key in ("name", "host", "user", "profile", "python"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or clean_text(value) != value):
                raise TargetError(f"fleet file {path}: target {number}: '{key}' must be text without control "
                                  "characters")
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not str(port).isdigit()):
            raise TargetError(f"fleet file {path}: target {number}: 'port' must be a number")
        host = entry.get("host")
        if host and entry.get("user"):
            host = f"{entry['user']}@{host}"
        if host and entry.get("port"):
            host = f"{host}:{entry['port']}"
        value = host or entry["profile"]
        result.append(resolve_target(value, ssh, name=entry.get("name"), profile_name=entry.get("profile"),
                                     python=entry.get("python")))
    return result
