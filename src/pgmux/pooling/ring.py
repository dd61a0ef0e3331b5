"""A ring of numeric rows in one flat `array('d')`: the advisor's window of snapshots without an object
per tick (issue 11, RSS after a connection storm).

Why not a deque of Snapshot objects: a row appended every janitor tick and kept for a minute is a
handful of small objects (the row, its floats, its ints above 256) allocated while a storm of clients
comes and goes. CPython's small-object allocator puts them next to the storm's sessions, in the same
1 MiB arenas, and an arena goes back to the OS only when every object in it is freed: a few rows per
arena kept some 9 MB of 10,000 departed clients' arenas resident (bench/memory.py, `--breakdown`
in the README). Here the rows are C doubles in one buffer, allocated once (and doubled while the
window fills) by malloc, never by the small-object allocator: nothing is allocated per tick that
outlives the tick. Integer columns are exact as doubles up to 2**53.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_FIRST = 64  # rows: the first buffer (x columns x 8 bytes is above the small-object limit of 512)


class Ring(Generic[T]):
    """A FIFO of rows of `width` numbers, read back as `make(*row)`; the deque operations the
    advisor uses (append, popleft, len, index from either end, iteration in order), and `drop` and
    `value` to read and forget rows without making their objects."""

    __slots__ = ("width", "make", "buf", "head", "count", "ints")

    def __init__(self, width: int, make: Callable[..., T], ints: tuple[int, ...] = ()) -> None:
        self.width = width
        self.make = make
        self.ints = ints  # the columns read back as int
        self.buf = array("d", bytes(8 * width * _FIRST))
        self.head = 0
        self.count = 0

    def _cap(self) -> int:
        return len(self.buf) // self.width

    def append(self, row: tuple[float, ...]) -> None:
        w = self.width
        if self.count == self._cap():  # twice the rows, oldest first, in the same array object: a new
            old, n = self.buf, self.count  # one made while a storm of clients comes would stay in its arena
            grown = array("d", bytes(16 * w * n))
            for i in range(n):
                j = (self.head + i) % n * w
                grown[i * w:(i + 1) * w] = old[j:j + w]
            self.buf[:] = grown
            self.head = 0
        at = (self.head + self.count) % self._cap() * w
        self.buf[at:at + w] = array("d", row)
        self.count += 1

    def popleft(self) -> T:
        item = self[0]
        self.drop()
        return item

    def drop(self) -> None:
        """popleft without making the row's object."""
        if not self.count:
            raise IndexError("pop from an empty Ring")
        self.head = (self.head + 1) % self._cap()
        self.count -= 1

    def value(self, i: int, col: int) -> float:
        """Column `col` of row `i` (from 0, the oldest), as stored."""
        if not 0 <= i < self.count:
            raise IndexError("Ring index out of range")
        return self.buf[(self.head + i) % self._cap() * self.width + col]

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __getitem__(self, i: int) -> T:
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError("Ring index out of range")
        at = (self.head + i) % self._cap() * self.width
        row: list[float | int] = list(self.buf[at:at + self.width])
        for c in self.ints:
            row[c] = int(row[c])
        return self.make(*row)

    def __iter__(self) -> Iterator[T]:
        for i in range(self.count):
            yield self[i]


def keep(kept: dict[str, array[int]], cur: dict[str, list[int]]) -> None:
    """`kept` made equal to `cur`, in place: the arrays of keys still there are overwritten, so numbers kept
    from one period to the next are C integers in arrays made once, not new objects each period."""
    for db in [db for db in kept if db not in cur]:
        del kept[db]
    for db, vals in cur.items():
        arr = kept.get(db)
        if arr is None or len(arr) != len(vals):
            arr = kept[db] = array("q", bytes(8 * len(vals)))
        for i, v in enumerate(vals):
            arr[i] = v
