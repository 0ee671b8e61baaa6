"""Rendering of what was measured: markdown tables and plots. Measuring lives in `litert` (and `onnxruntime`,
`micro`, `profiling`); this module only renders. The table and number helpers are `tfcompress.core.tables`.

    >>> print(tfc.compare(tfc.evaluate_many({"float32": f32, "int8": int8}, x=x_test, y=y_test)))
"""

import dataclasses
import io

from tfcompress.core import machine as machine_module
from tfcompress.core.files import write_atomic
from tfcompress.core.tables import format_count, format_kb, markdown_table
from tfcompress.evaluation.tflite_file import computes_int8


def evaluation_markdown(report):
    """One `EvaluationReport` as markdown: size, accuracy, latency per backend, parity, ops, notes."""
    by_dtype = ", ".join(f"{k} {format_kb(v)}" for k, v in report.weight_bytes_by_dtype.items())
    accuracy = "—"
    if report.accuracy is not None:
        head = f", output {report.accuracy_output}" if getattr(report, "accuracy_output", None) else ""
        accuracy = f"{100 * report.accuracy:.2f}% (n={report.accuracy_samples}, {report.accuracy_backend}{head})"
    lines = [f"### {report.name}", "", markdown_table(
        ("size", "gzip -9", "weights by dtype", "weight sparsity", "MACs", "accuracy"),
        [(format_kb(report.file_bytes), format_kb(report.gzip_bytes), by_dtype, f"{100 * report.sparsity:.1f}%",
          format_count(getattr(report, "macs", 0)), accuracy)]), ""]
    lines.append(markdown_table(
        ("backend", "threads", "init ms", "first run ms", "median ms", "p90 ms", "mean ms", "std ms", "runs"),
        [(r.backend, r.threads, f"{r.init_ms:.1f}", f"{r.first_run_ms:.2f}", f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}",
          f"{r.mean_ms:.3f}", f"{r.std_ms:.3f}", r.runs) for r in report.latency]))
    if report.parity:
        lines += ["", markdown_table(
            (f"backend vs {report.parity.get('reference', '?')}", "max abs diff", "top-1 agreement"),
            [(backend, f"{p['max_abs_diff']:.3g}" + (f" ({p['max_diff_steps']:g} output steps)" if "max_diff_steps" in p
                                                       else ""), f"{100 * p['top1_agreement']:.2f}%")
             for backend, p in report.parity.get("backends", {}).items()])]
    if getattr(report, "delegation", None) is not None and (report.op_profiles or not report.delegation.fully_delegated):
        lines += ["", report.delegation.to_markdown()]
    for prof in getattr(report, "op_profiles", {}).values():
        lines += ["", prof.to_markdown()]
    if getattr(report, "peak_memory_bytes", None):
        lines += ["", markdown_table(("backend", "peak memory"),
                                     [(b, format_kb(v)) for b, v in report.peak_memory_bytes.items()])]
    if getattr(report, "micro", None) is not None:
        lines += ["", "TFLite Micro:", "", report.micro.to_markdown()]
    lines += ["", "Ops: " + ", ".join(f"{k}×{v}" for k, v in report.op_census_by_dtype.items())]
    lines.append("Inputs: " + "; ".join(f"{d['name']} {d['dtype']}{list(d['shape'])}" for d in report.inputs))
    for note in report.notes:
        lines.append(f"Note: {note}")
    if getattr(report, "machine", None):
        lines.append(f"Measured on: {report.machine['summary']}")
    return "\n".join(lines)


def machine_notes(reports, base):
    """Footer lines for a table of ``reports``: the CPU that timed them and, when int8 came out slower than the
    float ``base`` on a CPU without integer dot products, why (`tfcompress.core.machine`)."""
    machines = list(dict.fromkeys(r.machine["summary"] for r in reports if getattr(r, "machine", None)))
    if not machines:
        return []
    lines = [f"Timed on: {machines[0]}." if len(machines) == 1 else
             "Timed on several machines (their ratios mean little): " + " | ".join(machines)]
    host = machine_module.Machine.from_dict(base.machine) if getattr(base, "machine", None) else None
    if len(machines) > 1 or host is None or computes_int8(base.op_census_by_dtype):
        return lines
    base_times = {x.key: x.median_ms for x in base.latency}
    keys = sorted(base_times, key=lambda k: (not k.startswith("xnnpack/"), k))  # XNNPACK first: what apps use
    for key in keys:
        slower = [r for r in reports if computes_int8(r.op_census_by_dtype) and
                  any(x.key == key and x.median_ms > base_times[key] for x in r.latency)]
        if slower:
            r = slower[0]
            ratio = base_times[key] / next(x.median_ms for x in r.latency if x.key == key)
            if host.int8_dot_product:
                lines.append(f"{r.name} ran at {ratio:.2f}x the speed of {base.name} on {key} although this CPU has "
                             "integer dot products: the profile (evaluate_tflite(..., profile=True)) shows where the "
                             "time goes.")
            else:
                lines.append(machine_module.int8_without_dot_product_note(
                    host, f"{r.name} ran at {ratio:.2f}x the speed of {base.name} on {key}"))
            break
    return lines


