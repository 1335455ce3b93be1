"""The Milvus store (ragbot/milvus.py) against Milvus Lite, a real engine embedded from PyPI: ingest, ask, change,
delete, roll back, compact."""

from __future__ import annotations

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from ingest.chunking import Chunker  # noqa: E402
from ingest.pipeline import IngestPipeline  # noqa: E402
from ragbot.errors import ConfigError, IndexMismatchError  # noqa: E402
from ragbot.kb import KnowledgeBase  # noqa: E402
from ragbot.milvus import MilvusStore, client  # noqa: E402
from ragbot.pipeline import RagPipeline  # noqa: E402
from ragbot.settings import Settings  # noqa: E402
from ragbot.store import IndexSpec, IndexStore, bm25_tokens  # noqa: E402
from ragbot.testing import FakeChatModel, FakeEmbedder  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def milvus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text("# LoRA\n\nLoRA 冻结预训练权重，只训练低秩矩阵 A 和 B，秩 r 常取 8。\n", encoding="utf-8")
    (docs / "adam.md").write_text("# Adam\n\nAdam 优化器的默认 beta1 为 0.9，beta2 为 0.999。\n", encoding="utf-8")
    settings = Settings(home=tmp_path / "home", store=f"milvus:{tmp_path / 'milvus.db'}", embedder="fake-embedder",
                        reranker="none", version_grace_s=0)
    return settings, docs


def ingest(settings, paths, **kw):
    return IngestPipeline.from_settings(settings, FakeEmbedder()).run(paths, settings.index_path, **kw)


def pipeline(settings):
    return RagPipeline.from_settings(settings, chat_model=FakeChatModel(), embedder=FakeEmbedder())


def test_ingest_ask_change_delete_rollback_and_compact(milvus):
    settings, docs = milvus
    report = ingest(settings, [docs])
    assert sorted(report.added) == ["adam.md", "lora.md"]
    store = IndexStore.load(settings.index_path)
    assert isinstance(store, MilvusStore) and len(store) == 2 == store.vector_count()
    assert not (settings.index_path / "segments").exists() or not any((settings.index_path / "segments").iterdir())

    pipe = pipeline(settings)
    hits = pipe.retrieve("Adam 的 beta2 默认是多少？", 2).final
    assert hits[0].chunk.source == "adam.md"
    assert [c.source for c, _ in pipe.store.search_bm25(bm25_tokens("低秩矩阵"), 5)][:1] == ["lora.md"]
    assert pipe.gate.run("RWKV 是什么？").refuse and not pipe.gate.run("LoRA 的秩取多少？").refuse
    answer = pipe.ask("LoRA 冻结什么？")
    assert not answer.refused and answer.passages

    (docs / "lora.md").write_text("# LoRA\n\nLoRA 的秩 r 现在常取 16，缩放系数 alpha 为 32。\n", encoding="utf-8")
    report = ingest(settings, [docs])
    assert report.changed == ("lora.md",) and report.unchanged == ("adam.md",)
    store = IndexStore.load(settings.index_path)
    texts = sorted(c.text for c in store.chunks.values())
    assert len(texts) == 2 and any("16" in t for t in texts) and not any("常取 8" in t for t in texts)
    assert len(store.dead) == 1, "the old chunk is a tombstone until compaction"

    kb = KnowledgeBase(settings, lambda s: FakeEmbedder())
    assert kb.delete([str((docs / "adam.md").resolve())]) == 1
    store = IndexStore.load(settings.index_path)
    assert [c.source for c in store.chunks.values()] == ["lora.md"]
    assert all(c.source != "adam.md" for c, _ in store.search_bm25(bm25_tokens("Adam 优化器"), 5))
    assert all(c.source != "adam.md" for c, _ in store.search_dense(FakeEmbedder().embed_query("Adam")[None], 5)[0])

    IndexStore.rollback(settings.index_path)  # back to before the deletion: Adam is visible again
    assert sorted(c.source for c in IndexStore.load(settings.index_path).chunks.values()) == ["adam.md", "lora.md"]
    IndexStore.rollback(settings.index_path, to=store.version)

    (path, compacted), = kb.compact()
    assert compacted.removed_rows_dropped == 2
    store = IndexStore.load(settings.index_path)
    assert not store.dead and len(store) == 1 == store.vector_count()
    c = client(store.uri)
    assert c.query(store.collection, filter="fid >= 0", output_fields=["count(*)"])[0]["count(*)"] == 1


