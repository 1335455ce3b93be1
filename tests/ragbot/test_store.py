import numpy as np
import pytest

from ragbot.testing import FakeEmbedder
from ragbot.errors import IndexCorruptError, IndexLockedError, IndexMismatchError, IndexNotFoundError
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


def test_superseded_versions_beyond_keep_are_removed_after_the_grace_period(tmp_path):
    store, _ = make_store()
    names = [store.save(tmp_path, keep=2, grace_s=0).name for _ in range(5)]
    assert IndexStore.version_names(tmp_path) == names[-3:], "the live version and the two before it stay"
    store.save(tmp_path, keep=2, grace_s=3600)
    assert len(IndexStore.version_names(tmp_path)) == 4, "nothing superseded within the grace period is removed"


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


# ---- data safety: duplicates, consistency, fallback, rollback, readers, durability, locks ----------------


def test_add_refuses_a_chunk_id_it_already_holds():
    store, emb = make_store(2)
    again = [Chunk("c1", "doc1", "again", "s.md")]
    with pytest.raises(ValueError, match="'c1' is already in the index"):
        store.add(again, emb.embed_documents(["again"]), [["again"]])
    twice = [Chunk("n", "d", "x", "s.md"), Chunk("n", "d", "y", "s.md")]
    with pytest.raises(ValueError, match="'n'"):
        store.add(twice, emb.embed_documents(["x", "y"]), [["x"], ["y"]])
    assert store.dense.ntotal == len(store) == 2


def test_load_refuses_vectors_out_of_step_with_chunks_and_says_rebuild(tmp_path):
    store, emb = make_store()
    store.dense.add_with_ids(emb.embed_documents(["orphan"]), np.array([99], dtype=np.int64))  # a vector, no chunk
    store.save(tmp_path)
    with pytest.raises(IndexCorruptError, match=r"6 vectors for 5 chunks.*--rebuild"):
        IndexStore.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate-manifest", "truncate-chunks", "garbage-faiss", "delete-chunks"])
