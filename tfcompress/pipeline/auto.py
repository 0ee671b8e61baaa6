"""``auto_compress``: the fastest (or smallest) .tflite that stays within an accuracy budget.

    >>> r = tfc.auto_compress(model, "fashion_mnist", max_accuracy_drop=1.0, objective="latency", out_dir="auto_out")
    >>> r.best, r.budget_met_on_test
    >>> print(r.to_markdown())

The search tries recipes built from the toolkit, cheapest first: post-training
int8 (then its accuracy-budget fallback and QAT, if plain int8 misses the budget),
structural channel pruning at 50%, then 70% or 30% (bisection; each retried with
distillation from the input model when fine-tuning alone misses), and for ``objective="size"``
unstructured pruning and clustering. Every candidate's accuracy is measured on a
validation split carved from the end of the training data (never the test split)
and compared with the input model's on the same split. A branch that cannot win is
cut: a channel fraction whose untrained, one-shot version is not faster (smaller, or
of fewer MACs) than the best candidate so far is skipped, and once a fraction misses the budget
larger ones are not tried. At the end all candidate files are timed together with
the evaluator (one run, so their ratios are meaningful) and scored on the test split.

The host is not always the target. ``objective="latency"`` optimises for the CPU the
search runs on, and int8 kernels are slow on CPUs without integer dot products (an
AVX2-only x86; see `tfcompress.core.machine`), where phones (ARMv8.2-A) and VNNI x86 run
them fast. ``objective="macs"`` decides by multiply-accumulates per inference, a
hardware-independent measure, with int8 preferred at equal MACs: the choice for a
target that is not the host. The report names the host and what decided.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from tfcompress.core import graph, machine, validation
from tfcompress.core.files import OutputExistsError, save_keras_atomic, write_atomic
from tfcompress.core.tables import format_count, format_kb, markdown_table
from tfcompress.evaluation import reports as reports_module
from tfcompress.evaluation import tflite_file
from tfcompress.evaluation.litert import evaluate_many, predict
from tfcompress.export.sensitivity import AccuracyBudgetError
from tfcompress.export.tflite import to_tflite
from tfcompress.pipeline.recipe import (
    Cluster, CompressionResult, Convert, Distill, Prune, PruneChannels, QuantizationAwareTraining, compress,
    resolve_data, top1_accuracy,
)
from tfcompress.pruning import prune_channels

OBJECTIVES = ("latency", "size", "macs")
BACKENDS = ("xnnpack", "cpu")


@dataclasses.dataclass
class Candidate:
    """One searched recipe and what it measured (``status``: "ok", "over budget", "skipped: ...", "failed: ...")."""

    name: str
    recipe: str
    status: str = "pending"
    val_accuracy: float = None
    test_accuracy: float = None
    file_bytes: int = None
    gzip_bytes: int = None
    latency_ms: dict = dataclasses.field(default_factory=dict)  # "backend/threads" -> median ms
    seconds: float = 0.0
    macs: int = None  # multiply-accumulates per inference (tflite_file.TFLiteInfo.macs)
    int8: bool = None  # its multiply-accumulate ops run int8 kernels

    @property
    def measured(self):
        return self.val_accuracy is not None


@dataclasses.dataclass
class AutoCompressionResult(CompressionResult):
    """A `CompressionResult` plus the search: ``best`` (a candidate name), ``candidates``, budgets and paths.

    ``artifacts`` holds every measured candidate's ``.tflite``; ``reports`` their
    evaluations on the test split; ``model`` is None (the winner is a file).
    """

    best: str = None
    candidates: list = dataclasses.field(default_factory=list)
    objective: str = "latency"
    backend: str = "xnnpack"
    max_accuracy_drop: float = 1.0
    input_val_accuracy: float = None
    budget_met_on_test: bool = None
    test_shortfall: float = 0.0  # points by which the winner missed the budget on the test split
    out_dir: str = None
    machine: dict = None  # the host that measured (machine.Machine.to_dict())
    decided_by: str = None  # what chose the winner, in words

    def notes(self):
        """The report's closing lines: the host, what decided, and what this host says (and does not) of int8."""
        host = machine.Machine.from_dict(self.machine)
        lines = [f"Host: {host.summary()}." if host else "Host: unknown.", f"Decided by: {self.decided_by}."]
        by_name = {c.name: c for c in self.candidates}
        key = f"{self.backend}/1t"
        f32, int8 = by_name.get("float32"), by_name.get("int8")
        if f32 and int8 and key in f32.latency_ms and key in int8.latency_ms and host is not None:
            ratio = f32.latency_ms[key] / int8.latency_ms[key]
            if ratio < 1 and not host.int8_dot_product:
                lines.append(machine.int8_without_dot_product_note(
                    host, f"int8 ran at {ratio:.2f}x the speed of float32 on {key}"))
        if self.objective == "latency" and host is not None and not host.int8_dot_product:
            lines.append('If the model ships to a phone or a VNNI x86, search with objective="macs" (CLI: '
                         "--objective=macs): it decides by MACs, with int8 preferred, whatever this host runs fast.")
        return lines

    def to_markdown(self):
        key = f"{self.backend}/1t"
        base = next((c for c in self.candidates if c.name == "float32"), None)
        rows = []
        for c in self.candidates:
            if not c.measured:
                rows.append((c.name, c.recipe, c.status, "—", "—", "—", "—", "—", "—", "—", "—"))
                continue
            ms = c.latency_ms.get(key)
            speed = f"{base.latency_ms[key] / ms:.2f}x" if base and ms and key in base.latency_ms else "—"
            smaller = f"{base.gzip_bytes / c.gzip_bytes:.1f}x" if base and c.gzip_bytes else "—"
            rows.append(("**" + c.name + "**" if c.name == self.best else c.name, c.recipe, c.status, format_count(c.macs),
                         f"{100 * c.val_accuracy:.2f}%", f"{100 * (c.val_accuracy - self.input_val_accuracy):+.2f}",
                         "—" if c.test_accuracy is None else f"{100 * c.test_accuracy:.2f}%",
                         "—" if c.test_accuracy is None else f"{100 * (c.test_accuracy - self.keras_accuracy):+.2f}",
                         format_kb(c.gzip_bytes) + f" ({smaller})", "—" if ms is None else f"{ms:.3f}", speed))
        verdict = (f"Winner **{self.best}** ({self.objective} on {self.backend}, budget {self.max_accuracy_drop} pt): "
                   + ("within the budget on the test split too." if self.budget_met_on_test else
                      f"misses the budget on the test split by {self.test_shortfall:.2f} pt."))
        return markdown_table(
            ("candidate", "recipe", "status", "MACs", "val acc", "Δ val", "test acc", "Δ test", "gzip (× smaller)",
             f"{key} ms", "speed-up"), rows,
            footer=f"\nInput model: {100 * self.input_val_accuracy:.2f}% validation, {100 * self.keras_accuracy:.2f}% "
                   f"test. Δ is against it; speed-up and × smaller against the float32 file, all timed in one run.\n"
                   + verdict + "\n\n" + "\n".join(self.notes()))


