"""The TFLite Micro backend: arena vs TFLM's own allocation, agreement with LiteRT, and every audit rule on a real file."""

import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc

runtime = pytest.importorskip("tflite_micro").runtime


@pytest.fixture(scope="module")
def files(trained_digits_model, digits_data):
    (x, _), _ = digits_data
    model = trained_digits_model
    return {mode: bytes(tfc.to_tflite(model, mode=mode, representative_data=x[:128]))
            for mode in ("int8", "float32", "dynamic", "float16")}


def _allocates(raw, arena_size):
    try:
        runtime.Interpreter.from_bytes(raw, arena_size=arena_size)
        return True
    except RuntimeError:
        return False


def test_arena_is_tflms_own_figure_and_the_smallest_that_allocates(files, digits_data):
    (_, _), (x, y) = digits_data
    report = tfc.evaluate_tflite(files["int8"], x=x, y=y, backends=("xnnpack", "micro"), num_runs=3)
    arena = report.micro.arena_bytes
    lo, hi = 256, 1 << 22
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _allocates(files["int8"], mid) else (mid, hi)
    assert abs(hi - arena) <= 16, (hi, arena)
    assert not _allocates(files["int8"], arena - 64)
    assert report.micro.flash_bytes == len(files["int8"])


def test_int8_agrees_with_litert_and_reports_accuracy(files, digits_data):
    (_, _), (x, y) = digits_data
    r = tfc.evaluate_tflite(files["int8"], x=x, y=y, backends=("xnnpack", "micro"), num_runs=3, micro_samples=200)
    m = r.micro
    # TFLite Micro's reference kernels requantize like LiteRT's built-in ones (fixed-point multiplier, rounding
    # twice), XNNPACK with a float scale (rounding once): an int8 output sits a step apart now and then (at most
    # one from the output layer, about one more from a step flipped upstream), which flips top-1 only where two
    # logits are within a step of each other.
    step = tfc.inspect_tflite(files["int8"]).output_steps[0]
    assert m.runs and m.samples == 200 and m.agreement >= 0.99 and m.max_abs_diff <= 2 * step + 1e-6
    assert m.accuracy == pytest.approx(r.accuracy, abs=0.03)  # r.accuracy is over all of x
    assert m.host_ms > 0 and "not MCU" in m.to_markdown()
    assert "TFLite Micro" in r.to_markdown() and "micro" not in [lat.backend for lat in r.latency]
    # Only micro: accuracy comes from TFLM, nothing is timed on LiteRT.
    only = tfc.evaluate_tflite(files["int8"], x=x[:50], y=y[:50], backends=("micro",))
    assert only.latency == [] and only.accuracy_backend == "micro" and only.accuracy == only.micro.accuracy


def _rules(raw):
    return {f.rule for f in tfc.micro.audit(raw) if f.blocking}


def test_float32_runs_with_a_note_and_dynamic_float16_are_refused_with_the_fix(files):
    assert _rules(files["int8"]) == set() and tfc.micro.audit(files["int8"]) == []
    assert [f.rule for f in tfc.micro.audit(files["float32"])] == ["float_compute"]
    r = tfc.evaluate_tflite(files["float32"], backends=("micro",))
    assert r.micro.runs and r.micro.max_abs_diff < 1e-4
    for mode, rule in (("dynamic", "hybrid"), ("float16", "float16")):
        assert rule in _rules(files[mode])
        report = tfc.evaluate_tflite(files[mode], backends=("xnnpack", "micro"), num_runs=2)
        assert "micro" in report.failed_backends and "mode='int8'" in report.failed_backends["micro"]
        assert not report.micro.runs and report.latency  # LiteRT still measured
        with pytest.raises(tfc.MicroCompatibilityError, match="mode='int8'"):
            tfc.evaluate_tflite(files[mode], backends=("micro",))


def test_missing_op_is_named_from_the_audit_and_from_tflm_itself():
    inputs = keras.Input((10,))
    top = keras.layers.Lambda(lambda v: tf.math.top_k(v, 3)[0])(keras.layers.Dense(10)(inputs))
    raw = bytes(tfc.to_tflite(keras.Model(inputs, top), mode="float32"))
    assert "missing_op" in _rules(raw)
    assert "TOPK_V2" in tfc.micro.audit(raw)[0].message
    # Past the audit, TFLM's own refusal (printed by the native code in a child process) names the op too.
    with pytest.raises(tfc.MicroCompatibilityError, match="TOPK_V2"):
        tfc.micro.first_load(raw, 1)


