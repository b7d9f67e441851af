"""Retrieval: a chromadb index of the library ops, searched with an offline embedding by default.

    from kernelgen.retrieval import search
    hits = search("swiglu", k=3)        # [SearchHit(name="silu_and_mul", score=0.61, aten=[...], ...), ...]

This package imports chromadb; nothing outside it (and never `kernelgen/__init__.py`) should.
"""

from kernelgen.retrieval.embedding import HashedNgramEmbedding, OpenAIEmbedding, RetrievalError, embedding_from_env
from kernelgen.retrieval.index import IndexRebuildWarning, LibraryIndex, SearchHit, close_all, default_cache_dir, search

__all__ = [
    "HashedNgramEmbedding",
    "IndexRebuildWarning",
    "LibraryIndex",
    "OpenAIEmbedding",
    "RetrievalError",
    "SearchHit",
    "close_all",
    "default_cache_dir",
    "embedding_from_env",
    "search",
]
