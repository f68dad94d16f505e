"""The full online-store interface: the pipeline's read side plus ingest."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ranking.store import FeedStateReader
from stores.events import Event, EventValidationError

LONGEST_DEDUPE_TTL = 10**12
"""The longest time an applied event id may be remembered, in seconds (31,700 years), on
either store: Redis refuses SET ... EX past about 9.2e15 s, at every Ingest. A TTL meant
as forever is 0."""


@dataclass(frozen=True)
class ApplyResult:
    """How many events of a batch changed state, and how many were already applied."""

    applied: int
    duplicates: int


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or did not answer in time."""


class StoreFull(StoreUnavailable):
    """The store refused a write for want of memory (Redis at ``maxmemory`` under
    ``noeviction``): reads still work, and the write was not applied (a batch applied in
    chunks or per slot may be in part; retrying it is safe)."""


class StoreForbidden(StoreUnavailable):
    """The store refuses this server a command or a key (a Redis ACL user without the
    permission): nothing a client sent is at fault, and no retry succeeds until an operator
    grants it. ``refused``: what was refused, naming no host (for clients)."""

    def __init__(self, message: str, refused: str = "") -> None:
        super().__init__(message)
        self.refused = refused or message


class NotReplicated(StoreUnavailable):
    """A batch was applied on the primaries but fewer replicas than asked confirmed it in time.
    ``for_clients``: the message naming no host."""

    def __init__(self, message: str, for_clients: str = "") -> None:
        super().__init__(message)
        self.for_clients = for_clients or message


class TooFewReplicas(Exception):
    """``min_replicas`` asks for more replicas than a primary has attached: nothing was
    written. ``retryable``: the replicas attached may change by themselves (a replica
    restarting, a failed primary rejoining as its successor's replica), so the same call may
    succeed later; False when the store can have none. The message names the field;
    ``for_clients``: what is wrong, naming no host."""

    def __init__(self, problem: str, for_clients: str = "", retryable: bool = True) -> None:
        super().__init__(f"min_replicas: {problem}")
        self.for_clients = for_clients or problem
        self.retryable = retryable


def no_replicas(min_replicas: int) -> None:
    """For a store without replicas: refuse a request to wait for some."""
    if min_replicas < 0:
        raise EventValidationError(None, "min_replicas", "must be >= 0")
    if min_replicas:
        raise TooFewReplicas(f"{min_replicas} asked, but this store has no replicas; send 0", retryable=False)


class FeedStore(FeedStateReader, Protocol):
    """A live store of items, likes, follows, friendships, stock and hidden items."""

    def apply(self, events: Sequence[Event], min_replicas: int = 0) -> ApplyResult:
        """Apply a validated batch atomically, in order.

        ``min_replicas`` > 0 returns only once that many replicas hold the batch (raises
        NotReplicated when fewer confirm in time); when fewer replicas are attached, or the
        store has none, it raises TooFewReplicas before writing anything.

        Idempotent by event id: an event whose id was applied before changes nothing and
        is counted in ``duplicates``. Returns only once the change is durable in the store.
        Raises StoreUnavailable when the store cannot be reached.
        """
        ...

    def applied_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        """The ids among ``event_ids`` whose events this store applied (and still remembers,
        within its dedupe TTL): a retry of one changes nothing, whatever it carries."""
        ...

    def ping(self) -> bool:
        """True when the store answers."""
        ...

    def close(self) -> None:
        ...


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building millions of small objects (ids, sets, lists):
    each burst of allocations otherwise triggers collections that walk the whole heap,
    which triples a dataset's load time and made 136k friend sets take 6.6 s. Nothing
    built under it makes cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
