"""Long knowledge-base operations in a worker thread, so that a click cannot cut one off half-way.

Streamlit stops a script run at its next ``st.*`` call when the user clicks anything, so an ingest
run inside the script could stop between the main index and a variant's, or leave uploaded files
unindexed. A :class:`Job` runs its work in a thread of its own instead: the script starts it and,
on every rerun, draws the progress the worker records (:class:`ui.progress.RecordingProgress`)
until the job ends, then shows its outcome. The worker never calls ``st.*``.

:class:`JobRegistry` is one object per server (``ui.resources.get_jobs`` holds it in
``st.cache_resource``) and runs at most one job per key (an index path) at a time; a second is
refused with :class:`JobBusyError`. It keeps the latest job of each key, finished or not, so that
the page can still read a result after the job is over.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ragbot.errors import RagbotError
from ui.progress import RecordingProgress


class JobBusyError(RagbotError):
    """A job on the same index is still running (the message says which, in the UI's language)."""


@dataclass
class Job:
    """One run of ``work(progress)``; ``result`` or ``error`` is set when :attr:`done`."""

    key: str
    label: str
    progress: RecordingProgress = field(default_factory=RecordingProgress)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None
    error: BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


class JobRegistry:
    """``registry.start("index path", "导入文档", work)`` runs ``work(progress)`` in a thread; one job per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def start(self, key: str, label: str, work: Callable[[RecordingProgress], Any]) -> Job:
        with self._lock:
            running = self._jobs.get(key)
            if running is not None and not running.done:
                raise JobBusyError(f"“{running.label}”还在进行中（已 {running.elapsed():.0f} 秒），请等它完成后再试。")
            job = self._jobs[key] = Job(key, label)
        # not a daemon: stopping the server lets a running ingest finish and publish instead of killing it mid-way
        threading.Thread(target=self._run, args=(job, work), name=f"ragbot-job-{job.id[:8]}").start()
        return job

    def get(self, key: str) -> Job | None:
        """The latest job on ``key`` (running or finished), if any."""
        with self._lock:
            return self._jobs.get(key)

    @staticmethod
    def _run(job: Job, work: Callable[[RecordingProgress], Any]) -> None:
        try:
            job.result = work(job.progress)
        except BaseException as e:  # kept for the page to show; nothing else would see it
            job.error = e
        finally:
            job.finished_at = time.time()
            job._done.set()
