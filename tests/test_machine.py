"""The machine under the numbers: features read from the OS, named in every report, and why int8 lost."""

import dataclasses
import os
import platform

import pytest

import tfcompress as tfc
from tfcompress.core import machine

# Excerpts of real /proc/cpuinfo texts: this project's AVX2-only EPYC, an AVX-512 VNNI Xeon, an arm64 board.
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 smep bmi2 vaes vpclmulqdq
"""
XEON_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bitalg
"""
ARM64_DOTPROD = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


@pytest.mark.parametrize("text,arch,cpu,present,dot", [
    (EPYC_AVX2, "x86_64", "AMD EPYC", {"AVX2", "FMA"}, False),
    (XEON_VNNI, "x86_64", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
     {"AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512 VNNI"}, True),
    (ARM64_DOTPROD, "aarch64", "Arm CPU implementer 0x41 part 0xd0c", {"NEON dot product", "fp16"}, True),
], ids=["epyc-avx2", "xeon-vnni", "arm64-dotprod"])
def test_features_are_read_from_cpuinfo(text, arch, cpu, present, dot):
    name, features = machine.parse_cpuinfo(text, arch)
    assert name == cpu
    assert {k for k, on in features.items() if on} == present
    m = machine.Machine(cpu=name, arch=arch, logical_cores=2, features=features, versions={})
    assert m.int8_dot_product is dot
    assert (machine.int8_without_dot_product_note(m) is None) == dot


def test_unreadable_features_are_unknown_not_guessed():
    name, features = machine.parse_cpuinfo("processor\t: 0\n", "x86_64")
    m = machine.Machine(cpu=name, arch="x86_64", logical_cores=1, features=features, versions={})
    assert features == {} and m.int8_dot_product is None
    assert "instruction-set features unknown" in m.summary()
    assert "could not be read" in machine.int8_without_dot_product_note(m)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_this_machine_matches_proc_cpuinfo():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    flags = set(next(line for line in text.splitlines() if line.startswith(("flags", "Features"))).split(":")[1].split())
    m = machine.current()
    table = dict(machine.ARM64_FEATURES if platform.machine() in ("aarch64", "arm64") else machine.X86_FEATURES)
    assert m.features == {name: bool(flags & set(aliases)) for name, aliases in table.items()}
    assert m.cpu in text and m.arch == platform.machine() and 1 <= m.logical_cores <= os.cpu_count()
    assert m.versions["ai-edge-litert"] and m.versions["tensorflow"]
    assert machine.Machine.from_dict(m.to_dict()) == m


@pytest.fixture(scope="module")
def float_and_int8_reports(digits_tflites, digits_data):
    _, (x_test, y_test) = digits_data
    return tfc.evaluate_many(digits_tflites, x=x_test, y=y_test, num_runs=5)


def test_reports_name_the_machine_and_count_macs(float_and_int8_reports):
    f32, int8 = float_and_int8_reports["float32"], float_and_int8_reports["int8"]
    host = machine.current()
    assert f32.to_dict()["machine"]["summary"] == host.summary() == int8.machine["summary"]
    assert f"Measured on: {host.summary()}" in int8.to_markdown()
    # MACs are the file's compute, the same for float32 and int8: the small CNN's conv1, conv2, fc1 and logits.
    assert f32.macs == int8.macs == 8 * 8 * 16 * 9 + 8 * 8 * 32 * 144 + 512 * 32 + 32 * 10
    assert f"Timed on: {host.summary()}." in tfc.compare(float_and_int8_reports)
    # An int8 file measured on a CPU without integer dot products says so in its own report.
    assert ("int8 kernels here:" in int8.to_markdown()) == (host.int8_dot_product is False)
    # Parity of a quantized output is also given in output steps.
    assert "max_diff_steps" in int8.parity["backends"]["xnnpack"]


def _as_if(report, summary_machine, median_ms):
    latency = [dataclasses.replace(x, median_ms=median_ms) for x in report.latency]
    return dataclasses.replace(report, machine=summary_machine.to_dict(), latency=latency)


@pytest.mark.parametrize("text,arch,says", [
    (EPYC_AVX2, "x86_64", "Without integer dot products"),
    (XEON_VNNI, "x86_64", "although this CPU has integer dot products"),
], ids=["avx2", "vnni"])
def test_compare_explains_an_int8_file_slower_than_float32(float_and_int8_reports, text, arch, says):
    name, features = machine.parse_cpuinfo(text, arch)
    m = machine.Machine(cpu=name, arch=arch, logical_cores=2, features=features, versions={})
    f32, int8 = float_and_int8_reports["float32"], float_and_int8_reports["int8"]
    slower = tfc.compare({"float32": _as_if(f32, m, 1.0), "int8": _as_if(int8, m, 1.25)})
    assert "int8 ran at 0.80x the speed of float32 on xnnpack/1t" in slower and says in slower
    assert name in slower
    faster = tfc.compare({"float32": _as_if(f32, m, 1.0), "int8": _as_if(int8, m, 0.5)})
    assert "ran at" not in faster and "Timed on" in faster
