"""End to end in a real headless Chromium: the app on localhost with the real offline models.

Upload a document holding an invented fact, ask about it, watch the streamed answer, open its
citation; cast an Elo vote and see the leaderboard; run a 3-question ROUGE evaluation. Screenshots
of every tab go to ``test-output/ui/`` (git-ignored) for a person to look at.

Needs Debian's ``chromium`` (``scripts/install_browser.sh``) and the ``playwright`` Python package
(the ``dev`` extra); it is skipped with the reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.llm,
              pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "ui"
FACT_DOC = """# 星河实验室内部手册

## 代号与启用时间

星河实验室的内部项目代号是“青鸾七号”，于 2031 年 3 月正式启用。

## 附录

<script>window.__xss=2</script> <img src=x onerror="window.__xss=1">
"""  # the appendix shows up as the cited passage's surrounding text: it must stay text
QUESTION = "星河实验室的内部项目代号是什么？"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (run scripts/install_browser.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"))
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir, sample_index):
    """``streamlit run ui/app.py`` with RAGBOT_HOME in tmp: the real models (symlinked) and the corpus index (copied)."""
    home = tmp_path_factory.mktemp("browser-home")
    (home / "models").symlink_to(Path(models_dir).resolve(), target_is_directory=True)
    shutil.copytree(sample_index, home / "index", ignore=shutil.ignore_patterns(".lock"))
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBOT_")}
    env.update(RAGBOT_HOME=str(home), RAGBOT_MAX_NEW_TOKENS="80", RAGBOT_DEVICE="cpu",
               RAGBOT_UI_CORPUS=str(ROOT / "corpus"))
    log = open(OUT / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.maxUploadSize", "20", "--client.toolbarMode", "viewer", "--server.fileWatcherType", "none"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}; see {OUT / 'server.log'}")
            time.sleep(0.25)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not become healthy; see {OUT / 'server.log'}")
    yield url, home
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    yield page
    if not page.is_closed():  # the test failed midway: keep what the page looked like
        page.screenshot(path=str(OUT / "failure.png"), full_page=True)
        page.close()


def test_upload_ask_cite_vote_and_evaluate(server, page):
    from playwright.sync_api import expect

    url, home = server
    page.set_default_timeout(30_000)
    timings = {}

    def idle() -> None:
        """Wait until the script run has finished (Streamlit shows a running indicator until then)."""
        page.wait_for_timeout(200)
        expect(page.locator('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]')
               ).to_have_count(0, timeout=240_000)

    def shot(name: str) -> None:
        """Screenshot of the whole tab: the app scrolls inside its main block, so grow the viewport to fit it."""
        idle()
        height = page.evaluate("document.querySelector('[data-testid=stMainBlockContainer]')?.scrollHeight || 0")
        page.set_viewport_size({"width": 1440, "height": int(min(max(1000, height + 60), 6000))})
        page.wait_for_timeout(400)
        page.screenshot(path=str(OUT / f"{name}.png"), animations="disabled")
        page.set_viewport_size({"width": 1440, "height": 1000})

    t0 = time.perf_counter()
    page.goto(url)
    expect(page.get_by_text("有什么想问的？")).to_be_visible()
    expect(page.get_by_role("tab", name="问答")).to_be_visible()
    shot("0-start")

    # ---- knowledge base: upload a document with an invented fact
    doc = OUT / "星河实验室手册.md"
    doc.write_text(FACT_DOC, encoding="utf-8")
    page.get_by_role("tab", name="知识库").click()
    page.locator(".st-key-kb_files_0 input[type=file]").set_input_files(str(doc))
    expect(page.locator(".st-key-kb_ingest button")).to_be_enabled()
    page.locator(".st-key-kb_ingest button").click()
    expect(page.get_by_text("导入完成：新增 1 个")).to_be_visible(timeout=120_000)
    expect(page.locator("[data-testid=stDataFrame] td").first).to_have_text("星河实验室手册.md")  # newest first
    expect(page.get_by_text("知识库：25 个文档")).to_be_visible()
    assert (home / "uploads" / "星河实验室手册.md").is_file()
    timings["upload"] = time.perf_counter() - t0
    shot("2-knowledge-base")

    # ---- chat: the streamed answer cites the new document; its citation opens the passage
    t = time.perf_counter()
    page.get_by_role("tab", name="问答").click()
    # two passages: what this test checks is the app, and a 0.5B model is steadier with less to read
    thumb = page.locator('.st-key-opt_top_k input[type="range"]')
    thumb.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    expect(thumb).to_have_value("2")
    idle()
    box = page.locator('[data-testid="stChatInputTextArea"]')
    box.fill(QUESTION)
    box.press("Enter")
    assistant = page.locator('[data-testid="stChatMessage"]').filter(
        has=page.locator('[data-testid="stChatMessageAvatarAssistant"]')).last
    expect(assistant.get_by_text("调试信息")).to_be_visible(timeout=180_000)  # shown once the stream has ended
    answer_text = assistant.locator('[data-testid="stChatMessageContent"]').inner_text()
    assert "青鸾" in answer_text, answer_text
    idle()  # the final rendering replaces the streamed text: click what stays
    link = assistant.locator('a[href^="#cite-0-"]').first
    expect(link).to_be_visible()
    title = link.get_attribute("title") or ""
    assert "星河实验室手册.md" in title, title  # hover shows file and heading path
    passage = page.locator(link.get_attribute("href"))
    expect(passage).to_be_hidden()
    link.click()
    expect(passage).to_be_visible()  # following the link opened the card
    expect(passage).to_contain_text("青鸾七号")
    assert passage.locator("mark").count() >= 1  # the supporting sentence is highlighted
    card = assistant.locator("details").filter(has=passage)
    expect(card.locator("summary")).to_contain_text("星河实验室手册.md")
    expect(card.locator("summary")).to_contain_text("代号与启用时间")
    expect(passage).to_contain_text('<img src=x onerror="window.__xss=1">')  # shown as text
    assert page.evaluate("window.__xss") is None and page.locator("img[src=x]").count() == 0
    timings["chat"] = time.perf_counter() - t
    assistant.locator('[data-testid="stExpander"] summary').filter(has_text="调试信息").click()
    expect(assistant.get_by_text("检索用的问题")).to_be_visible()
    shot("1-chat")

    # ---- Elo: a blind round, a vote, names revealed, the leaderboard updated
    t = time.perf_counter()
    page.get_by_role("tab", name="Elo").click()
    question = page.locator(".st-key-arena_question input")
    question.fill(QUESTION)
    question.press("Enter")
    expect(page.locator(".st-key-arena_go button")).to_be_enabled()
    page.locator(".st-key-arena_go button").click()
    expect(page.locator(".st-key-arena_vote_a button")).to_be_visible(timeout=180_000)
    expect(page.get_by_text("已记录你的投票")).to_have_count(0)
    expect(page.get_by_text("还没有投票")).to_be_visible()
    page.locator(".st-key-arena_vote_a button").click()
    expect(page.get_by_text("已记录你的投票")).to_be_visible()
    expect(page.get_by_text("共 1 票（人工 1 票")).to_be_visible()
    board = page.get_by_role("tabpanel", name="Elo").locator("[data-testid=stDataFrame]").first.locator("td")
    expect(board.filter(has_text="ragbot")).to_have_count(1)
    expect(board.filter(has_text="llm-only")).to_have_count(1)
    timings["elo"] = time.perf_counter() - t
    shot("4-elo")

    # ---- ROUGE: 3 questions from the bundled set, then the tables
    t = time.perf_counter()
    page.get_by_role("tab", name="ROUGE").click()
    limit = page.locator(".st-key-ev_limit input")
    limit.fill("3")
    limit.press("Enter")
    expect(limit).to_have_value("3")
    page.locator(".st-key-ev_run button").click()
    expect(page.get_by_text("逐题结果")).to_be_visible(timeout=240_000)
    expect(page.get_by_text("共 3 行")).to_be_visible()
    expect(page.get_by_text("对比表")).to_be_visible()
    timings["rouge"] = time.perf_counter() - t
    shot("3-rouge")
    page.close()
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    log = (OUT / "server.log").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log, f"the app logged an error; see {OUT / 'server.log'}"
