"""The index at scale: a knowledge base of N chunks built from the real corpus's embeddings, then the figures a
user feels — dense recall and latency, BM25 and hybrid latency, adding and deleting a file, opening the index,
memory and disk.

    RAGBOT_HOME=data python bench/scale.py --index data/index-shared --chunks 1000000 --json
    RAGBOT_HOME=data python bench/scale.py --index data/index-shared --curve --json   # 10k, 100k, 1M + chart

**Vectors.** Real e5 embeddings of the source index's chunks, plus generated neighbours: each new vector is a
random earlier one (real or generated) moved by a step drawn from the real vectors' covariance and scaled to a
length drawn from the real nearest-neighbour distances, then normalised. So the generated points stay on the
real embeddings' manifold with the real local spacing; the output reports both distributions. 1,000
held-out queries are made the same way (never inserted); exact search over all N vectors is the ground truth.

**Text.** Each synthetic chunk carries the text and heading of the real chunk it descends from and, for BM25,
that chunk's jieba tokens with a fifth dropped and as many drawn from other chunks (so postings lists are
realistic, not copies). Files hold 100 chunks each. Queries for BM25 and hybrid retrieval are 3–8 words of a
random real chunk (hybrid embeds them with the real embedder and reranks with the shipped LTR model).

The index is built in batches of 100k through ``IndexStore.add``/``save`` (one segment each), then compacted
into one segment (IVF above ``ann_min_chunks``). Reading figures come from a fresh process that opens the
index as ``ragbot ask`` does (``open_s``, ``rss_gb`` = its peak resident memory); writing figures from the
writer: ``add_100_s`` (a 100-chunk file: add + publish, embedding excluded), ``delete_s`` (one file: remove +
publish).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.segments import AnnParams  # noqa: E402
from ragbot.settings import Settings  # noqa: E402
from ragbot.store import FileRecord, IndexSpec, IndexStore, bm25_tokens  # noqa: E402
from ragbot.types import Chunk  # noqa: E402

BATCH = 100_000
FILE_CHUNKS = 100


class Source:
    """The real chunks: their vectors, texts and tokens."""

    def __init__(self, index: Path) -> None:
        store = IndexStore.load(index)
        self.spec = store.manifest.spec
        parts = [s.vectors() for s in store._all()]
        fids = np.concatenate([p[0] for p in parts])
        vecs = np.concatenate([p[1] for p in parts])
        chunks = store._fetch(fids.tolist())
        keep = [i for i, f in enumerate(fids.tolist()) if f in chunks and f not in store.dead]
        self.vectors = vecs[keep].astype(np.float32)
        self.chunks = [chunks[int(fids[i])] for i in keep]
        self.tokens = [bm25_tokens(c.embedding_text()) for c in self.chunks]
        self.all_tokens = [t for toks in self.tokens for t in toks]


class Generator:
    """Neighbours on the real embeddings' manifold, spaced like the real nearest neighbours (module docstring)."""

    def __init__(self, real: np.ndarray, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.real = real
        sims = real @ real.T
        np.fill_diagonal(sims, -np.inf)
        self.nn_dist = np.sqrt(np.maximum(0, 2 - 2 * sims.max(axis=1)))  # unit vectors: |a-b|² = 2 - 2a·b
        cov = np.cov(real - real.mean(axis=0), rowvar=False)
        w, v = np.linalg.eigh(cov)
        self.basis = v * np.sqrt(np.maximum(w, 0))  # z @ basis.T ~ N(0, cov)
        self.pool = real.copy()
        self.root = np.arange(len(real))  # the real chunk each pool vector descends from

    def step(self, parents: np.ndarray) -> np.ndarray:
        z = self.rng.standard_normal((len(parents), self.basis.shape[1])).astype(np.float32) @ self.basis.T
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        length = self.rng.choice(self.nn_dist, len(parents))[:, None]
        out = self.pool[parents] + length * z
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def grow(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new vectors (appended to the pool) and the real chunk each descends from."""
        vecs, roots = [], []
        while n > 0:
            m = min(n, len(self.pool))  # at most double per round: parents are drawn from what exists
            parents = self.rng.integers(0, len(self.pool), m)
            v = self.step(parents)
            self.pool = np.concatenate([self.pool, v])
            self.root = np.concatenate([self.root, self.root[parents]])
            vecs.append(v)
            roots.append(self.root[-m:])
            n -= m
        return np.concatenate(vecs), np.concatenate(roots)

    def queries(self, n: int) -> np.ndarray:
        return self.step(self.rng.integers(0, len(self.pool), n))


def synthetic_tokens(src: Source, root: int, rng: np.random.Generator) -> list[str]:
    toks = src.tokens[root]
    kept = [t for t, keep in zip(toks, rng.random(len(toks)) > 0.2) if keep]
    extra = rng.integers(0, len(src.all_tokens), len(toks) - len(kept))
    return kept + [src.all_tokens[i] for i in extra]


def build(src: Source, n: int, path: Path, ann: AnnParams, seed: int) -> dict:
    """The N-chunk index at ``path`` and the vectors it holds (for the ground truth)."""
    gen = Generator(src.vectors, seed)
    rng = np.random.default_rng(seed + 1)
    n_real = len(src.vectors)
    store = IndexStore.empty(src.spec, ann=ann)
    t0 = time.perf_counter()
    all_vecs = []
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        if start == 0:
            real = min(n_real, m)
            vecs = np.concatenate([src.vectors[:real], gen.grow(m - real)[0]]) if m > real else src.vectors[:m]
            roots = np.concatenate([np.arange(real), gen.root[n_real:n_real + m - real]]) if m > real else np.arange(m)
        else:
            vecs, roots = gen.grow(m)
        chunks, tokens = [], []
        for i, root in enumerate(roots.tolist()):
            fid = start + i
            c = src.chunks[root]
            chunks.append(Chunk(f"s{fid:08d}", f"/synthetic/doc{fid // FILE_CHUNKS:06d}.md", c.text,
                                f"doc{fid // FILE_CHUNKS:06d}.md", None, c.heading_path, 0, len(c.text)))
            tokens.append(synthetic_tokens(src, root, rng) if fid >= n_real else src.tokens[root])
        store.add(chunks, vecs, tokens)
        for d in range(start // FILE_CHUNKS, (start + m + FILE_CHUNKS - 1) // FILE_CHUNKS):
            ids = tuple(f"s{f:08d}" for f in range(d * FILE_CHUNKS, min((d + 1) * FILE_CHUNKS, start + m)))
            store.set_file(FileRecord(f"/synthetic/doc{d:06d}.md", f"doc{d:06d}.md", f"sha{d}", 1, ids, 0.0))
        store.save(path, keep=0, grace_s=0)
        all_vecs.append(vecs)
        print(f"  built {start + m:,} of {n:,} chunks ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    build_s = time.perf_counter() - t0
    t = time.perf_counter()
    store.compact(path)
    store.save(path, keep=0, grace_s=0)
    compact_s = time.perf_counter() - t
    vectors = np.concatenate(all_vecs)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), 5000), replace=False)]
    nn = np.sqrt(np.maximum(0, 2 - 2 * _nn_sims(sample, vectors)))
    return {"vectors": vectors, "queries": gen.queries(1000), "build_s": build_s, "compact_s": compact_s,
            "segments": [(s.name, len(s), "ivf" if s.approximate else "flat") for s in store.segments],
            "nn_dist_real_p10_p50_p90": np.percentile(gen.nn_dist, [10, 50, 90]).round(3).tolist(),
            "nn_dist_synthetic_p10_p50_p90": np.percentile(nn, [10, 50, 90]).round(3).tolist()}


def _nn_sims(sample: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    d, _ = index.search(sample, 2)
    return d[:, 1]  # the best is the vector itself


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, ids = index.search(queries, 10)
    return ids


def writes(path: Path, src: Source, ann: AnnParams) -> dict:
    """Add one 100-chunk file and delete one file, each published, on the big index (embedding excluded)."""
    store = IndexStore.load(path)
    store.ann = ann
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(src.chunks), FILE_CHUNKS)
    chunks = [Chunk(f"new{i:03d}", "/synthetic/new.md", src.chunks[p].text, "new.md") for i, p in enumerate(picks)]
    vecs = src.vectors[picks]
    tokens = [src.tokens[p] for p in picks]
    t = time.perf_counter()
    store.add(chunks, vecs, tokens)
    store.set_file(FileRecord("/synthetic/new.md", "new.md", "shanew", 1, tuple(c.id for c in chunks), 0.0))
    store.save(path, keep=2, grace_s=300)
    add_s = time.perf_counter() - t
    store = IndexStore.load(path)
    victim = next(iter(store.manifest.files))
    t = time.perf_counter()
    removed = store.drop_file(victim)
    store.save(path, keep=2, grace_s=300)
    delete_s = time.perf_counter() - t
    return {"add_100_s": round(add_s, 3), "delete_s": round(delete_s, 3), "deleted_chunks": removed}


def read_figures(path: Path, queries: np.ndarray, texts: list[str], nprobes: list[int], settings: Settings) -> dict:
    """In this (fresh) process: open as ``ragbot ask`` does, then search."""
    from ragbot.pipeline import RagPipeline

    t = time.perf_counter()
    store = IndexStore.load(path)
    open_s = time.perf_counter() - t
    out: dict = {"open_s": round(open_s, 3)}

    def dense(nprobe: int) -> dict:
        store.nprobe = nprobe
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            hits = store.search_dense(q[None], 10)[0]
            times.append(time.perf_counter() - t)
            found.append([int(c.id[1:]) for c, _ in hits])
        return {"p50_ms": round(1000 * float(np.median(times)), 2), "found": found}

    # first what a user's process does with the default settings (its peak memory is rss_gb), then the sweep
    sweep = {settings.nprobe: dense(settings.nprobe)}
    bm25 = []
    for text in texts:
        toks = bm25_tokens(text)
        t = time.perf_counter()
        store.search_bm25(toks, settings.bm25_k)
        bm25.append(time.perf_counter() - t)
    out["bm25_p50_ms"] = round(1000 * float(np.median(bm25)), 2)
    store.nprobe = settings.nprobe
    pipe = RagPipeline.from_settings(settings, with_llm=False, store=store)
    pipe.warm_up()
    pipe.retrieve(texts[0])
    hybrid, embed = [], []
    for text in texts:
        t = time.perf_counter()
        r = pipe.retrieve(text)
        hybrid.append(time.perf_counter() - t)
        embed.append(r.timings_ms.get("dense_ms", 0.0))
    out["hybrid_p50_ms"] = round(1000 * float(np.median(hybrid)), 2)
    out["hybrid_dense_incl_query_embedding_p50_ms"] = round(float(np.median(embed)), 2)
    out["rss_gb"] = peak_rss_gb()
    for nprobe in nprobes:
        if nprobe not in sweep:
            sweep[nprobe] = dense(nprobe)
    out["dense"] = {k: sweep[k] for k in sorted(sweep)}
    out["rss_gb_after_sweep"] = peak_rss_gb()
    return out


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that across exec,
    so a reader started by the big builder process would report the builder's peak."""
    with open("/proc/self/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kb / 2**20, 3)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(n: int, args: argparse.Namespace, src: Source) -> dict:
    path = Path(args.out) / f"scale-{n}"
    if path.exists():
        import shutil

        shutil.rmtree(path)
    ann = AnnParams(ann_min=args.ann_min, nprobe=args.nprobe)
    print(f"building {n:,} chunks at {path}", file=sys.stderr)
    built = build(src, n, path, ann, args.seed)
    truth = exact_top10(built["vectors"], built["queries"])
    # the data: the vectors and the chunk records (text, source, headings as JSON), what any store of them holds
    record = sum(len(json.dumps(c.to_dict(), ensure_ascii=False).encode()) for c in src.chunks) / len(src.chunks)
    data_bytes = built["vectors"].nbytes + int(record * n)
    rng = np.random.default_rng(3)
    texts = []
    for i in rng.integers(0, len(src.tokens), args.queries):
        toks = src.tokens[int(i)]
        k = int(rng.integers(3, 9))
        start = int(rng.integers(0, max(1, len(toks) - k)))
        texts.append("".join(toks[start:start + k]) or "模型")
    qfile = path.parent / f"queries-{n}.npz"
    np.savez(qfile, queries=built["queries"][: args.queries], texts=np.array(texts))
    cmd = [sys.executable, __file__, "--read", str(path), "--query-file", str(qfile), "--nprobe", str(args.nprobe),
           *sum((["--sweep", str(p)] for p in args.sweep), [])]
    reader = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                       env={**os.environ, "RAGBOT_INDEX_DIR": str(path)}).stdout)
    recall = {}
    for nprobe, res in reader["dense"].items():
        found = res.pop("found")
        recall[nprobe] = round(float(np.mean([len(set(t.tolist()) & set(f)) / 10
                                              for t, f in zip(truth[: args.queries], found)])), 4)
        res["recall_at_10"] = recall[nprobe]
    default = reader["dense"][str(args.nprobe)]
    written = writes(path, src, ann)
    disk = du(path)
    return {
        "chunks": n, "recall_at_10": default["recall_at_10"], "dense_p50_ms": default["p50_ms"],
        "bm25_p50_ms": reader["bm25_p50_ms"], "hybrid_p50_ms": reader["hybrid_p50_ms"],
        "add_100_s": written["add_100_s"], "delete_s": written["delete_s"], "open_s": reader["open_s"],
        "rss_gb": reader["rss_gb"], "rss_gb_after_sweep": reader.get("rss_gb_after_sweep"), "disk_gb": round(disk / 1e9, 3), "disk_over_data": round(disk / data_bytes, 3),
        "nprobe": args.nprobe, "nprobe_sweep": reader["dense"], "segments": built["segments"],
        "hybrid_dense_incl_query_embedding_p50_ms": reader["hybrid_dense_incl_query_embedding_p50_ms"],
        "build_s": round(built["build_s"], 1), "compact_s": round(built["compact_s"], 1),
        "vectors": {"real": len(src.vectors), "nn_dist_real_p10_p50_p90": built["nn_dist_real_p10_p50_p90"],
                    "nn_dist_synthetic_p10_p50_p90": built["nn_dist_synthetic_p10_p50_p90"]},
        "queries": args.queries,
    }


def compare_ann(src: Source, n: int, queries: int, seed: int) -> dict:
    """IVF-Flat (what ragbot uses) against HNSW-Flat on the same generated vectors: build time, index size,
    recall@10 against exact search and p50 per single query, each at a few search-time settings."""
    import faiss

    from ragbot.segments import ivf_index

    gen = Generator(src.vectors, seed)
    vecs = np.concatenate([src.vectors, gen.grow(n - len(src.vectors))[0]])
    qs = gen.queries(queries)
    truth = exact_top10(vecs, qs)
    fids = np.arange(n, dtype=np.int64)
    out: dict = {"chunks": n}

    def measure(index, knob: str, values: list[int]) -> dict:
        res = {}
        for v in values:
            faiss.ParameterSpace().set_index_parameter(index, knob, v)
            times, found = [], []
            for q in qs:
                t = time.perf_counter()
                _, ids = index.search(q[None], 10)
                times.append(time.perf_counter() - t)
                found.append(ids[0])
            recall = float(np.mean([len(set(t.tolist()) & set(f.tolist())) / 10 for t, f in zip(truth, found)]))
            res[v] = {"recall_at_10": round(recall, 4), "p50_ms": round(1000 * float(np.median(times)), 2)}
        return res

    t = time.perf_counter()
    ivf = ivf_index(vecs.shape[1], fids, vecs, AnnParams())
    out["ivf"] = {"build_s": round(time.perf_counter() - t, 1), "bytes": faiss.serialize_index(ivf).nbytes,
                  "nlist": ivf.nlist, "nprobe": measure(ivf, "nprobe", [16, 32, 64])}
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vecs.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(vecs)
    out["hnsw_m32"] = {"build_s": round(time.perf_counter() - t, 1), "bytes": faiss.serialize_index(hnsw).nbytes,
                       "efSearch": measure(hnsw, "efSearch", [32, 64, 128])}
    return out


def chart(results: list[dict], out: Path) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(10, 3.2))
    ns = [r["chunks"] for r in results]
    for ax, keys, title in zip(fig.subplots(1, 3),
                               (("dense_p50_ms", "bm25_p50_ms", "hybrid_p50_ms"), ("add_100_s", "delete_s", "open_s"),
                                ("rss_gb", "disk_gb")),
                               ("query p50 (ms)", "seconds", "GB")):
        for key in keys:
            ax.plot(ns, [r[key] for r in results], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.legend(fontsize=7)
    path = out / "scale.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", help="the real index whose embeddings and texts seed the scale index (default: <home>/index)")
    ap.add_argument("--chunks", type=int, action="append", help="index size (repeatable)")
    ap.add_argument("--curve", action="store_true", help="10k, 100k and 1M, with a chart")
    ap.add_argument("--out", default=None, help="where the scale indexes go (default: <home>/scale)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: the nprobe setting)")
    ap.add_argument("--sweep", type=int, action="append", default=None, help="also measure recall at this nprobe")
    ap.add_argument("--ann-min", type=int, default=None, help="default: the ann_min_chunks setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-ann", type=int, metavar="N", help="only: IVF vs HNSW on N generated vectors")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--read", help=argparse.SUPPRESS)
    ap.add_argument("--query-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = Settings.load()
    args.nprobe = args.nprobe or settings.nprobe
    args.ann_min = args.ann_min or settings.ann_min_chunks
    args.sweep = sorted(set(args.sweep or [8, 16, 32, 64, 128]) | {args.nprobe})
    if args.read:
        q = np.load(args.query_file)
        print(json.dumps(read_figures(Path(args.read), q["queries"], [str(t) for t in q["texts"]], args.sweep,
                                      settings)))
        return
    args.out = args.out or str(settings.home / "scale")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    src = Source(Path(args.index) if args.index else settings.index_path)
    if args.compare_ann:
        print(json.dumps(compare_ann(src, args.compare_ann, args.queries, args.seed)))
        return
    sizes = [10_000, 100_000, 1_000_000] if args.curve else (args.chunks or [100_000])
    results = []
    for n in sizes:
        results.append(run(n, args, src))
        print(json.dumps(results[-1]), file=sys.stderr)
    png = chart(results, Path(args.out)) if len(results) > 1 else None
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"curve": results, "chart": str(png) if png else None}))
    else:
        keys = ("chunks", "recall_at_10", "dense_p50_ms", "bm25_p50_ms", "hybrid_p50_ms", "add_100_s", "delete_s",
                "open_s", "rss_gb", "disk_gb", "disk_over_data")
        print(" | ".join(keys))
        for r in results:
            print(" | ".join(str(r[k]) for k in keys))
        if png:
            print(f"chart: {png}")


if __name__ == "__main__":
    main()
