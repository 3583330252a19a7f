"""``edgeft bench``, ``edgeft targets`` and ``edgeft doctor``: measure models on the device itself.

The on-device side is the device layer ``targets/`` (installed as ``edgeft.targets``), pushed
as one zipapp (:mod:`edgeft.bench.device_app`); this package stages files, drives the
transports (local subprocess or the system ``ssh``), and writes the reports.
"""

from __future__ import annotations

from typing import Any

from edgeft.bench.config import BenchConfig, DoctorConfig, HostKeyPolicy, SshOptions


def main_bench(config: BenchConfig) -> dict[str, Any]:
    """Run ``edgeft bench``; see :func:`edgeft.bench.core.main_bench`."""
    from edgeft.bench.core import main_bench as run

    return run(config)


def main_doctor(config: DoctorConfig) -> dict[str, Any]:
    """Run ``edgeft doctor``; see :func:`edgeft.bench.doctor.main_doctor`."""
    from edgeft.bench.doctor import main_doctor as run

    return run(config)


def list_targets() -> list[dict[str, Any]]:
    """The target profiles shipped with edgeft."""
    from edgeft.bench.profiles import list_targets as run

    return run()


__all__ = ["BenchConfig", "DoctorConfig", "HostKeyPolicy", "SshOptions", "list_targets", "main_bench", "main_doctor"]
