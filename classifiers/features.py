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
from array import array
from collections import Counter
from collections.abc import Sequence
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
_ONES: dict[int, "array[float]"] = {}


def _repeat_weight(count: int, length: int) -> "array[float]":
    """Return ``length`` copies of ``count`` (the common count 1 from a cache)."""
    if count != 1:
        return array("f", [count]) * length
    ones = _ONES.get(length)
    if ones is None:
        ones = _ONES[length] = array("f", [1.0]) * length
    return ones


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


class CharTfidf(TransformerMixin, BaseEstimator):
    """TF-IDF over :func:`char_wb_ngrams`, with the n-gram -> column lookup cached per word.

    Fits like ``TfidfVectorizer(analyzer=char_wb_ngrams, sublinear_tf=True)``
    (same vocabulary, IDF and L2 norm); transforming maps each distinct word
    to its columns once, so that a batch costs one dictionary lookup per
    word instead of one per n-gram.
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
        self._columns: dict[str, "array[int]"] = {}
        return self

    @classmethod
    def from_arrays(cls, vocabulary: dict[str, int], idf: np.ndarray) -> "CharTfidf":
        """Return a fitted instance from a saved vocabulary and IDF (a model archive)."""
        model = cls()
        model.vocabulary_ = vocabulary
        model.idf_ = np.asarray(idf, dtype=np.float32)
        model._columns = {}
        return model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_columns", None)  # a cache, rebuilt on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._columns = {}

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = np.empty(len(self.vocabulary_), dtype=object)
        for term, col in self.vocabulary_.items():
            names[col] = term
        return names

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        vocab = self.vocabulary_
        columns = self._columns
        if len(columns) > _CACHE_LIMIT:
            columns.clear()
        # array('i') grows in C and converts to numpy without a per-item copy.
        indices = array("i")
        weights = array("f")
        indptr = array("q", [0])
        for text in texts:
            # Each distinct word once, weighted by how often it occurs: words repeat within a
            # message, and every entry costs in the duplicate sum below.
            for word, count in Counter(text.split()).items():
                cols = columns.get(word)
                if cols is None:
                    cols = array("i", [vocab[g] for g in _word_ngrams(word) if g in vocab])
                    columns[word] = cols
                indices.extend(cols)
                weights.extend(_repeat_weight(count, len(cols)))
            indptr.append(len(indices))
        idx = np.frombuffer(indices, dtype=np.int32) if len(indices) else np.zeros(0, dtype=np.int32)
        data = np.frombuffer(weights, dtype=np.float32).copy() if len(weights) else np.zeros(0, dtype=np.float32)
        matrix = sparse.csr_matrix(
            (data, idx, np.frombuffer(indptr, dtype=np.int64)),
            shape=(len(indptr) - 1, len(vocab)), dtype=np.float32)
        matrix.sum_duplicates()
        if self.sublinear_tf:
            np.log(matrix.data, out=matrix.data)
            matrix.data += 1.0
        matrix.data *= self.idf_[matrix.indices]
        return normalize(matrix, norm="l2", copy=False)


#: The word analyzer's tokens: runs of two or more letters (scikit-learn's ``token_pattern``).
WORD_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"
_WORD = re.compile(WORD_PATTERN)


def word_tokens(text: str) -> list[str]:
    """Return the word tokens of normalised ``text`` (lower-cased, as the vectorizer reads them)."""
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
