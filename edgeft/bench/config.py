"""Frozen configuration of ``edgeft bench`` / ``edgeft doctor``, built by the CLI from its options."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class HostKeyPolicy(str, Enum):
    """How ssh treats a host whose key is not in known_hosts (a changed key is always refused)."""

    STRICT = "strict"          # StrictHostKeyChecking=yes: unknown host -> error
    ACCEPT_NEW = "accept-new"  # record the key of a host never seen before


@dataclass(frozen=True)
class SshOptions:
    """How to reach SSH targets: the system ssh honours ~/.ssh/config, keys, agent and ProxyJump."""

    config_file: Path | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    connect_timeout_s: int = 10
    remote_tmpdir: str = "/tmp"
    python: str | None = None  # remote Python; default: the profile's, or ~/.edgeft/venv/bin/python when present


@dataclass(frozen=True)
class BenchConfig:
    """Everything ``main_bench`` needs."""

    artifacts: tuple[Path, ...]
    targets: tuple[str, ...]
    out_dir: Path
    runs: int | None = None
    duration_s: float | None = None
    warmup: int = 10
    threads: tuple[int, ...] | None = None
    eval_source: Path | None = None
    eval_limit: int | None = None
    timeout_s: float = 1800.0
    ssh: SshOptions = SshOptions()
    max_drop: float = 1.0  # accuracy points: the recommendation is the fastest within this of the best


@dataclass(frozen=True)
class DoctorConfig:
    """Everything ``main_doctor`` needs."""

    target: str
    artifacts: tuple[Path, ...] = ()
    install: bool = False
    ssh: SshOptions = SshOptions()
