"""Facts about the device: Python, CPU and its instructions, memory, runtimes, temperatures, throttling."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from .backends.tflite import edgetpu_library_status, tflite_runtimes, version_of
from .contract import DEVICE_VERSION

# int8 runs faster than float only where the CPU has 8-bit dot-product instructions.
_SIMD_FLAGS = ("sse4_1", "avx2", "fma", "avx512f", "asimd", "neon")
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "asimddp", "i8mm")


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except OSError:
        return None


def temperatures() -> Dict[str, float]:
    """Thermal zone readings in degrees C."""
    result: Dict[str, float] = {}
    base = "/sys/class/thermal"
    try:
        zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
    except OSError:
        return result
    for zone in zones:
        raw = _read(os.path.join(base, zone, "temp"))
        kind = _read(os.path.join(base, zone, "type")) or zone
        try:
            if raw is not None:
                result[kind] = int(raw) / 1000.0
        except ValueError:
            continue
    return result


def throttle_state() -> Optional[str]:
    """``vcgencmd get_throttled`` on a Raspberry Pi (e.g. "0x0"), else None."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return match.group(1) if match else None


def throttled_during(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[bool]:
    """Pi: any throttling bit set after the run (vcgencmd); else None (unknown)."""
    state = after.get("throttled")
    if state is None:
        return None
    try:
        now, then = int(state, 16), int(before.get("throttled") or "0x0", 16)
    except ValueError:
        return None
    # bits 0-3: throttling now; bits 16-19: has happened since boot (new ones appeared during the run)
    return bool(now & 0xF) or (now & 0xF0000) != (then & 0xF0000)


def cpu_features(cpuinfo: str) -> Tuple[List[str], List[str]]:
    """(SIMD extensions, int8 dot-product extensions) named in /proc/cpuinfo's flags/Features."""
    flags = set()
    for match in re.finditer(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M):
        flags.update(match.group(1).split())
    return [f for f in _SIMD_FLAGS if f in flags], [f for f in _INT8_DOT_FLAGS if f in flags]


def doctor() -> Dict[str, Any]:
    """Facts about this device and what it can run (needs neither numpy nor an interpreter)."""
    facts: Dict[str, Any] = {
        "runner_version": DEVICE_VERSION,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "machine": platform.machine(),
        "system": platform.system(),
        "glibc": "-".join(platform.libc_ver()) or None,
        "cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperatures_c": temperatures(),
        "throttled": throttle_state(),
        "mem_available_mb": None,
        "mem_total_mb": None,
        "numpy": version_of("numpy"),
        "tflite_runtimes": [{"name": n, "version": v} for n, v in tflite_runtimes()],
        "onnxruntime": version_of("onnxruntime"),
        "edgetpu_library": edgetpu_library_status()[0],
    }
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read("/etc/os-release") or "", re.M)
    facts["os"] = match.group(1) if match else platform.platform()
    cpuinfo = _read("/proc/cpuinfo") or ""
    facts["cpu_model"] = platform.processor() or None
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(r"^%s\s*:\s*(.+)$" % key, cpuinfo, re.M)
        if match:
            facts["cpu_model"] = match.group(1).strip()
            break
    facts["simd"], facts["int8_isa"] = cpu_features(cpuinfo)
    meminfo = _read("/proc/meminfo") or ""
    for key, field in (("MemAvailable", "mem_available_mb"), ("MemTotal", "mem_total_mb")):
        match = re.search(r"^%s:\s*(\d+) kB" % key, meminfo, re.M)
        if match:
            facts[field] = round(int(match.group(1)) / 1024.0, 1)
    return facts