def test_rows_a_crashed_writer_inserted_are_never_seen_and_never_reused(milvus, monkeypatch):
    """Killed after its version folder was written but before the pointer swap: that folder names the rows
    (it could be rolled back to), so the next writer numbers its rows above them and hides them; compaction
    deletes them from Milvus."""
    import ragbot.store as S

    settings, docs = milvus
    ingest(settings, [docs])
    (docs / "new.md").write_text("# 新\n\n梯度裁剪把梯度范数限制在阈值以内。\n", encoding="utf-8")
    monkeypatch.setattr(S, "_publish_pointer", lambda path, name: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # rows inserted, the manifest that counts them never published
        ingest(settings, [docs])
    monkeypatch.undo()
    store = IndexStore.load(settings.index_path)
    assert len(store) == 2 and all(c.source != "new.md" for c in store.chunks.values())
    assert all(c.source != "new.md" for c, _ in store.search_bm25(bm25_tokens("梯度裁剪"), 5))
    ingest(settings, [docs])
    store = IndexStore.load(settings.index_path)
    assert sorted(c.source for c in store.chunks.values()) == ["adam.md", "lora.md", "new.md"]
    assert len(store) == 3 == store.vector_count() and store.hidden

    def rows():
        return client(store.uri).query(store.collection, filter="fid >= 0", output_fields=["count(*)"])[0]["count(*)"]

    assert rows() == 4, "the crashed writer's row is hidden, not reused"
    store.compact(settings.index_path)
    assert rows() == 3 and len(IndexStore.load(settings.index_path)) == 3


def test_a_save_after_a_rollback_never_reuses_the_ids_of_the_version_rolled_back_from(milvus):
    settings, docs = milvus
    ingest(settings, [docs])
    v1 = IndexStore.current_version(settings.index_path)
    (docs / "b.md").write_text("# B\n\n批归一化对每个小批量做标准化。\n", encoding="utf-8")
    ingest(settings, [docs])
    v2 = IndexStore.current_version(settings.index_path)
    IndexStore.rollback(settings.index_path, to=v1)
    (docs / "c.md").write_text("# C\n\n残差连接让梯度直接流过。\n", encoding="utf-8")
    (docs / "b.md").unlink()
    ingest(settings, [docs])  # from v1: adds c.md
    IndexStore.rollback(settings.index_path, to=v2)  # what the CLI prints to undo a rollback
    sources = sorted(c.source for c in IndexStore.load(settings.index_path).chunks.values())
    assert sources == ["adam.md", "b.md", "lora.md"], "v2 sees its own rows, not c.md's"


def test_a_rebuild_writes_a_new_collection_and_drops_the_old_once_no_version_names_it(milvus):
    settings, docs = milvus
    ingest(settings, [docs])
    old = IndexStore.load(settings.index_path).collection
    ingest(settings.replace(keep_versions=0), [docs], rebuild=True)
    new = IndexStore.load(settings.index_path).collection
    assert new != old and old not in client(IndexStore.load(settings.index_path).uri).list_collections()
    assert len(IndexStore.load(settings.index_path)) == 2


def test_switching_the_store_setting_on_an_existing_index_says_rebuild(milvus):
    settings, docs = milvus
    ingest(settings, [docs])
    with pytest.raises(IndexMismatchError, match="in Milvus.*'local'.*--rebuild"):
        ingest(settings.replace(store="local"), [docs])


@pytest.mark.parametrize("bad", ["milvus:", "milvus://", "postgres://x", ""])
def test_a_bad_store_setting_names_the_forms(bad):
    with pytest.raises(ConfigError, match=r"store .*local.*milvus:PATH\.db.*milvus://HOST:PORT"):
        Settings(store=bad)


def test_export_copies_a_local_index_into_milvus_without_embedding_again(milvus, tmp_path):
    from ragbot import milvus as M

    settings, docs = milvus
    local = settings.replace(store="local", index_dir=tmp_path / "local")
    ingest(local, [docs])
    source = IndexStore.load(local.index_path)
    source.drop_file(str((docs / "adam.md").resolve()))  # a tombstone is not exported
    source.save(local.index_path)
    source = IndexStore.load(local.index_path)
    out = tmp_path / "exported"
    M.export(source, settings.store, out, batch=1)
    target = IndexStore.load(out)
    assert isinstance(target, MilvusStore) and dict(target.chunks.items()) == dict(source.chunks.items())
    assert target.manifest.files == source.manifest.files
    q = FakeEmbedder().embed_query("LoRA 低秩")[None]
    assert [(c.id, round(s, 4)) for c, s in target.search_dense(q, 3)[0]] == \
        [(c.id, round(s, 4)) for c, s in source.search_dense(q, 3)[0]]
    assert target.gate_text().split() and "lora" in target.gate_text()


def test_indexes_sharing_one_milvus_drop_only_their_own_collections(milvus, tmp_path):
    """Two index folders (say two containers, or a folder moved and a new one made at its path) on one Milvus:
    rebuilding one never touches the other's collection."""
    settings, docs = milvus
    other = settings.replace(index_dir=tmp_path / "other")
    ingest(settings, [docs])
    ingest(other, [docs])
    theirs = IndexStore.load(other.index_path).collection
    ingest(settings.replace(keep_versions=0), [docs], rebuild=True)
    assert theirs in client(IndexStore.load(other.index_path).uri).list_collections()
    store = IndexStore.load(other.index_path)
    assert len(store.search_dense(FakeEmbedder().embed_query("Adam")[None], 2)[0]) == 2


def test_undecodable_file_names_and_an_interrupted_export(milvus, tmp_path, monkeypatch):
    from ragbot import milvus as M
    from ragbot.store import FileRecord
    from ragbot.types import Chunk

    settings, _ = milvus
    odd = str(tmp_path) + "/\udcb2\udce2.md"  # how Python spells a GBK-named file on a UTF-8 system
    local = IndexStore.empty(IndexSpec("fake-embedder", 64, {}))
    chunks = [Chunk(f"k{i}", odd, f"文本 {i}", "\\xb2\\xe2.md") for i in range(3)]
    local.add(chunks, FakeEmbedder().embed_documents([c.text for c in chunks]), [[c.text] for c in chunks])
    local.set_file(FileRecord(odd, "\\xb2\\xe2.md", "h", 1, tuple(c.id for c in chunks), 0.0))
    local.save(tmp_path / "local")
    out = tmp_path / "exported"
    real = M.MilvusStore._insert_pending
    calls = {"n": 0}

    def dies_after_one(self, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(M.MilvusStore, "_insert_pending", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        M.export(IndexStore.load(tmp_path / "local"), settings.store, out, batch=2)
    monkeypatch.undo()
    assert not IndexStore.exists(out), "nothing half-exported is published"
    target = M.export(IndexStore.load(tmp_path / "local"), settings.store, out, batch=2)
    loaded = IndexStore.load(out)
    assert odd in loaded.manifest.files and sorted(loaded.chunks) == ["k0", "k1", "k2"]
    assert loaded.chunks["k1"].doc_id == odd
    assert [c for c in client(target.uri).list_collections() if c in M._owned(out).get(target.uri, [])] == \
        [target.collection], "the interrupted export's collection was dropped"


def test_a_lite_file_another_process_holds_is_one_line_that_says_what_to_do(milvus, tmp_path):
    import subprocess
    import sys

    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pymilvus import MilvusClient\n"
        f"c = MilvusClient({str(db)!r}); print('open', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConfigError, match="one process at a time") as e:
            client(str(db))
        assert "\n" not in str(e.value)
    finally:
        holder.kill()
        holder.wait()