def _check_arguments(max_accuracy_drop, objective, time_budget, backend, epochs, validation_split):
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) or not (
            max_accuracy_drop > 0 and math.isfinite(max_accuracy_drop)):
        raise ValueError(f"max_accuracy_drop={max_accuracy_drop!r}: give the accuracy points you accept to lose, a "
                         "number > 0 such as 1.0.")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: choose one of {list(OBJECTIVES)}.")
    if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(time_budget, (int, float))
                                    or not time_budget > 0):
        raise ValueError(f"time_budget={time_budget!r}: give seconds > 0 (or None for no limit).")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {list(BACKENDS)} (the runtime whose latency counts).")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: fine-tuning epochs per training step must be a positive integer.")
    if not 0.0 < validation_split < 0.5:
        raise ValueError(f"validation_split={validation_split!r}: the share of the training data held out for "
                         "choosing must be in (0, 0.5), e.g. 0.1.")


def _check_fits(model, x, y):
    if isinstance(model.input_shape, list):
        raise ValueError(f"auto_compress takes single-input models; model {model.name!r} has "
                         f"{len(model.input_shape)} inputs. Compress it with tfc.compress and explicit steps.")
    expected = tuple(model.input_shape[1:])
    if len(expected) != x.ndim - 1 or any(d is not None and d != s for d, s in zip(expected, x.shape[1:])):
        raise ValueError(
            f"data: the training inputs have samples of shape {tuple(x.shape[1:])}, but model {model.name!r} takes "
            f"{validation.format_shape(expected)}; pass data shaped (and preprocessed) as for training.")
    classes = int(np.prod(model.output_shape[1:])) if len(model.output_shape) > 1 else 1
    validation.check_labels(y, classes, argument="data: y_train")


