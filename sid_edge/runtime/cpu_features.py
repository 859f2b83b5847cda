"""The CPU at hand: instruction-set features that decide CPU kernels, and a rough FP32 peak (standard library only).

Read from ``/proc/cpuinfo`` on Linux (the kernel's flag names: ``avx512_vnni``, ``avx_vnni``, ``amx_int8``,
``avx512_bf16``, ``amx_bf16``, ...); elsewhere only the architecture is known (every feature reads as absent and
:attr:`CpuFeatures.known` is False).

Decisions made here, at session creation, from the CPU rather than baked into the artifact:

* **INT8 accumulation in ONNX Runtime** (:func:`ort_int8_session_config`). On x86-64 ONNX Runtime runs a Q/DQ
  INT8 graph's MatMul/Conv with a U8S8 integer GEMM. Without VNNI (SSE4.1, AVX2, AVX-512 before VNNI) that kernel
  uses ``vpmaddubsw``, which saturates its 16-bit pair sums, so the result is not the exact integer product;
  ONNX Runtime's session config ``session.x64quantprecision=1`` switches those CPUs to an exact U8U8 kernel
  (source: ``onnxruntime_session_options_config_keys.h``, ``kOrtSessionOptionsAvx2PrecisionMode``: "x64
  SSE4.1/AVX2/AVX512 (with no VNNI) has overflow problem with quantized matrix multiplication with U8S8"). With
  VNNI (AVX512-VNNI, AVX-VNNI) or AMX-INT8 the default kernel accumulates in 32 bits and is exact; the setting then
  only slows it (1.5x slower, bit-identical logits, measured on an AVX512-VNNI EPYC with the ViT-L-14-336 INT8
  graph, issue 16). On other architectures (ARM64) the setting has no effect and is not set.
* **BF16 units** (:attr:`CpuFeatures.bf16`): AVX512-BF16 or AMX-BF16, where OpenVINO's BF16 inference hint runs
  natively (without them OpenVINO would ignore the hint and compute FP32).
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

#: ONNX Runtime session config key selecting the exact U8U8 integer GEMM on x86-64 (see module docstring).
ORT_X64_QUANT_PRECISION = "session.x64quantprecision"
#: /proc/cpuinfo flags meaning the INT8 dot product accumulates exactly in 32 bits (VNNI or AMX).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: /proc/cpuinfo flags meaning native BF16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The flags the benchmarks print.
REPORTED_FLAGS = ("sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "bf16", "i8mm", "sve")

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers.

    Attributes:
        machine: ``platform.machine()`` lowercased (``x86_64``, ``aarch64``, ...).
        vendor: ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``) or "" when unknown.
        model_name: the ``model name`` line, or "".
        family: x86 ``cpu family`` (25 = AMD Zen 3/4, 26 = Zen 5; 6 = Intel Core/Xeon) or None.
        flags: the kernel's feature flags (lowercase).
        cores: logical CPUs this process may run on (``os.sched_getaffinity``).
        mhz: the reported clock in MHz (``cpu MHz``; a current, not a peak, figure) or None.
        known: False when no flags could be read (the kernel choices then take the safe side).
    """

    machine: str
    vendor: str = ""
    model_name: str = ""
    family: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    cores: int = 1
    mhz: float | None = None
    known: bool = False

    @property
    def x86_64(self) -> bool:
        return self.machine in _X86

    @property
    def int8_dot(self) -> str | None:
        """The flag giving exact 32-bit INT8 dot products (``avx512_vnni``, ``avx_vnni``, ``amx_int8``), or None."""
        return next((f for f in INT8_DOT_FLAGS if f in self.flags), None)

    @property
    def bf16(self) -> str | None:
        """The flag giving native BF16 arithmetic (``avx512_bf16`` or ``amx_bf16``), or None."""
        return next((f for f in BF16_FLAGS if f in self.flags), None)

    @property
    def vector_bits(self) -> int:
        """Widest SIMD register: 512 (AVX-512F), 256 (AVX/AVX2), 128 (SSE, NEON) bits."""
        if "avx512f" in self.flags:
            return 512
        if "avx" in self.flags or "avx2" in self.flags:
            return 256
        return 128

    def peak_fp32_gflops(self, fma_units: int | None = None) -> tuple[float | None, str]:
        """Rough FP32 peak of the cores this process may use, in GFLOP/s, and how it was computed.

        peak = cores x clock (GHz) x FP32 lanes per FMA x 2 FLOP per FMA x FMA units per core. Lanes = vector
        width / 32. ``fma_units`` default: 2 (Intel Xeon/Core with AVX2 or AVX-512, AMD Zen); AMD Zen 4 runs a
        512-bit FMA as two 256-bit halves, so for family 25 with AVX-512 the width counts as 256. The clock is the
        reported current clock, so the figure is an estimate (turbo and AVX-512 down-clocking move it).
        Returns (None, reason) when the clock is unknown.
        """
        if not self.mhz:
            return None, "clock unknown"
        bits = self.vector_bits
        note = ""
        if self.vendor == "AuthenticAMD" and self.family == 25 and bits == 512:
            bits, note = 256, " (Zen 4 double-pumps 512-bit FMAs)"
        units = fma_units or 2
        lanes = bits // 32
        gflops = self.cores * self.mhz / 1000 * lanes * 2 * units
        how = (f"{self.cores} cores x {self.mhz / 1000:.2f} GHz x {lanes} FP32 lanes ({bits}-bit{note}) x 2 FLOP/FMA "
               f"x {units} FMA units")
        return gflops, how

    def summary(self) -> dict:
        """JSON-able record for benchmark results: model, architecture, logical CPUs, clock, kernel-relevant flags."""
        return {"model": self.model_name or self.vendor or "unknown", "machine": self.machine, "cores": self.cores,
                "mhz": self.mhz, "flags": [f for f in REPORTED_FLAGS if f in self.flags]}

    def describe(self) -> str:
        """One line: model, cores, clock and the kernel-relevant flags present."""
        present = [f for f in REPORTED_FLAGS if f in self.flags]
        clock = f", {self.mhz:.0f} MHz" if self.mhz else ""
        name = self.model_name or self.vendor or "unknown CPU"
        flags = ", ".join(present) if self.known else "flags unknown"
        return f"{name} ({self.machine}, {self.cores} logical CPUs{clock}; {flags})"


