"""The labelled corpus: loading the JSON-lines files in ``classifiers/corpus``,
turning each message into the text the model reads (subject + new text,
split exactly as the parser splits real mail), hashing the training data,
and writing a split out as ``.eml`` files plus a ``labels.csv`` for
``acedesk evaluate``.

Files named ``*_train.jsonl`` (and ``extra_train.jsonl``, hand-written hard
cases) are the training split; ``*_test.jsonl`` is the held-out split, never
trained on.  Each line: ``{"label", "language", "subject", "body"}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from classifiers.labels import LABELS
from classifiers.text import split_body

CORPUS_DIR = Path(__file__).with_name("corpus")


@dataclass(frozen=True)
class Example:
    """One labelled message."""

    label: str
    language: str
    subject: str
    body: str
    #: Where it came from (``file:line``, or ``correction:<message id>``).
    source: str = ""
    #: The classifier text when it is already known (an analyst's correction of a parsed message).
    classifier_text: str | None = None

    @property
    def text(self) -> str:
        """Subject and new text, as :attr:`ParsedMessage.classifier_text` gives them."""
        if self.classifier_text is not None:
            return self.classifier_text
        new, _quoted, _signature = split_body(self.body)
        return f"{self.subject}\n{new}".strip()


def corpus_files(split: str, directory: Path = CORPUS_DIR) -> list[Path]:
    """Return the corpus files of ``split`` (``train`` or ``test``), sorted by name."""
    if split not in ("train", "test"):
        raise ValueError("split is 'train' or 'test'")
    return sorted(p for p in directory.glob(f"*{split}.jsonl") if p.is_file())


def load_examples(paths: Iterable[Path]) -> list[Example]:
    """Read the examples in ``paths``; raise ``ValueError`` naming the line of a bad one."""
    examples = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    data = json.loads(line)
                    label = data["label"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{where}: not a labelled example ({exc})") from None
                if label not in LABELS:
                    raise ValueError(f"{where}: unknown label {label!r}")
                examples.append(Example(label=label, language=str(data.get("language", "")),
                                        subject=str(data.get("subject") or ""),
                                        body=str(data.get("body") or ""), source=where))
    return examples


def load_split(split: str, directory: Path = CORPUS_DIR) -> list[Example]:
    """Return every example of ``split`` in ``directory``."""
    return load_examples(corpus_files(split, directory))


def data_hash(texts: Sequence[str], labels: Sequence[str]) -> str:
    """Return a SHA-256 over the (text, label) pairs, in order: the training data's identity."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(label.encode())
        digest.update(b"\x1f")
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def to_eml(example: Example, index: int) -> bytes:
    """Return ``example`` as an RFC 5322 message from a plausible trade user."""
    msg = EmailMessage()
    msg["From"] = f"Trade User {index} <user{index}@trade.example>"
    msg["To"] = "ayuda@ace-support.example" if example.language == "es" else "helpdesk@ace-support.example"
    msg["Subject"] = example.subject
    msg["Date"] = format_datetime(dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
                                  + dt.timedelta(minutes=index))
    msg["Message-ID"] = f"<corpus-{index}@trade.example>"
    msg.set_content(example.body or "\n")
    return bytes(msg)


def write_eml_dir(examples: Sequence[Example], directory: Path) -> Path:
    """Write each example as ``NNNN.eml`` in ``directory`` and a ``labels.csv``; return the CSV path."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i, example in enumerate(examples):
            name = f"{i:05d}.eml"
            (directory / name).write_bytes(to_eml(example, i))
            writer.writerow([name, example.label])
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m classifiers.corpus OUTDIR [test|train|independent]``: materialise a split
    (or the independent evaluation set, never trained on) for ``acedesk evaluate``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2:
        print("usage: python -m classifiers.corpus OUTDIR [test|train|independent]", file=sys.stderr)
        return 2
    split = args[1] if len(args) > 1 else "test"
    if split == "independent":
        examples = load_examples([CORPUS_DIR / "independent_eval.jsonl"])
    elif split in ("train", "test"):
        examples = load_split(split)
    else:
        print(f"unknown split {split!r}: test, train or independent", file=sys.stderr)
        return 2
    csv_path = write_eml_dir(examples, Path(args[0]))
    print(f"wrote {len(examples)} {split} messages and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
