"""The trainable classifier: a scikit-learn ``Pipeline`` (word and character
n-gram TF-IDF, optionally the desk's cue groups, one or two linear models with
calibrated probabilities) over the normalised new text, with the per-label
thresholds that decide when a prediction is sure enough for an automatic
action.

``TextClassifier.fit() -> self``, ``predict``, ``save(dir)`` and ``load(path)``.
Training uses scikit-learn; a saved model is a plain array archive
(:mod:`classifiers.artifact`, ``acedesk-model-<version>.npz``) next to its
model card ``acedesk-model-<version>.card.json``.  Loading executes no code
and does not depend on the scikit-learn that trained the model.
:func:`TextClassifier.load` refuses, with :class:`ModelLoadError` naming the
file, anything that is not such an archive, was written for another format
or normaliser, or does not match the SHA-256 its card records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classifiers.artifact import Artifact, ArtifactError, export
from classifiers.features import WORD_PATTERN, CharTfidf, CueFeatures, word_tokens
from classifiers.labels import LABELS, OTHER
from classifiers.normalise import NORMALISER_VERSION, normalise

MODEL_PREFIX = "acedesk-model-"
MODEL_SUFFIX = ".npz"
CARD_SUFFIX = ".card.json"
PLOT_SUFFIX = ".confusion.svg"
#: Characters of normalised text the model reads.
DEFAULT_MAX_CHARS = 1000
#: Below this share of known words a message is unfamiliar: never an automatic action.
MIN_FAMILIARITY = 0.5
MIN_KNOWN_WORDS = 2
#: A clause (between . ! ? ; , or line breaks) of at least this many words is judged on its own;
#: when clauses are confidently about MIXED_MIN_LABELS different labels, the message asks for
#: several things at once: never automatic.
MIN_CLAUSE_WORDS = 4
MIXED_CLAUSE_CONFIDENCE = 0.7
#: Distinct labels among confident clauses that make a message mixed.
MIXED_MIN_LABELS = 3
_CLAUSE = re.compile(r"[.!?;,\n]+")

#: Neighbouring labels that writers blur (measured leave-one-writer-out): when the two best
#: labels are such a pair and close, a person decides rather than the model guessing.
CONFUSABLE_PAIRS: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in (
    ("pga_access", "password_reset"), ("pga_access", "account_locked"), ("account_locked", "password_reset"),
    ("ace_reports", "entry_summary"), ("account_setup", "account_management"),
    ("third_party_software", "system_status"), ("export_aesdirect", "system_status"),
    ("export_aesdirect", "third_party_software"), ("notify_party", "cargo_release"),
    ("ach_refund", "account_management"), ("csms_subscription", "system_status"),
    ("csms_subscription", "ach_refund"), ("csms_subscription", "other"),
))
#: The default margin between the two best probabilities below which a confusable pair abstains.
DEFAULT_ABSTAIN_MARGIN = 0.25


class NotTrained(Exception):
    """``predict`` or ``save`` on a classifier that was never fitted."""


class ModelLoadError(Exception):
    """A model file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Prediction:
    label: str
    #: Calibrated probability of ``label``.
    confidence: float
    #: Whether ``confidence`` clears the label's threshold (and the text is familiar).
    auto: bool
    #: The next best labels with their probabilities, best first.
    ranking: tuple[tuple[str, float], ...] = ()


def _word_features(max_features: int | None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=WORD_PATTERN,
                           min_df=2, sublinear_tf=True, max_features=max_features, dtype=np.float64)


def _calibrated_svm(seed: int, c: float) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    # Platt scaling over 5 internal folds; one final SVM (ensemble=False) keeps the file small.
    return CalibratedClassifierCV(LinearSVC(C=c, random_state=seed), method="sigmoid", cv=5, ensemble=False)


def _logreg(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=20.0, max_iter=3000, random_state=seed)


class AveragedClassifier(ClassifierMixin, BaseEstimator):
    """Averages the probabilities of several classifiers fitted on the same features
    (an ensemble whose members err on different messages)."""

    def __init__(self, estimators: list[Any], weights: list[float] | None = None) -> None:
        self.estimators = estimators
        self.weights = weights or [1.0] * len(estimators)

    def fit(self, x: Any, y: Sequence[str], sample_weight: Any = None) -> "AveragedClassifier":
        from sklearn.base import clone

        self.estimators_ = [clone(e).fit(x, y, sample_weight=sample_weight) for e in self.estimators]
        self.classes_ = self.estimators_[0].classes_
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        total = sum(self.weights)
        out = np.zeros((x.shape[0], len(self.classes_)))
        for w, e in zip(self.weights, self.estimators_):
            out += w * np.asarray(e.predict_proba(x))
        return out / total


