"""Scoring predictions against true labels: per-label precision/recall/F1,
macro-F1, and the automatic-action figures (precision of the predictions
that cleared their threshold, and the share of messages they cover); and
choosing those thresholds from held-out probabilities.

Pure functions over lists and arrays; the CLI and training print and store
what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

#: An automatic action may be wrong at most this often.
TARGET_PRECISION = 0.99
#: Never act automatically below this probability, whatever the held-out data says: a label
#: with no held-out error at all would otherwise act on a coin toss, and new mail, written by
#: other people, is less like the training data than its held-out folds are.
MIN_THRESHOLD = 0.6
#: A label whose held-out predictions never reach the target gets this (never automatic).
NEVER = 1.01
#: Errors added to the held-out count when choosing thresholds (a safety margin).
SAFETY_ERRORS = 0.0


def report(y_true: Sequence[str], y_pred: Sequence[str], auto: Sequence[bool],
           labels: Sequence[str], present_only: bool = False) -> dict[str, Any]:
    """Return the evaluation figures as a JSON-ready dict.

    Macro-F1 averages the labels that occur in ``y_true`` or ``y_pred``, or with
    ``present_only`` only those in ``y_true``.
    """
    y_true, y_pred, auto_arr = list(y_true), list(y_pred), np.asarray(auto, dtype=bool)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    per_label = {lab: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                       "f1": round(float(f[i]), 4), "support": int(s[i])}
                 for i, lab in enumerate(labels)}
    present = [i for i, lab in enumerate(labels) if s[i] > 0 or (lab in y_pred and not present_only)]
    macro_f1 = float(np.mean([f[i] for i in present])) if present else 0.0
    n = len(y_true)
    correct = np.array([t == q for t, q in zip(y_true, y_pred)], dtype=bool)
    n_auto = int(auto_arr.sum())
    return {
        "messages": n,
        "accuracy": round(float(accuracy_score(y_true, y_pred)) if n else 0.0, 4),
        "macro_f1": round(macro_f1, 4),
        "per_label": per_label,
        "auto": {
            "messages": n_auto,
            "coverage": round(n_auto / n, 4) if n else 0.0,
            "precision": round(float(correct[auto_arr].mean()), 4) if n_auto else 1.0,
            "errors": int((~correct[auto_arr]).sum()),
        },
    }


def format_report(rep: dict[str, Any]) -> str:
    """Return ``rep`` as the text table ``acedesk evaluate`` prints."""
    lines = [f"{'label':<22} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for lab, m in rep["per_label"].items():
        lines.append(f"{lab:<22} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} {m['support']:>8d}")
    a = rep["auto"]
    lines += [
        "",
        f"messages:  {rep['messages']}",
        f"accuracy:  {rep['accuracy']:.4f}",
        f"macro-F1:  {rep['macro_f1']:.4f}",
        f"automatic: precision {a['precision']:.4f} on {a['messages']} messages, "
        f"coverage {a['coverage']:.1%} ({a['errors']} wrong)",
    ]
    return "\n".join(lines)


def choose_thresholds(proba: np.ndarray, y_true: Sequence[str], labels: Sequence[str],
                      target: float = TARGET_PRECISION, min_threshold: float = MIN_THRESHOLD,
                      margin: float = SAFETY_ERRORS) -> dict[str, float]:
    """Return per-label thresholds from held-out probabilities.

    For each label, among the held-out messages predicted as that label
    (sorted by confidence), the lowest threshold at which the predictions at
    or above it are right at least ``target`` of the time, counting
    ``margin`` extra errors for safety: the most messages handled
    automatically while each label's automatic actions stay within the
    target.  Per label rather than pooled, so that no label's automatic
    answers can be much worse than the target.  A label that never meets
    the target gets :data:`NEVER`.
    """
    labels = list(labels)
    y = np.asarray(y_true)
    best = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    thresholds: dict[str, float] = {}
    for j, lab in enumerate(labels):
        mask = best == j
        c = conf[mask]
        ok = y[mask] == lab
        order = np.argsort(-c, kind="stable")
        c, ok = c[order], ok[order]
        errors = np.cumsum(~ok)
        n = np.arange(1, len(c) + 1)
        precision = 1.0 - (errors + margin) / n
        # Cut only between distinct confidences (tied messages go together), and not below the floor.
        distinct = np.append(c[1:] < c[:-1], True) if len(c) else np.zeros(0, dtype=bool)
        good = np.where((precision >= target) & distinct & (c >= min_threshold))[0]
        thresholds[lab] = round(float(c[good.max()]), 4) if len(good) else NEVER
    return thresholds


def apply_thresholds(proba: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]
                     ) -> tuple[list[str], list[bool]]:
    """Return the predicted labels and whether each clears its threshold."""
    labels = list(labels)
    best = proba.argmax(axis=1)
    pred = [labels[i] for i in best]
    auto = [bool(proba[r, i] >= thresholds.get(labels[i], NEVER)) for r, i in enumerate(best)]
    return pred, auto


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    matrix: list[list[int]] = confusion_matrix(list(y_true), list(y_pred), labels=list(labels)).tolist()
    return matrix


def safe_log_loss(y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str]) -> float:
    p = np.clip(proba, 1e-9, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return round(float(log_loss(list(y_true), p, labels=list(labels))), 4)
