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


def test_a_mistyped_rebuild_is_refused_in_one_line_and_rollback_restores_a_forced_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    monkeypatch.setenv("RAGBOT_VERSION_GRACE_S", "0")
    _fake_embedder(monkeypatch)
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in ("a", "b"):
        (docs / f"{n}.md").write_text(f"# {n}\n\n第 {n} 篇文档的内容。\n", encoding="utf-8")
    assert cli.main(["ingest", str(docs)]) == 0
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
