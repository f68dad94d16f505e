"""Online stores: the event vocabulary, the FeedStore interface and its implementations.

The embedded memory store is used by training (replaying the feed over a split) and by
serving (the default store), so it lives below both: neither imports the other for it.
"""

from __future__ import annotations

from stores.base import ApplyResult, FeedStore, StoreUnavailable

__all__ = ["ApplyResult", "FeedStore", "StoreUnavailable"]
