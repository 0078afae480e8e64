"""The ``[classifier]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassifierConfig:
    #: Folder of trained model versions; empty = the model shipped with the package.
    model_dir: str = ""
    #: Characters of new text (subject + body) the model reads; the rest is quoted history or noise.
    max_chars: int = 2000
    #: Messages classified per batch in the daemon.
    batch_size: int = 500
    #: Per-label confidence thresholds that override the model card's, e.g. ``{ password_reset = 0.9 }``.
    thresholds: dict[str, float] = field(default_factory=dict)
