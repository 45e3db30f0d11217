"""Micro-batching: concurrent classification requests collected for a few milliseconds into one runtime call.

An ``asyncio.Queue`` feeds one collector task on the server's event loop; it takes what is waiting, waits at most
``max_wait_ms`` for more (up to ``max_batch`` images) - but only while other requests are still being decoded
(:meth:`MicroBatcher.expecting`), so a lone request never waits - and runs ``predict`` on the stacked batch in one
worker thread, so the model is never called from two threads at once. ``max_batch=1`` is the per-request mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


class MicroBatcher:
    def __init__(self, predict: Callable[[Any], Any], max_batch: int = 32, max_wait_ms: float = 3.0,
                 name: str = "model") -> None:
        self.predict = predict
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"meddx-batch-{name}")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # runtime calls made
        self.items = 0  # images they held
        self.incoming = 0  # requests being decoded that will submit an image soon

    @property
    def depth(self) -> int:
        """Images waiting for the next runtime call."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a request's decoding: the collector waits for it (up to ``max_wait_ms``) while it runs."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    async def submit(self, image: Any) -> Any:
        """The model's output row for one image (a tensor of the model's input shape and dtype)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            if self.incoming == 0:  # nobody else is on the way: run now
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [(x, f) for x, f in batch if not f.done()]  # callers that timed out are gone

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            groups: dict[tuple, list[tuple[Any, asyncio.Future]]] = {}
            for x, f in batch:  # images of one dtype and shape stack into one call
                groups.setdefault((str(x.dtype), tuple(x.shape)), []).append((x, f))
            for items in groups.values():
                await self._run(loop, items)

    async def _run(self, loop: asyncio.AbstractEventLoop, items: list[tuple[Any, asyncio.Future]]) -> None:
        import torch

        try:
            out = await loop.run_in_executor(self._executor, self.predict, torch.stack([x for x, _ in items]))
        except Exception as exc:  # every caller of the failed batch gets the error
            for _, f in items:
                if not f.done():
                    f.set_exception(exc)
            return
        self.batches += 1
        self.items += len(items)
        for (_, f), row in zip(items, out):
            if not f.done():
                f.set_result(row)
