"""Upload checks and knowledge-base operations (ui/kb.py), without Streamlit."""

from __future__ import annotations

import pytest

from ragbot.store import IndexStore
from ui.kb import (
    UploadError,
    list_documents,
    sanitize_filename,
    save_upload,
    upload_limit_bytes,
    validate_upload,
)


@pytest.mark.parametrize("name, safe", [
    ("notes.md", "notes.md"),
    ("../../etc/passwd.txt", "passwd.txt"),
    ("..\\..\\windows\\boot.md", "boot.md"),
    ("/abs/path/报告 v2.PDF", "报告 v2.pdf"),
    ("..hidden.md", "hidden.md"),
    ("a..b.md", "a.b.md"),
    ("bad<name>|?*.md", "bad_name.md"),
    ("\x00nul.txt", "nul.txt"),
    ("x" * 300 + ".md", "x" * 97 + ".md"),
    ("ｆｕｌｌｗｉｄｔｈ．ｍｄ", "fullwidth.md"),  # NFKC: a full-width dot is a dot
])
def test_sanitize_keeps_a_safe_base_name(name, safe):
    assert sanitize_filename(name) == safe


@pytest.mark.parametrize("name, message", [
    ("tool.exe", "不支持的文件类型 .exe"),
    ("archive.md.zip", "不支持的文件类型 .zip"),
    ("README", "没有扩展名"),
    ("..", "没有扩展名"),
    ("../", "没有扩展名"),
])
def test_sanitize_refuses_other_types(name, message):
    with pytest.raises(UploadError, match=message):
        sanitize_filename(name)


def test_validate_checks_size_emptiness_and_pdf_magic():
    assert validate_upload("a.md", b"# hi", limit=10) == "a.md"
    with pytest.raises(UploadError, match="超过上限"):
        validate_upload("a.md", b"x" * 11, limit=10)
    with pytest.raises(UploadError, match="空文件"):
        validate_upload("a.md", b"  \n", limit=10)
    with pytest.raises(UploadError, match="不是 PDF"):
        validate_upload("a.pdf", b"<html>", limit=100)
    assert validate_upload("a.pdf", b"%PDF-1.7 ...", limit=100) == "a.pdf"


def test_save_upload_stays_inside_the_directory(tmp_path):
    target = save_upload(tmp_path / "uploads", "../../outside.md", b"# x\n", limit=100)
    assert target == (tmp_path / "uploads" / "outside.md").resolve()
    assert target.read_bytes() == b"# x\n"
    assert not (tmp_path / "outside.md").exists()
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["outside.md"]  # no leftover temp file


def test_upload_limit_from_the_environment():
    assert upload_limit_bytes({}) == 20 * 1024 * 1024
    assert upload_limit_bytes({"RAGBOT_UI_MAX_UPLOAD_MB": "1.5"}) == int(1.5 * 1024 * 1024)
    assert upload_limit_bytes({"RAGBOT_UI_MAX_UPLOAD_MB": "lots"}) == 20 * 1024 * 1024


def fake_embedder_for(settings):
    from ragbot.testing import FakeEmbedder

    return FakeEmbedder(name=settings.embedder)


def test_one_batch_keeps_files_whose_names_collide(tmp_path):
    from ui.kb import save_uploads

    files = [("a/x.md", b"# 1\n"), ("b\\x.md", b"# 2\n"), ("x?.md", b"# 3\n"), ("x*.md", b"# 4\n"), ("X.md", b"# 5\n")]
    saved, rejected = save_uploads(tmp_path, files, limit=100)
    assert [p.name for p in saved] == ["x.md", "x (2).md", "x (3).md", "x (4).md", "X (5).md"] and not rejected
    assert [p.read_bytes() for p in saved] == [data for _, data in files]  # nothing overwritten
    saved, _ = save_uploads(tmp_path, [("x.md", b"# new\n")], limit=100)  # a later batch updates the file
    assert saved == [tmp_path.resolve() / "x.md"] and saved[0].read_bytes() == b"# new\n"
    assert len(list(tmp_path.iterdir())) == 5


def test_a_batch_is_capped_and_bad_files_are_refused_one_by_one(tmp_path):
    from ui.kb import max_upload_files, save_uploads

    files = [("a.md", b"# a\n"), ("b.exe", b"MZ"), ("c.md", b"# c\n"), ("d.md", b"# d\n")]
    saved, rejected = save_uploads(tmp_path, files, limit=100, max_files=3)
    assert [p.name for p in saved] == ["a.md", "c.md"]
    assert [name for name, _ in rejected] == ["b.exe", "d.md"] and "一次最多上传 3 个文件" in rejected[1][1]
    assert max_upload_files({}) == 50 and max_upload_files({"RAGBOT_UI_MAX_UPLOAD_FILES": "5"}) == 5
    assert max_upload_files({"RAGBOT_UI_MAX_UPLOAD_FILES": "many"}) == 50
    assert max_upload_files({"RAGBOT_UI_MAX_UPLOAD_FILES": "0"}) == 1


def test_each_write_has_its_own_temp_file_removed_on_error(tmp_path, monkeypatch):
    import os

    temps = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: temps.append(src) or replace(src, dst))
    save_upload(tmp_path, "same.md", b"# one\n", limit=100)
    save_upload(tmp_path, "same.md", b"# two\n", limit=100)
    assert len(set(temps)) == 2 and all(str(t).endswith(".part") for t in temps)

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        save_upload(tmp_path, "same.md", b"# three\n", limit=100)
    assert [p.name for p in tmp_path.iterdir()] == ["same.md"] and (tmp_path / "same.md").read_bytes() == b"# two\n"


def test_long_cjk_names_fit_the_file_system():
    name = sanitize_filename("报" * 300 + ".md")
    assert len(name.encode()) <= 200 and name.endswith(".md")
    from ui.kb import unique_name

    assert unique_name(name, {name.casefold()}).endswith(" (2).md") and len(unique_name(name, {name}).encode()) <= 200


def test_a_reingest_that_would_drop_most_files_waits_for_force(indexed, corpus):
    from ui.kb import Request, perform

    (corpus / "lora.md").unlink()
    (corpus / "adam.md").unlink()
    outcome = perform(indexed, fake_embedder_for, Request("reingest"))
    assert outcome.kind == "confirm" and outcome.total == 3
    assert sorted(outcome.dropped) == [("adam.md", "not found"), ("lora.md", "not found")]
    assert len(IndexStore.load(indexed.index_path).manifest.files) == 3  # not published
    assert outcome.request is not None and not outcome.request.force
    outcome = perform(indexed, fake_embedder_for, Request("reingest", force=True))
    assert outcome.kind in ("success", "info")
    assert [r.source for r in IndexStore.load(indexed.index_path).manifest.files.values()] == ["unsafe.md"]


def test_identical_copies_are_listed_under_the_document_they_share(tmp_path):
    from ragbot.testing import FakeEmbedder
    from ingest.pipeline import IngestPipeline
    from ragbot.settings import Settings
    from ui.kb import documents_frame, list_documents

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# 标题\n\n同样的内容。\n", encoding="utf-8")
    (docs / "b.md").write_text("# 标题\n\n同样的内容。\n", encoding="utf-8")
    settings = Settings(home=tmp_path / "home")
    IngestPipeline.from_settings(settings, FakeEmbedder()).run([docs], settings.index_path)
    rows = list_documents(settings)
    assert len(rows) == 1 and rows[0].source == "a.md" and rows[0].aliases == ("b.md",)
    assert documents_frame(rows)["文件"][0] == "a.md\n= b.md"
