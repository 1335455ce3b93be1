"""One cache of models and indexes (ragbot/models.py), shared by evaluation and the web app."""

from __future__ import annotations

from ragbot.models import ModelCache


def test_models_are_shared_between_variants(indexed):
    from ragbot.variants import BUILTIN

    models = ModelCache(fake=True)
    a = models.pipeline(indexed)
    b = models.pipeline(BUILTIN["no-rerank"].settings(indexed))
    c = models.pipeline(indexed, retrieval=False)
    assert a is not b and a.embedder is b.embedder and a.chat_model is b.chat_model is c.chat_model
    assert c.store is None and len(models.loaded()) == 2
    assert models.store(indexed.index_path) is a.store is b.store  # one opened index per version


def test_a_new_index_version_is_opened_once_and_replaces_the_old(indexed):
    from ragbot.store import IndexStore

    models = ModelCache(fake=True)
    first = models.store(indexed.index_path)
    IndexStore.load(indexed.index_path).save(indexed.index_path)
    second = models.store(indexed.index_path)
    assert second is not first and models.store(indexed.index_path) is second
