"""The saved model: a fitted linear text model as plain arrays, and the
predictor that computes its probabilities from them.

A model file (``acedesk-model-<version>.npz``) is a NumPy archive read with
``allow_pickle=False``: vocabularies, IDF weights, coefficients and
calibration parameters, plus a JSON header.  Loading it executes no code
and needs neither scikit-learn nor the version that trained it: only NumPy
and SciPy, whose array formats are stable.  :func:`export` turns a fitted
scikit-learn pipeline into an artifact, and training checks that the
artifact reproduces the pipeline's probabilities before it is saved.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import expit, softmax

from classifiers.features import CUES_VERSION, CharTfidf, cue_matrix, word_tokens

#: Layout version of the archive; bumped when it changes.
FORMAT = 2


class ArtifactError(Exception):
    """An archive that is not a usable model; the message says why."""


class _GramIndex:
    """The word vocabulary as arrays: every word that the vocabulary's uni- or bigrams use gets
    a number, and a batch's n-grams are then found with NumPy, not counted per text in Python."""

    def __init__(self, vocabulary: dict[str, int]) -> None:
        words: dict[str, int] = {}
        for term in vocabulary:
            for word in term.split(" "):
                words.setdefault(word, len(words))
        self.words = words
        #: Column of each numbered word as a unigram; -1 when it is not one (and, last, for an
        #: unknown word, numbered -1).
        self.unigram = np.full(len(words) + 1, -1, dtype=np.int64)
        pairs: list[tuple[int, int]] = []
        for term, col in vocabulary.items():
            first, _, second = term.partition(" ")
            if second:
                pairs.append((words[first] * len(words) + words[second], col))
            else:
                self.unigram[words[term]] = col
        pairs.sort()
        #: Bigrams as sorted keys (first word's number x words + second's) and their columns.
        self.pair_keys = np.array([k for k, _ in pairs], dtype=np.int64)
        self.pair_columns = np.array([c for _, c in pairs], dtype=np.int64)


def _first_and_count(cells: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the distinct ``cells`` (sorted), the least ``order`` key of each, and how many times
    each occurs (both arrays non-negative, ``order`` keys distinct)."""
    if not len(cells):
        return cells, order, np.zeros(0, dtype=np.int64)
    bits = int(order.max()).bit_length()
    if (int(cells.max()) + 1) << bits < 1 << 62:
        # One plain sort of both packed in an int64 (vectorised), not np.unique's stable argsort.
        packed = np.sort((cells << bits) | order)
        cells = packed >> bits
        starts = np.flatnonzero(np.concatenate(([True], cells[1:] != cells[:-1])))
        counts = np.diff(np.append(starts, len(cells)))
        return cells[starts], packed[starts] & ((1 << bits) - 1), counts
    distinct, first, counts = np.unique(cells, return_index=True, return_counts=True)
    least = np.full(len(distinct), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(least, np.searchsorted(distinct, cells), order)
    return distinct, least, counts


@dataclass
class WordFeatures:
    """Word uni- and bigram TF-IDF (sublinear TF, L2 rows), as scikit-learn's
    ``TfidfVectorizer(ngram_range=(1, 2))`` computes it."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    _index: _GramIndex | None = field(default=None, init=False, repr=False, compare=False)

    def transform(self, texts: Sequence[str], tokens: Sequence[list[str]] | None = None) -> sparse.csr_matrix:
        """Return the TF-IDF rows of normalised ``texts`` (``tokens``: their :func:`word_tokens`,
        when the caller has them already)."""
        if tokens is None:
            tokens = [word_tokens(text) for text in texts]
        index = self._index
        if index is None:
            index = self._index = _GramIndex(self.vocabulary)
        n_rows = len(texts)
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=n_rows)
        size = len(index.words)
        # Every token of the batch as its word's number (-1: a word no n-gram uses).
        ids = np.fromiter(map(index.words.get, chain.from_iterable(tokens), repeat(-1)), dtype=np.int64,
                          count=int(lengths.sum()))
        rows = np.repeat(np.arange(n_rows), lengths)
        unigrams = index.unigram[ids]
        # Bigrams: neighbouring tokens of one text, both numbered, whose key is in the vocabulary.
        keys = ids[:-1] * size + ids[1:]
        at = np.minimum(np.searchsorted(index.pair_keys, keys), max(len(index.pair_keys) - 1, 0))
        paired = (rows[:-1] == rows[1:]) & (ids[:-1] >= 0) & (ids[1:] >= 0)
        if len(index.pair_keys):
            paired &= index.pair_keys[at] == keys
        else:
            paired[:] = False
        known = unigrams >= 0
        entry_rows = np.concatenate((rows[known], rows[:-1][paired]))
        entry_cols = np.concatenate((unigrams[known], index.pair_columns[at[paired]] if len(index.pair_keys)
                                     else np.zeros(0, dtype=np.int64)))
        # The order scikit-learn's counting gave (and that the float sums below follow): per
        # text, its unigrams by first occurrence, then its bigrams by first occurrence.
        position = np.arange(len(ids))
        order = np.concatenate((2 * rows[known] * len(ids) + position[known],
                                (2 * rows[:-1][paired] + 1) * len(ids) + position[:-1][paired]))
        cells, first, tf = _first_and_count(entry_rows * len(self.vocabulary) + entry_cols, order)
        # Distinct order keys: an unstable sort orders them the same.
        ranked = np.argsort(first)
        cells, tf = cells[ranked], tf[ranked]
        rows_of = cells // len(self.vocabulary)
        cols = cells - rows_of * len(self.vocabulary)
        vals = (1.0 + np.log(tf)) * self.idf[cols]
        norms = np.sqrt(np.bincount(rows_of, weights=vals * vals, minlength=n_rows))
        norms[norms == 0] = 1.0
        vals /= norms[rows_of]
        indptr = np.concatenate(([0], np.cumsum(np.bincount(rows_of, minlength=n_rows))))
        return sparse.csr_matrix((vals, cols, indptr), shape=(n_rows, len(self.vocabulary)))


