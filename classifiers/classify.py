"""Classifying messages: label, calibrated confidence and whether it clears
the label's threshold, language, and the identifiers quoted, in batches.

The one entry point the daemon's classify stage and ``acedesk classify``
share, so that both give the same answer for the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from classifiers.identifiers import extract_identifiers
from classifiers.language import detect_language
from classifiers.model import TextClassifier


@dataclass(frozen=True)
class MessageText:
    """The parts of a message the classifier looks at."""

    subject: str
    #: The sender's new words (quoted history and signature set apart).
    new_text: str
    #: The signature (identifiers are often there: "filer code K4M").
    signature: str = ""
    #: Everything else (quoted history): only a fallback for the language.
    quoted: str = ""
    #: The language to assume when the text shows none (e.g. the Spanish desk address).
    language_hint: str = "en"

    @property
    def classifier_text(self) -> str:
        return f"{self.subject}\n{self.new_text}".strip()


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float
    auto: bool
    language: str
    identifiers: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""
    #: The three likeliest labels with their probabilities, best first (kept for the analysts).
    ranking: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "auto": self.auto,
                "language": self.language, "identifiers": self.identifiers}


def classify(model: TextClassifier, messages: Sequence[MessageText],
             thresholds: dict[str, float] | None = None, max_chars: int | None = None) -> list[Classification]:
    """Return one :class:`Classification` per message, predicted in one batch.

    ``thresholds`` and ``max_chars`` override the model's own (``[classifier]`` config).
    """
    texts = [m.classifier_text for m in messages]
    predictions = model.predict(texts, thresholds, max_chars or None)
    out = []
    for message, text, prediction in zip(messages, texts, predictions, strict=True):
        language = detect_language(text, default="")
        if not language:
            language = detect_language(message.quoted, default=message.language_hint)
        identifiers = extract_identifiers(f"{message.subject}\n{message.new_text}\n{message.signature}")
        out.append(Classification(label=prediction.label, confidence=prediction.confidence,
                                  auto=prediction.auto, language=language, identifiers=identifiers,
                                  model_version=model.version, ranking=prediction.ranking))
    return out
