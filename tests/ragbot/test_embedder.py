"""Embedders picked by the setting (ragbot/embedder.py): the server embedder (OpenAIEmbedder) against a local HTTP
server speaking /v1/embeddings, and the hashing embedder for scale tests."""

from __future__ import annotations

import numpy as np
import pytest

from ragbot.embedder import OpenAIEmbedder, embedder_from_settings
from ragbot.errors import ConfigError, LLMServerError
from ragbot.settings import Settings, embedder_identity
from ragbot.store import IndexSpec
from ragbot.testing import FakeOpenAIServer


@pytest.fixture
def server():
    pytest.importorskip("openai")
    s = FakeOpenAIServer()
    yield s
    s.close()


def settings_for(server, tmp_path, **kw) -> Settings:
    return Settings(home=tmp_path, embedder="openai:e5", llm_base_url=server.url, llm_api_key=server.KEY, **kw)


def test_vectors_come_back_in_order_normalised_batched_and_prefixed(server, tmp_path):
    emb = embedder_from_settings(settings_for(server, tmp_path, embedder_query_prefix="query: ",
                                              embedder_document_prefix="passage: ", embed_batch_size=2))
    assert isinstance(emb, OpenAIEmbedder)
    texts = [f"第{i}段：LoRA 冻结预训练权重。" for i in range(70)]
    vectors = emb.embed_documents(texts)
    assert vectors.shape == (70, 32) and vectors.dtype == np.float32 and emb.dim == 32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = server.embedder.embed_documents(["passage: " + t for t in texts])
    assert np.allclose(vectors, expected, atol=1e-5)  # the server answered in reverse order
    assert [len(b) for b in server.embedded[:3]] == [32, 32, 6]  # batches of at least 32 for a server
    assert np.allclose(emb.embed_query("LoRA"), server.embedder.embed_query("query: LoRA"), atol=1e-5)


def test_the_manifest_records_the_server_model_and_its_prefixes(server, tmp_path):
    plain = settings_for(server, tmp_path)
    prefixed = settings_for(server, tmp_path, embedder_query_prefix="query: ", embedder_document_prefix="passage: ")
    assert embedder_identity(plain) == "openai:e5" and embedder_from_settings(plain).name == "openai:e5"
    assert embedder_from_settings(prefixed).name == embedder_identity(prefixed) != "openai:e5"
    assert IndexSpec.from_settings(prefixed).key() != IndexSpec.from_settings(plain).key()
    assert embedder_identity(Settings()) == Settings().embedder  # existing indexes keep their spec


def test_ingest_and_retrieve_through_the_server(server, tmp_path):
    from ingest.pipeline import IngestPipeline
    from ragbot.pipeline import RagPipeline

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text("# LoRA\n\nLoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。\n", encoding="utf-8")
    (docs / "adam.md").write_text("# Adam\n\nAdam 的默认 beta1 为 0.9，beta2 为 0.999。\n", encoding="utf-8")
    settings = settings_for(server, tmp_path)
    emb = embedder_from_settings(settings)
    report = IngestPipeline.from_settings(settings, emb).run([docs], settings.index_path)
    assert report.ok
    pipe = RagPipeline.from_settings(settings, with_llm=False, embedder=emb)
    hits = pipe.retrieve("Adam 的 beta1 是多少？").final
    assert hits[0].chunk.source.endswith("adam.md")


def test_server_errors_name_the_embedder_settings(server, tmp_path):
    wrong_key = OpenAIEmbedder("e5", server.url, api_key="sk-wrong", retries=0)
    with pytest.raises(LLMServerError, match="embedding server .* rejected the API key .*RAGBOT_EMBEDDER_API_KEY"):
        wrong_key.warm_up()
    url = server.url
    server.close()
    with pytest.raises(LLMServerError, match=f"no embedding server answers at {url}.*fix embedder_base_url"):
        OpenAIEmbedder("e5", url, api_key=server.KEY, retries=0, connect_timeout_s=1).embed_query("x")
    with pytest.raises(ConfigError, match="embedder_base_url"):
        Settings(embedder="openai:e5")
    s = Settings(embedder="openai:e5", embedder_base_url=url, embedder_api_key="sk-emb")
    assert "sk-emb" not in repr(s) and "embedder_api_key" not in s.to_dict()


def test_the_hashing_embedder_for_scale_tests(tmp_path):
    from ragbot.embedder import HashEmbedder

    emb = embedder_from_settings(Settings(home=tmp_path, embedder="hash:384"))
    assert isinstance(emb, HashEmbedder) and emb.name == "hash:384" and emb.dim == 384
    docs = emb.embed_documents(["LoRA 冻结预训练权重", "Adam 的 beta1 为 0.9", ""])
    assert docs.shape == (3, 384) and np.allclose(np.linalg.norm(docs[:2], axis=1), 1.0) and not docs[2].any()
    assert float(emb.embed_query("LoRA 冻结什么权重") @ docs[0]) > float(emb.embed_query("LoRA 冻结什么权重") @ docs[1])
    assert np.array_equal(HashEmbedder(384).embed_query("同样的文本"), emb.embed_query("同样的文本"))  # deterministic
    with pytest.raises(ConfigError, match="hash:DIM"):
        embedder_from_settings(Settings(home=tmp_path, embedder="hash:big"))


def test_the_llm_key_goes_only_to_the_llm_server(server, tmp_path):
    same = OpenAIEmbedder.from_settings(settings_for(server, tmp_path))
    assert same.server._api_key == server.KEY  # one server for both: its key
    other = OpenAIEmbedder.from_settings(settings_for(server, tmp_path, embedder_base_url="http://127.0.0.1:9/v1"))
    assert other.server._api_key == ""  # another host never gets the LLM server's key
    own = settings_for(server, tmp_path, embedder_base_url="http://127.0.0.1:9/v1", embedder_api_key="sk-emb")
    assert OpenAIEmbedder.from_settings(own).server._api_key == "sk-emb"


def test_prepare_check_knows_every_embedder_kind(server, tmp_path):
    from ragbot.embedder import check

    assert check(settings_for(server, tmp_path)) == (True, f"served at {server.url} (32 dimensions)")
    assert check(Settings(home=tmp_path, embedder="hash:384"))[0]