def compare(reports, baseline=None, reference_accuracy=None, control_accuracy=None):
    """A markdown table comparing several evaluated variants.

    Args:
        reports: a list of `EvaluationReport` (or a dict name → report).
        baseline: the name of the report that ratios and deltas refer to
            (default: the first).
        reference_accuracy: optional accuracy (0-1) of the Keras model, shown as
            an extra Δ column.
        control_accuracy: optional ``{variant: accuracy}`` of the dense control
            fine-tuned for as many epochs as that variant (`tfcompress.FineTune`):
            a "Δ vs control" column, the cost of the compression itself.

    Returns:
        A markdown string: size, gzip, size ratio, weight sparsity, MACs, accuracy and Δ
        vs baseline, and per backend × threads the median latency and speed-up vs the
        baseline on the same backend; below it, the CPU that timed them, and why int8
        lost to float32 when the CPU has no integer dot products.
    """
    if isinstance(reports, dict):
        reports = [dataclasses.replace(r, name=k) for k, r in reports.items()]
    if not reports:
        raise ValueError("compare() needs at least one report.")
    base = next((r for r in reports if r.name == baseline), None) if baseline else reports[0]
    if base is None:
        raise ValueError(f"baseline={baseline!r} is not among the reports {[r.name for r in reports]}.")
    keys = list(dict.fromkeys(x.key for r in reports for x in r.latency))  # e.g. LiteRT's and ONNX Runtime's
    header = ["variant", "size", "gzip", "× smaller", "sparsity", "MACs", "accuracy", f"Δ vs {base.name}"]
    if reference_accuracy is not None:
        header.append("Δ vs Keras")
    if control_accuracy is not None:
        header.append("Δ vs control")
    header += [f"{k} ms" for k in keys] + [f"{k} speed-up" for k in keys]
    with_micro = any(getattr(r, "micro", None) is not None for r in reports)
    if with_micro:
        header += ["TFLM arena", "TFLM agreement"]
    rows = []
    for r in reports:
        cells = [r.name, format_kb(r.file_bytes), format_kb(r.gzip_bytes), f"{base.file_bytes / r.file_bytes:.2f}x",
                 f"{100 * r.sparsity:.1f}%", format_count(getattr(r, "macs", 0))]
        if r.accuracy is not None:
            cells.append(f"{100 * r.accuracy:.2f}%")
            cells.append(f"{100 * (r.accuracy - base.accuracy):+.2f}" if base.accuracy is not None else "—")
        else:
            cells += ["—", "—"]
        if reference_accuracy is not None:
            cells.append(f"{100 * (r.accuracy - reference_accuracy):+.2f}" if r.accuracy is not None else "—")
        if control_accuracy is not None:
            control = control_accuracy.get(r.name)
            cells.append(f"{100 * (r.accuracy - control):+.2f}" if r.accuracy is not None and control is not None
                         else "—")
        by_key = {x.key: x for x in r.latency}
        base_key = {x.key: x for x in base.latency}
        cells += [f"{by_key[k].median_ms:.3f}" if k in by_key else "—" for k in keys]
        cells += [f"{base_key[k].median_ms / by_key[k].median_ms:.2f}x" if k in by_key and k in base_key else "—"
                  for k in keys]
        if with_micro:
            m = getattr(r, "micro", None)
            if m is None:
                cells += ["—", "—"]
            elif not m.runs and m.arena_bytes is None:
                cells += ["does not run", "—"]
            else:
                cells += [format_kb(m.arena_bytes), f"{100 * m.agreement:.1f}%" + ("" if m.runs else " (wrong)")]
        rows.append(cells)
    footer = machine_notes(reports, base)
    return markdown_table(header, rows, footer="\n" + "\n".join(footer) if footer else None)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_png(fig, path):
    """Writes the figure to ``path`` atomically and closes it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    write_atomic(path, buffer.getvalue(), overwrite=True)


# Label positions tried around a point (offset points), nearest first.
_LABEL_OFFSETS = [(dx, dy) for r in (1, 2, 3, 4, 6) for dx, dy in
                  ((5, 4), (5, -11), (-5, 4), (-5, -11), (0, 9), (0, -16))
                  for dx, dy in [(dx * r, dy if abs(dy) < 5 else dy + (r - 1) * (8 if dy > 0 else -8))]]


def place_labels(ax, xs, ys, names, fontsize=7):
    """Annotates each point with its name where the label overlaps no other label and no marker (greedy).

    Close points (``prune75-int8`` and ``prune75-qat-int8`` at almost the same size
    and accuracy) would otherwise print on top of each other. Labels that had to
    move away from their point get a thin leader line.

    Returns:
        The text artists, in the order of ``names``.
    """
    fig = ax.figure
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    from matplotlib.transforms import Bbox

    # The markers are obstacles too: a label must not cover another point.
    markers = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in ax.transData.transform(list(zip(xs, ys)))]
    placed, texts = [], [None] * len(names)
    for i in sorted(range(len(names)), key=lambda k: (xs[k], ys[k])):
        for n, (dx, dy) in enumerate(_LABEL_OFFSETS):
            far = n >= 6
            text = ax.annotate(names[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                               arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if far else None)
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed + markers):
                break
            if n < len(_LABEL_OFFSETS) - 1:
                text.remove()
        placed.append(box)
        texts[i] = text
    return texts


def pareto_front(points):
    """Indices of the points no other point beats on both axes (lower x, higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -float("inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def plot_pareto(rows, path, xlabel, ylabel, highlight=None, title=None):
    """Writes a PNG: one point per ``(name, x, y)``, the Pareto front (lower x, higher y) marked, labels apart.

    Returns False (and writes nothing) without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 6))
    xs, ys, names = [r[1] for r in rows], [r[2] for r in rows], [r[0] for r in rows]
    front = pareto_front(list(zip(xs, ys)))
    ax.scatter(xs, ys, s=30, color="0.6", label="candidate", zorder=2)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-o", color="tab:blue", ms=6, label="Pareto front",
            zorder=3, drawstyle="steps-post")
    if highlight in names:
        i = names.index(highlight)
        ax.scatter([xs[i]], [ys[i]], s=160, facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen",
                   zorder=4)
    if len(set(xs)) > 1 and max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(0.15)
    place_labels(ax, xs, ys, names)
    _save_png(fig, path)
    return True


def plot_variants(reports, path, threads):
    """Writes a PNG: accuracy vs gzip size, and latency bars CPU vs XNNPACK. False (and nothing written) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    names = list(reports)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    xs = [reports[n].gzip_bytes / 1024 for n in names]
    ys = [100 * reports[n].accuracy for n in names]
    left.scatter(xs, ys, s=40, c=[f"C{i % 10}" for i in range(len(names))])
    left.set_xscale("log")
    left.margins(0.15)
    left.set_xlabel("gzip -9 size of the .tflite (KB, log scale)")
    left.set_ylabel("test accuracy (%)")
    left.set_title("accuracy vs compressed size")
    left.grid(alpha=0.3)
    width = 0.4
    for i, backend in enumerate(("cpu", "xnnpack")):
        values = [(reports[n].latency_for(backend, threads[0]).median_ms
                   if reports[n].latency_for(backend, threads[0]) else 0.0) for n in names]
        right.bar([k + (i - 0.5) * width for k in range(len(names))], values, width, label=f"{backend}, {threads[0]} thread")
    right.set_xticks(range(len(names)))
    right.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    right.set_ylabel("median latency per image (ms)")
    right.set_title("latency: LiteRT built-in CPU kernels vs XNNPACK")
    right.legend()
    place_labels(left, xs, ys, names)  # last: it needs the final layout
    _save_png(fig, path)
    return True


def plot_sensitivity(report, path, count=20):
    """Writes a PNG: the SQNR of the ``count`` most quantization-sensitive layers (lowest first). False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    rows = report.rows[:count][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh([r.layer for r in rows], [r.local_sqnr_db for r in rows], color="tab:red")
    ax.set_xlabel("local SQNR: the layer quantized alone, on float inputs (dB; lower = more sensitive)")
    ax.set_title(f"quantization sensitivity of {report.model_name!r}")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
    return True
