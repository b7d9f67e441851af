"""A chromadb index of the library ops, kept in the user's cache and rebuilt whenever the library changes.

One index folder per (embedding, library content hash): `<cache>/retrieval/<embedding key>-<library hash>/`
holding chromadb's files and `meta.json` (written last: a folder without it is an interrupted build).
A new or edited op changes the content hash, so the next search lands on a folder that does not exist yet
and builds it. The hash covers names and sources, not locations: two identical copies of a library share
one index, which therefore stores no folder; a hit's path comes from the library as it is found now.
An unreadable index (garbage in the sqlite file, a missing segment, a half-written folder)
is rebuilt with an `IndexRebuildWarning`, never an exception.

The cache root is KERNELGEN_CACHE_DIR, else $XDG_CACHE_HOME/kernelgen, else ~/.cache/kernelgen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import chromadb
from chromadb.config import Settings

from kernelgen.library import Op, discover
from kernelgen.retrieval.documents import op_document, op_metadata
from kernelgen.retrieval.embedding import HashedNgramEmbedding, OpenAIEmbedding, RetrievalError, embedding_from_env

EXACT_NAME_WINDOW = 5

COLLECTION = "kernelgen-ops"
META = "meta.json"
META_FORMAT = 2  # 2: no absolute paths in the index
KEEP_OLD_INDEXES = 4  # other library hashes (other --library sets, older checkouts) kept before pruning


class IndexRebuildWarning(UserWarning):
    """The stored index could not be read and was rebuilt from the library."""


def content_hash(ops: list[Op]) -> str:
    """Hash of what the index holds: every indexable op's name and source hash (not where it lives)."""
    h = hashlib.sha256()
    for op in ops:
        if not op.broken:
            h.update(op.name.encode())
            h.update(op.source_hash().encode())
    return h.hexdigest()[:16]


