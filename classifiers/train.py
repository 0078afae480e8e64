"""Training: compare the candidate model families leave-one-writer-out
(:mod:`classifiers.lowo`), fit the best one on every writer, set per-label
thresholds from its out-of-writer probabilities, and write the versioned
model file, its model card and a confusion-matrix SVG.

The daemon never trains; ``acedesk train`` calls :func:`train` and
:func:`write_artifacts`.  Everything is seeded: the same data and seed give
the same model, predictions and card metrics.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.corpus import Example, data_hash
from classifiers.evaluation import TARGET_PRECISION, confusion
from classifiers.labels import LABELS
from classifiers.lowo import CORRECTION_WEIGHT, OutOfWriter, evaluate, out_of_writer, thresholds_from, training_weights
from classifiers.model import DEFAULT_MAX_CHARS, MODEL_PREFIX, PLOT_SUFFIX, SPECS, TextClassifier

#: Fewest examples of a label, across all writers, that training accepts.
MIN_PER_LABEL = 5


@dataclass
class TrainResult:
    model: TextClassifier
    card: dict[str, Any]
    #: Out-of-writer confusion matrix of the chosen family (rows true, columns predicted, LABELS order).
    confusion: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def make_version(texts_hash: str, now: dt.datetime | None = None) -> str:
    """Return a version that sorts by time: ``YYYYMMDD-HHMMSS-<data hash prefix>``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{texts_hash[:8]}"


def library_versions() -> dict[str, str]:
    import scipy
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}


def _summary(ev: dict[str, Any], seconds: float) -> dict[str, Any]:
    o = ev["overall"]
    return {"macro_f1": o["macro_f1"], "accuracy": o["accuracy"], "auto_precision": o["auto"]["precision"],
            "auto_coverage": o["auto"]["coverage"], "worst_writer_macro_f1": ev["worst_writer_macro_f1"],
            "seconds": round(seconds, 1)}


def _chosen(comparison: dict[str, dict[str, Any]]) -> str:
    """The family that acts automatically on the most mail at the target precision, then macro-F1."""
    return max(comparison, key=lambda s: (comparison[s]["auto_coverage"]
                                          if comparison[s]["auto_precision"] >= TARGET_PRECISION else 0.0,
                                          comparison[s]["macro_f1"]))


