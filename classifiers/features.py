"""Feature analyzers for the model's vectorizers.

Character n-grams inside word boundaries (like scikit-learn's ``char_wb``:
each word padded with a space, n-grams of 1 to 5 characters), and
:class:`CharTfidf`, their TF-IDF with the n-gram -> column lookup cached
per distinct word: words repeat, so a message costs one lookup per word
instead of one per n-gram, several times faster than ``TfidfVectorizer``
on real-length mail.

Saved models refer to these functions by name: changing what they return
requires bumping :data:`classifiers.normalise.NORMALISER_VERSION`.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

#: Character n-gram sizes.
CHAR_MIN, CHAR_MAX = 1, 5
_CACHE: dict[str, tuple[str, ...]] = {}
_CACHE_LIMIT = 200_000


def _word_ngrams(word: str) -> tuple[str, ...]:
    padded = f" {word} "
    size = len(padded)
    grams: list[str] = []
    for n in range(CHAR_MIN, CHAR_MAX + 1):
        if n > size:
            break
        grams.extend(padded[i:i + n] for i in range(size - n + 1))
    return tuple(grams)


def char_wb_ngrams(text: str) -> list[str]:
    """Return the character n-grams (1-5) of each whitespace-separated word of ``text``."""
    cache = _CACHE
    out: list[str] = []
    for word in text.split():
        grams = cache.get(word)
        if grams is None:
            grams = _word_ngrams(word)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[word] = grams
        out.extend(grams)
    return out


class _WordColumns:
    """Per distinct word seen: how often each n-gram column occurs in it, as the rows of a
    sparse words x columns matrix that grows as words come (NumPy arrays with spare room)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.index: dict[str, int] = {}
        self.indptr = np.zeros(1024, dtype=np.int32)
        self.columns = np.zeros(16384, dtype=np.int32)
        self.counts = np.zeros(16384, dtype=np.float32)
        # Two threads adding words at once would interleave their rows.
        self.lock = threading.Lock()

    def add(self, word: str, vocabulary: dict[str, int]) -> int:
        """Store ``word``'s row; return its index."""
        grams = Counter(vocabulary[g] for g in _word_ngrams(word) if g in vocabulary)
        row = len(self.index)
        start = int(self.indptr[row])
        end = start + len(grams)
        if row + 2 > len(self.indptr):
            self.indptr = np.concatenate((self.indptr, np.zeros_like(self.indptr)))
        if end > len(self.columns):
            grow = max(end, 2 * len(self.columns)) - len(self.columns)
            self.columns = np.concatenate((self.columns, np.zeros(grow, dtype=np.int32)))
            self.counts = np.concatenate((self.counts, np.zeros(grow, dtype=np.float32)))
        self.columns[start:end] = list(grams.keys())
        self.counts[start:end] = list(grams.values())
        self.indptr[row + 1] = end
        self.index[word] = row
        return row

    def matrix(self) -> sparse.csr_matrix:
        """Return the words x columns counts (views of the arrays: no copy)."""
        rows = len(self.index)
        nnz = int(self.indptr[rows])
        return sparse.csr_matrix((self.counts[:nnz], self.columns[:nnz], self.indptr[:rows + 1]),
                                 shape=(rows, self.width), copy=False)