#: The model families compared leave-one-writer-out at training time: which feature blocks
#: (word n-grams, character n-grams, the desk's cue groups) and which classifier.
SPECS: tuple[str, ...] = ("word+char/svm", "word+char+cues/svm", "word+char/svm+logreg",
                          "word+char/svm-bag")


def build_pipeline(spec: str, seed: int) -> Any:
    """Return the unfitted scikit-learn pipeline named ``spec`` (see :data:`SPECS`)."""
    from sklearn.pipeline import FeatureUnion, Pipeline

    if spec not in SPECS:
        raise ValueError(f"unknown model spec {spec!r}; expected one of {', '.join(SPECS)}")
    blocks_name, clf_name = spec.split("/")
    blocks = blocks_name.split("+")
    parts: list[tuple[str, Any]] = [("word", _word_features(20000)),
                                    ("char", CharTfidf(min_df=2, max_features=60000, sublinear_tf=True))]
    if "cues" in blocks:
        parts.append(("cues", CueFeatures()))
    clf: Any
    if clf_name == "svm":
        clf = _calibrated_svm(seed, 2.0)
    elif clf_name == "svm-bag":
        # Two margins: a tighter and a looser fit, averaged.
        clf = AveragedClassifier([_calibrated_svm(seed, 0.5), _calibrated_svm(seed, 2.0)])
    else:  # svm+logreg
        clf = AveragedClassifier([_calibrated_svm(seed, 2.0), _logreg(seed)])
    return Pipeline([("features", FeatureUnion(parts)), ("clf", clf)])


