import pytest

from ragbot.testing import FakeEmbedder
from ingest.chunking import Chunker
from ingest.pipeline import IngestPipeline
from ragbot.errors import IndexMismatchError, UnsafePublishError
from ragbot.store import IndexStore


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# 激活函数\n\nReLU 把负数置零，计算简单。\n", encoding="utf-8")
    (d / "b.txt").write_text("Adam 优化器结合了动量和自适应学习率。", encoding="utf-8")
    return d


def run(embedder, corpus, index, **kw):
    paths = corpus if isinstance(corpus, list) else [corpus]
    return IngestPipeline(embedder, Chunker(200, 20), version_grace_s=0).run(paths, index, **kw)


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


# ---- nothing a user does loses the knowledge base ----------------------------------------------------


def _consistent(store):
    listed = [c for r in store.manifest.files.values() for c in r.chunk_ids]
    return store.vector_count() == len(store) == len(listed) == len(set(listed))


def test_the_same_file_twice_in_one_run_is_one_record(tmp_path, corpus):
    idx = tmp_path / "idx"
    report = run(FakeEmbedder(), [corpus, corpus / "a.md", corpus / "." / "a.md"], idx)
    assert sorted(report.added) == ["a.md", "b.txt"] and report.files_seen == 2
    store = IndexStore.load(idx)
    assert len(store.manifest.files) == 2 and _consistent(store)
    q = FakeEmbedder().embed_query("ReLU 把负数置零")[None]
    assert store.search_dense(q, 10)[0], "search over the document works (was KeyError before)"
    doc_id = str((corpus / "a.md").resolve())
    store.drop_file(doc_id)
    assert store.vector_count() == len(store) == 1
    store.drop_file(str((corpus / "b.txt").resolve()))
    assert store.vector_count() == 0, "deleting leaves no vector behind"


def test_a_symlink_alias_is_the_same_file(tmp_path, corpus):
    (corpus / "link.md").symlink_to(corpus / "a.md")
    idx = tmp_path / "idx"
    report = run(FakeEmbedder(), [corpus], idx)
    assert sorted(report.added) == ["a.md", "b.txt"] and not report.duplicates
    store = IndexStore.load(idx)
    assert len(store.manifest.files) == 2 and _consistent(store)
    assert run(FakeEmbedder(), [corpus], idx).unchanged


def test_identical_content_under_two_names_is_indexed_once_and_both_names_listed(tmp_path, corpus):
    (corpus / "copy.md").write_bytes((corpus / "a.md").read_bytes())
    idx = tmp_path / "idx"
    report = run(FakeEmbedder(), corpus, idx)
    assert report.duplicates == (("copy.md", "a.md"),) and "DUPLICATE copy.md" in report.summary()
    store = IndexStore.load(idx)
    record = store.manifest.files[str((corpus / "a.md").resolve())]
    assert record.aliases == {str((corpus / "copy.md").resolve()): "copy.md"}
    assert len(store) == 2 and _consistent(store)
    again = run(FakeEmbedder(), corpus, idx)
    assert sorted(again.unchanged) == ["a.md", "b.txt", "copy.md"] and not again.added
    # the copy diverges: it becomes a file of its own, the original loses the alias
    (corpus / "copy.md").write_text("# 拷贝\n\n现在内容不同了。\n", encoding="utf-8")
    report = run(FakeEmbedder(), corpus, idx)
    assert report.added == ("copy.md",)
    store = IndexStore.load(idx)
    assert store.manifest.files[str((corpus / "a.md").resolve())].aliases == {} and _consistent(store)


def test_when_the_indexed_copy_goes_its_alias_is_indexed_on_its_own(tmp_path, corpus):
    (corpus / "copy.md").write_bytes((corpus / "a.md").read_bytes())
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "a.md").unlink()
    report = run(FakeEmbedder(), corpus, idx, prune=True)
    assert report.removed == ("a.md",)
    store = IndexStore.load(idx)
    assert set(store.manifest.files) == {str((corpus / n).resolve()) for n in ("b.txt", "copy.md")}
    assert any("ReLU" in c.text and c.source == "copy.md" for c in store.chunks.values()) and _consistent(store)