def parse_cpuinfo(text: str, machine: str, cores: int = 1) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (first processor block; x86 ``flags`` or ARM ``Features``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flag_text = fields.get("flags") or fields.get("features") or ""
    flags = frozenset(flag_text.lower().split())
    mhz = _float(fields.get("cpu mhz"))
    family = fields.get("cpu family")
    return CpuFeatures(
        machine=machine.lower(), vendor=fields.get("vendor_id", ""), model_name=fields.get("model name", ""),
        family=int(family) if family and family.isdigit() else None, flags=flags, cores=max(1, cores), mhz=mhz,
        known=bool(flags),
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _max_mhz() -> float | None:
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(p.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """The features of this machine's CPU (cached for the process). Never raises: unreadable ``/proc/cpuinfo``
    gives ``known=False``."""
    machine = platform.machine() or "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")[:1_000_000]
    except OSError:
        return CpuFeatures(machine=machine.lower(), cores=cores)
    f = parse_cpuinfo(text, machine, cores)
    peak_mhz = _max_mhz()
    if peak_mhz:
        f = CpuFeatures(**{**f.__dict__, "mhz": peak_mhz})
    if not f.model_name:  # ARM: model name lives elsewhere
        m = re.search(r"^(?:Hardware|CPU part)\s*:\s*(.+)$", text, re.M)
        if m:
            f = CpuFeatures(**{**f.__dict__, "model_name": m.group(1).strip()})
    return f


# ------------------------------------------------------------------------------------------ ONNX Runtime INT8 kernels
def ort_int8_session_config(needs_exact_accumulation: bool, cpu: CpuFeatures | None = None) -> tuple[dict[str, str], str]:
    """ONNX Runtime session config entries for an INT8 graph on this CPU, and a one-line reason.

    Args:
        needs_exact_accumulation: the manifest says the graph needs exact integer accumulation
            (``needs_exact_int8_accumulation``; see :func:`needs_exact_int8_accumulation`).
        cpu: the CPU (default :func:`detect`).

    Returns ``({"session.x64quantprecision": "1"}, reason)`` on x86-64 CPUs without VNNI/AMX-INT8 (and on x86-64
    CPUs whose flags cannot be read: the exact kernel is the safe side), else ``({}, reason)``.
    """
    cpu = cpu or detect()
    if not needs_exact_accumulation:
        return {}, "INT8 GEMMs: ONNX Runtime's default kernel (the graph does not ask for exact accumulation)"
    if not cpu.x86_64:
        return {}, f"INT8 GEMMs: ONNX Runtime's default kernel (exact on {cpu.machine})"
    if cpu.int8_dot:
        return {}, f"INT8 GEMMs: ONNX Runtime's default U8S8 kernel (exact with {cpu.int8_dot.upper()})"
    why = "this CPU has no VNNI/AMX-INT8" if cpu.known else "CPU flags unreadable"
    return {ORT_X64_QUANT_PRECISION: "1"}, f"INT8 GEMMs: exact U8U8 kernel ({why}; U8S8 would saturate)"


def needs_exact_int8_accumulation(entry) -> bool:
    """Whether a manifest model entry (``ModelEntry`` or its dict) needs exact integer accumulation.

    Reads ``needs_exact_int8_accumulation`` (written since issue 16); artifacts written before it carry the old
    baked setting ``onnxruntime.session_config["session.x64quantprecision"] == "1"``, read as True.
    """
    flag = _field(entry, "needs_exact_int8_accumulation")
    if flag is not None:
        return flag is True
    config = _field(_field(entry, "onnxruntime"), "session_config")
    return isinstance(config, dict) and str(config.get(ORT_X64_QUANT_PRECISION, "0")) == "1"


def _field(block, key: str):
    """``block[key]`` of a dict, the attribute of a typed manifest block (extra keys included), else None."""
    if block is None:
        return None
    return block.get(key) if isinstance(block, dict) else getattr(block, key, None)
