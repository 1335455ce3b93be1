import numpy as np
import pytest

from fakes import FakeEmbedder
from ragbot.errors import IndexMismatchError, IndexNotFoundError
from ragbot.store import FileRecord, IndexSpec, IndexStore, Manifest, bm25_tokens
from ragbot.types import Chunk


def make_store(n=5):
    emb = FakeEmbedder()
    store = IndexStore.empty(IndexSpec(emb.name, emb.dim, {"chunk_size": 100}))
    chunks = [Chunk(f"c{i}", f"doc{i % 2}", f"第{i}号文本，关于主题{i}。", "s.md", page=i, heading_path=("H", str(i)))
              for i in range(n)]
    store.add(chunks, emb.embed_documents([c.text for c in chunks]), [bm25_tokens(c.text) for c in chunks])
    for d in ("doc0", "doc1"):
        store.set_file(FileRecord(d, d, "sha", 1, tuple(c.id for c in chunks if c.doc_id == d), 0.0))
    return store, emb


def test_save_and_load_round_trip(tmp_path):
    store, emb = make_store()
    store.save(tmp_path)
    loaded = IndexStore.load(tmp_path, expect=store.manifest.spec)
    assert loaded.chunks == store.chunks
    assert loaded.manifest == store.manifest
    q = emb.embed_query("第3号文本")[None]
    assert [c.id for c, _ in loaded.search_dense(q, 2)[0]] == [c.id for c, _ in store.search_dense(q, 2)[0]]
    assert loaded.search_bm25(["主题"], 5)


def test_only_one_version_folder_remains(tmp_path):
    store, _ = make_store()
    store.save(tmp_path)
    store.save(tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("v-")]) == 1


def test_drop_file_removes_from_every_index(tmp_path):
    store, emb = make_store()
    removed = store.drop_file("doc0")
    assert removed == 3 and set(store.chunks) == {"c1", "c3"}
    assert store.dense.ntotal == 2
    assert {c.id for c, _ in store.search_bm25(bm25_tokens("主题"), 10)} == {"c1", "c3"}
    store.save(tmp_path)
    assert set(IndexStore.load(tmp_path).chunks) == {"c1", "c3"}


def test_load_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexNotFoundError, match="ragbot ingest"):
        IndexStore.load(tmp_path / "none")


def test_load_with_other_spec_says_reingest(tmp_path):
    store, _ = make_store()
    store.save(tmp_path)
    with pytest.raises(IndexMismatchError, match=r"embedding dimension 64 \(index\) vs 32 \(now\).*--rebuild"):
        IndexStore.load(tmp_path, expect=IndexSpec("fake-embedder", 32, {"chunk_size": 100}))


def test_manifest_json_round_trip():
    m = Manifest(IndexSpec("e", 3, {"a": 1}), {"x": FileRecord("x", "x.md", "h", 3, ("c1",), 1.0, "markdown", "utf-8")},
                 5, 1.0, 2.0)
    assert Manifest.from_json(m.to_json()) == m


def test_add_checks_lengths():
    store, _ = make_store(1)
    with pytest.raises(ValueError, match="must match"):
        store.add([Chunk("z", "d", "t", "s")], np.zeros((2, 64), np.float32), [["t"]])
