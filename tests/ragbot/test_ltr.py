import numpy as np
import pytest

from ragbot.testing import FakeEmbedder
from ragbot.ltr import FEATURES, FeatureExtractor, LTRModel, LTRReranker, fit
from ragbot.retrieval import BM25Retriever, DenseRetriever, HybridRetriever
from ragbot.store import IndexSpec, IndexStore, bm25_tokens
from ragbot.types import Chunk

TEXTS = {
    "dpr": ("术语表 > D", "DPR - 密集段落检索。DPO - 直接偏好优化。"),
    "gloss": ("术语表", "术语表收录了常见术语的解释，术语表按字母排序。"),
    "lora": ("微调 > LoRA", "LoRA 冻结预训练权重，只训练低秩矩阵。"),
}


@pytest.fixture
def store():
    emb = FakeEmbedder()
    s = IndexStore.empty(IndexSpec(emb.name, emb.dim, {}))
    chunks = [Chunk(k, "d", t, "g.md", heading_path=tuple(h.split(" > "))) for k, (h, t) in TEXTS.items()]
    s.add(chunks, emb.embed_documents([c.embedding_text() for c in chunks]), [bm25_tokens(c.embedding_text()) for c in chunks])
    return s


def retrieval(store, q):
    return HybridRetriever(DenseRetriever(store, FakeEmbedder()), BM25Retriever(store), dense_k=3, bm25_k=3).run(q, 3)


def test_features_describe_each_candidate(store):
    r = retrieval(store, "术语表里 DPR 指的是什么？")
    x = FeatureExtractor(store).run(r, r.fused)
    assert x.shape == (3, len(FEATURES))
    row = {c.chunk.id: dict(zip(FEATURES, vals)) for c, vals in zip(r.fused, x)}
    assert row["dpr"]["key_term_coverage"] == 1.0 and row["gloss"]["key_term_coverage"] == 0.0
    assert row["gloss"]["heading_coverage"] > 0 and row["lora"]["idf_coverage"] < row["dpr"]["idf_coverage"]
    assert all(0 <= v["bm25_rel"] <= 1 for v in row.values())


def test_fit_learns_the_informative_feature_and_reranks(store, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(FEATURES)))
    y = (x[:, FEATURES.index("key_term_coverage")] > 0.5).astype(int)
    model = fit(x, y)
    assert np.argmax(np.abs(model.weights)) == FEATURES.index("key_term_coverage")
    path = tmp_path / "ltr.json"
    model.save(path, note="test")
    assert LTRModel.load(path) == model
    r = retrieval(store, "术语表里 DPR 指的是什么？")
    ranked = LTRReranker(store, path).rerank(r, 2)
    assert ranked[0].chunk.id == "dpr" and ranked[0].stage == "rerank" and len(ranked) == 2


def test_a_model_for_other_features_is_refused(tmp_path):
    path = tmp_path / "old.json"
    path.write_text('{"features": ["rrf"], "weights": [1], "bias": 0, "mean": [0], "scale": [1]}')
    with pytest.raises(ValueError, match="retrain it"):
        LTRModel.load(path)
