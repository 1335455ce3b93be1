"""The background job registry (ui/jobs.py), without Streamlit."""

from __future__ import annotations

import threading
import time

import pytest

from ui.jobs import JobBusyError, JobRegistry


def test_a_job_runs_to_the_end_with_nobody_polling():
    registry = JobRegistry()

    def work(progress):
        for _ in progress(range(5), desc="files", unit="file"):
            time.sleep(0.01)
        return 42

    job = registry.start("index-a", "导入文档", work)
    assert job.wait(10) and job.done and job.result == 42 and job.error is None
    assert [(b.done, b.total) for b in job.progress.bars()] == [(5, 5)]
    assert registry.get("index-a") is job and job.finished_at >= job.started_at


def test_one_job_per_index_at_a_time():
    registry, gate = JobRegistry(), threading.Event()
    first = registry.start("index-a", "重新导入全部文档", lambda progress: gate.wait(10))
    with pytest.raises(JobBusyError, match="“重新导入全部文档”还在进行中"):
        registry.start("index-a", "导入文档", lambda progress: None)
    other = registry.start("index-b", "导入文档", lambda progress: "b")  # another index is free
    assert other.wait(10) and other.result == "b"
    gate.set()
    assert first.wait(10) and first.result is True
    again = registry.start("index-a", "导入文档", lambda progress: "again")  # free once the first has ended
    assert again.wait(10) and again.result == "again" and registry.get("index-a") is again


def test_an_error_is_kept_for_the_page():
    def boom(progress):
        raise RuntimeError("disk on fire")

    job = JobRegistry().start("index-a", "导入文档", boom)
    assert job.wait(10) and job.result is None and str(job.error) == "disk on fire"
