"""The classifier's subcommands: ``acedesk train``, ``acedesk classify`` and
``acedesk evaluate``.

``classify --json FILE...`` prints one JSON object a line,
``{"file", "label", "confidence", "auto", "language", "identifiers"}``
(plus ``model_version``); a file that cannot be read or parsed gives
``{"file", "error"}`` and the command goes on.  ``evaluate DIR LABELS.csv``
prints per-label precision/recall/F1, macro-F1, and the precision and
coverage of automatic actions; ``evaluate --writers`` the leave-one-writer-out
figures of the corpus (the headline measure).  ``train`` writes a new model
version (model file, card, confusion matrix) that the daemon picks up on SIGHUP.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifiers.settings import ClassifierConfig
from daemon.errors import CommandError

if TYPE_CHECKING:
    from classifiers.classify import Classification, MessageText
    from classifiers.model import TextClassifier
    from daemon.cli.main import Lazy
    from daemon.config import PipelineConfig

#: Messages classified per batch by the commands.
BATCH = 1000


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this area's subcommands to ``acedesk``."""
    p = subparsers.add_parser("train", help="train a new classifier model version from the corpus "
                                            "and analysts' corrections")
    p.add_argument("--corpus", metavar="DIR", help="corpus folder (default: the package's classifiers/corpus)")
    p.add_argument("--out", metavar="DIR",
                   help="where to write the model (default: [classifier] model_dir, else the package's)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the model (default 0: the same data trains the same model)")
    p.add_argument("--specs", help="comma-separated model families to compare leave-one-writer-out "
                                   "(default: all)")
    p.add_argument("--no-corrections", action="store_true", help="do not read corrections from the database")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--keep", type=int, default=0, metavar="N",
                   help="afterwards delete all but the newest N model versions in the folder (0: keep all)")
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser("classify", help="classify .eml files with the current model")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--model", metavar="PATH", help="a model file (default: the newest in model_dir)")
    p.set_defaults(handler=cmd_classify)

    p = subparsers.add_parser(
        "evaluate", help="score the model on .eml files with known labels, or (--writers) the corpus "
                         "leave-one-writer-out",
        description="With DIR and LABELS.csv: score the current model on those files.  With --writers: "
                    "train on all writers of the corpus but one, score the one left out, for each writer "
                    "(thresholds for each writer chosen without it), and print the per-writer table.")
    p.add_argument("directory", metavar="DIR", nargs="?")
    p.add_argument("labels", metavar="LABELS.csv", nargs="?", help="a file,label CSV; file names relative to DIR")
    p.add_argument("--writers", action="store_true", help="leave-one-writer-out over the corpus")
    p.add_argument("--corpus", metavar="DIR", help="with --writers: corpus folder (default: the package's)")
    p.add_argument("--spec", help="with --writers: the model family (default: the current model's)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--model", metavar="PATH", help="a model file (default: the newest in model_dir)")
    p.set_defaults(handler=cmd_evaluate)


# --- helpers ---------------------------------------------------------------------


def classifier_settings(args: argparse.Namespace, lazy: "Lazy") -> tuple[ClassifierConfig, str, frozenset[str]]:
    """Return the classifier config, its base folder and the Spanish desk addresses.

    Without a config file (none given, none in the working folder) the
    defaults apply: classifying needs no database.
    """
    from daemon.config import ConfigError

    try:
        config = lazy.config
    except ConfigError:
        if args.config or os.environ.get("ACEDESK_CONFIG"):
            raise
        return ClassifierConfig(), ".", frozenset({"ayuda@ace-support.example"})
    return (config.classifier, config.base_dir,
            frozenset(a.lower() for a in config.desk.spanish_addresses))


def load_model(args: argparse.Namespace, cfg: ClassifierConfig, base_dir: str) -> "TextClassifier":
    from classifiers.model import ModelLoadError, TextClassifier
    from classifiers.store import load_newest, model_dir

    try:
        if args.model:
            return TextClassifier.load(args.model)
        configured = cfg.model_dir
        if configured and not Path(configured).is_absolute():
            configured = str(Path(base_dir) / configured)
        return load_newest(model_dir(configured))
    except ModelLoadError as exc:
        raise CommandError(f"model refused: {exc}") from None


def read_messages(files: Sequence[str], spanish: frozenset[str], budget: "PipelineConfig | None" = None
                  ) -> Iterator[tuple[str, "MessageText | None", str | None]]:
    """Yield ``(file, message text, None)`` or ``(file, None, error)`` per file: the parse stage's
    guarded parse, then the classify stage's text (the desk is the first Spanish desk named, else English)."""
    from daemon.config import PipelineConfig
    from daemon.intake.parse import Unparseable, parse_within_budget
    from daemon.stages.classify import text_of

    budget = budget or PipelineConfig()
    for name in files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            yield name, None, f"cannot read: {exc.strerror or exc}"
            continue
        try:
            parsed = parse_within_budget(raw, seconds=budget.message_seconds, memory=budget.message_memory)
        except Unparseable as exc:
            yield name, None, f"unparseable: {exc.reason}: {exc.detail}"
            continue
        hint = "es" if any(a.lower() in spanish for a in parsed.to + parsed.cc) else "en"
        yield name, text_of(parsed, hint), None