def _plan(objective, epochs, teacher):
    """The candidate recipes, cheapest first: ``[(name, steps, group)]``. Groups are cut as a whole (see module doc)."""
    E = epochs
    plan = [("float32", [Convert("float32", name="float32")], "base"),
            ("int8", [Convert("int8", name="int8")], "ptq"),
            ("int8-budget", "budget", "ptq-fallback"),
            ("qat-int8", [QuantizationAwareTraining(epochs=1), Convert("int8", name="qat-int8")], "ptq-fallback")]
    # Bisection order: 50% first; 70% only if 50% (or 50% distilled) is within the budget, 30% only if not.
    for ratio in (0.5, 0.7, 0.3):
        pct = round(100 * ratio)
        plan.append((f"channels{pct}-int8", [PruneChannels(ratio, epochs=E), Convert("int8", name=f"channels{pct}-int8")],
                     f"channels:{ratio}"))
        plan.append((f"channels{pct}-distill-int8",
                     [PruneChannels(ratio, epochs=E), Distill(teacher, epochs=E),
                      Convert("int8", name=f"channels{pct}-distill-int8")], f"channels-distill:{ratio}"))
    if objective == "size":
        # These continue from the narrowest channel-pruned model within the budget (trained above), or from
        # the input model when none is: zeros and shared values shrink the gzip of whatever width won.
        plan += [("prune75-int8", [Prune(0.75, epochs=E), Convert("int8", name="prune75-int8")], "prune:narrowest"),
                 ("cluster16-int8", [Cluster(16, epochs=1), Convert("int8", name="cluster16-int8")],
                  "cluster:prune75-int8")]
    return plan


def _fraction(name):
    """``"channels50-distill-int8"`` → 0.5."""
    return int(name[len("channels"):].split("-")[0]) / 100


def _describe(steps):
    if steps == "budget":
        return "int8 PTQ, fewest layers float within the budget"
    return " ".join(step.describe(teacher_name="input") for step in steps)  # every teacher here is the input model


def _training_epochs(steps):
    return 0 if steps == "budget" else sum(step.epochs for step in steps)


def _top1(tflite, x, y):
    logits = predict(tflite, x)
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == y))


def _save_candidate(folder, candidate, tflite, model=None):
    os.makedirs(folder, exist_ok=True)
    if model is not None:  # later candidates continue from it
        save_keras_atomic(model, os.path.join(folder, f"{candidate.name}.keras"))
    write_atomic(os.path.join(folder, f"{candidate.name}.tflite"), bytes(tflite), overwrite=True)
    write_atomic(os.path.join(folder, f"{candidate.name}.json"), json.dumps(dataclasses.asdict(candidate)),
                 overwrite=True)


def _load_candidate(folder, name):
    """A finished candidate from an earlier, interrupted run: ``(Candidate, bytes)`` or None."""
    meta, blob = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.tflite")
    if not (os.path.exists(meta) and os.path.exists(blob)):
        return None
    with open(meta) as f:
        candidate = Candidate(**json.load(f))
    with open(blob, "rb") as f:
        return candidate, f.read()


def _load_trained(folder, name):
    import keras

    path = os.path.join(folder, f"{name}.keras")
    return keras.models.load_model(path) if os.path.exists(path) else None


