"""The ``[classifier]`` section of the configuration: where models live, how
much text the model reads, batch size, and per-label threshold overrides."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassifierConfig:
    #: Folder of trained model versions; empty = the model shipped with the package.
    model_dir: str = ""
    #: Characters of new text (subject + body) the model reads; 0 = the model's own (1000 for the
    #: shipped model).  The opening says what a sender wants, and the cost grows with the length.
    max_chars: int = 0
    #: Messages classified per batch in the daemon.
    batch_size: int = 500
    #: Per-label confidence thresholds that override the model card's, e.g. ``{ password_reset = 0.9 }``.
    thresholds: dict[str, float] = field(default_factory=dict)