def test_an_alias_whose_original_changes_keeps_its_content(tmp_path, corpus):
    (corpus / "copy.md").write_bytes((corpus / "a.md").read_bytes())
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "a.md").write_text("# 激活函数\n\nGELU 更平滑。\n", encoding="utf-8")
    run(FakeEmbedder(), corpus, idx)
    store = IndexStore.load(idx)
    texts = {c.source: c.text for c in store.chunks.values()}
    assert "GELU" in texts["a.md"] and "ReLU" in texts["copy.md"] and _consistent(store)


def test_a_non_utf8_file_name_is_ingested_beside_good_files(tmp_path, corpus):
    import os

    raw = os.path.join(os.fsencode(str(corpus)), "测试".encode("gbk") + b".md")
    with open(raw, "wb") as f:
        f.write("# 标题\n\n注意力机制。\n".encode())
    idx = tmp_path / "idx"
    report = run(FakeEmbedder(), corpus, idx)
    assert len(report.added) == 3 and not report.failed
    report.summary().encode("utf-8")  # printable: the odd name is shown escaped
    store = IndexStore.load(idx)
    assert len(store.manifest.files) == 3 and _consistent(store)
    assert run(FakeEmbedder(), corpus, idx).unchanged, "and a re-run finds it unchanged"


def test_an_unexpected_error_in_one_file_is_reported_and_the_rest_go_on(tmp_path, corpus, monkeypatch):
    from ingest.loaders import DocumentLoader

    real = DocumentLoader.run

    def flaky(self, path, root=None):
        if path.name == "a.md":
            raise RuntimeError("parser exploded")
        return real(self, path, root)

    monkeypatch.setattr(DocumentLoader, "run", flaky)
    report = run(FakeEmbedder(), corpus, tmp_path / "idx")
    assert report.added == ("b.txt",)
    assert [f.reason for f in report.failed] == ["could not be read (RuntimeError: parser exploded)"]


def test_an_error_while_splitting_one_file_is_reported(tmp_path, corpus, monkeypatch):
    real = Chunker.run

    def flaky(self, doc):
        if doc.source == "b.txt":
            raise MemoryError("too big")
        return real(self, doc)

    monkeypatch.setattr(Chunker, "run", flaky)
    report = run(FakeEmbedder(), corpus, tmp_path / "idx")
    assert report.added == ("a.md",) and "could not be split (MemoryError" in report.failed[0].reason


@pytest.mark.parametrize("case", ["empty-dir", "missing-dir", "all-fail"])
def test_a_rebuild_that_would_drop_every_file_is_refused(tmp_path, corpus, case):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    before = (idx / "CURRENT").read_text()
    target = tmp_path / "empty"
    if case == "empty-dir":
        target.mkdir()
    elif case == "all-fail":
        for f in corpus.iterdir():
            f.write_bytes(b"")
        target = corpus
    with pytest.raises(UnsafePublishError, match=r"drop 2 of 2 indexed files .*--force") as e:
        run(FakeEmbedder(), target, idx, rebuild=True)
    reasons = {r for _, r in e.value.dropped}
    assert reasons == ({"failed to load: is empty"} if case == "all-fail" else {"not found"})
    assert (idx / "CURRENT").read_text() == before and len(IndexStore.load(idx)) == 2


