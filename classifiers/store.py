"""Where models live and which one is in use: the newest model file in a
folder (or the one shipped with the package), and a holder that swaps in a
new model atomically and keeps the old one when the new one cannot be
loaded."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from classifiers.model import MODEL_PREFIX, MODEL_SUFFIX, ModelLoadError, TextClassifier

log = logging.getLogger("acedesk.classifier")

#: The model shipped with the package, so that the daemon works out of the box.
SHIPPED_DIR = Path(__file__).with_name("model")


def model_dir(configured: str = "") -> Path:
    """Return the folder models are read from: the configured one, else the shipped one."""
    return Path(configured) if configured else SHIPPED_DIR


def model_files(directory: Path) -> list[Path]:
    """Return the model files in ``directory``, oldest first (versions sort by time)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(MODEL_PREFIX) and p.name.endswith(MODEL_SUFFIX) and p.is_file())


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` model versions (file, card, plot); return the removed model files."""
    from classifiers.model import CARD_SUFFIX, PLOT_SUFFIX

    files = model_files(directory)
    removed = files[: max(0, len(files) - max(1, keep))]
    for path in removed:
        stem = path.name[: -len(MODEL_SUFFIX)]
        for name in (path.name, stem + CARD_SUFFIX, stem + PLOT_SUFFIX):
            (directory / name).unlink(missing_ok=True)
    return removed


def newest_model_file(directory: Path) -> Path:
    """Return the newest model file in ``directory``; raise :class:`ModelLoadError` when there is none."""
    files = model_files(directory)
    if not files:
        raise ModelLoadError(f"{directory}: no model file ({MODEL_PREFIX}<version>{MODEL_SUFFIX}); "
                             "run 'acedesk train'")
    return files[-1]


def load_newest(directory: Path) -> TextClassifier:
    """Load the newest model in ``directory`` (:class:`ModelLoadError` names the file if it fails)."""
    return TextClassifier.load(newest_model_file(directory))


class ModelHolder:
    """The model in use.  ``current`` is read without a lock (one attribute
    read is atomic); :meth:`reload` replaces it only with a model that loaded."""

    def __init__(self, directory: Path, model: TextClassifier | None = None) -> None:
        self.directory = directory
        self.current = model
        self._lock = threading.Lock()
        #: Called after :meth:`reload` put a new model in place (the daemon freezes it for the GC).
        self.on_change: Callable[[], None] | None = None

    @classmethod
    def open(cls, directory: Path) -> "ModelHolder":
        """Return a holder with the newest model of ``directory`` (raises :class:`ModelLoadError`)."""
        return cls(directory, load_newest(directory))

    def reload(self) -> bool:
        """Load the newest model; keep the current one if that fails.  Return whether it changed.

        Never raises: a SIGHUP must not stop the daemon.
        """
        with self._lock:
            try:
                path = newest_model_file(self.directory)
                if self.current is not None and self.current.path == path:
                    log.info("classifier model %s is already the newest", path.name)
                    return False
                model = TextClassifier.load(path)
            except ModelLoadError as exc:
                kept = self.current.version if self.current else "none"
                log.error("classifier model not reloaded, keeping %s: %s", kept, exc)
                return False
            except Exception as exc:  # noqa: BLE001 - the hook must not raise
                kept = self.current.version if self.current else "none"
                log.exception("classifier model not reloaded, keeping %s: %s", kept, exc)
                return False
            old = self.current.version if self.current else "none"
            self.current = model
            log.info("classifier model %s loaded (was %s)", model.version, old)
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - the hook must not raise
                log.exception("after loading classifier model %s", model.version)
        return True