def train(examples: Sequence[Example], *, corrections: Sequence[Example] = (), seed: int = 0,
          specs: Sequence[str] = SPECS, max_chars: int = DEFAULT_MAX_CHARS, version: str | None = None,
          progress: bool = True) -> TrainResult:
    """Compare ``specs`` leave-one-writer-out, fit the best on everything, and return it with its card.

    ``corrections`` (analysts' relabellings) are trained on with their own weight in every
    fold, never scored; the card says how they changed the out-of-writer figures.
    """
    from tqdm import tqdm

    examples = list(examples)
    corrections = [c if c.writer == "corrections" else _as_correction(c) for c in corrections]
    labels = [e.label for e in examples]
    counts = Counter(labels)
    too_few = sorted(lab for lab, n in counts.items() if n < MIN_PER_LABEL)
    if too_few:
        raise ValueError(f"too few examples (< {MIN_PER_LABEL}) for: {', '.join(too_few)}")
    writers = sorted({e.writer for e in examples})
    if len(writers) < 2:
        raise ValueError("training needs examples from at least two writers (one file per writer)")
    everything = [*examples, *corrections]
    digest = data_hash([e.text for e in everything], [e.label for e in everything])
    bar = tqdm(total=len(specs) * len(writers) + (len(writers) if corrections else 0) + 1, desc="training",
               unit="fit", disable=not progress, leave=progress)
    comparison: dict[str, dict[str, Any]] = {}
    runs: dict[str, tuple[OutOfWriter, dict[str, Any]]] = {}
    try:
        for spec in specs:
            bar.set_postfix_str(spec)
            start = time.perf_counter()
            oow = out_of_writer(spec, examples, corrections=corrections, seed=seed, max_chars=max_chars,
                                progress=bar)
            ev = evaluate(oow)
            comparison[spec] = _summary(ev, time.perf_counter() - start)
            runs[spec] = (oow, ev)
        chosen = _chosen(comparison)
        oow, ev = runs[chosen]
        thresholds = thresholds_from(oow)
        effect = None
        if corrections:
            bar.set_postfix_str("without corrections")
            start = time.perf_counter()
            plain = evaluate(out_of_writer(chosen, examples, seed=seed, max_chars=max_chars, progress=bar))
            effect = {"count": len(corrections), "weight": CORRECTION_WEIGHT,
                      "without": _summary(plain, time.perf_counter() - start), "with": comparison[chosen]}
        bar.set_postfix_str(f"fit {chosen}")
        start = time.perf_counter()
        model = TextClassifier(spec=chosen, seed=seed, max_chars=max_chars, thresholds=thresholds)
        model.fit([e.text for e in everything], [e.label for e in everything], training_weights(everything))
        fit_seconds = time.perf_counter() - start
        bar.update(1)
    finally:
        bar.close()
    model.version = version or make_version(digest)
    card: dict[str, Any] = {
        "version": model.version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "training_data_sha256": digest,
        "examples": len(everything),
        "label_counts": {lab: counts.get(lab, 0) for lab in LABELS},
        "language_counts": dict(sorted(Counter(e.language or "?" for e in examples).items())),
        "writers": dict(sorted(Counter(e.writer for e in examples).items())),
        "sources": dict(sorted(Counter(_source_kind(e) for e in everything).items())),
        "spec": chosen,
        "seed": seed,
        "evaluation": "leave-one-writer-out; each writer's automatic actions judged with thresholds "
                      "chosen on the other writers' out-of-writer predictions",
        "target_precision": TARGET_PRECISION,
        "comparison": comparison,
        "lowo": ev,
        "corrections": effect,
        "thresholds": thresholds,
        "fit_seconds": round(fit_seconds, 2),
        "libraries": library_versions(),
    }
    model.card = card
    y = [e.label for e in examples]
    pred = [LABELS[j] for j in oow.proba.argmax(axis=1)]
    return TrainResult(model=model, card=card, confusion=confusion(y, pred, LABELS), labels=list(LABELS))


def _as_correction(example: Example) -> Example:
    from dataclasses import replace

    return replace(example, writer="corrections")


def _source_kind(example: Example) -> str:
    source = example.source
    if source.startswith("correction:"):
        return "corrections"
    return source.split(":", 1)[0] or "?"


def write_artifacts(result: TrainResult, directory: Path | str) -> Path:
    """Save the model, its card and the confusion-matrix SVG in ``directory``; return the model path."""
    directory = Path(directory)
    path = result.model.save(directory)
    title = f"{result.model.version} ({result.model.spec}), leave-one-writer-out"
    (directory / f"{MODEL_PREFIX}{result.model.version}{PLOT_SUFFIX}").write_text(
        confusion_svg(result.confusion, result.labels, title), encoding="utf-8")
    return path


def confusion_svg(matrix: list[list[int]], labels: Sequence[str], title: str = "") -> str:
    """Return a confusion-matrix heat map (rows: true label, columns: predicted) as SVG text."""
    data = np.asarray(matrix)
    cell, left, top = 34, 170, 190
    size = len(labels)
    high = max(int(data.max()), 1) if data.size else 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cell * size + 20}" '
             f'height="{top + cell * size + 40}" font-family="sans-serif" font-size="11">',
             f'<text x="10" y="20" font-size="13">{escape(title)}</text>',
             f'<text x="10" y="{top - 8}">true \u2193 / predicted \u2192</text>']
    for j, lab in enumerate(labels):
        x = left + cell * j + cell // 2
        parts.append(f'<text transform="translate({x},{top - 6}) rotate(-60)">{escape(lab)}</text>')
    for i, lab in enumerate(labels):
        y = top + cell * i
        parts.append(f'<text x="{left - 6}" y="{y + cell // 2 + 4}" text-anchor="end">{escape(lab)}</text>')
        for j in range(size):
            value = int(data[i, j]) if data.size else 0
            shade = int(255 - 200 * value / high)
            parts.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="rgb({shade},{shade},255)" stroke="#ddd"/>')
            if value:
                colour = "white" if value > high / 2 else "black"
                parts.append(f'<text x="{left + cell * j + cell // 2}" y="{y + cell // 2 + 4}" '
                             f'text-anchor="middle" fill="{colour}">{value}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