@dataclass
class SearchHit:
    name: str
    score: float  # cosine similarity clamped to [0, 1]; higher is closer
    aten: list[str]
    path: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_cache_dir() -> Path:
    if os.environ.get("KERNELGEN_CACHE_DIR"):
        return Path(os.environ["KERNELGEN_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kernelgen"


def _settings() -> Settings:
    # No telemetry: the index must work with no network, and a search should not phone anywhere.
    return Settings(anonymized_telemetry=False, allow_reset=False)


def _forget_system(path: Path) -> None:
    """Drop chromadb's in-process system for `path` if one is cached. chromadb 1.x caches a System per
    persist directory *before* starting it; when starting fails (garbage in the sqlite file) the broken,
    never-started System stays cached and every later client for that path fails with an AttributeError,
    so the rebuilt index could not be opened in the same process without this."""
    from chromadb.api.shared_system_client import SharedSystemClient

    system = SharedSystemClient._identifier_to_system.pop(str(path), None)
    SharedSystemClient._identifier_to_refcount.pop(str(path), None)
    if system is not None:
        try:
            system.stop()
        except Exception:  # it never started; there is nothing to stop
            pass


class LibraryIndex:
    """Search the ops of `library` (extra roots, then KERNELGEN_LIBRARY, then the shipped library)."""

    def __init__(self, library: list[str | Path] | None = None,
                 embedding: HashedNgramEmbedding | OpenAIEmbedding | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.library = [str(p) for p in library] if library else None
        self.embedding = embedding if embedding is not None else embedding_from_env()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path: Path | None = None  # the index folder in use
        self._client: Any = None
        self._collection: Any = None
        self._ef: Any = None
        self._count = 0
        self._last_error = ""
        self._paths: dict[str, str] = {}  # op name -> its folder in the library as found at the last refresh

    # ---- lifecycle -------------------------------------------------------------------------------
    def index_path(self, lib_hash: str) -> Path:
        return self._root() / f"{self.embedding.key()}-{lib_hash}"

    def _root(self) -> Path:
        return self.cache_dir / "retrieval"

    def _usable_root(self) -> None:
        """The cache's `retrieval` entry must be a folder: anything else (a file left by hand, a dangling
        link) is moved aside with a warning, like an unreadable index."""
        root = self._root()
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise RetrievalError(f"the cache folder {self.cache_dir} is a file (set KERNELGEN_CACHE_DIR elsewhere)")
        if root.is_symlink() and not root.exists() or root.exists() and not root.is_dir():
            aside = root.with_name(f"retrieval.not-a-folder-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(root, aside)
            except OSError as exc:
                raise RetrievalError(f"the index cache {root} is not a folder and cannot be moved aside: "
                                     f"{exc}") from None
            warnings.warn(f"the index cache {root} was not a folder; moved it to {aside.name} and rebuilt the index",
                          IndexRebuildWarning, stacklevel=4)

    def refresh(self, force: bool = False) -> bool:
        """Make sure the open index matches the library as it is now. Returns True when it was (re)built."""
        ops = discover(self.library)
        self._paths = {op.name: str(op.path) for op in ops if not op.broken}
        path = self.index_path(content_hash(ops))
        if not force and path == self.path and self._collection is not None:
            return False
        self.close()
        self._usable_root()
        if not force and self._open(path):
            return False
        self._build(path, ops)
        if not self._open(path, warn=False):
            raise RetrievalError(f"the index just built at {path} cannot be opened: {self._last_error}")
        return True

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a broken client must not hide the reason we are closing it
                pass
        self._client = self._collection = self._ef = None
        self.path = None

    def __enter__(self) -> LibraryIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, path: Path, warn: bool = True) -> bool:
        """Open an existing index folder; False (with a warning when it exists but is unreadable) otherwise."""
        if not path.exists():
            return False
        client = None
        try:
            meta = json.loads((path / META).read_text())
            if meta.get("format") != META_FORMAT:  # written by another kernelgen version: not damage
                self._last_error = f"{META} has format {meta.get('format')}, not {META_FORMAT}"
                return False
            if meta.get("embedding") != self.embedding.key():
                raise ValueError(f"{META} is for another embedding")
            ef = self._embedding_for(meta.get("embedding_config", {}))
            client = chromadb.PersistentClient(path=str(path), settings=_settings())
            collection = client.get_collection(COLLECTION, embedding_function=ef)
            count = collection.count()
            if count != meta.get("count"):
                raise ValueError(f"holds {count} ops, {META} says {meta.get('count')}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # chromadb's Rust layer can raise a PanicException (a BaseException)
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass
            _forget_system(path)
            self._last_error = f"{type(exc).__name__}: {exc}"
            if warn:
                warnings.warn(f"retrieval index {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                              IndexRebuildWarning, stacklevel=3)
            return False
        self._client, self._collection, self._ef, self._count, self.path = client, collection, ef, count, path
        return True

    def _embedding_for(self, config: dict[str, Any]):
        # The hashed embedding's IDF was fitted on the library when the index was built: queries must use
        # exactly that fit. Other embeddings are fixed models: use the one configured now.
        if isinstance(self.embedding, HashedNgramEmbedding):
            return HashedNgramEmbedding.build_from_config(config)
        return self.embedding

    def _build(self, path: Path, found: list[Op]) -> None:
        ops = [op for op in found if not op.broken]
        docs = [op_document(op) for op in ops]
        ef = self.embedding.fit(docs) if isinstance(self.embedding, HashedNgramEmbedding) else self.embedding
        vectors = ef(docs) if docs else []
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final place and renamed in: a reader never opens a half-written index.
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
        try:
            client = chromadb.PersistentClient(path=str(tmp), settings=_settings())
            try:
                collection = client.create_collection(
                    COLLECTION, embedding_function=ef, configuration={"hnsw": {"space": "cosine"}}
                )
                if ops:
                    collection.add(ids=[op.name for op in ops], documents=docs, embeddings=vectors,
                                   metadatas=[op_metadata(op) for op in ops])
            finally:
                client.close()
            meta = {"format": META_FORMAT, "embedding": self.embedding.key(), "embedding_config": ef.get_config(),
                    "count": len(ops), "ops": [op.name for op in ops]}
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            if path.exists():
                _forget_system(path)
                shutil.rmtree(path)
            try:
                os.replace(tmp, path)
            except OSError:
                if not (path / META).is_file():  # not another process that finished first: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(path)

    def _prune(self, keep: Path) -> None:
        prefix = f"{self.embedding.key()}-"
        others = [p for p in keep.parent.iterdir() if p.is_dir() and p.name.startswith(prefix) and p != keep]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP_OLD_INDEXES:]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- queries ---------------------------------------------------------------------------------
    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The `k` ops closest to `query`, best first."""
        if not query or not query.strip():
            raise RetrievalError("the search query is empty")
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        self.refresh()
        if self._count == 0:
            return []
        try:
            result = self._query(query, k)
        except RetrievalError:
            raise
        except Exception as exc:  # a segment file went bad after opening: rebuild once, then ask again
            warnings.warn(f"retrieval index {self.path} failed a query ({exc}); rebuilding it",
                          IndexRebuildWarning, stacklevel=2)
            self.refresh(force=True)
            result = self._query(query, k)
        hits = []
        pairs = list(zip(result["metadatas"][0], result["distances"][0]))
        # An op named exactly what was asked for ("softmax", "rms norm") comes first: a fused op that mentions
        # the word more often can sit closer in embedding space.
        exact = re.sub(r"[\s\-]+", "_", query.strip().lower())
        pairs.sort(key=lambda pair: pair[0]["name"] != exact)
        for meta, dist in pairs[:k]:
            name = str(meta["name"])
            hits.append(SearchHit(
                name=name,
                score=round(min(1.0, max(0.0, 1.0 - float(dist))), 4),
                aten=json.loads(str(meta.get("aten") or "[]")),
                path=self._paths.get(name, ""),
                description=str(meta.get("description", "")),
            ))
        return hits

    def _query(self, query: str, k: int) -> dict[str, Any]:
        vec = self._ef.embed_query([query.strip()])
        # a few more than asked for, so an exact name match just outside the top k can be moved up
        return self._collection.query(query_embeddings=vec, n_results=min(k + EXACT_NAME_WINDOW, self._count),
                                      include=["metadatas", "distances"])


_open_indexes: dict[tuple, LibraryIndex] = {}


def search(query: str, k: int = 5, library: list[str] | None = None) -> list[SearchHit]:
    """Module-level search used by the agent and the CLI: the index for the configured embedding and cache,
    kept open across calls in this process (it still follows library changes on every call)."""
    env = tuple(os.environ.get(v, "") for v in ("KERNELGEN_EMBEDDINGS", "KERNELGEN_EMBEDDINGS_MODEL",
                                                 "KERNELGEN_BASE_URL", "KERNELGEN_LIBRARY"))
    key = (tuple(str(p) for p in library or ()), str(default_cache_dir()), env)
    index = _open_indexes.get(key)
    if index is None:
        index = _open_indexes[key] = LibraryIndex(library)
    return index.search(query, k)


def close_all() -> None:
    """Release every index `search()` opened (tests that damage index files call this first)."""
    for index in _open_indexes.values():
        index.close()
    _open_indexes.clear()