@dataclass
class TextClassifier:
    """A fitted model (as its :class:`Artifact`), its thresholds, and its metadata."""

    spec: str = SPECS[0]
    seed: int = 0
    max_chars: int = DEFAULT_MAX_CHARS
    thresholds: dict[str, float] = field(default_factory=dict)
    #: Two best labels forming a confusable pair closer than this: never automatic.
    abstain_margin: float = DEFAULT_ABSTAIN_MARGIN
    version: str = ""
    #: The model card (written next to the model file; metrics, data hash ...).
    card: dict[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None
    path: Path | None = None

    # -- training and prediction ------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.artifact is not None

    @property
    def labels(self) -> list[str]:
        return list(self._artifact().classes)

    def prepare(self, texts: Sequence[str], max_chars: int | None = None) -> list[str]:
        """Return the normalised texts the model reads, capped at ``max_chars`` (default: the model's)."""
        cap = max_chars or self.max_chars
        return [normalise(t or "", cap) for t in texts]

    def fit(self, texts: Sequence[str], labels: Sequence[str],
            weights: Sequence[float] | None = None) -> "TextClassifier":
        """Fit on raw classifier texts (subject + new text), their labels and optional
        per-example weights (analysts' corrections weigh more); return self."""
        unknown = sorted(set(labels) - set(LABELS))
        if unknown:
            raise ValueError(f"unknown labels: {', '.join(unknown)}")
        pipeline = build_pipeline(self.spec, self.seed)
        prepared = self.prepare(texts)
        fit_params = {} if weights is None else {"clf__sample_weight": np.asarray(weights, dtype=float)}
        pipeline.fit(prepared, list(labels), **fit_params)
        artifact = export(pipeline, {})
        probe = prepared[:300]
        if not np.allclose(artifact.predict_proba(probe), pipeline.predict_proba(probe), atol=1e-5):
            raise RuntimeError("the exported model does not reproduce the fitted pipeline")
        self.artifact = artifact
        self.__dict__.pop("_vocab", None)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Return the calibrated probabilities, one row per text, columns in :attr:`labels` order."""
        return self._artifact().predict_proba(self.prepare(texts))

    def familiarity(self, texts: Sequence[str], prepared: bool = False,
                    tokens: Sequence[list[str]] | None = None) -> list[tuple[int, float]]:
        """Return ``(known words, share of known words)`` per text, from the word vocabulary
        (``tokens``: the prepared texts' word tokens, when the caller has them)."""
        vocab = self._word_vocabulary()
        if tokens is None:
            tokens = [word_tokens(text) for text in (texts if prepared else self.prepare(texts))]
        out = []
        for words in tokens:
            if not words:
                out.append((0, 0.0))
                continue
            known = sum(map(vocab.__contains__, words))
            out.append((known, known / len(words)))
        return out

    def predict(self, texts: Sequence[str], thresholds: dict[str, float] | None = None,
                max_chars: int | None = None) -> list[Prediction]:
        """Return one :class:`Prediction` per text (batch them: it is much faster).

        ``thresholds`` override the model's own per label, and ``max_chars``
        the characters it reads (both from config).
        """
        texts = list(texts)
        if not texts:
            return []
        artifact = self._artifact()
        prepared = self.prepare(texts, max_chars)
        tokens = [word_tokens(text) for text in prepared]  # once, for the features and familiarity
        proba = artifact.predict_proba(prepared, tokens)
        familiar = self.familiarity(prepared, prepared=True, tokens=tokens)
        limits = {**self.thresholds, **(thresholds or {})}
        labels = self.labels
        # One sort for the batch (a stable sort of each row, as per row).
        orders = np.argsort(-proba, axis=1, kind="stable")[:, :3]
        out = [self._decide(row, order, known, share, limits, labels)
               for row, order, (known, share) in zip(proba, orders, familiar)]
        mixed = self._mixed_topics([p for p, pred in zip(prepared, out) if pred.auto])
        flags = iter(mixed)
        return [dataclasses.replace(p, auto=False) if p.auto and next(flags) else p for p in out]

    def _decide(self, row: np.ndarray, order: np.ndarray, known: int, share: float,
                limits: dict[str, float], labels: list[str]) -> Prediction:
        best = int(order[0])
        label, confidence = labels[best], float(row[best])
        if known == 0:
            # Nothing the model knows (empty, or another alphabet): "other", for a person.
            label = OTHER
            confidence = float(row[labels.index(OTHER)]) if OTHER in labels else 0.0
        auto = (confidence >= limits.get(label, 1.01) and known >= MIN_KNOWN_WORDS
                and share >= MIN_FAMILIARITY and not self._close_pair(labels, row, order))
        return Prediction(label, round(confidence, 4), bool(auto),
                          tuple((labels[int(i)], round(float(row[int(i)]), 4)) for i in order))

    def abstains(self, labels: Sequence[str], row: np.ndarray) -> bool:
        """Whether the two best labels are a known confusable pair within :attr:`abstain_margin`."""
        return self._close_pair(labels, row, np.argsort(-row, kind="stable"))

    def _close_pair(self, labels: Sequence[str], row: np.ndarray, order: np.ndarray) -> bool:
        first, second = int(order[0]), int(order[1])
        pair = frozenset((labels[first], labels[second]))
        return pair in CONFUSABLE_PAIRS and float(row[first] - row[second]) < self.abstain_margin

    def _mixed_topics(self, prepared: Sequence[str]) -> list[bool]:
        """Return, per normalised text, whether its clauses ask for different things.

        A message whose clauses are confidently about several labels ("my
        account is locked, we need ACH refunds, and unsubscribe me from
        CSMS") goes to a person even when the whole reads as one label.
        Two labels are not enough: real requests often mention a
        neighbouring topic in passing.
        """
        owners: list[int] = []
        segments: list[str] = []
        for i, text in enumerate(prepared):
            parts = [p.strip() for p in _CLAUSE.split(text)]
            parts = [p for p in parts if len(p.split()) >= MIN_CLAUSE_WORDS]
            if len(parts) >= MIXED_MIN_LABELS:
                owners.extend([i] * len(parts))
                segments.extend(parts)
        result = [False] * len(prepared)
        if not segments:
            return result
        # Each distinct clause once: greetings, boilerplate and repeated sentences recur
        # within a message and across a batch, and the clauses cost more than the messages.
        distinct = list(dict.fromkeys(segments))
        proba = self._artifact().predict_proba(distinct)
        labels = self.labels
        verdict: dict[str, str | None] = {}
        for segment, row in zip(distinct, proba):
            best = int(np.argmax(row))
            sure = row[best] >= MIXED_CLAUSE_CONFIDENCE and labels[best] != OTHER
            verdict[segment] = labels[best] if sure else None
        confident: dict[int, set[str]] = {}
        for owner, segment in zip(owners, segments):
            label = verdict[segment]
            if label is not None:
                confident.setdefault(owner, set()).add(label)
        for owner, found in confident.items():
            result[owner] = len(found) >= MIXED_MIN_LABELS
        return result

    def _word_vocabulary(self) -> frozenset[str]:
        cached = self.__dict__.get("_vocab")
        if cached is None:
            cached = self.__dict__["_vocab"] = self._artifact().word_vocabulary()
        return cached

    def _artifact(self) -> Artifact:
        if self.artifact is None:
            raise NotTrained("the classifier is not trained: fit() or load() it first")
        return self.artifact

    # -- persistence ----------------------------------------------------------------

    @property
    def file_name(self) -> str:
        return f"{MODEL_PREFIX}{self.version}{MODEL_SUFFIX}"

    def _meta(self) -> dict[str, Any]:
        return {"normaliser": NORMALISER_VERSION, "version": self.version, "spec": self.spec,
                "seed": self.seed, "max_chars": self.max_chars, "thresholds": dict(self.thresholds),
                "abstain_margin": self.abstain_margin}

    def save(self, directory: Path | str) -> Path:
        """Write the model file and its card into ``directory``; return the model file's path."""
        artifact = self._artifact()
        if not self.version:
            raise ValueError("set a version before saving")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name
        artifact.meta = self._meta()
        tmp = path.with_name(path.name + ".tmp")
        artifact.save(tmp)
        card = {**self.card, **self._meta(), "model_file": path.name, "model_sha256": _sha256(tmp)}
        self.card = card
        card_path = directory / f"{MODEL_PREFIX}{self.version}{CARD_SUFFIX}"
        card_tmp = card_path.with_name(card_path.name + ".tmp")
        card_tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The card first, then the model: a model file is never visible without its card.
        card_tmp.replace(card_path)
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path | str) -> "TextClassifier":
        """Load the model file at ``path`` (no code runs: it is an array archive).

        Raises:
            ModelLoadError: the file is missing, corrupt, not a model, or incompatible.
        """
        path = Path(path)
        card = _read_card(path)
        try:
            artifact = Artifact.load(path)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no such model file") from None
        except ArtifactError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        meta = artifact.meta
        if meta.get("normaliser") != NORMALISER_VERSION:
            raise ModelLoadError(f"{path}: trained with text normaliser {meta.get('normaliser')!r}, "
                                 f"this code has {NORMALISER_VERSION}; retrain with 'acedesk train'")
        unknown = sorted(set(artifact.classes) - set(LABELS))
        if unknown:
            raise ModelLoadError(f"{path}: labels not in the taxonomy: {', '.join(unknown)}")
        try:
            model = cls(spec=str(meta.get("spec", "")), seed=int(meta.get("seed", 0)),
                        max_chars=int(meta.get("max_chars", DEFAULT_MAX_CHARS)),
                        thresholds={str(k): float(v) for k, v in dict(meta.get("thresholds", {})).items()},
                        abstain_margin=float(meta.get("abstain_margin", DEFAULT_ABSTAIN_MARGIN)),
                        version=str(meta.get("version", "")), card=card, artifact=artifact, path=path)
            model.predict(["ace portal account"])
        except Exception as exc:  # noqa: BLE001 - a model that cannot predict is refused here, not later
            raise ModelLoadError(f"{path}: model cannot predict ({type(exc).__name__}: {exc})") from None
        return model


def _read_card(path: Path) -> dict[str, Any]:
    """Return the card next to ``path`` (checking the model's SHA-256 against it), or {}."""
    if not path.name.endswith(MODEL_SUFFIX):
        return {}
    card_path = path.with_name(path.name[: -len(MODEL_SUFFIX)] + CARD_SUFFIX)
    if not card_path.exists():
        return {}
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{card_path}: unreadable model card: {exc}") from None
    expected = card.get("model_sha256")
    try:
        actual = _sha256(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if expected and actual != expected:
        raise ModelLoadError(f"{path}: corrupt model file (SHA-256 does not match its card)")
    return dict(card)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
