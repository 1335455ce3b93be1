"""Cached models and pipelines (ui/resources.py)."""

from __future__ import annotations

from ui.resources import fake_models_enabled, index_version, load_settings, pipeline_key


def test_fake_switch_and_settings(monkeypatch, tmp_path):
    assert fake_models_enabled({"RAGBOT_UI_FAKE_MODELS": "1"}) and not fake_models_enabled({})
    s = load_settings({"RAGBOT_HOME": str(tmp_path), "RAGBOT_UI_FAKE_MODELS": "true",
                       "RAGBOT_RERANKER": "cross-encoder:x"})
    assert (s.embedder, s.llm, s.reranker, s.home) == ("ui-fake-embedder", "ui-fake-llm", "none", tmp_path)


def test_pipeline_key_ignores_top_k_only(app_env):
    assert pipeline_key(app_env) == pipeline_key(app_env.replace(top_k=9))
    assert pipeline_key(app_env) != pipeline_key(app_env.replace(temperature=0.7))


def test_index_version_changes_on_save(indexed):
    from ragbot.store import IndexStore

    v1 = index_version(indexed.index_path)
    store = IndexStore.load(indexed.index_path)
    store.save(indexed.index_path)
    assert v1 and index_version(indexed.index_path) not in ("", v1)
    assert index_version(indexed.home / "nowhere") == ""


def test_one_store_per_index_version(indexed, monkeypatch):
    from ragbot.store import IndexStore
    from ui.resources import clear_pipelines, get_pipeline

    loads = []
    load = IndexStore.load.__func__
    monkeypatch.setattr(IndexStore, "load", classmethod(lambda cls, *a, **kw: loads.append(a) or load(cls, *a, **kw)))
    clear_pipelines()
    a = get_pipeline(indexed)
    b = get_pipeline(indexed.replace(temperature=0.7, reranker="none"))
    assert a is not b and b.reranker is None and a.generator.temperature != b.generator.temperature
    assert a.store is b.store and len(loads) == 1  # read once, whatever the sidebar changes
    IndexStore.load(indexed.index_path).save(indexed.index_path)  # a new version: read again, once
    loads.clear()
    c = get_pipeline(indexed)
    d = get_pipeline(indexed.replace(temperature=0.3))
    assert c.store is d.store is not a.store and len(loads) == 1
