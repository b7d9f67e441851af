"""Retrieval: recall on paraphrased queries, index refresh and repair, the CLI, an OpenAI-compatible endpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kernelgen.library import builtin_library, discover
from kernelgen.retrieval import (
    HashedNgramEmbedding,
    IndexRebuildWarning,
    LibraryIndex,
    OpenAIEmbedding,
    RetrievalError,
    close_all,
    search,
)

# How people phrase the ops of the library, and the op each phrasing means. Written from the field's
# vocabulary (papers, model code, issue titles), not from the spec texts.
QUERIES: list[tuple[str, str]] = [
    ("rmsnorm", "rms_norm"),
    ("normalize by root mean square", "rms_norm"),
    ("root mean square normalization", "rms_norm"),
    ("RMSNorm like in llama", "rms_norm"),
    ("scale rows by the inverse rms times a learned weight", "rms_norm"),
    ("rms normalization over the hidden dim", "rms_norm"),
    ("pre-norm residual", "fused_add_rms_norm"),
    ("fused rmsnorm + residual", "fused_add_rms_norm"),
    ("residual add then rms norm", "fused_add_rms_norm"),
    ("add the skip connection and apply RMSNorm", "fused_add_rms_norm"),
    ("fused add rms norm", "fused_add_rms_norm"),
    ("x + residual followed by rmsnorm, return both", "fused_add_rms_norm"),
    ("layernorm", "layer_norm"),
    ("layer normalization with weight and bias", "layer_norm"),
    ("normalize to zero mean and unit variance", "layer_norm"),
    ("LayerNorm over the last dimension", "layer_norm"),
    ("standardize each row then scale and shift", "layer_norm"),
    ("softmax", "softmax"),
    ("softmax over the last dim", "softmax"),
    ("turn logits into probabilities", "softmax"),
    ("attention probabilities from scores", "softmax"),
    ("normalized exponential along rows", "softmax"),
    ("log softmax", "log_softmax"),
    ("logsoftmax", "log_softmax"),
    ("log probabilities from logits", "log_softmax"),
    ("log-softmax for cross entropy", "log_softmax"),
    ("numerically stable log of softmax with logsumexp", "log_softmax"),
    ("swiglu", "silu_and_mul"),
    ("SwiGLU activation", "silu_and_mul"),
    ("gated silu", "silu_and_mul"),
    ("silu and mul", "silu_and_mul"),
    ("silu(gate) * up", "silu_and_mul"),
    ("llama mlp activation", "silu_and_mul"),
    ("swish gated linear unit", "silu_and_mul"),
    ("geglu", "gelu_and_mul"),
    ("gelu and mul", "gelu_and_mul"),
    ("gated gelu", "gelu_and_mul"),
    ("gelu(a) * b with tanh approximation", "gelu_and_mul"),
    ("GeGLU feed-forward activation", "gelu_and_mul"),
    ("RoPE", "rotary_embedding"),
    ("rotary embedding", "rotary_embedding"),
    ("rotary position embedding for q and k", "rotary_embedding"),
    ("apply rotary positional encoding with cos and sin", "rotary_embedding"),
    ("rotate half of the head dim by position", "rotary_embedding"),
    ("causal masked softmax", "causal_softmax"),
    ("softmax with a causal mask for decoder attention", "causal_softmax"),
    ("masked attention softmax, future keys excluded", "causal_softmax"),
    ("scaled softmax", "scale_softmax"),
    ("softmax of scores times a scale", "scale_softmax"),
    ("residual add then layernorm", "add_layer_norm_residual"),
    ("post-norm residual layernorm", "add_layer_norm_residual"),
    ("bias add + gelu", "bias_gelu"),
    ("gelu with bias", "bias_gelu"),
]
EXPECTED_OPS = {op for _, op in QUERIES}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Every test gets its own index cache, and starts with no index held open by `search()`."""
    close_all()
    d = tmp_path / "cache"
    monkeypatch.setenv("KERNELGEN_CACHE_DIR", str(d))
    monkeypatch.delenv("KERNELGEN_EMBEDDINGS", raising=False)
    monkeypatch.delenv("KERNELGEN_LIBRARY", raising=False)
    yield d
    close_all()


