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

from array import array
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
        self._columns: dict[str, array] = {}
        return self

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
        indptr = array("q", [0])
        for text in texts:
            for word in text.split():
                cols = columns.get(word)
                if cols is None:
                    cols = array("i", [vocab[g] for g in _word_ngrams(word) if g in vocab])
                    columns[word] = cols
                indices.extend(cols)
            indptr.append(len(indices))
        idx = np.frombuffer(indices, dtype=np.int32) if len(indices) else np.zeros(0, dtype=np.int32)
        matrix = sparse.csr_matrix(
            (np.ones(len(idx), dtype=np.float32), idx, np.frombuffer(indptr, dtype=np.int64)),
            shape=(len(indptr) - 1, len(vocab)), dtype=np.float32)
        matrix.sum_duplicates()
        if self.sublinear_tf:
            np.log(matrix.data, out=matrix.data)
            matrix.data += 1.0
        matrix.data *= self.idf_[matrix.indices]
        return normalize(matrix, norm="l2", copy=False)
