"""Which devices training runs on, and a warning when a GPU is present but TensorFlow cannot use it.

``pip install 'edgeft[train]'`` installs ``tensorflow`` without the CUDA libraries: on a GPU host it
then trains on the CPU without a word. edgeft looks for an NVIDIA GPU through the driver's own files
(no CUDA needed for that) and compares with what TensorFlow sees.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NVIDIA_DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
GPU_EXTRA_HINT = ("pip install 'edgeft[gpu]' (tensorflow[and-cuda] at edgeft's pinned TensorFlow version: "
                  "the CUDA and cuDNN libraries TensorFlow was built against)")


@dataclass(frozen=True)
class HostGpus:
    """NVIDIA GPUs the operating system reports, independent of TensorFlow."""

    names: tuple[str, ...]
    driver: str | None


def host_gpus(driver_file: Path = NVIDIA_DRIVER_VERSION_FILE, nvidia_smi: str | None = "nvidia-smi") -> HostGpus:
    """NVIDIA GPUs by ``nvidia-smi -L`` (names) or the kernel driver's version file (presence only)."""
    names: tuple[str, ...] = ()
    executable = shutil.which(nvidia_smi) if nvidia_smi else None
    if executable:
        try:
            listing = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=10).stdout
            names = tuple(line.split(" (UUID")[0].strip() for line in listing.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            names = ()
    driver = None
    try:
        text = driver_file.read_text(errors="replace")
        driver = next((line.split("Kernel Module")[-1].split()[0] for line in text.splitlines()
                       if "Kernel Module" in line), "unknown version")
    except (OSError, IndexError):
        driver = None
    if driver and not names:
        names = ("an NVIDIA GPU",)
    return HostGpus(names, driver)


def gpu_warning(host: HostGpus, tensorflow_gpus: int, built_with_cuda: bool) -> str | None:
    """A one-line warning when the host has a GPU that TensorFlow does not use, naming the fix."""
    if not host.names or tensorflow_gpus > 0:
        return None
    which = ", ".join(host.names)
    driver = f" (driver {host.driver})" if host.driver else ""
    if not built_with_cuda:
        return (f"warning: {which}{driver} is present but this TensorFlow has no CUDA support, so training "
                f"runs on the CPU; {GPU_EXTRA_HINT}")
    return (f"warning: {which}{driver} is present but TensorFlow cannot use it (driver, CUDA or cuDNN "
            f"library mismatch), so training runs on the CPU; check `nvidia-smi` and {GPU_EXTRA_HINT}")


def describe_devices(tf: Any) -> str:
    """One line naming the devices TensorFlow will train on (GPUs, else the CPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "devices: CPU only"
    names = []
    for gpu in gpus:
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):
            details = {}
        names.append(details.get("device_name") or gpu.name)
    return f"devices: {len(gpus)} GPU(s): {', '.join(names)}"