def test_litert_quantizer_files_int4_and_per_channel_weight_only(files, digits_data):
    quantizer = pytest.importorskip("litert_quantizer")
    (_, _), (x, _) = digits_data
    out = {}
    for recipe in ("weight_only_wi8_afp32", "weight_only_wi4_afp32"):
        q = quantizer.Quantizer(files["float32"])
        q.load_quantization_recipe(getattr(quantizer.recipe, recipe)())
        out[recipe] = bytes(q.quantize().quantized_model)
    assert "int4" in _rules(out["weight_only_wi4_afp32"])
    assert _rules(out["weight_only_wi8_afp32"]) == {"per_channel_dequantize"}
    # It runs on TFLM, but wrongly: the report measures how wrong and marks it as not running.
    r = tfc.evaluate_tflite(out["weight_only_wi8_afp32"], x=x[:100], backends=("xnnpack", "micro"), num_runs=2)
    fine = tfc.evaluate_tflite(files["float32"], x=x[:100], backends=("xnnpack", "micro"), num_runs=2)
    assert not r.micro.runs and r.micro.samples == 100 and "Measured:" in r.micro.error
    assert r.micro.max_abs_diff > 100 * max(fine.micro.max_abs_diff, 1e-6)


def test_compare_puts_the_arena_beside_litert(files, digits_data):
    (_, _), (x, y) = digits_data
    reports = tfc.evaluate_many({"float32": files["float32"], "int8": files["int8"], "dynamic": files["dynamic"]},
                                x=x, y=y, backends=("xnnpack", "micro"), num_runs=3, micro_samples=50)
    table = tfc.compare(reports)
    assert "TFLM arena" in table and "does not run" in table
    assert reports["int8"].micro.arena_bytes < reports["float32"].micro.arena_bytes
    assert reports["int8"].to_dict()["micro"]["arena_bytes"] == reports["int8"].micro.arena_bytes


def test_bad_micro_arguments(files, monkeypatch):
    with pytest.raises(ValueError, match="micro_samples"):
        tfc.evaluate_tflite(files["int8"], backends=("micro",), micro_samples=0)
    with pytest.raises(ValueError, match=r"unknown backend 'tflm'.*'micro'"):
        tfc.evaluate_tflite(files["int8"], backends=("tflm",))
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # as if the extra were not installed
    with pytest.raises(tfc.MissingExtraError, match=r"tfcompress\[micro\]"):
        tfc.evaluate_tflite(files["int8"], backends=("xnnpack", "micro"))


def _autoencoder():
    """The MLPerf Tiny anomaly-detection autoencoder (640 → 128×4 → 8 → 128×4 → 640, ~270k parameters)."""
    dense = keras.layers.Dense
    return keras.Sequential([keras.Input((640,))] + [dense(128, "relu") for _ in range(4)] + [dense(8, "relu")]
                            + [dense(128, "relu") for _ in range(4)] + [dense(640)])