def classify_files(model: "TextClassifier", cfg: ClassifierConfig, files: Sequence[str],
                   spanish: frozenset[str]) -> Iterator[tuple[str, "Classification | None", str | None]]:
    """Yield ``(file, classification or None, error or None)`` in file order, classifying in batches."""
    from daemon.stages.classify import classify_texts

    pending: list[tuple[str, Any, str | None]] = []

    def flush() -> Iterator[tuple[str, "Classification | None", str | None]]:
        texts = [m for _f, m, _e in pending if m is not None]
        results = iter(classify_texts(model, cfg, texts)) if texts else iter(())
        for name, message, error in pending:
            result = next(results) if message is not None else None
            if isinstance(result, Exception):
                yield name, None, f"classify_error: {type(result).__name__}: {result}"
            else:
                yield name, result, error
        pending.clear()

    for item in read_messages(files, spanish):
        pending.append(item)
        if len(pending) >= BATCH:
            yield from flush()
    yield from flush()


# --- commands -----------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace, lazy: "Lazy") -> int:
    cfg, base_dir, spanish = classifier_settings(args, lazy)
    model = load_model(args, cfg, base_dir)
    failed = 0
    for name, result, error in classify_files(model, cfg, args.files, spanish):
        if result is None:
            failed += 1
            if args.json:
                print(json.dumps({"file": name, "error": error}))
            else:
                print(f"{name}: error: {error}")
            continue
        if args.json:
            print(json.dumps({"file": name, **result.to_dict(), "model_version": result.model_version},
                             ensure_ascii=False))
        else:
            ids = ", ".join(f"{k}={v}" for k, v in result.identifiers.items())
            print(f"{name}: {result.label} {result.confidence:.3f} "
                  f"{'auto' if result.auto else 'triage'} {result.language}{'  ' + ids if ids else ''}")
    sys.stdout.flush()
    if failed:
        print(f"acedesk: {failed} of {len(args.files)} file(s) could not be classified (see their 'error')",
              file=sys.stderr)
    return 0


def read_labels_csv(path: Path) -> list[tuple[str, str]]:
    """Return the ``(file, label)`` rows of a ``file,label`` CSV (a header row is optional)."""
    from classifiers.labels import LABELS

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{path}: not a readable CSV: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    out = []
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise CommandError(f"{path}: row {number}: expected file,label")
        name, label = row[0].strip(), row[1].strip()
        if label not in LABELS:
            raise CommandError(f"{path}: row {number}: unknown label {label!r}")
        out.append((name, label))
    if not out:
        raise CommandError(f"{path}: no file,label rows")
    return out


def load_corpus_dir(corpus_arg: str | None) -> list[Any]:
    """Return the corpus examples (every writer) of ``--corpus`` or the package's corpus."""
    from classifiers.corpus import CORPUS_DIR, load_corpus

    corpus = Path(corpus_arg) if corpus_arg else CORPUS_DIR
    if not corpus.is_dir():
        raise CommandError(f"{corpus}: not a folder")
    try:
        examples = load_corpus(corpus)
    except ValueError as exc:
        raise CommandError(f"corpus: {exc}") from None
    if not examples:
        raise CommandError(f"{corpus}: no writers' examples (writers/*.jsonl)")
    return examples


def cmd_evaluate_writers(args: argparse.Namespace, lazy: "Lazy") -> int:
    from tqdm import tqdm

    from classifiers.lowo import evaluate, format_evaluation, out_of_writer
    from classifiers.model import SPECS

    examples = load_corpus_dir(args.corpus)
    spec = args.spec
    if not spec:
        cfg, base_dir, _spanish = classifier_settings(args, lazy)
        spec = load_model(args, cfg, base_dir).spec
    if spec not in SPECS:
        raise CommandError(f"unknown --spec {spec}; choose from {', '.join(SPECS)}")
    writers = sorted({e.writer for e in examples})
    with tqdm(total=len(writers), desc="leave-one-writer-out", unit="writer", disable=args.json) as bar:
        try:
            ev = evaluate(out_of_writer(spec, examples, progress=bar))
        except ValueError as exc:
            raise CommandError(f"cannot evaluate: {exc}") from None
    if args.json:
        print(json.dumps(ev))
    else:
        print(format_evaluation(ev))
    return 0


