import pytest

from ragbot.testing import FakeEmbedder
from ragbot.retrieval import BM25Retriever, DenseRetriever, HybridRetriever, reciprocal_rank_fusion
from ragbot.store import IndexSpec, IndexStore, bm25_tokens
from ragbot.types import Chunk, ScoredChunk


def sc(cid, score=0.0, stage="dense"):
    return ScoredChunk(Chunk(cid, "d", cid, "s"), score, stage)


def test_rrf_sums_reciprocal_ranks():
    fused = reciprocal_rank_fusion([[sc("a"), sc("b"), sc("c")], [sc("c"), sc("a")]], k=60)
    assert [h.chunk.id for h in fused] == ["a", "c", "b"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2].score == pytest.approx(1 / 62)
    assert {h.stage for h in fused} == {"fused"}


def test_rrf_ties_keep_first_seen_order_and_empty_lists_are_fine():
    fused = reciprocal_rank_fusion([[sc("x")], [sc("y")], []])
    assert [h.chunk.id for h in fused] == ["x", "y"]
    assert reciprocal_rank_fusion([[], []]) == []


TEXTS = {
    "relu": "ReLU 激活函数把负数置零，计算简单，缓解梯度消失。",
    "adam": "Adam 优化器结合动量与自适应学习率，默认 beta1 为 0.9。",
    "lora": "LoRA 冻结预训练权重，只训练两个低秩矩阵 A 和 B。",
    "bm25": "BM25 是一种基于词频和逆文档频率的稀疏检索打分函数。",
}


@pytest.fixture
def store():
    emb = FakeEmbedder()
    s = IndexStore.empty(IndexSpec(emb.name, emb.dim, {}))
    chunks = [Chunk(k, "d", v, "s.md") for k, v in TEXTS.items()]
    s.add(chunks, emb.embed_documents([c.text for c in chunks]), [bm25_tokens(c.text) for c in chunks])
    return s


def test_bm25_tokens_are_jieba_words_without_punctuation():
    toks = bm25_tokens("大语言模型（LLM）的微调，Adam！")
    assert "llm" in toks and "adam" in toks and "模型" in toks and "微调" in toks
    assert not any(t in ("（", "，", "！", "的 ") for t in toks)


def test_bm25_finds_exact_terms(store):
    hits = BM25Retriever(store).run("LoRA 训练哪些矩阵？", 3)
    assert hits[0].chunk.id == "lora" and hits[0].stage == "bm25"
    assert BM25Retriever(store).run("量子色动力学", 3) == []


def test_dense_returns_at_most_the_corpus(store):
    hits = DenseRetriever(store, FakeEmbedder()).run("Adam 优化器", 10)
    assert len(hits) == 4 and hits[0].chunk.id == "adam"
    assert hits[0].score >= hits[-1].score


def test_hybrid_keeps_every_stage(store):
    hybrid = HybridRetriever(DenseRetriever(store, FakeEmbedder()), BM25Retriever(store), dense_k=4, bm25_k=4)
    result = hybrid.run("BM25 打分函数", 2)
    assert len(result.fused) == 2 and result.fused[0].chunk.id == "bm25"
    assert result.dense and result.bm25 and "dense_ms" in result.timings_ms and "bm25_ms" in result.timings_ms
    assert result.final == result.fused


def test_dense_only_when_bm25_is_off(store):
    hybrid = HybridRetriever(DenseRetriever(store, FakeEmbedder()), None)
    result = hybrid.run("ReLU", 2)
    assert result.bm25 == () and [h.stage for h in result.fused] == ["fused", "fused"]
