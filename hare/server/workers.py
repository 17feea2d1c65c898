"""The bounded pool of synthesis threads: jobs queue to a fixed number of workers, a full queue is `Busy`
(503 with Retry-After), and a job whose client went away is cancelled."""

import concurrent.futures
import math
import queue
import threading
import time
from typing import Any, Callable


class Busy(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy, retry after {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """The client went away; the job stopped."""


class WorkerPool:
    """`workers` threads take jobs from a queue holding at most `max_queue` waiting jobs.

    A job is `fn(cancel: threading.Event)`; it should check `cancel` between steps. `submit` returns a
    concurrent Future; cancelling that future before a worker picks the job up frees its queue slot at once.
    """

    def __init__(self, workers: int = 1, max_queue: int = 8):
        if workers < 1 or max_queue < 0:
            raise ValueError("workers must be >= 1 and max_queue >= 0")
        self.workers = workers
        self.max_queue = max_queue
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._avg_seconds = 1.0  # moving average of a job's run time, for Retry-After
        self.completed = 0
        self.cancelled = 0
        self.rejected = 0
        self._threads = [threading.Thread(target=self._work, name=f"hare-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def stats(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "running": self._running, "queued": self._waiting,
                    "max_queue": self.max_queue, "completed": self.completed, "cancelled": self.cancelled,
                    "rejected": self.rejected}

    def retry_after(self) -> int:
        with self._lock:
            backlog = self._waiting + self._running
            return max(1, math.ceil(self._avg_seconds * backlog / self.workers))

    def submit(self, fn: Callable[[threading.Event], Any]) -> tuple[concurrent.futures.Future, threading.Event]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        cancel = threading.Event()
        with self._lock:
            busy = self._waiting + self._running >= self.workers + self.max_queue
            if busy:
                self.rejected += 1
            else:
                self._waiting += 1
        if busy:
            raise Busy(self.retry_after())
        future.add_done_callback(self._on_done)
        self._jobs.put((fn, future, cancel))
        return future, cancel

    def _on_done(self, future: concurrent.futures.Future) -> None:
        if future.cancelled():  # cancelled while waiting: give the slot back now
            with self._lock:
                self._waiting -= 1
                self.cancelled += 1

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, future, cancel = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued (already counted in _on_done)
            with self._lock:
                self._waiting -= 1
                self._running += 1
            start = time.perf_counter()
            result, error = None, None
            try:
                result = fn(cancel)
            except BaseException as exc:  # delivered to the waiting request
                error = exc
            seconds = time.perf_counter() - start
            with self._lock:  # counts first, so that whoever sees the result also sees them
                self._running -= 1
                if cancel.is_set():
                    self.cancelled += 1
                else:
                    self.completed += 1
                    self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
