"""The arithmetic of a network's forward pass, and what ``precision: auto`` chooses.

``float32``; ``mixed_float16`` (float16 compute, float32 weights: GPUs with tensor cores, slow on
CPUs); ``mixed_bfloat16`` (bfloat16 compute, float32 weights: CPUs with AVX512_BF16 or AMX, where
TensorFlow's oneDNN kernels use them, and GPUs of compute capability 8.0 or newer). Scores leave
the model as float32 whatever the arithmetic. Only the networks segpipe builds take another
precision; imported Keras models and the K-means baseline run as they were saved.

``auto`` (:func:`auto_precision`) takes bfloat16 where the hardware runs it fast and the
architecture's masks were measured to agree with float32's (:data:`BFLOAT16_AGREES`;
``jobs/benchmarks/precision.py``), float16 on older GPUs, float32 otherwise.
"""

from __future__ import annotations

import shutil
import subprocess

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CPU_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of the CPUs that compute bfloat16 natively
# Architectures whose bfloat16 masks agree with float32's within noise (Dice on held-out real data;
# docs/benchmarks.md "bfloat16 against float32"): auto takes bfloat16 for these only.
BFLOAT16_AGREES = ("unet", "unet-vgg16", "fcn8", "segnet", "deeplabv3plus")


def cpu_bfloat16_flag(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Return the flag of this machine's CPU that computes bfloat16 natively (``amx_bf16`` or
    ``avx512_bf16``), or "" where it has none or does not say."""
    try:
        with open(cpuinfo) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return ""
    return next((flag for flag in CPU_BFLOAT16_FLAGS if flag in flags), "")


def gpu_compute_capability() -> float | None:
    """Return the compute capability of this machine's first GPU (``nvidia-smi``), None where unknown."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def node_arithmetic(gpus: float) -> tuple[str, float | None]:
    """Return what the machine running this offers: its CPU's bfloat16 flag and, with ``gpus``, the GPU's
    compute capability (the remote probe :func:`auto_precision`'s caller runs on an actor's node)."""
    return cpu_bfloat16_flag(), gpu_compute_capability() if gpus else None


def auto_precision(architecture: str, gpus: float, cpu_flag: str, compute_capability: float | None) -> tuple[str, str]:
    """Return ``(precision, why)`` for ``precision: auto`` on actors with ``gpus`` GPUs each, on a node whose
    CPU has ``cpu_flag`` (:func:`cpu_bfloat16_flag`) and whose GPU has ``compute_capability``."""
    if architecture in ("imported", "kmeans"):
        return "float32", "imported models and K-means run as saved"
    if gpus:
        if compute_capability is None:
            return "float32", "the GPU's compute capability is unknown"
        if compute_capability < 8.0:
            return "mixed_float16", f"GPU compute capability {compute_capability:g} (bfloat16 needs 8.0)"
        fast = f"GPU compute capability {compute_capability:g}"
    elif cpu_flag:
        fast = f"the CPU has {cpu_flag.upper()}"
    else:
        return "float32", "the CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX)"
    if architecture not in BFLOAT16_AGREES:
        return "float32", f"{fast}, but {architecture}'s bfloat16 masks were not measured to agree with float32's"
    return "mixed_bfloat16", fast
