"""Progress factories (ui/progress.py): the recording one is safe to update from worker threads."""

from __future__ import annotations

import threading

from ui.progress import BarState, RecordingProgress, bar_text


def test_recording_progress_counts_like_tqdm():
    progress = RecordingProgress()
    assert list(progress(["a", "b"], desc="files", unit="file")) == ["a", "b"]
    bar = progress(total=10, desc="embed", unit="chunk")
    bar.update(4)
    assert progress.bars() == [BarState("files", "file", 2, 2), BarState("embed", "chunk", 4, 10)]
    bar.close()
    progress(total=3, desc="embed", unit="chunk")  # the same desc again starts that bar over
    assert progress.bars()[1] == BarState("embed", "chunk", 0, 3)
    assert bar_text(BarState("embed", "chunk", 4, 10)) == "向量化：4/10"


def test_recording_progress_is_thread_safe():
    progress = RecordingProgress()
    bar = progress(total=8000, desc="embed", unit="chunk")

    def worker():
        for _ in range(2000):
            bar.update(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    seen = [progress.bars() for _ in range(200)]  # reading while they write
    for t in threads:
        t.join()
    assert progress.bars()[0].done == 8000 and all(s[0].done <= 8000 for s in seen)
