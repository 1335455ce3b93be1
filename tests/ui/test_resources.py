"""Cached models and pipelines (ui/resources.py)."""

from __future__ import annotations

from ui.resources import Models, fake_models_enabled, index_version, load_settings, pipeline_key


def test_fake_switch_and_settings(monkeypatch, tmp_path):
    assert fake_models_enabled({"RAGBOT_UI_FAKE_MODELS": "1"}) and not fake_models_enabled({})
    s = load_settings({"RAGBOT_HOME": str(tmp_path), "RAGBOT_UI_FAKE_MODELS": "true",
                       "RAGBOT_RERANKER": "cross-encoder:x"})
    assert (s.embedder, s.llm, s.reranker, s.home) == ("ui-fake-embedder", "ui-fake-llm", "none", tmp_path)


def test_pipeline_key_ignores_top_k_only(app_env):
    assert pipeline_key(app_env) == pipeline_key(app_env.replace(top_k=9))
    assert pipeline_key(app_env) != pipeline_key(app_env.replace(temperature=0.7))


def test_models_are_shared_between_variants(indexed):
    from ragbot.variants import BUILTIN

    models = Models(fake=True)
    a = models.pipeline(indexed)
    b = models.pipeline(BUILTIN["no-rerank"].settings(indexed))
    c = models.pipeline(indexed, retrieval=False)
    assert a is not b and a.embedder is b.embedder and a.chat_model is b.chat_model is c.chat_model
    assert c.store is None and len(models.loaded()) == 2


def test_index_version_changes_on_save(indexed):
    from ragbot.store import IndexStore

    v1 = index_version(indexed.index_path)
    store = IndexStore.load(indexed.index_path)
    store.save(indexed.index_path)
    assert v1 and index_version(indexed.index_path) not in ("", v1)
    assert index_version(indexed.home / "nowhere") == ""