@dataclass
class Head:
    """One linear classifier over the features: ``sigmoid`` (a linear SVM with
    per-class Platt scaling, normalised) or ``softmax`` (logistic regression)."""

    kind: str
    coef: np.ndarray  # (n_features, n_classes)
    intercept: np.ndarray
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    weight: float = 1.0

    def proba(self, features: sparse.csr_matrix) -> np.ndarray:
        decision = np.asarray(features @ self.coef) + self.intercept
        if self.kind == "softmax":
            return np.asarray(softmax(decision, axis=1), dtype=np.float64)
        assert self.a is not None and self.b is not None
        p = np.asarray(expit(-(self.a * decision + self.b)), dtype=np.float64)
        total = p.sum(axis=1, keepdims=True)
        uniform = np.full_like(p, 1.0 / p.shape[1])
        return np.asarray(np.divide(p, total, out=uniform, where=total != 0), dtype=np.float64)


@dataclass
class Artifact:
    """Everything needed to predict: classes, feature blocks, heads, metadata."""

    classes: list[str]
    word: WordFeatures | None
    char: CharTfidf | None
    cues: bool
    heads: list[Head]
    meta: dict[str, Any] = field(default_factory=dict)

    def features(self, prepared: Sequence[str], tokens: Sequence[list[str]] | None = None) -> sparse.csr_matrix:
        """Return the feature rows of normalised texts (``tokens``: their word tokens, if known)."""
        blocks = []
        if self.word is not None:
            blocks.append(self.word.transform(prepared, tokens))
        if self.char is not None:
            blocks.append(self.char.transform(prepared))
        if self.cues:
            blocks.append(cue_matrix(prepared))
        return sparse.hstack(blocks, format="csr")

    def predict_proba(self, prepared: Sequence[str], tokens: Sequence[list[str]] | None = None) -> np.ndarray:
        """Return probabilities (columns in :attr:`classes` order) of normalised texts."""
        if not prepared:
            return np.zeros((0, len(self.classes)))
        x = self.features(prepared, tokens)
        total = sum(h.weight for h in self.heads)
        out = np.zeros((len(prepared), len(self.classes)))
        for h in self.heads:
            out += h.weight * h.proba(x)
        return out / total

    def word_vocabulary(self) -> frozenset[str]:
        """Whole words the model knows (familiarity): word unigrams and the char block's padded words."""
        words: set[str] = set()
        if self.word is not None:
            words.update(t for t in self.word.vocabulary if " " not in t)
        if self.char is not None:
            words.update(t.strip() for t in self.char.vocabulary_
                         if len(t) > 2 and t.startswith(" ") and t.endswith(" "))
        return frozenset(words)

    # -- the archive ---------------------------------------------------------------

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        header: dict[str, Any] = {**self.meta, "format": FORMAT, "classes": self.classes,
                                  "cues": CUES_VERSION if self.cues else 0, "heads": []}
        if self.word is not None:
            header["word_vocabulary"] = _ordered(self.word.vocabulary)
            arrays["word_idf"] = self.word.idf.astype(np.float64)
        if self.char is not None:
            header["char_vocabulary"] = _ordered(self.char.vocabulary_)
            arrays["char_idf"] = self.char.idf_.astype(np.float32)
        for i, h in enumerate(self.heads):
            header["heads"].append({"kind": h.kind, "weight": h.weight})
            arrays[f"head{i}_coef"] = h.coef.astype(np.float32)
            arrays[f"head{i}_intercept"] = h.intercept.astype(np.float64)
            if h.a is not None and h.b is not None:
                arrays[f"head{i}_a"] = h.a.astype(np.float64)
                arrays[f"head{i}_b"] = h.b.astype(np.float64)
        arrays["header"] = np.frombuffer(json.dumps(header, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        path.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Artifact":
        """Read an archive (no pickles); raise :class:`ArtifactError` saying what is wrong."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ArtifactError(f"not a model archive ({type(exc).__name__}: {str(exc)[:200]})") from None
        if "header" not in arrays:
            raise ArtifactError("not a model archive (no header)")
        try:
            header = json.loads(arrays["header"].tobytes().decode("utf-8"))
        except ValueError as exc:
            raise ArtifactError(f"unreadable header ({exc})") from None
        if header.get("format") != FORMAT:
            raise ArtifactError(f"model format {header.get('format')!r}, this code reads {FORMAT}")
        if header.get("cues") not in (0, CUES_VERSION):
            raise ArtifactError(f"desk-cue features version {header.get('cues')}, this code has {CUES_VERSION}")
        try:
            word = None
            if "word_vocabulary" in header:
                word = WordFeatures({t: i for i, t in enumerate(header["word_vocabulary"])}, arrays["word_idf"])
            char = None
            if "char_vocabulary" in header:
                char = CharTfidf.from_arrays({t: i for i, t in enumerate(header["char_vocabulary"])},
                                             arrays["char_idf"])
            heads = []
            for i, spec in enumerate(header["heads"]):
                heads.append(Head(kind=str(spec["kind"]), coef=arrays[f"head{i}_coef"].astype(np.float64),
                                  intercept=arrays[f"head{i}_intercept"], a=arrays.get(f"head{i}_a"),
                                  b=arrays.get(f"head{i}_b"), weight=float(spec.get("weight", 1.0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"incomplete model archive ({type(exc).__name__}: {exc})") from None
        meta = {k: v for k, v in header.items()
                if k not in ("word_vocabulary", "char_vocabulary", "heads", "classes", "cues")}
        art = cls(classes=[str(c) for c in header["classes"]], word=word, char=char,
                  cues=bool(header.get("cues")), heads=heads, meta=meta)
        width = art.features(["probe"]).shape[1]
        if any(h.coef.shape != (width, len(art.classes)) for h in heads) or not heads:
            raise ArtifactError("inconsistent model archive (coefficient shapes do not match the features)")
        return art


def _ordered(vocabulary: dict[str, int]) -> list[str]:
    terms = [""] * len(vocabulary)
    for term, col in vocabulary.items():
        terms[col] = term
    return terms


def export(pipeline: Any, meta: dict[str, Any]) -> Artifact:
    """Return the :class:`Artifact` of a fitted pipeline built by :func:`classifiers.model.build_pipeline`."""
    union = pipeline.named_steps["features"]
    word = char = None
    cues = False
    for name, transformer in union.transformer_list:
        if name == "word":
            word = WordFeatures(dict(transformer.vocabulary_), np.asarray(transformer.idf_, dtype=np.float64))
        elif name == "char":
            char = transformer
        elif name == "cues":
            cues = True
    classes = [str(c) for c in pipeline.classes_]
    clf = pipeline.named_steps["clf"]
    members = clf.estimators_ if hasattr(clf, "estimators_") and not hasattr(clf, "calibrated_classifiers_") \
        else [clf]
    weights = list(getattr(clf, "weights", None) or [1.0] * len(members))
    heads = [_head(m, classes, w) for m, w in zip(members, weights, strict=True)]
    return Artifact(classes=classes, word=word, char=char, cues=cues, heads=heads, meta=meta)


def _head(estimator: Any, classes: list[str], weight: float) -> Head:
    if hasattr(estimator, "calibrated_classifiers_"):
        [calibrated] = estimator.calibrated_classifiers_
        svm = calibrated.estimator
        columns = [classes.index(str(c)) for c in svm.classes_]
        coef = np.zeros((svm.coef_.shape[1], len(classes)))
        coef[:, columns] = svm.coef_.T
        intercept = np.zeros(len(classes))
        intercept[columns] = svm.intercept_
        a = np.zeros(len(classes))
        b = np.zeros(len(classes))
        a[columns] = [float(c.a_) for c in calibrated.calibrators]
        b[columns] = [float(c.b_) for c in calibrated.calibrators]
        return Head("sigmoid", coef, intercept, a, b, weight)
    columns = [classes.index(str(c)) for c in estimator.classes_]
    coef = np.zeros((estimator.coef_.shape[1], len(classes)))
    coef[:, columns] = estimator.coef_.T
    intercept = np.zeros(len(classes))
    intercept[columns] = estimator.intercept_
    return Head("softmax", coef, intercept, weight=weight)

