import pytest

from fakes import FakeEmbedder
from ingest.chunking import Chunker
from ingest.pipeline import IngestPipeline
from ragbot.errors import IndexMismatchError
from ragbot.store import IndexStore


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# 激活函数\n\nReLU 把负数置零，计算简单。\n", encoding="utf-8")
    (d / "b.txt").write_text("Adam 优化器结合了动量和自适应学习率。", encoding="utf-8")
    return d


def run(embedder, corpus, index, **kw):
    return IngestPipeline(embedder, Chunker(200, 20)).run([corpus], index, **kw)


def test_first_ingest_indexes_every_file(tmp_path, corpus):
    report = run(FakeEmbedder(), corpus, tmp_path / "idx")
    assert sorted(report.added) == ["a.md", "b.txt"]
    assert report.ok and report.chunks_total == 2
    store = IndexStore.load(tmp_path / "idx")
    assert len(store) == 2 and set(store.manifest.files) == {str((corpus / n).resolve()) for n in ("a.md", "b.txt")}
    assert store.manifest.spec.embedder == "fake-embedder" and store.manifest.spec.chunking["chunk_size"] == 200
    for key in ("load+chunk", "embed", "index", "total"):
        assert key in report.seconds


def test_rerun_embeds_only_new_and_changed_files(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "a.md").write_text("# 激活函数\n\nGELU 在 Transformer 中很常见。\n", encoding="utf-8")
    (corpus / "c.md").write_text("# 新文件\n\n学习率预热。\n", encoding="utf-8")
    emb = FakeEmbedder()
    report = run(emb, corpus, idx)
    assert report.changed == ("a.md",) and report.added == ("c.md",) and report.unchanged == ("b.txt",)
    assert all("Adam" not in t for t in emb.embedded), "unchanged file was not re-embedded"
    store = IndexStore.load(idx)
    texts = [c.text for c in store.chunks.values()]
    assert not any("ReLU" in t for t in texts), "old chunks of the changed file are gone"
    assert any("GELU" in t for t in texts)
    hits = store.search_bm25(["gelu"], 5)
    assert hits and "GELU" in hits[0][0].text, "BM25 was rebuilt with the new chunk"


def test_unchanged_rerun_writes_nothing(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    before = (idx / "CURRENT").read_text()
    emb = FakeEmbedder()
    report = run(emb, corpus, idx)
    assert report.unchanged and not report.added and emb.embedded == []
    assert (idx / "CURRENT").read_text() == before


def test_deleted_files_are_removed_only_with_prune(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "b.txt").unlink()
    run(FakeEmbedder(), corpus, idx)
    assert len(IndexStore.load(idx).manifest.files) == 2
    report = run(FakeEmbedder(), corpus, idx, prune=True)
    assert report.removed == ("b.txt",)
    store = IndexStore.load(idx)
    assert len(store.manifest.files) == 1 and not any("Adam" in c.text for c in store.chunks.values())
    assert not store.search_bm25(["adam"], 5)
    assert len(store.search_dense(FakeEmbedder().embed_query("Adam")[None], 10)[0]) == 1


def test_bad_files_are_reported_and_the_rest_ingested(tmp_path, corpus):
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "junk.pdf").write_bytes(b"not a pdf at all")
    report = run(FakeEmbedder(), corpus, tmp_path / "idx")
    assert report.ok
    assert {f.path.split("/")[-1] for f in report.failed} == {"empty.txt", "junk.pdf"}
    assert "empty.txt" in report.summary() and "FAILED" in report.summary()


def test_nothing_ingestable_is_not_ok(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "empty.md").write_text("")
    report = run(FakeEmbedder(), d, tmp_path / "idx")
    assert not report.ok and len(report.failed) == 1
    assert not IndexStore.exists(tmp_path / "idx")


def test_other_embedder_or_chunking_is_refused_until_rebuild(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    with pytest.raises(IndexMismatchError, match="embedder 'fake-embedder' .*'other'.*--rebuild"):
        run(FakeEmbedder(name="other"), corpus, idx)
    with pytest.raises(IndexMismatchError, match="chunk_size 200 \\(index\\) vs 300 \\(now\\)"):
        IngestPipeline(FakeEmbedder(), Chunker(300, 20)).run([corpus], idx)
    report = run(FakeEmbedder(name="other"), corpus, idx, rebuild=True)
    assert len(report.added) == 2
    assert IndexStore.load(idx).manifest.spec.embedder == "other"


def test_a_crash_while_saving_leaves_the_old_index(tmp_path, corpus, monkeypatch):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "c.md").write_text("# 新\n\n新内容。", encoding="utf-8")
    import faiss

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        run(FakeEmbedder(), corpus, idx)
    monkeypatch.undo()
    store = IndexStore.load(idx)
    assert len(store.manifest.files) == 2
    assert [p.name for p in idx.iterdir() if p.name.startswith(".tmp")] == []