def _copy_op(name: str, dest_root: Path, new_name: str | None = None, description: str | None = None) -> Path:
    """An op folder copied from the shipped library into `dest_root/ops`, optionally renamed/redescribed."""
    src = builtin_library() / "ops" / name
    dest = dest_root / "ops" / (new_name or name)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("verified", "tune", "__pycache__"))
    if new_name or description:
        spec = (dest / "spec.toml").read_text()
        if new_name:
            spec = spec.replace(f'name = "{name}"', f'name = "{new_name}"', 1)
        if description:
            lines = spec.splitlines()
            lines = [f"description = {json.dumps(description)}" if ln.startswith("description = ") else ln
                     for ln in lines]
            spec = "\n".join(lines) + "\n"
        (dest / "spec.toml").write_text(spec)
    return dest


def test_recall_on_paraphrased_queries(cache):
    assert len(QUERIES) >= 40
    present = {op.name for op in discover() if not op.broken}
    assert EXPECTED_OPS <= present, f"library ops missing: {sorted(EXPECTED_OPS - present)}"
    cases = QUERIES
    index = LibraryIndex()
    top1 = top3 = 0
    misses = []
    for query, expected in cases:
        names = [h.name for h in index.search(query, k=3)]
        top1 += names[:1] == [expected]
        top3 += expected in names
        if names[:1] != [expected]:
            misses.append(f"{query!r}: expected {expected}, got {names}")
    index.close()
    r1, r3 = top1 / len(cases), top3 / len(cases)
    print(f"\nretrieval recall over {len(cases)} queries, {len({op for _, op in cases})} ops: "
          f"recall@1={r1:.3f} recall@3={r3:.3f}")
    for m in misses:
        print("  miss@1", m)
    # the README states recall@1 = recall@3 = 1.0 on these queries: any miss is a regression
    assert r1 == 1.0 and r3 == 1.0, f"recall@1={r1:.3f} recall@3={r3:.3f}; misses: {misses}"


def test_hits_carry_score_aten_and_path(cache):
    hits = search("rmsnorm", k=2)
    assert hits[0].name == "rms_norm"
    assert hits[0].aten == ["aten::rms_norm"]
    assert Path(hits[0].path, "spec.toml").is_file()
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(RetrievalError):
        search("   ")


def test_embedding_is_deterministic_and_survives_its_config():
    docs = ["rms norm over rows", "softmax over the last dim", "rotary position embedding"]
    ef = HashedNgramEmbedding(dim=512).fit(docs)
    again = HashedNgramEmbedding.build_from_config(json.loads(json.dumps(ef.get_config())))
    a, b = ef(["swiglu gate"]), again(["swiglu gate"])
    np.testing.assert_array_equal(a[0], b[0])
    assert abs(float(np.linalg.norm(a[0])) - 1.0) < 1e-5
    sims = [float(np.dot(ef(["RoPE"])[0], v)) for v in ef(docs)]
    assert int(np.argmax(sims)) == 2


def test_new_op_folder_shows_up_in_the_next_search(cache, tmp_path):
    extra = tmp_path / "extra"
    index = LibraryIndex(library=[str(extra)])
    assert "zz_scaled_rms_norm" not in [h.name for h in index.search("scaled rms norm quartic", k=10)]
    first = index.path
    _copy_op("rms_norm", extra, "zz_scaled_rms_norm",
              "RMS norm whose output is multiplied by a quartic scale polynomial (scaled rms norm quartic).")
    hits = index.search("scaled rms norm quartic", k=3)
    assert hits[0].name == "zz_scaled_rms_norm"
    assert hits[0].path == str(extra / "ops" / "zz_scaled_rms_norm")
    assert index.path != first  # a new library hash, a new index folder
    assert index.refresh() is False  # nothing changed since: the open index is reused
    index.close()


