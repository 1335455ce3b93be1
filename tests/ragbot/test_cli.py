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


def test_answer_to_json_shape():
    from ragbot.types import Answer, Chunk, Citation, ScoredChunk

    chunk = Chunk("c1", "d", "文本", "a.md", 2, ("H",))
    answer = Answer("q", "答 [1]", False, (Citation(1, chunk),), (ScoredChunk(chunk, 0.5, "fused"),),
                    timings_ms={"retrieval_ms": 1.234})
    d = json.loads(json.dumps(cli.answer_to_json(answer), ensure_ascii=False))
    assert set(d) >= {"question", "answer", "refused", "citations", "hits", "timings_ms"}
    assert d["citations"][0] == {"n": 1, "chunk_id": "c1", "source": "a.md", "page": 2, "heading": "H", "text": "文本"}
    assert d["hits"][0]["score"] == 0.5 and d["timings_ms"]["retrieval_ms"] == 1.2