def cmd_evaluate(args: argparse.Namespace, lazy: "Lazy") -> int:
    from classifiers.evaluation import format_report, report
    from classifiers.labels import LABELS, OTHER

    if args.writers:
        if args.directory:
            raise CommandError("evaluate --writers takes no DIR or LABELS.csv")
        return cmd_evaluate_writers(args, lazy)
    if not (args.directory and args.labels):
        raise CommandError("evaluate needs DIR and LABELS.csv, or --writers")
    directory = Path(args.directory)
    if not directory.is_dir():
        raise CommandError(f"{directory}: not a folder")
    rows = read_labels_csv(Path(args.labels))
    cfg, base_dir, spanish = classifier_settings(args, lazy)
    model = load_model(args, cfg, base_dir)
    files = [str(directory / name) for name, _label in rows]
    y_true, y_pred, auto, errors = [], [], [], []
    for (name, label), (_f, result, error) in zip(rows, classify_files(model, cfg, files, spanish), strict=True):
        y_true.append(label)
        if result is None:
            # Counted, as a message the desk would hand to a person.
            errors.append(f"{name}: {error}")
            y_pred.append(OTHER)
            auto.append(False)
        else:
            y_pred.append(result.label)
            auto.append(result.auto)
    rep = report(y_true, y_pred, auto, LABELS)
    rep["model_version"] = model.version
    rep["unreadable"] = len(errors)
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"model {model.version} ({model.path})")
    print(format_report(rep))
    if errors:
        print(f"unreadable:  {len(errors)} file(s) counted as '{OTHER}', not automatic:")
        for line in errors[:20]:
            print(f"  {line}")
    return 0


def cmd_train(args: argparse.Namespace, lazy: "Lazy") -> int:
    from classifiers.corpus import Example
    from classifiers.model import SPECS
    from classifiers.store import SHIPPED_DIR
    from classifiers.train import train, write_artifacts

    examples = load_corpus_dir(args.corpus)
    cfg, base_dir, _spanish = classifier_settings(args, lazy)
    corrections: list[Example] = []
    if not args.no_corrections:
        corrections = read_corrections(lazy)
    specs = tuple(s.strip() for s in args.specs.split(",")) if args.specs else SPECS
    unknown = [s for s in specs if s not in SPECS]
    if unknown:
        raise CommandError(f"unknown --specs {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    if args.out:
        out = Path(args.out)
    elif cfg.model_dir:
        out = Path(cfg.model_dir) if Path(cfg.model_dir).is_absolute() else Path(base_dir) / cfg.model_dir
    else:
        out = SHIPPED_DIR
    writers = sorted({e.writer for e in examples})
    print(f"training on {len(examples)} corpus examples by {len(writers)} writers and "
          f"{len(corrections)} correction(s)", file=sys.stderr)
    try:
        result = train(examples, corrections=corrections, seed=args.seed, specs=specs, progress=not args.quiet)
    except ValueError as exc:
        raise CommandError(f"cannot train: {exc}") from None
    try:
        path = write_artifacts(result, out)
    except OSError as exc:
        raise CommandError(f"cannot write the model to {out}: {exc.strerror or exc} (set --out or "
                           "[classifier] model_dir)") from None
    card = result.card
    print(f"model {result.model.version} written to {path}")
    if args.keep > 0:
        from classifiers.store import prune

        for old in prune(out, args.keep):
            print(f"removed older version {old.name}")
    print(f"chosen {card['spec']} by leave-one-writer-out ({len(writers)} writers):")
    for spec, m in card["comparison"].items():
        print(f"  {spec:<28} macro-F1 {m['macro_f1']:.4f}  worst writer {m['worst_writer_macro_f1']:.4f}  "
              f"auto precision {m['auto_precision']:.4f} coverage {m['auto_coverage']:.1%}")
    if card.get("corrections"):
        c = card["corrections"]
        print(f"corrections ({c['count']}, weight {c['weight']}): macro-F1 {c['without']['macro_f1']:.4f} "
              f"without, {c['with']['macro_f1']:.4f} with")
    print("reload a running daemon with SIGHUP (systemctl reload acedesk) to use it")
    return 0


def read_corrections(lazy: "Lazy") -> list[Any]:
    """Return analysts' corrections as training examples; [] (with a note) when there is no database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from classifiers.corpus import Example
    from daemon.config import ConfigError
    from models.classification import corrections_for_training

    try:
        config = lazy.config
    except ConfigError:
        print("acedesk: no config: training without analysts' corrections", file=sys.stderr)
        return []
    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        path = path if path.is_absolute() else Path(config.base_dir) / path
        if not path.exists():
            print(f"acedesk: no database at {path} yet: training without analysts' corrections",
                  file=sys.stderr)
            return []
    try:
        with lazy.ctx.sessions() as session:
            rows = corrections_for_training(session)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"acedesk: cannot read corrections ({first}): training without them", file=sys.stderr)
        return []
    return [Example(label=r.label, language=r.language, subject="", body="", classifier_text=r.text,
                    source=f"correction:{r.message_id}", writer="corrections") for r in rows]