def _child_allocates(path, arena_size):
    """Loads in a child process: near the smallest arena that allocates, a failing try can segfault TFLM."""
    code = "import sys; from tflite_micro import runtime; runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size=int(sys.argv[2]))"
    return subprocess.run([sys.executable, "-c", code, str(path), str(arena_size)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def autoencoder_file():
    # Trained briefly, its int8 640-unit output layer makes TFLM's FULLY_CONNECTED kernel borrow temporary
    # memory while it prepares: the allocator's own arena figure is then a few KB short of what allocates,
    # which used to escape evaluate_tflite as a raw "RuntimeError: TFLM failed to allocate tensors".
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(1000, 640)).astype("float32")
    model = _autoencoder()
    model.compile("adam", "mse")
    model.fit(x, x, epochs=3, batch_size=32, verbose=0)
    return bytes(tfc.to_tflite(model, mode="int8", representative_data=x[:200])), x


def test_arena_is_found_when_the_allocators_figure_is_too_small(autoencoder_file, tmp_path):
    raw, x = autoencoder_file
    path = tmp_path / "autoencoder.tflite"
    path.write_bytes(raw)
    report = tfc.evaluate_tflite(raw, x=x[:50], backends=("micro",))
    assert report.micro.runs and report.micro.samples == 50 and report.micro.agreement == 1.0
    arena = report.micro.arena_bytes
    # The case this test is for: TFLM's allocator reports less than the model needs.
    child = subprocess.run([sys.executable, "-c", tfc.micro._CHILD, str(path), str(1 << 20), "1"],
                           capture_output=True, text=True)
    figure = int(re.search(r"Arena allocation total (\d+) bytes", child.stderr).group(1))
    assert figure < arena - 1024
    # What is reported is the smallest arena that allocates, to 16 bytes: what firmware must reserve.
    assert _child_allocates(path, arena) and not _child_allocates(path, arena - 16)


def test_arena_past_the_cap_is_a_clear_error_naming_the_size(autoencoder_file, monkeypatch):
    raw, x = autoencoder_file
    monkeypatch.setattr(tfc.micro, "MAX_ARENA_BYTES", 8192)  # as if the model needed more than the cap
    with pytest.raises(tfc.MicroCompatibilityError, match=r"even in a 8\.0 KB arena \(8192 bytes.*MAX_ARENA_BYTES.*smaller"):
        tfc.evaluate_tflite(raw, x=x[:10], backends=("micro",))
    report = tfc.evaluate_tflite(raw, x=x[:10], backends=("xnnpack", "micro"), num_runs=1)
    assert not report.micro.runs and "8192 bytes" in report.failed_backends["micro"] and report.latency


# --- clustered weights as TFLite Micro look-up tables (tfc.micro.compress) ---------------------------------------

@pytest.fixture(scope="module")
def clustered_int8(trained_digits_model, digits_data):
    """The digits CNN clustered to 16 values per kernel, fine-tuned one epoch with the centroids training, as int8."""
    (x, y), _ = digits_data
    model = tfc.cluster_weights(trained_digits_model, 16)
    model.fit(x[:512], y[:512], epochs=1, batch_size=32, verbose=0,
              callbacks=[tfc.ClusteringCallback(16, verbose=0)])
    return bytes(tfc.to_tflite(model, mode="int8", representative_data=x[:64]))


def _tflm_outputs(raw, x):
    arena = tfc.micro.first_load(raw, 1)
    return tfc.micro.run(raw, arena, [x.astype(np.float32)], 0)[0], arena  # a float input: the file quantizes it


def test_clustered_int8_compresses_to_4_bit_tables_with_bit_identical_tflm_outputs(clustered_int8, digits_data):
    (_, _), (x, y) = digits_data
    small = tfc.micro.compress(clustered_int8)
    assert isinstance(small, bytes) and small.original_bytes == len(clustered_int8)
    by_name = {t.op + ":" + "x".join(map(str, t.shape)): t for t in small.tensors}
    # conv2 (32x3x3x16 int8, 4,608 B) and fc1 (32x512, 16,384 B): 16 clusters per tensor stay at most 16 int8
    # codes per output channel (one scale per channel maps 16 floats to at most 16 codes), so 4 bits.
    for key in ("CONV_2D:32x3x3x16", "FULLY_CONNECTED:32x512"):
        t = by_name[key]
        assert t.compressed and t.bits == 4 and t.distinct <= 16 and t.tables == "per channel (axis 0)", t
        # 4-bit indices (half the int8 bytes) + a 16-byte header + 16 int8 values per output channel.
        assert t.bytes_after == t.bytes_before // 2 + 16 + 16 * t.shape[0] and t.file_saving > 0
    # conv1 (16x3x3x1: 144 B) costs more as 16 tables than as values: left alone, and the report says why.
    tiny = by_name["CONV_2D:16x3x3x1"]
    assert not tiny.compressed and "min_saving_bytes" in tiny.reason
    assert all(not t.compressed for t in small.tensors if t.op == "CONV_2D" and len(t.shape) == 1)  # biases
    saved = sum(t.bytes_before - t.bytes_after for t in small.compressed)
    assert len(clustered_int8) - len(small) > 0.5 * saved  # DECODE ops and new tensors cost some of it
    assert "DECODE" not in " ".join(f.message for f in tfc.micro.audit(small))  # TFLM has the op
    ours, arena = _tflm_outputs(bytes(small), x[:40])
    theirs, plain_arena = _tflm_outputs(clustered_int8, x[:40])
    # DECODE writes exactly the int8 values the uncompressed file stores: the same kernels see the same bytes.
    assert np.array_equal(ours, theirs)
    assert arena >= plain_arena  # a decoded kernel lives in the arena while its op runs
    assert "4" in small.to_markdown() and "flash:" in small.to_markdown()


def test_evaluator_runs_a_compressed_file_on_tflm_against_its_decoded_twin(clustered_int8, digits_data):
    (_, _), (x, y) = digits_data
    small = tfc.micro.compress(clustered_int8)
    twin = tfc.micro.decompress(small)
    assert "CUSTOM:TFLM_DECODE" not in tfc.inspect_tflite(twin).op_census
    litert = tfc.evaluate_tflite(clustered_int8, x=x[:100], y=y[:100], backends=("cpu",), num_runs=1)
    r = tfc.evaluate_tflite(small, x=x[:100], y=y[:100], backends=("cpu", "micro"), num_runs=1, micro_samples=40)
    # The decoded twin holds the same weights: LiteRT's built-in kernels give the same outputs on both files.
    assert r.accuracy == litert.accuracy and r.latency and r.latency[0].backend == "cpu"
    assert np.array_equal(tfc.evaluate.predict(twin, x[:100]), tfc.evaluate.predict(clustered_int8, x[:100]))
    m = r.micro
    assert m.runs and m.flash_bytes == len(small) == r.file_bytes and m.samples == 40
    # TFLM's reference kernels and LiteRT's built-in ones requantize alike; see the int8 agreement test above.
    assert m.agreement >= 0.97
    assert r.op_census["CUSTOM:TFLM_DECODE"] == len(small.compressed)
    assert any("DECODE" in n for n in r.notes)


def test_unclustered_file_is_returned_unchanged_with_a_warning(files):
    # Its small kernels have at most 128 distinct int8 codes per channel (7 bits), which saves less than the tables.
    with pytest.warns(UserWarning, match=r"need 7 bits.*none saves.*cluster the model first.*cluster_weights\(model, 16\)"):
        out = tfc.micro.compress(files["int8"])
    assert bytes(out) == files["int8"] and out.compressed == []
    assert all(t.reason for t in out.tensors)


def test_bits_and_bad_inputs(clustered_int8, files, tmp_path):
    default = tfc.micro.compress(clustered_int8)
    conv2 = next(t for t in default.tensors if t.shape == (32, 3, 3, 16))
    # A threshold near a tensor's estimated saving has it compressed alone and measured: the estimate (tables,
    # indices, 12 B of quantization per channel, names, the DECODE op) is within a few bytes of the measurement.
    near = tfc.micro.compress(clustered_int8, min_saving_bytes=conv2.file_saving)
    measured = next(t for t in near.tensors if t.shape == (32, 3, 3, 16))
    assert abs(measured.file_saving - conv2.file_saving) <= 64 and measured.compressed == (
        measured.file_saving >= conv2.file_saving)
    five = tfc.micro.compress(clustered_int8, bits=5)
    assert five.compressed and {t.bits for t in five.compressed} == {5}
    assert len(five) > len(tfc.micro.compress(clustered_int8))
    with pytest.warns(UserWarning, match="cluster"):
        assert tfc.micro.compress(clustered_int8, bits=2).compressed == []  # 16 values need 4 bits
    for bits in (0, 8, 4.0, True):
        with pytest.raises(ValueError, match=r"bits=.*\[1, 7\]"):
            tfc.micro.compress(clustered_int8, bits=bits)
    with pytest.raises(ValueError, match="min_saving_bytes"):
        tfc.micro.compress(clustered_int8, min_saving_bytes=0)
    with pytest.raises(ValueError, match=r"tflite computes .*float32.*mode='int8'"):
        tfc.micro.compress(files["float32"])
    with pytest.raises(tfc.InvalidTFLiteFileError, match="^tflite: "):
        tfc.micro.compress(b"not a model at all")
    with pytest.raises(ValueError, match="already compressed"):
        tfc.micro.compress(tfc.micro.compress(clustered_int8))


def test_export_c_array_compress_writes_the_smaller_file(clustered_int8, tmp_path):
    def length(path):
        return int(re.search(r"g_model_len = (\d+);", path.read_text()).group(1))

    tfc.export_c_array(clustered_int8, tmp_path / "plain.cc")
    tfc.export_c_array(clustered_int8, tmp_path / "small.cc", compress=True)
    assert length(tmp_path / "small.cc") == len(tfc.micro.compress(clustered_int8)) < length(tmp_path / "plain.cc")


def test_cli_export_micro_compress(clustered_int8, tmp_path):
    path = tmp_path / "clustered.tflite"
    path.write_bytes(clustered_int8)
    run = subprocess.run([sys.executable, "-m", "tfcompress", "export", str(path), f"--c_array={tmp_path / 'cli.cc'}",
                          "--micro_compress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    length = int(re.search(r"g_model_len = (\d+);", (tmp_path / "cli.cc").read_text()).group(1))
    assert length == len(tfc.micro.compress(clustered_int8)) < len(clustered_int8) and "flash:" in run.stdout
