"""The labelled corpus: one JSON-lines file per writer in
``classifiers/corpus/writers/``, turning each message into the text the
model reads (subject + new text, split exactly as the parser splits real
mail), hashing the training data, and writing examples out as ``.eml``
files plus a ``labels.csv`` for ``acedesk evaluate``.

The writer of every example is recorded (the file's name), because the
measure that matters is how the model does on people it has never read:
evaluation leaves one writer out at a time (:mod:`classifiers.lowo`).
Each line: ``{"label", "language", "subject", "body"}`` and optionally
``persona`` and ``boundary`` (a case written to sit between two labels).
``writers/SOURCES.md`` says who each writer is and how they were briefed.
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
    #: Who wrote it (the corpus file's stem; ``corrections`` for analysts' corrections).
    writer: str = ""
    #: Written to sit on the line between two neighbouring labels.
    boundary: bool = False

    @property
    def text(self) -> str:
        """Subject and new text, as :attr:`ParsedMessage.classifier_text` gives them."""
        if self.classifier_text is not None:
            return self.classifier_text
        new, _quoted, _signature = split_body(self.body)
        return f"{self.subject}\n{new}".strip()


def writer_files(directory: Path = CORPUS_DIR) -> list[Path]:
    """Return the writers' files in ``directory/writers`` (or ``directory`` itself), sorted by name."""
    folder = directory / "writers" if (directory / "writers").is_dir() else directory
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file())


def load_examples(paths: Iterable[Path]) -> list[Example]:
    """Read the examples in ``paths`` (writer = file stem); raise ``ValueError`` naming the line of a bad one."""
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
                                        body=str(data.get("body") or ""), source=where,
                                        writer=path.stem, boundary=bool(data.get("boundary", False))))
    return examples


def load_corpus(directory: Path = CORPUS_DIR, writers: Iterable[str] = ()) -> list[Example]:
    """Return every example in ``directory`` (only those of ``writers`` when given)."""
    wanted = set(writers)
    paths = [p for p in writer_files(directory) if not wanted or p.stem in wanted]
    missing = wanted - {p.stem for p in paths}
    if missing:
        raise ValueError(f"no writer {', '.join(sorted(missing))} in {directory}")
    return load_examples(paths)


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
    """``python -m classifiers.corpus OUTDIR [WRITER...]``: write the examples of the named
    writers (default: all) as ``.eml`` files and a ``labels.csv`` for ``acedesk evaluate``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        names = ", ".join(p.stem for p in writer_files())
        print(f"usage: python -m classifiers.corpus OUTDIR [WRITER...]  (writers: {names})", file=sys.stderr)
        return 2
    try:
        examples = load_corpus(CORPUS_DIR, args[1:])
    except ValueError as exc:
        print(f"corpus: {exc}", file=sys.stderr)
        return 2
    csv_path = write_eml_dir(examples, Path(args[0]))
    print(f"wrote {len(examples)} messages and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
