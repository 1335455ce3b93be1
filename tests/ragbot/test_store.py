import json
import shutil

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
    assert store.vector_count() == 2
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
    assert store.vector_count() == len(store) == 2


def test_load_refuses_vectors_out_of_step_with_chunks_and_says_rebuild(tmp_path):
    import faiss

    store, emb = make_store()
    store.save(tmp_path)
    segment = tmp_path / "segments" / store.segments[0].name
    dense = faiss.read_index(str(segment / "dense.faiss"))
    dense.add_with_ids(emb.embed_documents(["orphan"]), np.array([99], dtype=np.int64))  # a vector, no chunk
    faiss.write_index(dense, str(segment / "dense.faiss"))
    meta = json.loads((segment / "meta.json").read_text())
    meta["files"]["dense.faiss"] = (segment / "dense.faiss").stat().st_size  # written so, not truncated
    (segment / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match=r"6 vectors for 5 rows.*--rebuild"):
        IndexStore.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate-manifest", "truncate-tombstones", "truncate-chunks", "garbage-faiss",
                                    "delete-chunks", "truncate-postings", "delete-segment"])
def test_a_damaged_live_version_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    store, emb = make_store()
    store.save(tmp_path, grace_s=0)
    good = IndexStore.current_version(tmp_path)
    store.drop_file("doc0")
    extra = [Chunk("x1", "doc2", "新增的文本", "t.md")]
    store.add(extra, emb.embed_documents(["新增的文本"]), [["新增"]])
    store.set_file(FileRecord("doc2", "doc2", "sha", 1, ("x1",), 0.0))
    live = store.save(tmp_path, grace_s=0)  # a new segment (doc2) and a tombstone per chunk of doc0
    new_segment = tmp_path / "segments" / store.segments[-1].name
    target = {"truncate-manifest": live / "manifest.json", "truncate-tombstones": live / "tombstones.npy",
              "truncate-chunks": new_segment / "chunks.sqlite", "garbage-faiss": new_segment / "dense.faiss",
              "delete-chunks": new_segment / "chunks.sqlite", "truncate-postings": new_segment / "rows.npy",
              "delete-segment": new_segment}[damage]
    if damage == "delete-segment":
        shutil.rmtree(target)
    elif damage == "delete-chunks":
        target.unlink()
    elif damage == "garbage-faiss":
        target.write_bytes(b"not a faiss index")
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    loaded = IndexStore.load(tmp_path)
    assert loaded.version == good and len(loaded) == 5
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "\n" not in warning[0] and live.name in warning[0] and good in warning[0]


def test_a_damaged_segment_that_every_version_shares_is_one_line_that_says_rebuild(tmp_path):
    """Versions share segments (a save writes only what changed), so damage to the oldest one has no fallback:
    it is refused in one line, never read as a smaller index."""
    store, _ = make_store()
    store.save(tmp_path, grace_s=0)
    store.drop_file("doc0")
    store.save(tmp_path, grace_s=0)
    (tmp_path / "segments" / store.segments[0].name / "fids.npy").write_bytes(b"")
    with pytest.raises(IndexCorruptError, match="--rebuild") as e:
        IndexStore.load(tmp_path)
    assert "\n" not in str(e.value) and "fids.npy" in str(e.value)


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
    segment = tmp_path / "idx" / "segments" / store.segments[0].name
    swap = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("CURRENT"))
    before = {e[1] for e in events[:swap] if e[0] == "fsync"}
    for f in ("manifest.json", "tombstones.npy", ".readers"):
        assert str(version / f) in before or any(p.endswith(f"/.tmp-{version.name}/{f}") for p in before), f
    assert any(p.endswith(f".tmp-{version.name}") or p == str(version) for p in before), "the version folder"
    for f in ("chunks.sqlite", "dense.faiss", "fids.npy", "doclen.npy", "indptr.npy", "rows.npy", "tfs.npy",
              "gate.txt", "meta.json"):
        assert any(p.endswith(f"/.tmp-{segment.name}/{f}") for p in before), f"segment file {f}"
    assert any(p.endswith(f"/.tmp-{segment.name}") for p in before), "the segment folder, before its rename"
    assert str(segment.parent) in before, "the segments folder, after the rename and before the swap"
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