def test_a_prune_over_a_folder_whose_files_all_fail_is_refused(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    before = (idx / "CURRENT").read_text()
    for f in corpus.iterdir():
        f.write_bytes(b"\x00\x01\x02 binary now")
    # a changed file that fails to load keeps its old chunks; prune must not remove files that only failed
    report = run(FakeEmbedder(), corpus, idx, prune=True)
    assert not report.removed and (idx / "CURRENT").read_text() == before
    for f in list(corpus.iterdir()):
        f.unlink()
    with pytest.raises(UnsafePublishError, match="drop 2 of 2"):
        run(FakeEmbedder(), corpus, idx, prune=True)
    assert (idx / "CURRENT").read_text() == before


def test_dropping_more_than_half_needs_force_and_less_does_not(tmp_path, corpus):
    for n in ("c", "d"):
        (corpus / f"{n}.md").write_text(f"# {n}\n\n内容 {n}。\n", encoding="utf-8")
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (corpus / "d.md").unlink()
    assert run(FakeEmbedder(), corpus, idx, prune=True).removed == ("d.md",)  # 1 of 4: fine
    for n in ("b.txt", "c.md"):
        (corpus / n).unlink()
    with pytest.raises(UnsafePublishError, match="drop 2 of 3"):
        run(FakeEmbedder(), corpus, idx, prune=True)
    report = run(FakeEmbedder(), corpus, idx, prune=True, force=True)
    assert sorted(report.removed) == ["b.txt", "c.md"] and len(IndexStore.load(idx).manifest.files) == 1


def test_a_forced_empty_rebuild_can_be_rolled_back(tmp_path, corpus):
    idx = tmp_path / "idx"
    run(FakeEmbedder(), corpus, idx)
    (tmp_path / "empty").mkdir()
    run(FakeEmbedder(), tmp_path / "empty", idx, rebuild=True, force=True)
    assert len(IndexStore.load(idx)) == 0
    IndexStore.rollback(idx)
    assert len(IndexStore.load(idx)) == 2


def test_chunk_ids_carry_64_bits_of_path_hash(tmp_path, corpus):
    run(FakeEmbedder(), corpus, tmp_path / "idx")
    for cid in IndexStore.load(tmp_path / "idx").chunks:
        key = cid.rsplit("-", 1)[0]
        assert len(key) == 16 and int(key, 16) >= 0


def test_a_20_mb_single_line_file_is_ingested_within_a_memory_and_time_bound(tmp_path, corpus):
    """Measured in a fresh process (peak RSS is per process): without the line cut, splitting and tokenising
    20 M characters took minutes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    (corpus / "huge.txt").write_text("注意力机制" * 4_000_000, encoding="utf-8")  # 20 M characters, one line
    code = (
        "import json, resource, sys, time; sys.path.insert(0, sys.argv[3])\n"
        "from ragbot.testing import FakeEmbedder; from ingest.chunking import Chunker; from ingest.pipeline import IngestPipeline\n"
        "t = time.perf_counter()\n"
        "r = IngestPipeline(FakeEmbedder(), Chunker(200, 20)).run([sys.argv[1]], sys.argv[2])\n"
        "print(json.dumps({'s': time.perf_counter() - t, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'added': r.added, 'notes': [n.reason for n in r.notes]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "idx"), str(Path(__file__).parents[1])],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["s"] < 60 and result["rss_mb"] < 1500, result
    assert "huge.txt" in result["added"] and any("cut at 20,000 characters" in n for n in result["notes"])


def test_an_interrupted_ingest_resumes_where_it_stopped(tmp_path):
    """A version is published every batch_files files: a crash loses at most the batch in flight, and the re-run
    embeds only the files not published yet; the result equals one uninterrupted run."""
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i:02d}.md").write_text(f"# 第{i}篇\n\n第 {i} 篇文档讲 topic{i} 的内容。\n", encoding="utf-8")

    class Crashing(FakeEmbedder):
        def embed_documents(self, texts, **kw):
            if self.calls == 2:  # the third batch: the process dies here
                raise KeyboardInterrupt
            return super().embed_documents(texts, **kw)

    def pipeline(emb):
        return IngestPipeline(emb, Chunker(200, 20), version_grace_s=0, batch_files=3)

    idx = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        pipeline(Crashing()).run([docs], idx)
    assert len(IndexStore.load(idx).manifest.files) == 6, "two batches of three files were published"
    emb = FakeEmbedder()
    report = pipeline(emb).run([docs], idx)
    assert len(report.unchanged) == 6 and len(report.added) == 4
    assert sorted(t.split("\n")[0] for t in emb.embedded) == [f"第{i}篇" for i in range(6, 10)]
    once = tmp_path / "once"
    pipeline(FakeEmbedder()).run([docs], once)
    a, b = IndexStore.load(idx), IndexStore.load(once)
    assert sorted(c.text for c in a.chunks.values()) == sorted(c.text for c in b.chunks.values())
    assert len(a.segments) == 4 and len(a) == len(b) == 10