class CharTfidf(TransformerMixin, BaseEstimator):
    """TF-IDF over :func:`char_wb_ngrams`, with the n-gram -> column lookup cached per word.

    Fits like ``TfidfVectorizer(analyzer=char_wb_ngrams, sublinear_tf=True)``
    (same vocabulary, IDF and L2 norm); transforming maps each distinct word
    to its n-gram counts once (a row of a words x columns matrix), and a
    batch's counts are then one sparse product, texts x words times words x
    columns: a message costs one dictionary lookup per word instead of one
    per n-gram, and no Python per n-gram at all.
    """

    def __init__(self, min_df: int = 2, max_features: int | None = 60000, sublinear_tf: bool = True) -> None:
        self.min_df = min_df
        self.max_features = max_features
        self.sublinear_tf = sublinear_tf

    def fit(self, texts: Sequence[str], y: Any = None) -> "CharTfidf":
        vec = TfidfVectorizer(analyzer=char_wb_ngrams, lowercase=False, min_df=self.min_df,
                              max_features=self.max_features, sublinear_tf=self.sublinear_tf)
        vec.fit(texts)
        self.vocabulary_: dict[str, int] = dict(vec.vocabulary_)
        self.idf_: np.ndarray = vec.idf_.astype(np.float32)
        self._words = _WordColumns(len(self.vocabulary_))
        return self

    @classmethod
    def from_arrays(cls, vocabulary: dict[str, int], idf: np.ndarray) -> "CharTfidf":
        """Return a fitted instance from a saved vocabulary and IDF (a model archive)."""
        model = cls()
        model.vocabulary_ = vocabulary
        model.idf_ = np.asarray(idf, dtype=np.float32)
        model._words = _WordColumns(len(vocabulary))
        return model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_words", None)  # a cache, rebuilt on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = np.empty(len(self.vocabulary_), dtype=object)
        for term, col in self.vocabulary_.items():
            names[col] = term
        return names

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        words = self.__dict__.get("_words")
        if words is None or len(words.index) > _CACHE_LIMIT:
            words = self._words = _WordColumns(len(self.vocabulary_))
        with words.lock:
            counts = self._word_counts(texts, words)
            # texts x words times words x columns: the n-gram counts of each text, summed in C
            # (scipy's sparse product); through CSC and back, each row's columns come out sorted,
            # by two linear passes, where sort_indices() was a comparison sort of every row.
            matrix = (counts @ words.matrix()).tocsc().tocsr()
        # Counts are small integers, exact in float32: the same values, in the same order, as
        # summing one float32 entry per n-gram (sum_duplicates) gave.
        matrix.has_canonical_format = True
        if self.sublinear_tf:
            np.log(matrix.data, out=matrix.data)
            matrix.data += 1.0
        matrix.data *= self.idf_[matrix.indices]
        return normalize(matrix, norm="l2", copy=False)

    def _word_counts(self, texts: Sequence[str], words: _WordColumns) -> sparse.csr_matrix:
        """Return the texts x words matrix of how often each (cached) word occurs in each text
        (a word that occurs twice is two entries of 1: the product sums them)."""
        split = [text.split() for text in texts]
        tokens = list(chain.from_iterable(split))
        ids = list(map(words.index.get, tokens))
        if None in ids:
            # New words (most batches of real mail have a few): each stored once, then looked up
            # again with the others.  Their numbering does not matter: the product sums integers.
            for word in set(tokens).difference(words.index):
                words.add(word, self.vocabulary_)
            ids = list(map(words.index.get, tokens))
        indptr = np.zeros(len(texts) + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, split), dtype=np.int32, count=len(split)), out=indptr[1:])
        return sparse.csr_matrix((np.ones(len(ids), dtype=np.float32), np.array(ids, dtype=np.int32), indptr),
                                 shape=(len(texts), len(words.index)))


#: The word analyzer's tokens: runs of two or more letters (scikit-learn's ``token_pattern``).
WORD_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"
_WORD = re.compile(WORD_PATTERN)
#: :data:`WORD_PATTERN` over lower-case ASCII text, where it finds the same tokens: the Unicode
#: tables behind ``\b`` and ``[^\W\d_]`` made the general pattern twice as slow.
_ASCII_WORD = re.compile(r"(?a)\b[a-z]{2,}\b")


