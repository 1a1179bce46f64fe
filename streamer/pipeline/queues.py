"""The two queue policies between stages.

`LatestQueue` is for live sources: `put` never waits, a full queue drops its *oldest* frame
and counts it, so latency cannot build up. `LosslessQueue` is for files: `put` waits while
the queue is full (backpressure), so every frame arrives in order.

Both carry `END` after the last frame. `END` is never dropped and takes no frame's place (the
frames still waiting are the stream's last, which a recording must keep): a stage that reads it
passes it on and stops, so end of stream drains every stage in order. Depths count frames only.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class _End:
    def __repr__(self) -> str:
        return "END"


END: Any = _End()


class _Queue:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.dropped = 0
        self.max_depth = 0
        self._items: collections.deque = collections.deque()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def _append(self, item: Any) -> None:
        self._items.append(item)
        if item is not END:
            self.max_depth = max(self.max_depth, len(self._items))
        self._changed.set()

    async def get(self) -> Any:
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        item = self._items.popleft()
        self._changed.set()
        return item

    def get_nowait(self) -> Any:
        """The next item, or raise asyncio.QueueEmpty."""
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        self._changed.set()
        return item


class LatestQueue(_Queue):
    """Bounded queue whose `put` never blocks: the oldest frame makes room and is counted."""

    def __init__(self, maxsize: int = 1) -> None:
        super().__init__(maxsize)

    def put_nowait(self, item: Any) -> None:
        if item is not END and len(self._items) >= self.maxsize:
            # Drop the oldest *frame*; END is kept so the stream still ends.
            for i, old in enumerate(self._items):
                if old is not END:
                    del self._items[i]
                    self.dropped += 1
                    break
        self._append(item)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)


class LosslessQueue(_Queue):
    """Bounded queue whose `put` waits for room: nothing is dropped."""

    def __init__(self, maxsize: int = 4) -> None:
        super().__init__(maxsize)

    async def put(self, item: Any) -> None:
        while len(self._items) >= self.maxsize:
            self._changed.clear()
            await self._changed.wait()
        self._append(item)


def make_queue(live: bool, maxsize: int) -> LatestQueue | LosslessQueue:
    return LatestQueue(maxsize) if live else LosslessQueue(maxsize)