def test_a_damaged_live_version_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    store, _ = make_store()
    store.save(tmp_path, grace_s=0)
    good = IndexStore.current_version(tmp_path)
    store.drop_file("doc0")
    live = store.save(tmp_path, grace_s=0)
    target = {"truncate-manifest": "manifest.json", "truncate-chunks": "chunks.jsonl", "garbage-faiss": "dense.faiss",
              "delete-chunks": "chunks.jsonl"}[damage]
    if damage == "delete-chunks":
        (live / target).unlink()
    elif damage == "garbage-faiss":
        (live / target).write_bytes(b"not a faiss index")
    else:
        data = (live / target).read_bytes()
        (live / target).write_bytes(data[: len(data) // 2])
    loaded = IndexStore.load(tmp_path)
    assert loaded.version == good and len(loaded) == 5
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "\n" not in warning[0] and live.name in warning[0] and good in warning[0]


def test_no_readable_version_gives_one_line_that_says_rebuild(tmp_path):
    store, _ = make_store()
    live = store.save(tmp_path)
    (live / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="rebuild") as e:
        IndexStore.load(tmp_path)
    assert "\n" not in str(e.value)


def test_rollback_brings_back_the_previous_version(tmp_path):
    store, _ = make_store()
    store.save(tmp_path)
    first = IndexStore.current_version(tmp_path)
    store.drop_file("doc0")
    store.drop_file("doc1")
    store.save(tmp_path)
    assert len(IndexStore.load(tmp_path)) == 0
    info = IndexStore.rollback(tmp_path)
    assert info.name == first and IndexStore.current_version(tmp_path) == first
    assert len(IndexStore.load(tmp_path)) == 5
    listed = IndexStore.versions(tmp_path)
    assert [v.current for v in listed] == [False, True] and listed[1].chunks == 5


def test_rollback_with_nothing_earlier_says_so(tmp_path):
    store, _ = make_store()
    store.save(tmp_path)
    with pytest.raises(IndexNotFoundError, match="no earlier readable version"):
        IndexStore.rollback(tmp_path)
    with pytest.raises(IndexNotFoundError, match="no version 'v-1'"):
        IndexStore.rollback(tmp_path, to="v-1")


def test_a_reader_between_opening_and_reading_survives_saves(tmp_path, monkeypatch):
    """The reader has chosen its version and holds its lock; a writer publishes (and prunes) meanwhile."""
    store, _ = make_store()
    store.save(tmp_path, grace_s=0)
    opened = IndexStore.current_version(tmp_path)
    real_read = IndexStore._read_version.__func__
    writes = []

    def paused_read(cls, version):
        if not writes:  # while this reader is paused, three more versions are published with keep=0
            for _ in range(3):
                writes.append(store.save(tmp_path, keep=0, grace_s=0).name)
        return real_read(cls, version)

    monkeypatch.setattr(IndexStore, "_read_version", classmethod(paused_read))
    loaded = IndexStore._load_version(tmp_path, opened)
    assert loaded.version == opened and len(loaded) == 5
    assert (tmp_path / opened / "manifest.json").is_file(), "a held version is never deleted under a reader"
    monkeypatch.undo()
    store.save(tmp_path, keep=0, grace_s=0)
    assert not (tmp_path / opened).exists(), "once no reader holds it, it is removed"


def test_save_fsyncs_files_folder_and_pointer_before_the_swap_and_the_parent_after(tmp_path, monkeypatch):
    import os

    store, _ = make_store()
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    version = store.save(tmp_path / "idx")
    swap = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("CURRENT"))
    before = {e[1] for e in events[:swap] if e[0] == "fsync"}
    for f in ("manifest.json", "chunks.jsonl", "dense.faiss", "bm25_order.json", ".readers"):
        assert str(version / f) in before or any(p.endswith(f"/.tmp-{version.name}/{f}") for p in before), f
    assert any(p.endswith(f".tmp-{version.name}") or p == str(version) for p in before), "the version folder"
    assert str(tmp_path / "idx" / ".CURRENT.tmp") in before, "the pointer file"
    assert ("fsync", str(tmp_path / "idx")) in events[swap + 1:], "the parent folder after the swap"


def test_a_second_writer_says_who_holds_the_lock_and_gives_up_after_the_timeout(tmp_path, caplog):
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ragbot.store import IndexStore\n"
        f"with IndexStore.writer_lock({str(tmp_path)!r}):\n"
        "    print('locked', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        with pytest.raises(IndexLockedError, match=rf"pid {holder.pid} .*gave up after 0.5 s.*lock_timeout_s"):
            with IndexStore.writer_lock(tmp_path, timeout_s=0.5):
                pass
        assert time.monotonic() - t < 5
        assert any(f"held by pid {holder.pid}" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()
    with IndexStore.writer_lock(tmp_path, timeout_s=5):  # free again once the holder is gone
        pass


def test_paths_with_undecodable_bytes_round_trip(tmp_path):
    emb = FakeEmbedder()
    store = IndexStore.empty(IndexSpec(emb.name, emb.dim, {}))
    doc_id = str(tmp_path) + "/\udcb2\udce2.md"  # how Python spells a GBK-named file on a UTF-8 system
    store.add([Chunk("k", doc_id, "文本", "\\xb2\\xe2.md")], emb.embed_documents(["文本"]), [["文本"]])
    store.set_file(FileRecord(doc_id, "\\xb2\\xe2.md", "h", 2, ("k",), 0.0))
    store.save(tmp_path / "idx")
    loaded = IndexStore.load(tmp_path / "idx")
    assert doc_id in loaded.manifest.files and loaded.chunks["k"].doc_id == doc_id


def test_delete_removes_the_index_but_not_a_version_a_reader_holds(tmp_path):
    import fcntl

    store, _ = make_store()
    store.save(tmp_path, grace_s=0)
    held = IndexStore.current_version(tmp_path)
    store.save(tmp_path, grace_s=0)
    with open(tmp_path / held / ".readers", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        IndexStore.delete(tmp_path)
        assert not IndexStore.exists(tmp_path) and IndexStore.version_names(tmp_path) == [held]
    with pytest.raises(IndexNotFoundError):
        IndexStore.load(tmp_path)
    IndexStore.delete(tmp_path)
    assert IndexStore.version_names(tmp_path) == []


def test_fallback_prefers_the_version_published_before_over_one_never_published(tmp_path, monkeypatch):
    import ragbot.store as S

    store, _ = make_store()
    store.save(tmp_path, grace_s=0)
    good = IndexStore.current_version(tmp_path)
    store.drop_file("doc0")
    live = store.save(tmp_path, grace_s=0)
    monkeypatch.setattr(S, "_publish_pointer", lambda path, name: None)  # a writer killed before the swap
    store.drop_file("doc1")
    unpublished = store.save(tmp_path, grace_s=0)
    monkeypatch.undo()
    assert IndexStore.current_version(tmp_path) == live.name and unpublished.is_dir()
    (live / "manifest.json").write_text("{", encoding="utf-8")
    assert IndexStore.load(tmp_path).version == good