def auto_compress(model, data, max_accuracy_drop=1.0, objective="latency", time_budget=None, backend="xnnpack",
                  backup_dir=None, out_dir=None, overwrite=False, epochs=2, validation_split=0.1, validation_data=None,
                  batch_size=128, num_runs=50, verbose=1, seed=0):
    """Searches compression recipes for the fastest (or smallest) .tflite within an accuracy budget.

    Args:
        model: a trained, built Keras 3 classifier producing logits (Functional or
            Sequential for the channel-pruning candidates).
        data: ``((x_train, y_train), (x_test, y_test))`` or a dataset name
            (``"fashion_mnist"``, ``"digits"``, an ``.npz`` path).
        max_accuracy_drop: accuracy points (e.g. 1.0) a candidate may lose against
            the input model on the validation split.
        objective: ``"latency"`` (median time on ``backend``, 1 thread, on this
            host), ``"size"`` (gzip -9 bytes of the file) or ``"macs"``
            (multiply-accumulates per inference, int8 preferred at equal MACs:
            for a target that is not this host, e.g. a phone searched for on an
            AVX2 laptop; see the module doc).
        time_budget: seconds for the whole search (None: no limit). A candidate whose
            estimated cost does not fit the time left is skipped; the best so far wins.
        backend: ``"xnnpack"`` or ``"cpu"``: the runtime whose latency counts.
        backup_dir: makes the search resumable: finished candidates are kept there and
            a rerun of the same call skips them (and resumes an interrupted training
            step from its last epoch).
        out_dir: if given, writes ``best.tflite``, ``candidates/<name>.tflite``,
            ``report.md``, ``report.json`` and ``report.png`` there (atomically).
        overwrite: allow ``out_dir`` to hold files already.
        epochs: fine-tuning epochs of each training step (pruning, distillation).
        validation_split: share of the training data held out (from its end) to choose by.
        validation_data: ``(x_val, y_val)`` to choose by instead (e.g. data the input
            model never saw; a split of its own training data flatters it).
        batch_size: training batch size.
        num_runs: timed runs per file.
        verbose: 0 for silence.
        seed: random seed.

    Returns:
        An `AutoCompressionResult` (a `CompressionResult`): ``best`` names the winner,
        ``artifacts[best]`` is its ``.tflite``; ``budget_met_on_test`` says whether it
        also holds the budget on the test split (``test_shortfall`` by how much not).

    Raises:
        ValueError: a budget ≤ 0, an unknown objective or backend, data that does
            not fit the model (both shapes named), a time budget too small for even
            post-training int8 (the message says what fits).
        tfcompress.OutputExistsError: ``out_dir`` holds files and ``overwrite`` is False.

    Example:
        >>> data = ((x, y), (x_test, y_test))          # or a name: "fashion_mnist"
        >>> r = tfc.auto_compress(model, data, max_accuracy_drop=1.0, time_budget=900, out_dir="auto")
        >>> r.best, r.reports[r.best].latency_for("xnnpack").median_ms
    """
    started = time.perf_counter()
    _check_arguments(max_accuracy_drop, objective, time_budget, backend, epochs, validation_split)
    graph.check_model(model, action="auto_compress")
    if out_dir is not None and os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputExistsError(f"out_dir={os.fspath(out_dir)!r} already holds files; pass overwrite=True (CLI: "
                                "--overwrite) or choose another folder.")
    (x, y), (x_test, y_test) = resolve_data(data)
    y, y_test = np.asarray(y).reshape(-1), np.asarray(y_test).reshape(-1)
    _check_fits(model, x, y)
    if validation_data is not None:
        try:
            x_val, y_val = (np.asarray(a) for a in validation_data)
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (x_val, y_val).") from None
        y_val = y_val.reshape(-1)
        _check_fits(model, x_val, y_val)
        x_train, y_train = x, y
    else:
        n_val = max(1, int(round(len(x) * validation_split)))
        x_train, y_train, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    n_val = len(x_val)
    budget = max_accuracy_drop / 100.0
    input_val = top1_accuracy(model, x_val, y_val)
    input_test = top1_accuracy(model, x_test, y_test)
    folder = os.path.join(backup_dir, "candidates") if backup_dir else None

    def say(message):
        if verbose:
            print(f"[tfcompress auto] {message}", flush=True)

    def left():
        return math.inf if time_budget is None else time_budget - (time.perf_counter() - started)

    say(f"input model: {100 * input_val:.2f}% on {n_val} validation samples, {100 * input_test:.2f}% test; "
        f"budget {max_accuracy_drop} pt, objective {objective} on {backend}")
    plan = _plan(objective, epochs, model)
    candidates, files, trained, renamed = [], {}, {}, {}  # trained: models later candidates continue from
    epoch_seconds, convert_seconds = None, None
    best = None  # the name of the best candidate within the budget so far
    failed_groups = set()

    def named(name):
        return next(c for c in candidates if c.name == name)

    def time_together(pairs):
        """Median latency of ``{name: bytes}``, timed in one run (so the ratio is meaningful): ``{name: ms}``."""
        reports = evaluate_many(pairs, backends=(backend,), num_runs=max(10, num_runs // 2), warmup_runs=3,
                                verify=False)
        return {n: r.latency_for(backend, 1).median_ms for n, r in reports.items()}

    for index, (name, steps, group) in enumerate(plan):
        candidate = Candidate(name=name, recipe=_describe(steps))
        candidates.append(candidate)
        kind, _, ratio = group.partition(":")
        # Whether int8 is faster than float32 depends on the CPU (see `machine`); the fallbacks exist for accuracy.
        if group == "ptq-fallback" and any(c.status == "ok" and c.name in ("int8", "int8-budget") for c in candidates):
            candidate.status = "skipped: int8 already within the budget"
            continue
        if kind in ("channels", "channels-distill") and any(
                g.startswith("channels") and float(g.split(":")[1]) <= float(ratio) for g in failed_groups):
            candidate.status = "skipped: a smaller channel fraction already missed the budget"
            continue
        if kind in ("channels", "channels-distill") and any(
                c.status == "ok" and c.name.startswith("channels") and _fraction(c.name) > float(ratio)
                for c in candidates):
            candidate.status = "skipped: a larger channel fraction is within the budget (faster and smaller)"
            continue
        start_model = model
        if kind in ("prune", "cluster"):
            if ratio == "narrowest":
                narrowest = sorted((c for c in candidates if c.status == "ok" and c.name.startswith("channels")),
                                   key=lambda c: _fraction(c.name))
                start_name = narrowest[-1].name if narrowest else None
            else:
                source = next(c for c in candidates if c.name == renamed.get(ratio, ratio))
                start_name = source.name if source.status == "ok" else None
            if start_name is not None:
                start_model = trained.get(start_name)
                if start_model is None and folder:
                    start_model = _load_trained(folder, start_name)  # a resumed search
                if start_model is None:
                    candidate.status = f"skipped: the trained {start_name} is not available"
                    continue
                renamed[name] = candidate.name = f"{start_name.removesuffix('-int8')}-{name}"
                name = candidate.name
                steps = [dataclasses.replace(s, name=name) if isinstance(s, Convert) else s for s in steps]
                candidate.recipe = f"from {start_name}: " + _describe(steps)
            elif kind == "cluster":
                candidate.status = "skipped: its pruned model is not within the budget"
                continue
        if kind == "channels-distill":
            plain = next(c for c in candidates if c.name == name.replace("-distill", ""))
            if plain.status != "over budget":
                candidate.status = "skipped: " + ("fine-tuning alone met the budget" if plain.status == "ok"
                                                  else "its fraction was not trained")
                continue
        resumed = _load_candidate(folder, name) if folder else None
        if resumed is not None:
            candidate, files[name] = resumed
            candidates[-1] = candidate
            say(f"[{index + 1}/{len(plan)}] {name}: resumed from {backup_dir} ({candidate.status})")
        else:
            train_epochs = _training_epochs(steps)
            estimate = (train_epochs * (epoch_seconds or 0.0)) + 2 * (convert_seconds or 0.0)
            if train_epochs and epoch_seconds is None:
                epoch_seconds = _time_one_epoch(model, x_train, y_train, batch_size)
                estimate = train_epochs * epoch_seconds + 2 * (convert_seconds or 0.0)
            if estimate > left() and name != "float32":  # the float32 file is the reference: always measured
                candidate.status = f"skipped: needs about {estimate:.0f} s, {max(0.0, left()):.0f} s of the time budget left"
                say(f"[{index + 1}/{len(plan)}] {name}: {candidate.status}")
                continue
            if kind == "channels" and best is not None:
                # Cut a branch that cannot win: the untrained one-shot version has the final width already.
                try:
                    probe = to_tflite(prune_channels(model, float(ratio), verbose=0), mode="int8",
                                      representative_data=x_train[:32])
                except (ValueError, RuntimeError) as exc:
                    candidate.status = "failed: " + " ".join(str(exc).split())[:160]
                    say(f"[{index + 1}/{len(plan)}] {name}: {candidate.status}")
                    continue
                if objective == "size":
                    wins = tflite_file.inspect(bytes(probe)).gzip_bytes < named(best).gzip_bytes
                elif objective == "macs":
                    wins = tflite_file.inspect(bytes(probe)).macs < named(best).macs
                else:
                    times = time_together({"probe": probe, best: files[best]})
                    wins = times["probe"] < 1.05 * times[best]  # within timing noise it might still win: train it
                if not wins:
                    candidate.status = f"skipped: its width cannot beat {best} on {objective}"
                    say(f"[{index + 1}/{len(plan)}] {name}: {candidate.status}")
                    continue
            say(f"[{index + 1}/{len(plan)}] {name}: {candidate.recipe}")
            start = time.perf_counter()
            try:
                if steps == "budget":
                    tflite = to_tflite(model, mode="int8", representative_data=x_train[:200],
                                       max_accuracy_drop=max_accuracy_drop, validation_data=(x_val, y_val))
                else:
                    result = compress(start_model, ((x_train, y_train), (x_val, y_val)), steps, batch_size=batch_size,
                                      evaluate=False, verbose=verbose, seed=seed,
                                      backup_dir=os.path.join(backup_dir, name) if backup_dir else None)
                    tflite = result.artifacts[name]
                    if objective == "size":
                        trained[name] = result.model
            except (AccuracyBudgetError, ValueError, RuntimeError) as exc:
                candidate.status = "failed: " + " ".join(str(exc).split())[:160]
                candidate.seconds = time.perf_counter() - start
                say(f"    {candidate.status}")
                continue
            candidate.seconds = time.perf_counter() - start
            if name == "float32":
                convert_seconds = candidate.seconds
            candidate.val_accuracy = _top1(tflite, x_val, y_val)
            info = tflite_file.inspect(bytes(tflite))
            candidate.file_bytes, candidate.gzip_bytes = info.file_bytes, info.gzip_bytes
            candidate.macs, candidate.int8 = info.macs, tflite_file.computes_int8(info.op_census_by_dtype)
            candidate.status = "ok" if candidate.val_accuracy >= input_val - budget else "over budget"
            files[name] = bytes(tflite)
            if folder:
                keep = objective == "size" and (kind == "channels" or kind == "channels-distill" or kind == "prune")
                _save_candidate(folder, candidate, tflite, trained.get(name) if keep else None)
            say(f"    {candidate.status}: {100 * candidate.val_accuracy:.2f}% validation "
                f"({100 * (candidate.val_accuracy - input_val):+.2f} pt), {info.gzip_bytes / 1024:.1f} KB gzip "
                f"({candidate.seconds:.0f} s)")
        if name == "float32" and time_budget is not None:
            ptq = 3 * candidate.seconds + 5
            if left() < ptq:
                raise ValueError(
                    f"time_budget={time_budget} s is too small for even post-training int8 here: the float32 "
                    f"conversion alone took {candidate.seconds:.0f} s, int8 needs about {ptq:.0f} s more. Give at "
                    f"least {time.perf_counter() - started + ptq:.0f} s; a training candidate adds about "
                    f"{epochs} epoch(s) each.")
        if candidate.status == "over budget" and kind == "channels-distill":
            failed_groups.add(group)  # distillation could not save this fraction: larger ones will not do better
        if candidate.status == "ok":
            if best is None:
                best = name
            elif objective == "size":
                best = name if candidate.gzip_bytes < named(best).gzip_bytes else best
            elif objective == "macs":
                best = min((candidate, named(best)), key=_macs_key).name
            else:
                # This only steers the search (which branches to cut); the final joint timing picks the winner.
                times = time_together({name: files[name], best: files[best]})
                best = name if times[name] < times[best] else best

    # One run for all: the final latencies, and the test split.
    measured = {c.name: files[c.name] for c in candidates if c.measured}
    say(f"timing {len(measured)} candidates together and scoring them on the {len(x_test)} test samples")
    reports = evaluate_many(measured, x=x_test, y=y_test, backends=tuple(dict.fromkeys((backend, "cpu", "xnnpack"))),
                            num_runs=num_runs, verify=False)
    for c in candidates:
        if c.name in reports:
            r = reports[c.name]
            c.test_accuracy = r.accuracy
            c.latency_ms = {lat.key: lat.median_ms for lat in r.latency}
    within = [c for c in candidates if c.status == "ok"]
    if not within:
        raise ValueError("auto_compress: no candidate could be converted, not even float32: "
                         + "; ".join(f"{c.name}: {c.status}" for c in candidates if c.status.startswith("failed")))
    key = f"{backend}/1t"
    if objective == "macs":
        winner = min(within, key=_macs_key)
    else:
        winner = min(within, key=lambda c: (c.gzip_bytes if objective == "size" else c.latency_ms[key], -c.val_accuracy))
    host = machine.current()
    decided_by = {
        "latency": f"latency measured on this host ({backend}, 1 thread, on {host.cpu})",
        "size": "the gzip -9 size of the file (the same on every host)",
        "macs": "MACs per inference, int8 preferred at equal MACs (hardware-independent: for a target that is "
                "not this host)",
    }[objective]
    shortfall = max(0.0, 100 * ((input_test - budget) - winner.test_accuracy))
    result = AutoCompressionResult(
        model=None, artifacts={n: files[n] for n in measured}, reports=reports, keras_accuracy=input_test, log=[],
        best=winner.name, candidates=candidates, objective=objective, backend=backend,
        max_accuracy_drop=max_accuracy_drop, input_val_accuracy=input_val, budget_met_on_test=shortfall == 0.0,
        test_shortfall=shortfall, out_dir=os.fspath(out_dir) if out_dir is not None else None,
        machine=host.to_dict(), decided_by=decided_by)
    say(f"winner {winner.name}: " + ("within the budget on the test split" if result.budget_met_on_test else
                                     f"misses the budget on the test split by {shortfall:.2f} pt")
        + f" ({time.perf_counter() - started:.0f} s)")
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _macs_key(c):
    """Fewest MACs first; at equal MACs an int8 file (int8 kernels on the target), then the smaller, the more accurate."""
    return (c.macs, not c.int8, c.gzip_bytes, -c.val_accuracy)


def _time_one_epoch(model, x, y, batch_size):
    """Seconds one fine-tuning epoch takes, from a short fit of a copy on a slice."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = min(len(x), 20 * batch_size)
    clone.fit(x[:batch_size], y[:batch_size], epochs=1, batch_size=batch_size, verbose=0)  # compile the step
    start = time.perf_counter()
    clone.fit(x[:n], y[:n], epochs=1, batch_size=batch_size, verbose=0)
    return (time.perf_counter() - start) * len(x) / n


def write_outputs(result, out_dir):
    """``best.tflite``, ``candidates/*.tflite``, ``report.md``, ``report.json`` and ``report.png`` in ``out_dir``."""
    os.makedirs(os.path.join(out_dir, "candidates"), exist_ok=True)
    for name, blob in result.artifacts.items():
        write_atomic(os.path.join(out_dir, "candidates", f"{name}.tflite"), bytes(blob), overwrite=True)
    write_atomic(os.path.join(out_dir, "best.tflite"), bytes(result.artifacts[result.best]), overwrite=True)
    write_atomic(os.path.join(out_dir, "report.md"), "# tfcompress auto\n\n" + result.to_markdown() + "\n",
                 overwrite=True)
    payload = {
        "best": result.best, "objective": result.objective, "backend": result.backend,
        "max_accuracy_drop": result.max_accuracy_drop, "input_val_accuracy": result.input_val_accuracy,
        "input_test_accuracy": result.keras_accuracy, "budget_met_on_test": result.budget_met_on_test,
        "test_shortfall_points": result.test_shortfall,
        "machine": result.machine, "decided_by": result.decided_by,
        "candidates": [dataclasses.asdict(c) for c in result.candidates],
        "reports": {n: r.to_dict() for n, r in result.reports.items()},
    }
    write_atomic(os.path.join(out_dir, "report.json"), json.dumps(payload, indent=2), overwrite=True)
    axis = {"latency": (lambda c: c.latency_ms[f"{result.backend}/1t"],
                        f"median latency on {result.backend}, 1 thread (ms), on {machine.current().cpu}"),
            "size": (lambda c: c.gzip_bytes / 1024, "gzip -9 size (KB)"),
            "macs": (lambda c: c.macs / 1e6, "MACs per inference (millions)")}[result.objective]
    reports_module.plot_pareto(
        [(c.name, axis[0](c), 100 * c.test_accuracy) for c in result.candidates if c.measured],
        os.path.join(out_dir, "report.png"),
        xlabel=axis[1],
        ylabel="test accuracy (%)", highlight=result.best,
        title=f"tfcompress auto: {result.objective} vs accuracy (budget {result.max_accuracy_drop} pt)")
