"""Training: compare the candidate feature/model choices by cross-validation,
fit the best one on all the training data, set per-label thresholds from
its held-out (out-of-fold) probabilities, and write the versioned model
file, its model card and a confusion-matrix PNG.

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
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from classifiers.corpus import Example, data_hash
from classifiers.evaluation import (
    TARGET_PRECISION,
    apply_thresholds,
    choose_thresholds,
    confusion,
    report,
    safe_log_loss,
)
from classifiers.labels import LABELS
from classifiers.model import DEFAULT_MAX_CHARS, MODEL_PREFIX, PNG_SUFFIX, SPECS, TextClassifier

#: Folds of the cross-validation that compares the choices and sets the thresholds.
FOLDS = 5


@dataclass
class TrainResult:
    model: TextClassifier
    card: dict[str, Any]
    #: Out-of-fold confusion matrix of the chosen spec (rows true, columns predicted, LABELS order).
    confusion: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def make_version(texts_hash: str, now: dt.datetime | None = None) -> str:
    """Return a version that sorts by time: ``YYYYMMDD-HHMMSS-<data hash prefix>``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{texts_hash[:8]}"


def library_versions() -> dict[str, str]:
    import joblib
    import scipy
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "joblib": joblib.__version__}


def out_of_fold(spec: str, texts: Sequence[str], labels: Sequence[str], seed: int, max_chars: int,
                folds: int = FOLDS, progress: Any = None) -> np.ndarray:
    """Return out-of-fold probabilities (columns in sorted label order) of ``spec``."""
    y = np.asarray(labels)
    classes = sorted(set(labels))
    proba = np.zeros((len(texts), len(classes)))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(y)), y):
        model = TextClassifier(spec=spec, seed=seed, max_chars=max_chars)
        model.fit([texts[i] for i in train_idx], y[train_idx].tolist())
        part = model.predict_proba([texts[i] for i in test_idx])
        cols = [classes.index(c) for c in model.labels]
        proba[np.ix_(test_idx, cols)] = part
        if progress is not None:
            progress.update(1)
    return proba


def train(examples: Sequence[Example], *, seed: int = 0, specs: Sequence[str] = SPECS,
          max_chars: int = DEFAULT_MAX_CHARS, version: str | None = None, folds: int = FOLDS,
          heldout: Sequence[Example] = (), progress: bool = True) -> TrainResult:
    """Compare ``specs``, fit the best, and return it with its card.

    ``heldout`` (the test split) is only scored, never trained on; its
    figures go into the card.
    """
    from tqdm import tqdm

    texts = [e.text for e in examples]
    labels = [e.label for e in examples]
    counts = Counter(labels)
    too_few = sorted(lab for lab, n in counts.items() if n < folds)
    if too_few:
        raise ValueError(f"too few examples (< {folds}) for: {', '.join(too_few)}")
    digest = data_hash(texts, labels)
    classes = sorted(counts)
    bar = tqdm(total=len(specs) * folds + 1 + (1 if heldout else 0), desc="training", unit="fit",
               disable=not progress, leave=progress)
    comparison: dict[str, dict[str, Any]] = {}
    oof: dict[str, np.ndarray] = {}
    try:
        for spec in specs:
            bar.set_postfix_str(spec)
            start = time.perf_counter()
            proba = out_of_fold(spec, texts, labels, seed, max_chars, folds, bar)
            thresholds = choose_thresholds(proba, labels, classes)
            pred, auto = apply_thresholds(proba, classes, thresholds)
            rep = report(labels, pred, auto, classes)
            comparison[spec] = {"macro_f1": rep["macro_f1"], "accuracy": rep["accuracy"],
                                "log_loss": safe_log_loss(labels, proba, classes),
                                "auto_precision": rep["auto"]["precision"],
                                "auto_coverage": rep["auto"]["coverage"],
                                "seconds": round(time.perf_counter() - start, 1)}
            oof[spec] = proba
        # Best: most messages handled automatically at the target precision, then macro-F1.
        chosen = max(specs, key=lambda s: (comparison[s]["auto_coverage"] if comparison[s]["auto_precision"]
                                           >= TARGET_PRECISION else 0.0, comparison[s]["macro_f1"],
                                           -comparison[s]["log_loss"]))
        proba = oof[chosen]
        thresholds = choose_thresholds(proba, labels, classes)
        pred, auto = apply_thresholds(proba, classes, thresholds)
        cv_report = report(labels, pred, auto, classes)
        bar.set_postfix_str(f"fit {chosen}")
        start = time.perf_counter()
        model = TextClassifier(spec=chosen, seed=seed, max_chars=max_chars, thresholds=thresholds)
        model.fit(texts, labels)
        fit_seconds = time.perf_counter() - start
        bar.update(1)
        version = version or make_version(digest)
        model.version = version
        card: dict[str, Any] = {
            "version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "training_data_sha256": digest,
            "examples": len(texts),
            "label_counts": {lab: counts.get(lab, 0) for lab in LABELS},
            "language_counts": dict(sorted(Counter(e.language or "?" for e in examples).items())),
            "sources": dict(sorted(Counter(_source_kind(e) for e in examples).items())),
            "spec": chosen,
            "seed": seed,
            "folds": folds,
            "target_precision": TARGET_PRECISION,
            "cv_comparison": comparison,
            "cv": cv_report,
            "thresholds": thresholds,
            "fit_seconds": round(fit_seconds, 2),
            "libraries": library_versions(),
        }
        if heldout:
            bar.set_postfix_str("held-out split")
            preds = model.predict([e.text for e in heldout])
            card["heldout"] = report([e.label for e in heldout], [p.label for p in preds],
                                     [p.auto for p in preds], LABELS)
            bar.update(1)
        model.card = card
    finally:
        bar.close()
    return TrainResult(model=model, card=card, confusion=confusion(labels, pred, classes), labels=classes)


def _source_kind(example: Example) -> str:
    source = example.source
    if source.startswith("correction:"):
        return "corrections"
    return source.split(":", 1)[0] or "?"


def write_artifacts(result: TrainResult, directory: Path | str) -> Path:
    """Save the model, its card and the confusion-matrix PNG in ``directory``; return the model path."""
    directory = Path(directory)
    path = result.model.save(directory)
    plot_confusion(result.confusion, result.labels,
                   directory / f"{MODEL_PREFIX}{result.model.version}{PNG_SUFFIX}",
                   title=f"{result.model.version} ({result.model.spec}), out-of-fold")
    return path


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], path: Path, title: str = "") -> None:
    """Write a confusion-matrix heat map (rows: true label, columns: predicted) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(9, 8), dpi=80)
    try:
        ax.imshow(data, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels=list(labels), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels=list(labels), fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title, fontsize=9)
        high = data.max() if data.size else 0
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if data[i, j]:
                    ax.text(j, i, str(data[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] > high / 2 else "black")
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