def word_tokens(text: str) -> list[str]:
    """Return the word tokens of normalised ``text`` (lower-cased, as the vectorizer reads them)."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return _WORD.findall(text.lower())


# -- desk cues ------------------------------------------------------------------------------------
#
# Groups of words that carry the desk's knowledge, pooled into one feature each, so that the
# model learns "a Partner Government Agency is named" once instead of once per agency name, and
# a writer who names an agency the corpus never saw still lights the feature.  Patterns run over
# normalised text (lower case, accents folded, digits as 0).  Changing them changes what a saved
# model reads: bump CUES_VERSION.

CUES_VERSION = 1
CUE_WEIGHT = 0.1
CUES: tuple[tuple[str, str], ...] = (
    ("pga_agency", r"\b(?:fda|usda|aphis|fsis|fws|fish and wildlife|epa|nhtsa|cpsc|ttb|nmfs|noaa|dea|atf|"
                   r"ams|fmcsa|partner government agenc|pga user|agency user|system control officer|"
                   r"\bsco\b|agencia (?:federal|asociada|participante))"),
    ("government_self", r"\b(?:our agency|my agency|agency staff|federal (?:employee|user|analyst|officer)|"
                        r"as an? (?:fda|usda|epa|fws|agency) |nuestra agencia|mi agencia|funcionari[oa]|"
                        r"\.gov\b|inspector|compliance officer at (?:fda|usda|epa))"),
    ("pga_filing", r"\b(?:pga (?:message set|data|record|flag|filing)|message set|pg0|datos pga|"
                   r"set de mensajes)"),
    ("vendor_software", r"\b(?:vendor|software|proveedor de software|our provider|third.party|"
                        r"abi (?:software|vendor|provider|system)|edi|api|sdk|plugin|integration|"
                        r"certified (?:software|vendor)|our system|nuestro sistema|programa|version 0|"
                        r"v0\.0|license|licencia|desktop app|module|modulo)"),
    ("outage", r"\b(?:down|outage|not loading|won.?t load|slow|timeout|timed out|unavailable|"
               r"error 0{1,3}|caid[oa]|no carga|lent[oa]|fuera de servicio|intermitente|intermittent|"
               r"availability dashboard|not responding|no responde)"),
    ("reports", r"\b(?:reports?|reportes?|informes?|query|queries|columns?|columnas?|dashboard report|"
                r"run (?:a|the) report|custom report|schedule(?:d)? report|excel|csv export|filtros?|"
                r"filters?|training videos?)"),
    ("entry_summary", r"\b(?:entry summar|resumen de entrada|0{3,4}0? form|cbp form 0|post summary|"
                      r"\bpsc\b|liquidat|liquidac|duty|aranceles?|classification|hts)"),
    ("subscribe", r"\b(?:subscrib|unsubscrib|suscrib|desuscrib|dar(?:me|le|nos)? de baja|de alta|"
                  r"remove me|take me off|stop sending|mailing list|lista de (?:correo|distribucion)|"
                  r"opt.out|sign (?:me|us) up|notifications? list|preferences?|preferencias)"),
    ("csms", r"\b(?:csms|cargo systems messaging)"),
    ("account_new", r"\b(?:new account|open an? (?:ace )?account|apply|application|enrol|inscri|"
                    r"welcome letter|first time|crear (?:una )?cuenta|nueva cuenta|abrir (?:una )?cuenta|"
                    r"solicitud|registr)"),
    ("account_admin", r"\b(?:add (?:a |an |new )?users?|remove (?:a |an )?users?|proxy|account owner|"
                      r"sub.?accounts?|subcuentas?|transfer|agregar (?:un )?usuario|dar acceso|"
                      r"eliminar (?:un )?usuario|propietario de la cuenta|access to (?:our|the|their) "
                      r"client|top.level account)"),
    ("locked", r"\b(?:locked|lock(?:ed)? out|deactivat|disabled|suspended|bloquead|desactivad|"
               r"inactivad|reactivat|reactivar|unlock|desbloque)"),
    ("password", r"\b(?:password|passcode|forgot|reset|temporary|challenge questions?|contrasena|"
                 r"clave|olvide|restablec|preguntas de seguridad)"),
    ("refund", r"\b(?:ach|refunds?|reembolsos?|bank(?:ing)?|routing|banco|bancari|cheques?|checks?|"
               r"deposit|deposito)"),
    ("notify", r"\b(?:notify part|0{4} form|special address|parte (?:a )?notificar|notificacion)"),
    ("export", r"\b(?:aes|aesdirect|eei|itn|census|export|exportac|schedule b|shipper.s export)"),
    ("cargo", r"\b(?:cargo release|release|in.?bond|manifest|liberaci|hold|retenid|despacho|"
              r"bill of lading|conocimiento de embarque|e.?manifest)"),
    ("thanks", r"\b(?:thank(?:s| you)|gracias|appreciate|muy amable|resolved|resuelto|funciono|"
               r"worked|all set)"),
)
_CUES = [(name, re.compile(pattern)) for name, pattern in CUES]


def cue_matrix(texts: Sequence[str]) -> sparse.csr_matrix:
    """Return one row per normalised text: :data:`CUE_WEIGHT` where a cue group matches, else 0."""
    rows, cols = [], []
    for r, text in enumerate(texts):
        for c, (_name, pattern) in enumerate(_CUES):
            if pattern.search(text):
                rows.append(r)
                cols.append(c)
    data = np.full(len(rows), CUE_WEIGHT, dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), len(_CUES)))


class CueFeatures(TransformerMixin, BaseEstimator):
    """:func:`cue_matrix` as a scikit-learn transformer (stateless)."""

    def fit(self, texts: Sequence[str], y: Any = None) -> "CueFeatures":
        return self

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return cue_matrix(texts)
