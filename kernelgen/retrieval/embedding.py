"""Embedding functions for the library index (chromadb's `EmbeddingFunction` protocol).

chromadb's default embedding downloads an ONNX model on first use; that cannot happen offline or on an
air-gapped cluster. `HashedNgramEmbedding` needs nothing but this file: canonical words (text.py), word
bigrams and character n-grams, hashed into a fixed number of buckets, weighted by TF-IDF fitted on the
library's own documents, L2-normalized. `OpenAIEmbedding` uses any OpenAI-compatible `/v1/embeddings`
endpoint through the openai SDK instead. `embedding_from_env()` picks one from the configuration.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import zlib
from collections import Counter
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from kernelgen.errors import KernelgenError
from kernelgen.retrieval.text import canonical_words


class RetrievalError(KernelgenError):
    """Bad retrieval configuration or query (the CLI prints it as one line, exit code 2)."""


# Feature weights before IDF. Whole words carry the meaning; bigrams reward phrases in the right order
# ("add rms" for fused add rms norm); character n-grams catch spellings the word table misses
# ("normaliz", "rotar") but are kept light, because every word yields many of them.
WORD_WEIGHT = 1.0
BIGRAM_WEIGHT = 0.5
CHAR_WEIGHT = 0.12
CHAR_NGRAMS = (3, 4, 5)


def _bucket(feature: str, dim: int) -> int:
    # crc32, not hash(): Python salts str hashes per process, and the index outlives the process.
    return zlib.crc32(feature.encode()) % dim


def features(text: str) -> Counter[str]:
    """Feature counts of one text: `w:word`, `b:word word`, `c:ngram` (before weighting, hashing and IDF)."""
    words = canonical_words(text)
    out: Counter[str] = Counter()
    for w in words:
        out[f"w:{w}"] += 1
        padded = f"<{w}>"
        for n in CHAR_NGRAMS:
            for i in range(len(padded) - n + 1):
                out[f"c:{padded[i:i + n]}"] += 1
    for a, b in zip(words, words[1:]):
        out[f"b:{a} {b}"] += 1
    return out


KIND_WEIGHT = {"w": WORD_WEIGHT, "b": BIGRAM_WEIGHT, "c": CHAR_WEIGHT}


@register_embedding_function
class HashedNgramEmbedding(EmbeddingFunction[Documents]):
    """Deterministic, offline: hashed word/bigram/char-n-gram TF-IDF vectors.

    `fit(documents)` returns a copy whose IDF comes from those documents (the library); the document
    frequencies travel in `get_config()`, so chromadb can rebuild the same function from a stored index.
    Unfitted, every bucket has IDF 1 (plain sublinear TF)."""

    def __init__(self, dim: int = 4096, n_docs: int = 0, df: dict[int, int] | None = None) -> None:
        if dim < 64:
            raise RetrievalError(f"embedding dim must be at least 64, got {dim}")
        self.dim = int(dim)
        self.n_docs = int(n_docs)
        self.df = {int(k): int(v) for k, v in (df or {}).items()}
        # Smoothed IDF (as scikit-learn's): a bucket seen in no document gets the largest weight.
        self._idf = np.full(self.dim, math.log(1 + self.n_docs) + 1.0, dtype=np.float64)
        for b, count in self.df.items():
            self._idf[b] = math.log((1 + self.n_docs) / (1 + count)) + 1.0

    def _tf(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        for feat, count in features(text).items():
            # Sublinear TF: a word repeated ten times in a description is not ten times the evidence.
            vec[_bucket(feat, self.dim)] += KIND_WEIGHT[feat[0]] * (1.0 + math.log(count))
        return vec

    def fit(self, documents: list[str]) -> HashedNgramEmbedding:
        df: Counter[int] = Counter()
        for doc in documents:
            df.update(int(b) for b in np.nonzero(self._tf(doc))[0])
        return HashedNgramEmbedding(self.dim, len(documents), dict(df))

    def __call__(self, input: Documents) -> Embeddings:
        out = []
        for text in input:
            vec = self._tf(text) * self._idf
            norm = np.linalg.norm(vec)
            out.append((vec / norm if norm > 0 else vec).astype(np.float32))
        return out

    @staticmethod
    def name() -> str:
        return "kernelgen-hashed-ngram"

    def key(self) -> str:
        """Names the vector space: indexes built with another key are not comparable."""
        return f"hashed-ngram-v1-d{self.dim}"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim, "n_docs": self.n_docs, "df": {str(k): v for k, v in sorted(self.df.items())}}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashedNgramEmbedding:
        return HashedNgramEmbedding(config.get("dim", 4096), config.get("n_docs", 0), config.get("df") or {})

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if old_config.get("dim") != new_config.get("dim"):
            raise RetrievalError("the embedding dim of an existing index cannot change")


@register_embedding_function
class OpenAIEmbedding(EmbeddingFunction[Documents]):
    """Any OpenAI-compatible embeddings endpoint (OpenAI, vLLM, SGLang, Ollama, TEI...) through the openai SDK.

    The API key is read from OPENAI_API_KEY and never stored in the index's configuration."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0) -> None:
        if not model:
            raise RetrievalError("an OpenAI-compatible embedding needs a model name (KERNELGEN_EMBEDDINGS_MODEL)")
        self.model = model
        self.base_url = base_url or None
        self.timeout = timeout
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not self.base_url:
                raise RetrievalError("KERNELGEN_EMBEDDINGS=openai needs OPENAI_API_KEY or KERNELGEN_BASE_URL")
            key = "not-needed"  # local servers (vLLM, Ollama) accept any key; the SDK insists on one
        self._api_key = key
        self._client = None

    def _openai(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=1)
        return self._client

    def __call__(self, input: Documents) -> Embeddings:
        from openai import OpenAIError

        texts = [t if t.strip() else " " for t in input]  # some servers refuse empty strings
        try:
            resp = self._openai().embeddings.create(model=self.model, input=texts)
        except OpenAIError as exc:
            where = self.base_url or "api.openai.com"
            raise RetrievalError(f"embeddings endpoint {where} failed: {exc}") from None
        rows = sorted(resp.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise RetrievalError(f"embeddings endpoint returned {len(rows)} vectors for {len(texts)} texts")
        return [np.asarray(r.embedding, dtype=np.float32) for r in rows]

    @staticmethod
    def name() -> str:
        return "kernelgen-openai"

    def key(self) -> str:
        where = hashlib.sha256((self.base_url or "openai").encode()).hexdigest()[:8]
        return f"openai-{re.sub(r'[^A-Za-z0-9.]+', '-', self.model).strip('-.')[:48]}-{where}"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "base_url": self.base_url}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OpenAIEmbedding:
        return OpenAIEmbedding(config["model"], config.get("base_url"))


def embedding_from_env() -> HashedNgramEmbedding | OpenAIEmbedding:
    """KERNELGEN_EMBEDDINGS=offline (default) or openai (with KERNELGEN_EMBEDDINGS_MODEL, KERNELGEN_BASE_URL,
    OPENAI_API_KEY)."""
    kind = os.environ.get("KERNELGEN_EMBEDDINGS", "offline").strip().lower() or "offline"
    if kind in ("offline", "hashed", "local"):
        return HashedNgramEmbedding()
    if kind == "openai":
        return OpenAIEmbedding(
            os.environ.get("KERNELGEN_EMBEDDINGS_MODEL", "text-embedding-3-small"),
            os.environ.get("KERNELGEN_BASE_URL") or None,
        )
    raise RetrievalError(f"KERNELGEN_EMBEDDINGS={kind!r} is not known; use 'offline' or 'openai'")
