"""The CPU this process runs on, as ONNX Runtime's int8 kernels see it.

An int8 model's outputs depend on which kernels run it: x86 CPUs without VNNI multiply
uint8 activations by int8 weights with an instruction whose 16-bit pair sums saturate, VNNI
and ARM do not. A bundle records the profile of the machine its figures were measured on;
`auto` checks a quantised backend again wherever the profile differs (`host_check`).

The instruction sets come from NumPy's run-time CPUID probe, which sees what the process
can really execute (an emulator's or hypervisor's CPU model included), plus the Linux flags
NumPy does not probe (AVX-VNNI, AMX, I8MM).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Instruction sets that decide which int8 GEMM kernel ONNX Runtime's MLAS picks.
NUMPY_ISA = {
    "SSE41": "sse4.1",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VNNI": "avx512vnni",
    "ASIMD": "neon",
    "ASIMDDP": "dotprod",
    "SVE": "sve",
}
CPUINFO_ISA = {"avx_vnni": "avx-vnni", "amx_int8": "amx-int8", "i8mm": "i8mm"}
# x86 instruction sets whose u8 x s8 products accumulate in 32 bits, without saturation.
NO_SATURATION = {"avx512vnni", "avx-vnni", "amx-int8"}
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class HostProfile:
    """Architecture, int8-relevant instruction sets and ONNX Runtime version of a machine."""

    machine: str
    isa: tuple[str, ...]
    onnxruntime: str
    cpu: str = ""  # the model name, for people; not part of the comparison

    def to_dict(self) -> dict[str, Any]:
        """The form bundle.json records under `measured_on`."""
        return {
            "machine": self.machine,
            "isa": list(self.isa),
            "onnxruntime": self.onnxruntime,
            "cpu": self.cpu,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HostProfile:
        """A profile read back from bundle.json (ValueError when malformed)."""
        try:
            return cls(
                str(raw["machine"]),
                tuple(str(x) for x in raw["isa"]),
                str(raw["onnxruntime"]),
                str(raw.get("cpu", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed CPU profile {raw!r}") from exc

    def same_kernels(self, other: HostProfile) -> bool:
        """Whether ONNX Runtime runs the same kernels here as on `other`."""
        return (self.machine, self.isa, self.onnxruntime) == (
            other.machine,
            other.isa,
            other.onnxruntime,
        )

    @property
    def int8_saturates(self) -> bool:
        """Whether this CPU's u8 x s8 kernels can saturate (x86 without any VNNI or AMX)."""
        return self.machine in ("x86_64", "AMD64", "i686") and not NO_SATURATION & set(self.isa)

    def summary(self) -> str:
        """One line for logs and the CLI, e.g. `x86_64 avx2 (AMD EPYC), onnxruntime 1.32.0`."""
        cpu = f" ({self.cpu})" if self.cpu else ""
        isa = " ".join(self.isa) or "baseline"
        return f"{self.machine} {isa}{cpu}, onnxruntime {self.onnxruntime}"


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
    return dict(__cpu_features__)


def _cpuinfo() -> tuple[set[str], str]:
    """Linux's CPU flags (x86 `flags`, ARM `Features`) and model name; empty elsewhere."""
    flags: set[str] = set()
    model = ""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return flags, model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model


def _onnxruntime_version() -> str:
    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def host_profile() -> HostProfile:
    """This machine's profile (probed once per process)."""
    features = _numpy_features()
    flags, model = _cpuinfo()
    isa = {name for key, name in NUMPY_ISA.items() if features.get(key)}
    isa |= {name for flag, name in CPUINFO_ISA.items() if flag in flags}
    return HostProfile(
        platform.machine(),
        tuple(sorted(isa)),
        _onnxruntime_version(),
        model or platform.processor(),
    )
