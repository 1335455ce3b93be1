"""The knowledge-base service (ragbot/kb.py): every index follows an ingest, a deletion and a re-ingest."""

from __future__ import annotations

import pytest

from ragbot.errors import UnsafePublishError
from ragbot.kb import KnowledgeBase, uploads_dir
from ragbot.store import IndexStore
from ragbot.variants import BUILTIN, variant_index_path


def fake_embedder_for(settings):
    from ragbot.testing import FakeEmbedder

    return FakeEmbedder(name=settings.embedder)


@pytest.fixture
def kb(indexed):
    return KnowledgeBase(indexed, fake_embedder_for)


def test_ingest_delete_and_reingest_keep_variant_indexes_in_step(kb, indexed, tmp_path):
    naive = BUILTIN["naive"]
    naive_path = variant_index_path(indexed, naive.settings(indexed))
    assert kb.ensure_variant_indexes([naive, BUILTIN["no-rerank"]]) == [naive_path]  # no-rerank shares the main one
    assert kb.ensure_variant_indexes([naive]) == []  # built once
    assert [p for _, p in kb.variant_indexes()] == [naive_path]
    extra = tmp_path / "docs" / "extra.md"
    extra.write_text("# 新增\n\n梯度裁剪把梯度范数限制在阈值以内。\n", encoding="utf-8")

    report = kb.ingest([extra])
    assert report.added == ("extra.md",)
    doc_id = str(extra.resolve())
    assert doc_id in IndexStore.load(naive_path).manifest.files  # the variant index follows

    removed = kb.delete([doc_id])
    assert removed == len(IndexStore.load(naive_path).chunks_of(doc_id)) or removed >= 1
    assert doc_id not in IndexStore.load(indexed.index_path).manifest.files
    assert doc_id not in IndexStore.load(naive_path).manifest.files
    assert extra.exists()  # not an upload: the file itself is left alone

    report = kb.reingest_all()
    assert sorted(report.added) == ["adam.md", "lora.md"] and not report.failed
    assert not IndexStore.exists(naive_path)  # rebuilt on demand from the new main index


def test_a_cli_style_ingest_updates_a_variant_index_built_earlier(indexed, tmp_path):
    """The CLI's `ragbot ingest` goes through the same service: a variant index no longer goes stale."""
    naive = BUILTIN["naive"]
    KnowledgeBase(indexed, fake_embedder_for).ensure_variant_indexes([naive])
    (tmp_path / "docs" / "lora.md").write_text("# LoRA\n\nLoRA 的秩 r 现在常取 16。\n", encoding="utf-8")
    report = KnowledgeBase(indexed, fake_embedder_for).ingest([tmp_path / "docs"])
    assert report.changed == ("lora.md",)
    naive_store = IndexStore.load(variant_index_path(indexed, naive.settings(indexed)))
    assert any("16" in c.text for c in naive_store.chunks.values())
    assert not any("常取 8" in c.text for c in naive_store.chunks.values())


def test_deleting_an_upload_removes_the_stored_copy(kb, indexed):
    up = uploads_dir(indexed)
    up.mkdir(parents=True)
    path = up / "up.md"
    path.write_text("# 上传\n\n一份上传的文档。\n", encoding="utf-8")
    kb.ingest([path])
    kb.delete([str(path.resolve())])
    assert not path.exists()


def test_a_refused_rebuild_leaves_every_index_as_it_was(kb, indexed, tmp_path):
    naive = BUILTIN["naive"]
    kb.ensure_variant_indexes([naive])
    naive_path = variant_index_path(indexed, naive.settings(indexed))
    for name in ("lora.md", "adam.md"):
        (tmp_path / "docs" / name).unlink()
    before = IndexStore.current_version(indexed.index_path)
    with pytest.raises(UnsafePublishError):
        kb.reingest_all()
    assert IndexStore.current_version(indexed.index_path) == before and IndexStore.exists(naive_path)


def test_force_reaches_the_ingest_pipeline(kb, monkeypatch):
    from ingest.pipeline import IngestPipeline

    calls = []
    run = IngestPipeline.run
    monkeypatch.setattr(IngestPipeline, "run", lambda self, paths, index_path, **kw: calls.append(kw)
                        or run(self, paths, index_path, **kw))
    kb.reingest_all(force=True)
    kb.ingest([])
    assert calls == [{"prune": False, "rebuild": True, "force": True}, {"prune": False, "rebuild": False, "force": False}]


def test_the_default_embedder_is_loaded_once_per_model(indexed, monkeypatch):
    from ragbot import embedder as E

    made = []
    monkeypatch.setattr(E.SentenceTransformerEmbedder, "from_settings",
                        classmethod(lambda cls, s: made.append(s.embedder) or fake_embedder_for(s)))
    kb = KnowledgeBase(indexed)
    assert kb.embedder(indexed) is kb.embedder(indexed.replace(top_k=3)) and made == ["fake-embedder"]
