import json
import subprocess
import sys
import time


from ragbot import cli


def test_import_and_help_load_no_heavy_modules():
    code = ("import sys, time; t=time.perf_counter(); import ragbot.cli; "
            "from ragbot.cli import build_parser; build_parser().format_help(); "
            "heavy=[m for m in ('torch','transformers','sentence_transformers','faiss','jieba','langchain_text_splitters') "
            "if m in sys.modules]; print(heavy, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]", f"heavy modules imported: {out}"
    assert float(out[1]) < 1.0


def test_help_command_is_fast():
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ragbot", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "ingest" in result.stdout and "ask" in result.stdout
    assert time.perf_counter() - t < 3.0  # interpreter start included


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    code = cli.main(["ask", "问题", "--index", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no index at") and "ragbot ingest" in err


def test_bad_setting_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    monkeypatch.setenv("RAGBOT_CHUNK_OVERLAP", "900")
    assert cli.main(["ingest", str(tmp_path)]) == 2
    assert "chunk_overlap (900)" in capsys.readouterr().err


def _fake_embedder(monkeypatch):
    from ragbot.testing import FakeEmbedder
    from ragbot.embedder import SentenceTransformerEmbedder

    monkeypatch.setattr(SentenceTransformerEmbedder, "from_settings", classmethod(lambda cls, s: FakeEmbedder()))


def _ingested(tmp_path, monkeypatch, names):
    """A home under ``tmp_path`` whose index holds one small Markdown file per name (fake embedder)."""
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    monkeypatch.setenv("RAGBOT_VERSION_GRACE_S", "0")
    _fake_embedder(monkeypatch)
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in names:
        (docs / f"{n}.md").write_text(f"# {n}\n\n第 {n} 篇文档的内容。\n", encoding="utf-8")
    assert cli.main(["ingest", str(docs)]) == 0
    return docs


def test_a_mistyped_rebuild_is_refused_in_one_line_and_rollback_restores_a_forced_one(tmp_path, capsys, monkeypatch):
    docs = _ingested(tmp_path, monkeypatch, ("a", "b"))
    capsys.readouterr()
    assert cli.main(["ingest", str(tmp_path / "dcos"), "--rebuild"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("error: refusing to rebuild") and "drop 2 of 2" in err and "--force" in err
    assert "dcos does not exist" in err
    assert cli.main(["ingest", str(tmp_path / "dcos"), "--rebuild", "--force"]) == 1  # published, nothing ingested
    assert "0 in the index" in capsys.readouterr().out
    assert cli.main(["index", "rollback"]) == 0
    assert "2 files" in capsys.readouterr().out
    assert cli.main(["index", "versions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) >= 2 and out[1].startswith("*") and "2 files" in out[1]


def test_ingest_verbose_prints_each_files_encoding(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    _fake_embedder(monkeypatch)
    (tmp_path / "gbk.txt").write_bytes("注意力机制是一种加权求和。".encode("gbk"))
    assert cli.main(["ingest", str(tmp_path / "gbk.txt"), "-v"]) == 0
    assert "encoding gb18030: gbk.txt" in capsys.readouterr().out


# ---- answers in a terminal, and the chat ------------------------------------------------------------------------
class _Out:
    """A stand-in for stdout: records what is written, says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _stream(reply):
    from ragbot.generation import Generator
    from ragbot.testing import FakeChatModel
    from ragbot.types import Chunk, ScoredChunk

    passages = [ScoredChunk(Chunk("c1", "d", "池化层没有可学习参数。", "pool.md", heading_path=("池化",)), 1.0, "fused")]
    return Generator(FakeChatModel(reply)).stream("池化层有参数吗？", passages)


def test_an_answer_whose_citations_were_added_is_reprinted_in_place_on_a_terminal():
    out = _Out(tty=True)
    cli._render(_stream("池化层没有可学习参数。"), out)  # cites nothing: alignment adds [1] after streaming
    streamed, final = out.text.split("\x1b[J", 1)
    assert streamed.startswith("池化层没有可学习参数。") and streamed.endswith("\r")
    assert final.startswith("池化层没有可学习参数 [1]。\n") and "[1] pool.md · 池化" in final  # markers and sources agree


def test_an_answer_streamed_as_it_ends_up_is_printed_once():
    out = _Out(tty=True)
    cli._render(_stream("池化层没有可学习参数 [1]。"), out)
    assert "\x1b" not in out.text and out.text.count("池化层没有可学习参数") == 1 and "[1] pool.md" in out.text


def test_a_refusal_is_printed_once_with_its_reason():
    from ragbot.generation import AnswerStream
    from ragbot.settings import REFUSAL
    from ragbot.types import Answer

    gate = Answer("RWKV？", REFUSAL, True, (), (), refused_by="gate: RWKV")
    for tty in (True, False):
        out = _Out(tty)
        cli._render(AnswerStream.of(gate, shown=REFUSAL), out)
        assert out.text.count(REFUSAL) == 1 and "RWKV" in out.text and "来源" not in out.text
    out = _Out(tty=False)
    cli._render(AnswerStream.of(Answer("为什么？", REFUSAL, True, (), (), refused_by="echo"), shown=REFUSAL), out)
    assert out.text.count(REFUSAL) == 1 and "只重复了问题" in out.text
    out = _Out(tty=False)
    cli._render(_stream(REFUSAL + "，但是资料里提到了池化。"), out)
    assert out.text.count(REFUSAL) == 1 and "池化" not in out.text


def _fake_pipeline(monkeypatch, indexed, rewrites):
    from ragbot.pipeline import RagPipeline
    from ragbot.testing import FakeChatModel, FakeEmbedder

    class Model(FakeChatModel):
        def generate(self, messages, **kw):  # the rewriter's call (answers are streamed)
            rewrites.append(messages)
            return "Adam 的 beta2 默认是多少？"

    real = RagPipeline.from_settings.__func__
    monkeypatch.setattr(RagPipeline, "from_settings", classmethod(
        lambda cls, s, **kw: real(cls, indexed, chat_model=Model(), embedder=FakeEmbedder())))


def test_chat_reads_one_question_per_line_and_rewrites_follow_ups(indexed, monkeypatch, capsys):
    import io

    rewrites = []
    _fake_pipeline(monkeypatch, indexed, rewrites)
    monkeypatch.setattr("sys.stdin", io.StringIO("Adam 的 beta1 默认是多少？\n\n那它的 beta2 呢？\n" + "长" * 2001 + "\n"))
    assert cli.main(["chat"]) == 0
    out, err = capsys.readouterr()
    assert out.count("问：") == 3 and out.count("来源：") == 2 and "adam.md" in out
    assert "（按上文理解为：Adam 的 beta2 默认是多少？）" in out
    assert len(rewrites) == 1 and "用户：Adam 的 beta1 默认是多少？" in rewrites[0][-1]["content"]
    assert "error: the question has 2001 characters" in err  # a bad line is reported and the script goes on


def test_chat_json_prints_one_object_per_question(indexed, monkeypatch, capsys):
    import io

    _fake_pipeline(monkeypatch, indexed, [])
    monkeypatch.setattr("sys.stdin", io.StringIO("Adam 的 beta1 默认是多少？\n那它的 beta2 呢？\n"))
    assert cli.main(["chat", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["asked"] for r in rows] == ["Adam 的 beta1 默认是多少？", "那它的 beta2 呢？"]
    assert rows[1]["question"] == "Adam 的 beta2 默认是多少？" and rows[0]["citations"]


def test_the_query_path_does_not_import_ingest(indexed):
    code = ("import sys; from ragbot.pipeline import RagPipeline; from ragbot.settings import Settings; "
            "from ragbot.testing import FakeChatModel, FakeEmbedder; "
            f"s = Settings(home={str(indexed.home)!r}, embedder='fake-embedder', llm='fake-llm'); "
            "p = RagPipeline.from_settings(s, chat_model=FakeChatModel(), embedder=FakeEmbedder()); "
            "a = p.ask('LoRA 的秩常取多少？'); assert a.citations, a; "
            "print(sorted(m for m in sys.modules if m == 'ingest' or m.startswith('ingest.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_index_compact_drops_removed_rows_and_says_so(tmp_path, capsys, monkeypatch):
    docs = _ingested(tmp_path, monkeypatch, ("a", "b", "c"))
    assert cli.main(["index", "remove", str(docs / "a.md")]) == 0
    capsys.readouterr()
    assert cli.main(["index", "versions"]) == 0
    assert "2 files, 2 chunks, 1 segment(s), 1 removed rows" in capsys.readouterr().out.splitlines()[0]
    assert cli.main(["index", "compact"]) == 0
    assert "1 -> 1 segment(s), 1 removed rows dropped" in capsys.readouterr().out
    assert cli.main(["index", "versions"]) == 0
    assert "2 files, 2 chunks, 1 segment(s), 0 removed rows" in capsys.readouterr().out.splitlines()[0]