def test_corrupt_index_is_rebuilt_with_a_warning(cache):
    index = LibraryIndex()
    assert index.search("rmsnorm", k=1)[0].name == "rms_norm"
    path = index.path
    index.close()
    (path / "chroma.sqlite3").write_bytes(b"this is not a sqlite database " * 64)
    fresh = LibraryIndex()
    with pytest.warns(IndexRebuildWarning, match="unreadable"):
        hits = fresh.search("rmsnorm", k=1)
    assert hits[0].name == "rms_norm"
    fresh.close()
    # the rebuilt index opens quietly
    again = LibraryIndex()
    with warnings_as_errors():
        assert again.search("rmsnorm", k=1)[0].name == "rms_norm"
    again.close()


def test_half_written_index_is_rebuilt(cache):
    index = LibraryIndex()
    index.search("softmax", k=1)
    path = index.path
    index.close()
    (path / "meta.json").unlink()
    with pytest.warns(IndexRebuildWarning):
        assert LibraryIndex().search("rmsnorm", k=1)[0].name == "rms_norm"


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", IndexRebuildWarning)

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


def test_cli_search_json(cache, tmp_path):
    from kernelgen.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["search", "pre-norm residual", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) <= 2 and rows[0]["name"] in {"fused_add_rms_norm", "rms_norm"}
    assert set(rows[0]) >= {"name", "score", "aten", "path", "description"}
    table = runner.invoke(app, ["search", "rmsnorm"])
    assert table.exit_code == 0 and "rms_norm" in table.stdout
    empty = runner.invoke(app, ["search", "  "])
    assert empty.exit_code == 2
    extra = tmp_path / "lib"
    _copy_op("rms_norm", extra, "zz_cli_norm", "A norm that only the --library flag can find: zebra quokka.")
    found = runner.invoke(app, ["search", "zebra quokka", "--library", str(extra), "--json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)[0]["name"] == "zz_cli_norm"


# ---- an OpenAI-compatible embeddings endpoint on loopback --------------------------------------------
def _fake_vector(text: str, dim: int = 64) -> list[float]:
    """Deterministic vectors a server might return: bag of words hashed into `dim` buckets."""
    v = np.zeros(dim)
    for w in text.lower().replace("_", " ").split():
        v[int(hashlib.sha256(w.encode()).hexdigest(), 16) % dim] += 1.0
    return v.tolist()


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if self.path != "/v1/embeddings":
            self.send_error(404)
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": _fake_vector(t)} for i, t in enumerate(texts)]
        payload = json.dumps({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def embeddings_server():
    _EmbeddingsHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_embeddings_endpoint(cache, embeddings_server, monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELGEN_EMBEDDINGS", "openai")
    monkeypatch.setenv("KERNELGEN_EMBEDDINGS_MODEL", "tiny-embed")
    monkeypatch.setenv("KERNELGEN_BASE_URL", embeddings_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    extra = tmp_path / "lib"
    _copy_op("rms_norm", extra, "zz_wombat_norm", "wombat wombat norm")
    hits = search("wombat", k=2, library=[str(extra)])
    assert hits[0].name == "zz_wombat_norm" and hits[0].score > 0
    reqs = _EmbeddingsHandler.requests
    assert all(r["path"] == "/v1/embeddings" and r["model"] == "tiny-embed" for r in reqs)
    assert reqs[0]["auth"] == "Bearer sk-test-key"
    assert len(reqs) == 2  # the documents in one batch, then the query
    # the index folder is keyed by the endpoint's embedding, not the offline one
    assert any(p.name.startswith("openai-tiny-embed-") for p in (cache / "retrieval").iterdir())
    meta = json.loads(next((cache / "retrieval").glob("openai-*/meta.json")).read_text())
    assert "sk-test-key" not in json.dumps(meta)


def test_unreachable_endpoint_is_a_retrieval_error(cache):
    emb = OpenAIEmbedding("tiny-embed", base_url="http://127.0.0.1:9/v1", api_key="x", timeout=2.0)
    with pytest.raises(RetrievalError, match="127.0.0.1:9"):
        emb(["softmax"])


def test_unknown_embedding_kind_is_an_error(cache, monkeypatch):
    monkeypatch.setenv("KERNELGEN_EMBEDDINGS", "word2vec")
    with pytest.raises(RetrievalError, match="word2vec"):
        LibraryIndex()
