"""auto_compress / `tfcompress auto`: the whole search loop on a small model, resume after a kill, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfcompress as tfc

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def search(trained_digits_model, digits_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "out"
    result = tfc.auto_compress(trained_digits_model, digits_data, max_accuracy_drop=2.0, epochs=1, out_dir=out,
                               num_runs=10, verbose=0)
    return result, out


def test_the_search_measures_candidates_and_picks_the_fastest_within_the_budget(search, digits_data):
    result, _ = search
    by_name = {c.name: c for c in result.candidates}
    assert by_name["float32"].measured and by_name["int8"].measured
    channels = [c for n, c in by_name.items() if n.startswith("channels")]
    assert all(c.measured or c.status.startswith("skipped: ") for c in channels)
    assert any(c.measured for c in channels)
    within = [c for c in result.candidates if c.status == "ok"]
    winner = by_name[result.best]
    assert winner.status == "ok" and winner.val_accuracy >= result.input_val_accuracy - 0.02
    # The winner is the fastest of those within the budget, in the final joint timing.
    assert winner.latency_ms["xnnpack/1t"] == min(c.latency_ms["xnnpack/1t"] for c in within)
    # Each reported test accuracy is the file's own on the test split.
    _, (x_test, y_test) = digits_data
    logits = tfc.evaluate.predict(result.artifacts[result.best], x_test)
    assert winner.test_accuracy == pytest.approx(float(np.mean(logits.argmax(1) == y_test)))
    assert result.budget_met_on_test == (winner.test_accuracy >= result.keras_accuracy - 0.02)
    # int8 already within the budget: its fallbacks are skipped, with the reason.
    assert by_name["qat-int8"].status.startswith("skipped: int8 already within")
    assert isinstance(result, tfc.CompressionResult)


@pytest.mark.skipif(not tfc.machine.current().int8_dot_product,
                    reason="int8 beats float32 on XNNPACK only where the CPU has integer dot products (AVX-512 VNNI, "
                           "AVX-VNNI, AMX, ARMv8.2-A dot product); this one has not: "
                           + tfc.machine.current().summary())
def test_with_integer_dot_products_an_int8_candidate_beats_float32(search):
    result, _ = search
    by_name = {c.name: c for c in result.candidates}
    assert tfc.tflite_file.computes_int8(result.reports[result.best].op_census_by_dtype)
    assert by_name[result.best].latency_ms["xnnpack/1t"] < by_name["float32"].latency_ms["xnnpack/1t"]


def test_the_report_names_the_machine_and_what_decided(search):
    result, out = search
    machine = tfc.machine.current()
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["summary"] == machine.summary()
    assert report["decided_by"].startswith("latency measured on this host")
    markdown = (out / "report.md").read_text()
    assert machine.cpu in markdown and "Decided by: latency measured on this host" in markdown
    # Where int8 lost here for want of integer dot products, the report says so; where it won, it does not.
    by_name = {c.name: c for c in result.candidates}
    int8_lost = by_name["int8"].latency_ms["xnnpack/1t"] > by_name["float32"].latency_ms["xnnpack/1t"]
    assert ("Without integer dot products" in markdown) == (int8_lost and machine.int8_dot_product is False)


def test_the_macs_objective_picks_the_fewest_macs_within_the_budget_int8_first(trained_digits_model, digits_data):
    """For a target that is not this host: the decision does not depend on what this CPU runs fast."""
    result = tfc.auto_compress(trained_digits_model, digits_data, max_accuracy_drop=2.0, objective="macs", epochs=1,
                               num_runs=5, verbose=0)
    within = [c for c in result.candidates if c.status == "ok"]
    winner = next(c for c in within if c.name == result.best)
    assert winner.macs == min(c.macs for c in within)
    assert winner.int8 or not any(c.int8 for c in within if c.macs == winner.macs)
    by_name = {c.name: c for c in result.candidates}
    assert by_name["int8"].macs == by_name["float32"].macs and by_name["int8"].int8 and not by_name["float32"].int8
    assert result.decided_by.startswith("MACs per inference") and "Decided by: MACs" in result.to_markdown()


def test_the_output_folder(search, trained_digits_model):
    result, out = search
    assert (out / "best.tflite").read_bytes() == bytes(result.artifacts[result.best])
    assert sorted(p.name for p in (out / "candidates").iterdir()) == sorted(f"{n}.tflite" for n in result.artifacts)
    report = json.loads((out / "report.json").read_text())
    assert report["best"] == result.best and {c["name"] for c in report["candidates"]} == {
        c.name for c in result.candidates}
    assert f"**{result.best}**" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    with pytest.raises(tfc.OutputExistsError, match="overwrite=True"):
        tfc.auto_compress(trained_digits_model, "digits", out_dir=out)  # checked before any work


def test_plot_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfcompress.evaluation import reports

    names = ["float32", "float16", "dynamic", "int8", "prune75-int8", "prune75-qat-int8", "qat-int8", "distill-int8"]
    xs = [399, 200, 110, 105, 30, 30.4, 104, 100]
    ys = [89.5, 89.5, 89.4, 89.2, 88.9, 88.93, 89.3, 89.25]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(xs, ys)
    ax.set_xscale("log")
    texts = reports.place_labels(ax, xs, ys, names)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert [t.get_text() for t in texts] == names
    assert not [(names[i], names[j]) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    plt.close(fig)
    assert reports.pareto_front([(1, 80), (2, 90), (3, 85), (0.5, 70)]) == [3, 0, 1]


def test_time_budget_skips_what_does_not_fit_and_refuses_one_too_small(trained_digits_model, digits_data):
    # 10,000 epochs per training step cannot fit in 40 s on any machine; post-training int8 does.
    result = tfc.auto_compress(trained_digits_model, digits_data, time_budget=40, epochs=10000, num_runs=5, verbose=0)
    statuses = {c.name: c.status for c in result.candidates}
    assert statuses["int8"] == "ok"
    assert any(s.startswith("skipped: needs about") for s in statuses.values()), statuses
    with pytest.raises(ValueError, match=r"time_budget=0.01 s is too small for even post-training int8.*Give at least"):
        tfc.auto_compress(trained_digits_model, digits_data, time_budget=0.01, verbose=0)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(max_accuracy_drop=0), r"max_accuracy_drop=0: .*> 0"),
    (dict(max_accuracy_drop=-1.0), r"max_accuracy_drop=-1.0"),
    (dict(objective="speed"), r"objective='speed': choose one of \['latency', 'size', 'macs'\]"),
    (dict(time_budget=-5), r"time_budget=-5: give seconds > 0"),
    (dict(backend="gpu"), r"backend='gpu'"),
], ids=["zero-budget", "negative-budget", "objective", "time-budget", "backend"])
def test_bad_arguments(trained_digits_model, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tfc.auto_compress(trained_digits_model, "digits", **kwargs)


def test_a_model_that_does_not_fit_the_data_names_both_shapes(trained_digits_model):
    x = np.zeros((20, 28, 28, 1), np.float32)
    y = np.zeros(20, np.int64)
    with pytest.raises(ValueError, match=r"shape \(28, 28, 1\), but model 'small_cnn' takes \(8, 8, 1\)"):
        tfc.auto_compress(trained_digits_model, ((x, y), (x, y)))


def _auto_cli(model, out, backup, *extra):
    return subprocess.Popen([sys.executable, "-m", "tfcompress", "auto", str(model), "--data=digits", "--epochs=1",
                             f"--out={out}", f"--backup_dir={backup}", "--max_drop=2", "--runs=5", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_cli_resumes_after_a_kill_and_skips_finished_candidates(trained_digits_model, tmp_path):
    model = tmp_path / "digits.keras"
    trained_digits_model.save(model)
    backup = tmp_path / "backup"
    first = _auto_cli(model, tmp_path / "out", backup)
    finished = backup / "candidates" / "channels50-int8.json"
    deadline = time.time() + 300
    while not finished.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert finished.exists(), first.communicate()[1][-2000:] if first.poll() is not None else "timed out"
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _auto_cli(model, tmp_path / "out", backup, "--overwrite")
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-2000:]
    for name in ("float32", "int8", "channels50-int8"):
        assert f"{name}: resumed from" in stdout
    assert (tmp_path / "out" / "best.tflite").exists() and "| candidate" in stdout


def test_cli_bad_flags(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tfcompress", "auto", "model.keras", "--max_drop=0"],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "--max_drop=0.0: give the accuracy points" in result.stderr
    assert "Traceback" not in result.stderr
