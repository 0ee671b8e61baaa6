"""The machine under the numbers: CPU model, cores, the instruction-set features that decide which kernels run.

A latency means little without the CPU that measured it. XNNPACK (and ONNX Runtime's
MLAS) pick their int8 kernels by instruction set at run time: with integer dot-product
instructions (x86 AVX-512 VNNI, AVX-VNNI or AMX; ARMv8.2-A's dot product, on most phones
since 2018) one instruction does four int8 multiply-adds per lane and int8 runs faster
than float32; without them (an AVX2-only x86) each int8 is widened to 16 bits and
multiplied in pairs, no fewer instructions per multiply-add than float32's FMA, plus
requantization, and int8 can come out slower than float32.

Features are read from the operating system (``/proc/cpuinfo`` on Linux, ``sysctl`` on
macOS), never guessed; where they cannot be read they are reported as unknown.

    >>> m = tfc.machine.current()
    >>> m.summary()
    'AMD EPYC (x86_64, 2 logical cores): AVX2, FMA; no AVX-512F, ... · ai-edge-litert 2.3.0, ...'
    >>> m.int8_dot_product
    False
"""

import dataclasses
import functools
import importlib.metadata
import os
import platform
import subprocess

# Features that decide which kernels run, by architecture: (display name, names the OS uses for it).
X86_FEATURES = (
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
    ("AVX-512F", ("avx512f",)),
    ("AVX-512BW", ("avx512bw",)),
    ("AVX-512 VNNI", ("avx512_vnni", "avx512vnni")),
    ("AVX-VNNI", ("avx_vnni", "avxvnni")),
    ("AMX-INT8", ("amx_int8", "amx-int8")),
)
ARM64_FEATURES = (
    ("NEON dot product", ("asimddp", "feat_dotprod")),
    ("i8mm", ("i8mm", "feat_i8mm")),
    ("fp16", ("asimdhp", "fphp", "feat_fp16")),
)
# Any one of these gives XNNPACK int8 kernels with integer dot products.
INT8_DOT_PRODUCT = ("AVX-512 VNNI", "AVX-VNNI", "AMX-INT8", "NEON dot product", "i8mm")
# The wheels whose kernels were timed (ai-edge-litert carries XNNPACK).
PACKAGES = ("ai-edge-litert", "tensorflow", "onnxruntime", "tflite-micro")


@dataclasses.dataclass(frozen=True)
class Machine:
    """A CPU and the runtimes on it. ``features``: ``{display name: True/False}`` (empty when unreadable)."""

    cpu: str
    arch: str
    logical_cores: int
    features: dict
    versions: dict

    @property
    def int8_dot_product(self):
        """True / False: whether the CPU has integer dot-product instructions; None when unknown."""
        if not self.features:
            return None
        return any(self.features.get(name) for name in INT8_DOT_PRODUCT)

    def summary(self):
        """One line: CPU, cores, features present and absent, runtime versions."""
        have = [name for name, on in self.features.items() if on]
        lack = [name for name, on in self.features.items() if not on]
        if self.features:
            isa = (", ".join(have) or "none of " + ", ".join(lack)) + (f"; no {', '.join(lack)}" if have and lack else "")
        else:
            isa = "instruction-set features unknown"
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return f"{self.cpu} ({self.arch}, {self.logical_cores} logical cores): {isa}" + (f" · {versions}" if versions else "")

    def to_dict(self):
        return dict(dataclasses.asdict(self), int8_dot_product=self.int8_dot_product, summary=self.summary())

    @classmethod
    def from_dict(cls, d):
        """A `Machine` from `to_dict`'s output (e.g. a report measured elsewhere); None for None."""
        if not d:
            return None
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def parse_cpuinfo(text, arch=None):
    """``(cpu model, {feature: bool})`` from the text of Linux's ``/proc/cpuinfo``."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").lower().split())
    arch = arch or ("arm64" if "Features" in fields and "flags" not in fields else "x86_64")
    cpu = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    if cpu is None and "CPU part" in fields:
        cpu = f"Arm CPU implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return cpu or "unknown CPU", _features(flags, arch)


def _features(flags, arch):
    table = ARM64_FEATURES if _is_arm(arch) else X86_FEATURES if _is_x86(arch) else ()
    if not flags:
        return {}
    return {name: any(alias in flags for alias in aliases) for name, aliases in table}


def _is_arm(arch):
    return arch.lower() in ("arm64", "aarch64")


def _is_x86(arch):
    return arch.lower() in ("x86_64", "amd64", "i686", "i386", "x86")


def _sysctl(*names):
    """macOS: ``{name: value}`` of the sysctl keys it knows."""
    try:
        out = subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _read_macos(arch):
    values = _sysctl("machdep.cpu.brand_string", "machdep.cpu.features", "machdep.cpu.leaf7_features",
                     "hw.optional.arm.FEAT_DotProd", "hw.optional.arm.FEAT_I8MM", "hw.optional.arm.FEAT_FP16")
    flags = set(" ".join([values.get("machdep.cpu.features", ""), values.get("machdep.cpu.leaf7_features", "")])
                .lower().replace(".", "_").split())
    flags |= {k.rsplit(".", 1)[1].lower() for k, v in values.items() if k.startswith("hw.optional.arm.") and v == "1"}
    return values.get("machdep.cpu.brand_string", "unknown CPU"), _features(flags, arch)


def _versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _logical_cores():
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def current():
    """The `Machine` this process runs on (read once)."""
    arch = platform.machine() or "unknown"
    cpu, features = "unknown CPU", {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu, features = parse_cpuinfo(f.read(), arch)
    elif platform.system() == "Darwin":
        cpu, features = _read_macos(arch)
    if cpu == "unknown CPU" and platform.processor():
        cpu = platform.processor()
    return Machine(cpu=cpu, arch=arch, logical_cores=_logical_cores(), features=features, versions=_versions())


def int8_without_dot_product_note(machine, measured=None, brief=False):
    """Why int8 can be slower than float32 on ``machine`` (None if it has integer dot products).

    Args:
        machine: a `Machine` (e.g. ``Machine.from_dict(report.machine)``).
        measured: what was seen, e.g. ``"int8 ran at 0.87x the speed of float32 on xnnpack/1t"``.
        brief: one sentence, for the report of a single file.
    """
    if machine is None or machine.int8_dot_product:
        return None
    if machine.int8_dot_product is None:
        lacking = f"whether this CPU ({machine.cpu}) has integer dot-product instructions could not be read"
    else:
        lacking = f"this CPU ({machine.cpu}) has none of " + ", ".join(n for n in INT8_DOT_PRODUCT if n in machine.features)
    if brief:
        return (f"int8 kernels here: {lacking}, so int8 latency on this host is not that of a phone "
                "(ARMv8.2-A dot product) or a VNNI x86 (see tfc.machine).")
    return ((f"{measured} on this host: " if measured else "") + lacking + ". Without integer dot products, "
            "int8 kernels widen every value to 16 bits and multiply in pairs: no fewer instructions per "
            "multiply-add than float32's FMA, plus requantization. CPUs with them (ARMv8.2-A on most phones since "
            "2018; x86 with AVX-512 VNNI or AVX-VNNI) do four int8 multiply-adds per lane per instruction: time "
            "int8 there, or judge it here by the hardware-independent figures (MACs, weight bytes, TFLM arena).")