def test_removed_chunks_are_never_found_and_k_live_ones_still_come_back(tmp_path):
    store, emb = make_store(6)
    store.save(tmp_path)
    store = IndexStore.load(tmp_path)
    store.drop_file("doc0")  # c0, c2, c4: tombstones in a saved segment
    q = emb.embed_query("第2号文本")[None]
    assert sorted(c.id for c, _ in store.search_dense(q, 3)[0]) == ["c1", "c3", "c5"]
    assert {c.id for c, _ in store.search_bm25(bm25_tokens("主题"), 10)} == {"c1", "c3", "c5"}
    store.save(tmp_path)
    loaded = IndexStore.load(tmp_path)
    assert sorted(c.id for c, _ in loaded.search_dense(q, 3)[0]) == ["c1", "c3", "c5"]
    assert sorted(loaded.chunks) == ["c1", "c3", "c5"] and "c0" not in loaded.chunks and len(loaded) == 3


def _random_store(tmp_path, n=300, saves=3, seed=0):
    """A store of ``n`` chunks with Zipf-distributed words, saved in ``saves`` segments, a tenth of it removed."""
    rng = np.random.default_rng(seed)
    emb = FakeEmbedder()
    store = IndexStore.empty(IndexSpec(emb.name, emb.dim, {}))
    words = [f"w{i}" for i in range(400)]
    docs = {}
    for part in np.array_split(np.arange(n), saves):
        chunks, tokens = [], []
        for i in part.tolist():
            toks = [words[min(int(z), 399)] for z in rng.zipf(1.3, size=int(rng.integers(0, 40)))]
            chunks.append(Chunk(f"c{i}", f"d{i}", " ".join(toks) or "空", "s.md"))
            tokens.append(toks)
            docs[f"c{i}"] = toks
            store.set_file(FileRecord(f"d{i}", f"d{i}", "h", 1, (f"c{i}",), 0.0))
        store.add(chunks, emb.embed_documents([c.text for c in chunks]), tokens)
        store.save(tmp_path, grace_s=0)
    for i in rng.choice(n, n // 10, replace=False).tolist():
        store.drop_file(f"d{i}")
        del docs[f"c{i}"]
    return store, docs, words, rng


def test_bm25_over_segments_and_tombstones_scores_as_one_index_over_the_live_chunks(tmp_path):
    """Statistics are merged across segments and exclude removed rows: the scores of bm25s over the live chunks."""
    import bm25s

    store, docs, words, rng = _random_store(tmp_path)
    assert len(store.segments) == 3 and store.dead
    ids = list(docs)
    ref = bm25s.BM25()
    ref.index([docs[c] or [""] for c in ids], show_progress=False)
    for _ in range(20):
        query = [words[min(int(z), 399)] for z in rng.zipf(1.3, size=int(rng.integers(1, 6)))]
        known = [t for t in query if t in ref.vocab_dict]
        got = store.search_bm25(query, 10)
        if not known:
            assert got == []
            continue
        expected = ref.get_scores(known)
        for chunk, score in got:
            assert score == pytest.approx(float(expected[ids.index(chunk.id)]), rel=1e-4)
        top = sorted(expected[expected > 0], reverse=True)[:10]
        assert [s for _, s in got] == pytest.approx(top, rel=1e-4)


def _state(path, query_vectors):
    store = IndexStore.load(path)
    return (sorted(store.chunks), [[c.id for c, _ in hits] for hits in store.search_dense(query_vectors, 5)],
            [c.id for c, _ in store.search_bm25(["w1", "w2"], 5)])


def test_compaction_drops_removed_rows_and_changes_no_result(tmp_path):
    store, docs, _, _ = _random_store(tmp_path)
    store.save(tmp_path, grace_s=0)
    q = FakeEmbedder().embed_documents(["w1 w3", "w2", "w5 w1"])
    before = _state(tmp_path, q)
    bm25_before = store.search_bm25(["w1", "w2"], 10)
    report = store.compact(tmp_path)
    store.save(tmp_path, keep=0, grace_s=0)
    assert report.segments_before == 3 and len(store.segments) == 1 and not store.dead
    assert _state(tmp_path, q) == before
    assert [s for _, s in store.search_bm25(["w1", "w2"], 10)] == pytest.approx([s for _, s in bm25_before], rel=1e-5)
    live = {p.name for p in (tmp_path / "segments").iterdir()}
    assert live == {store.segments[0].name}, "segments no version names are deleted"


def test_a_crash_at_any_step_of_a_save_or_compaction_leaves_the_old_or_the_new_index(tmp_path, monkeypatch):
    """Kill the writer at each fsync, rename and pointer swap in turn: loading then gives exactly the state
    before or after, and the next save works and cleans up what the crash left."""
    import os

    base = tmp_path / "base"
    store, _, _, _ = _random_store(base)
    q = FakeEmbedder().embed_documents(["w1 w3", "w2"])
    old = _state(base, q)

    class Killed(BaseException):
        pass

    def run(name, work, crash_at=None):
        s = IndexStore.load(work)
        calls = {"n": 0}
        real = {"fsync": os.fsync, "rename": os.rename, "replace": os.replace}

        def step(kind, *args):
            calls["n"] += 1
            if crash_at is not None and calls["n"] > crash_at:
                raise Killed(kind)
            return real[kind](*args)

        monkeypatch.setattr(os, "fsync", lambda fd: step("fsync", fd))
        monkeypatch.setattr(os, "rename", lambda a, b: step("rename", a, b))
        monkeypatch.setattr(os, "replace", lambda a, b: step("replace", a, b))
        try:
            if name == "drop+add":
                s.drop_file("d1")
                s.drop_file("d2")
                s.add([Chunk("n1", "dn", "w1 w2 新", "n.md")], FakeEmbedder().embed_documents(["w1 w2 新"]),
                      [["w1", "w2", "新"]])
                s.set_file(FileRecord("dn", "dn", "h", 1, ("n1",), 0.0))
                s.save(work, grace_s=0)
            else:
                s.compact(work)
                s.save(work, grace_s=0)
            return calls["n"]
        except Killed:
            return None
        finally:
            monkeypatch.undo()

    for name in ("drop+add", "compact"):
        shutil.copytree(base, tmp_path / f"{name}-clean")
        steps = run(name, tmp_path / f"{name}-clean")
        new = _state(tmp_path / f"{name}-clean", q)
        for crash_at in range(steps):
            work = tmp_path / f"{name}-{crash_at}"
            shutil.copytree(base, work)
            assert run(name, work, crash_at) is None
            after = _state(work, q)
            assert after in (old, new), f"{name}: crash after {crash_at} of {steps} steps gives a third state"
            IndexStore.load(work).save(work, keep=0, grace_s=0)  # the next writer publishes and cleans up
            assert _state(work, q) == after
            named = json.loads((work / IndexStore.current_version(work) / "manifest.json").read_text())["segments"]
            assert sorted(p.name for p in (work / "segments").iterdir()) == sorted(named), "nothing left behind"
        if name == "drop+add":
            assert new != old
        else:
            assert new == old, "compaction changes no result"


def test_a_large_segment_gets_an_approximate_index_whose_recall_is_measured(tmp_path):
    """Above ann_min a segment is IVF: on clustered vectors its top 10 matches exact search's (recall ≥ 0.95 at
    the default nprobe), removed rows never come back, and nprobe is the knob (1 list gives less)."""
    from ragbot.segments import AnnParams

    rng = np.random.default_rng(0)
    dim, n = 32, 6000
    centres = rng.normal(size=(60, dim))
    vecs = (centres[rng.integers(0, 60, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = IndexStore.empty(IndexSpec("vectors", dim, {}), ann=AnnParams(ann_min=1000))
    chunks = [Chunk(f"c{i}", f"d{i // 10}", f"t{i}", "s.md") for i in range(n)]
    store.add(chunks, vecs, [[f"t{i}"] for i in range(n)])
    for d in range(n // 10):
        store.set_file(FileRecord(f"d{d}", f"d{d}", "h", 1, tuple(f"c{i}" for i in range(d * 10, d * 10 + 10)), 0.0))
    store.save(tmp_path)
    store = IndexStore.load(tmp_path)
    assert [s.approximate for s in store.segments] == [True]
    for d in range(0, 50):
        store.drop_file(f"d{d}")  # 500 rows removed
    alive = np.arange(500, n)
    queries = (centres[rng.integers(0, 60, 200)] + 0.35 * rng.normal(size=(200, dim))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vecs[alive].T), axis=1)[:, :10]

    def recall(nprobe):
        store.nprobe = nprobe
        got = store.search_dense(queries, 10)
        return np.mean([len({f"c{alive[j]}" for j in e} & {c.id for c, _ in g}) / 10 for e, g in zip(exact, got)])

    assert recall(AnnParams().nprobe) >= 0.95
    assert recall(1) < 0.9
    assert all(int(c.id[1:]) >= 500 for hits in store.search_dense(queries[:20], 10) for c, _ in hits)


def test_a_reader_keeps_answering_while_a_compaction_replaces_and_deletes_its_segments(tmp_path):
    store, _, _, _ = _random_store(tmp_path)
    store.save(tmp_path, grace_s=0)
    q = FakeEmbedder().embed_documents(["w1 w3", "w2"])
    reader = IndexStore.load(tmp_path)  # opened before: its segments are the ones compaction replaces
    before = (sorted(reader.chunks), [[c.id for c, _ in h] for h in reader.search_dense(q, 5)],
              [c.id for c, _ in reader.search_bm25(["w1", "w2"], 5)])
    old = {s.name for s in reader.segments}
    writer = IndexStore.load(tmp_path)
    writer.compact(tmp_path)
    during = IndexStore.load(tmp_path)  # a reader that opens between the new segment and the publish
    assert {s.name for s in during.segments} == old
    writer.save(tmp_path, keep=0, grace_s=0)
    assert not any((tmp_path / "segments" / n).exists() for n in old), "the old segments are gone from disk"
    for r in (reader, during):
        assert (sorted(r.chunks), [[c.id for c, _ in h] for h in r.search_dense(q, 5)],
                [c.id for c, _ in r.search_bm25(["w1", "w2"], 5)]) == before
    assert _state(tmp_path, q) == before


def test_kill_9_during_saves_and_compactions_never_leaves_a_broken_index(tmp_path):
    """A writer process killed with SIGKILL at random moments (no Python cleanup runs): every time, the index
    opens consistent (one vector per listed chunk), and the next writer publishes and cleans up."""
    import random
    import signal
    import subprocess
    import sys
    import time

    writer = f"""
import numpy as np
from ragbot.store import FileRecord, IndexSpec, IndexStore
from ragbot.testing import FakeEmbedder
from ragbot.types import Chunk
path, emb = {str(tmp_path / "idx")!r}, FakeEmbedder()
store = IndexStore.load(path) if IndexStore.exists(path) else IndexStore.empty(IndexSpec(emb.name, emb.dim, {{}}))
n = store.manifest.next_fid
while True:
    doc = f"d{{n}}"
    chunks = [Chunk(f"{{doc}}-{{i}}", doc, f"文本 {{n}} {{i}} w{{i}}", "s.md") for i in range(40)]
    store.add(chunks, emb.embed_documents([c.text for c in chunks]), [c.text.split() for c in chunks])
    store.set_file(FileRecord(doc, doc, "h", 1, tuple(c.id for c in chunks), 0.0))
    if len(store.manifest.files) > 3:
        store.drop_file(next(iter(store.manifest.files)))
    store.save(path, keep=1, grace_s=0)
    if n % 3 == 0:
        store.compact(path)
        store.save(path, keep=1, grace_s=0)
    n = store.manifest.next_fid
    print(n, flush=True)
"""
    rng = random.Random(0)
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline(), "the writer published at least once"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = IndexStore.load(tmp_path / "idx")
        listed = [c for r in store.manifest.files.values() for c in r.chunk_ids]
        assert len(store) == store.vector_count() == len(listed) == len(set(listed)) > 0, f"round {round_}"
        assert sorted(store.chunks) == sorted(listed)
    store.save(tmp_path / "idx", keep=0, grace_s=0)
    named = set(store.manifest.segments)
    assert {p.name for p in (tmp_path / "idx" / "segments").iterdir() if not p.name.startswith(".tmp")} == named


def test_terms_of_reads_from_the_postings_what_ingest_indexed(tmp_path):
    store, _ = make_store()
    store.save(tmp_path)
    store = IndexStore.load(tmp_path)
    store.drop_file("doc1")
    terms = ["主题", "第", "文本", "不存在的词"]
    held = store.terms_of(["c0", "c1", "c2"], terms)  # c1 is removed: not reported
    assert set(held) == {"c0", "c2"}
    for cid in held:
        assert held[cid] == set(bm25_tokens(store.chunks[cid].text)) & set(terms)


def test_automatic_merges_never_span_a_large_segment(tmp_path):
    """Small segments on both sides of a large (IVF) one: only neighbours merge, so segments never share ids and
    every published version loads (a merge across the large one once made the newest version unreadable)."""
    from ragbot.segments import AnnParams

    emb = FakeEmbedder()
    store = IndexStore.empty(IndexSpec(emb.name, emb.dim, {}), ann=AnnParams(ann_min=200))
    total = 0
    for doc, size in [("a", 5), ("big", 300), *((f"s{j}", 5) for j in range(9))]:
        chunks = [Chunk(f"{doc}-{i}", doc, f"文本 {doc} 第{i}号 word{i}", doc) for i in range(size)]
        store.add(chunks, emb.embed_documents([c.text for c in chunks]), [bm25_tokens(c.text) for c in chunks])
        store.set_file(FileRecord(doc, doc, doc, 1, tuple(c.id for c in chunks), 0.0))
        store.save(tmp_path, grace_s=3600)
        total += size
        loaded = IndexStore.load(tmp_path)
        assert loaded.version == store.version and len(loaded) == total
    assert [s.approximate for s in store.segments].count(True) == 1 and len(store.segments) <= 1 + 1 + 2
    store.compact(tmp_path)
    store.save(tmp_path)
    assert len(IndexStore.load(tmp_path)) == total
