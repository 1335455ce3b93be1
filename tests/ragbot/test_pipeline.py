"""The pipeline with fake models: retrieval feeds the prompt, citations map to chunks, refusals are clean."""

import pytest

from ragbot.testing import FakeChatModel, FakeEmbedder
from ragbot.errors import IndexMismatchError
from ragbot.pipeline import RagPipeline
from ragbot.settings import REFUSAL


def test_answer_cites_the_retrieved_chunk(indexed):
    model = FakeChatModel("秩 r 常取 8 [1]。")
    pipe = RagPipeline.from_settings(indexed, chat_model=model, embedder=FakeEmbedder())
    answer = pipe.ask("LoRA 的秩一般取多少？", top_k=2)
    assert not answer.refused
    assert answer.citations[0].chunk.source == "lora.md"
    assert "[1]（LoRA）" in model.messages[0][-1]["content"]
    assert len(answer.passages) == 2
    assert "retrieval_ms" in answer.timings_ms and "generate_ms" in answer.timings_ms


def test_refusal_passes_through(indexed):
    model = FakeChatModel(REFUSAL + "。")
    pipe = RagPipeline.from_settings(indexed, chat_model=model, embedder=FakeEmbedder())
    answer = pipe.ask("低秩矩阵的秩一般取多少？")  # no Latin key term: the gate lets it through to the model
    assert answer.refused and answer.refused_by == "model" and len(model.messages) == 1
    assert answer.text == REFUSAL and answer.citations == () and answer.passages


def test_index_built_with_other_chunking_is_refused(indexed):
    with pytest.raises(IndexMismatchError, match=r"chunk_size 400 \(index\) vs 123 \(now\).*--rebuild"):
        RagPipeline.from_settings(indexed.replace(chunk_size=123), chat_model=FakeChatModel(), embedder=FakeEmbedder())


def test_index_built_with_other_embedder_is_refused(indexed):
    with pytest.raises(IndexMismatchError, match="embedder 'fake-embedder' \\(index\\) vs 'other' \\(now\\)"):
        RagPipeline.from_settings(indexed.replace(embedder="other"), chat_model=FakeChatModel(),
                                  embedder=FakeEmbedder())


def test_llm_only_pipeline_needs_no_index(settings):
    model = FakeChatModel("答案。")
    pipe = RagPipeline.from_settings(settings.replace(prompt="plain"), retrieval=False, chat_model=model)
    answer = pipe.ask("问题？")
    assert answer.text == "答案。" and answer.passages == ()
    assert model.messages[0][-1]["content"] == "问题？"


def test_gate_refuses_unknown_terms_without_calling_the_llm(indexed):
    model = FakeChatModel("编造的答案 [1]。")
    pipe = RagPipeline.from_settings(indexed, chat_model=model, embedder=FakeEmbedder())
    answer = pipe.ask("RWKV 的结构是什么？")
    assert answer.refused and answer.refused_by == "gate: RWKV" and model.messages == []
    off = RagPipeline.from_settings(indexed.replace(refusal_gate=False), chat_model=model, embedder=FakeEmbedder())
    assert not off.ask("RWKV 的结构是什么？").refused


def test_too_long_question_is_refused_before_any_stage_runs(indexed):
    from ragbot.errors import ConfigError, QuestionTooLongError

    model, embedder = FakeChatModel("秩 r 常取 8 [1]。"), FakeEmbedder()
    pipe = RagPipeline.from_settings(indexed.replace(max_question_chars=10), chat_model=model, embedder=embedder)
    calls = embedder.calls
    message = (r"^the question has 11 characters, more than max_question_chars \(10\); "
               r"shorten it or raise max_question_chars$")
    for call in (pipe.ask, pipe.ask_stream, pipe.retrieve):  # ask_stream raises at the call, before iteration
        with pytest.raises(QuestionTooLongError, match=message):
            call("LoRA的秩取多少？？")
    assert issubclass(QuestionTooLongError, ConfigError)
    assert model.messages == [] and embedder.calls == calls
    assert not pipe.ask("  LoRA的秩取多少？ \n").refused  # 10 characters: at the limit; surrounding space is free


@pytest.mark.parametrize("question", ["", "  \n\t"])
def test_empty_question_is_refused(indexed, question):
    from ragbot.errors import ConfigError

    model = FakeChatModel()
    pipe = RagPipeline.from_settings(indexed, chat_model=model, embedder=FakeEmbedder())
    for call in (pipe.ask, pipe.ask_stream, pipe.retrieve):
        with pytest.raises(ConfigError, match="the question is empty"):
            call(question)
    assert model.messages == []


def test_an_index_of_another_dimension_is_refused_once_the_embedder_is_loaded(indexed):
    pipe = RagPipeline.from_settings(indexed, chat_model=FakeChatModel(), embedder=FakeEmbedder(dim=32))
    with pytest.raises(IndexMismatchError, match=r"embedding dimension 64 \(index\) vs 32 \(now\).*--rebuild"):
        pipe.warm_up()


def test_the_query_path_does_not_import_ingest(indexed):
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); from ragbot.testing import FakeChatModel, FakeEmbedder; "
            "from ragbot.pipeline import RagPipeline; from ragbot.settings import Settings; "
            f"s = Settings(home={str(indexed.home)!r}, embedder='fake-embedder', llm='fake-llm'); "
            "p = RagPipeline.from_settings(s, chat_model=FakeChatModel(), embedder=FakeEmbedder()); p.warm_up(); "
            "p.ask('LoRA 训练什么？'); print(sorted(m for m in sys.modules if m.split('.')[0] == 'ingest'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
