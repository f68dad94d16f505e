"""A/B arms: a TOML file that splits users by a hash of their id, free of gRPC.

    salt = "exp-2026-12"          # required; changing it reshuffles every user
    [[arm]]
    name = "control"
    share = 0.5                   # shares are positive and sum to 1
    # no model: the version models/CURRENT points at (also: model = "current")
    [[arm]]
    name = "cat-cap"
    share = 0.5
    model = "20261201T120000Z-3f9a1c"   # a version directory under --models
    [arm.feed]
    max_per_category = 1          # any FeedSettings field; the rest come from the server's flags

An arm's model is served on the candidate pools its manifest records, as the main model is
(serving.feed_service): a pool setting wins over them only when the server's flags or the
arm's ``[arm.feed]`` set it.

A user's bucket is a keyed hash of (salt, user id) modulo ``BUCKETS``; the arms take
contiguous bucket ranges in file order, by cumulative share. The assignment is a pure
function of the salt, the shares and the user id: stable across requests, restarts and
worker processes, and independent of the models or feed settings. A file with no
``[[arm]]`` tables turns the experiment off (responses name no arm).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ranking.feed import SOURCE_NAMES, FeedSettings, unknown_sources
from serving.config import toml_syntax_error
from training.artifact import MANIFEST, Artifact, load_version, newest_first

BUCKETS = 10_000
CURRENT_MODEL = "current"
SHARE_TOLERANCE = 1e-9
_TOP_KEYS = ("salt", "arm")
_ARM_KEYS = ("name", "share", "model", "feed")
_FEED_DEFAULTS = {f.name: getattr(FeedSettings(), f.name) for f in dataclasses.fields(FeedSettings)}


class ArmsConfigError(ValueError):
    """The arms file is malformed or names a model that does not exist; the message names the file."""


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    model: str | None  # a version under the models directory; None: follow CURRENT
    settings: FeedSettings  # the server's flags with the arm's [arm.feed] overrides applied
    buckets: range  # the buckets of users assigned to this arm
    feed_keys: frozenset[str] = frozenset()  # the settings its [arm.feed] sets: they win over its model's pools
    model_line: int | None = None  # the line of its 'model' key in the file, for messages


@dataclass(frozen=True)
class Arms:
    salt: str
    arms: tuple[Arm, ...]
    source: str = "<arms>"  # the file they were read from, for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", [arm.buckets.stop for arm in self.arms])
        object.__setattr__(self, "_hasher", _salted(self.salt))

    def assign(self, user_id: str) -> Arm | None:
        """The arm of ``user_id``; None when the file defines no arms."""
        if not self.arms:
            return None
        return self.arms[bisect.bisect_right(self._ends, _bucket(self._hasher, user_id))]

    def pinned_versions(self) -> set[str]:
        return {arm.model for arm in self.arms if arm.model is not None}


def bucket_of(salt: str, user_id: str) -> int:
    """A stable bucket in [0, BUCKETS) for ``user_id`` under ``salt`` (64-bit BLAKE2b keyed by the salt)."""
    return _bucket(_salted(salt), user_id)


def _salted(salt: str) -> Any:
    """BLAKE2b keyed by (a digest of) the salt: any salt length, kept apart from the id."""
    return hashlib.blake2b(digest_size=8, key=hashlib.blake2b(salt.encode()).digest())


def _bucket(salted: Any, user_id: str) -> int:
    hasher = salted.copy()
    hasher.update(user_id.encode())
    return int.from_bytes(hasher.digest(), "big") % BUCKETS


def load_arms(path: str, base: FeedSettings = FeedSettings()) -> Arms:
    """Read and validate an arms file; ArmsConfigError (or OSError) names the file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_arms(text, path, base)


def parse_arms(text: str, source: str = "<arms>", base: FeedSettings = FeedSettings()) -> Arms:
    """Parse the TOML of an arms file; ``base`` supplies the feed settings an arm leaves out."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ArmsConfigError(toml_syntax_error(source, error)) from None
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*arm\s*\]\]", line)]

    def fail(message: str, key: str | None = None, after: int | None = None) -> ArmsConfigError:
        return ArmsConfigError(_located(source, _key_line(lines, headers, key, after) if key else None, message))

    _reject_unknown(document, _TOP_KEYS, "at the top level", fail)
    tables = document.get("arm", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("'arm' must be an array of tables: write each arm as an [[arm]] table", "arm")
    if not tables:
        return Arms(str(document.get("salt", "")), (), source)
    salt = document.get("salt")
    if not isinstance(salt, str) or not salt:
        raise fail("'salt' must be a non-empty string (changing it reshuffles users between arms)", "salt")

    parsed: list[tuple[str, float, str | None, FeedSettings, frozenset[str]]] = []
    for index, table in enumerate(tables):
        after = headers[index] if index < len(headers) else None
        label = f"arm {index + 1}" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) and table["name"].strip() else "")
        _reject_unknown(table, _ARM_KEYS, f"in {label}", fail, after)
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise fail(f"{label}: 'name' must be a non-empty string", "name", after)
        if name in (p[0] for p in parsed):
            raise fail(f"{label}: the name {name!r} is used by another arm; names must be unique", "name", after)
        share = table.get("share")
        if share is None:
            raise fail(f"{label}: 'share' is missing: each arm takes a positive share of the users, the shares summing to 1", "share", after)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not (math.isfinite(share) and share > 0):
            raise fail(f"{label}: 'share' must be a positive number, got {share!r}", "share", after)
        model = table.get("model", CURRENT_MODEL)
        if not isinstance(model, str) or not model or model != model.strip() or "/" in model or os.sep in model or model.startswith("."):
            raise fail(f"{label}: 'model' must be a version directory name under the models directory, or {CURRENT_MODEL!r}", "model", after)
        feed = table.get("feed", {})
        if not isinstance(feed, dict):
            raise fail(f"{label}: 'feed' must be a table ([arm.feed]) of feed settings", "feed", after)
        _reject_unknown(feed, tuple(_FEED_DEFAULTS), f"in the feed settings of {label}", fail, after)
        try:
            settings = dataclasses.replace(base, **{key: _feed_value(key, value) for key, value in feed.items()})
            _validate_settings(settings)
            if "fallback_sources" in feed:
                _check_fallback_among_sources(settings)
        except ValueError as error:
            raise fail(f"{label}: feed: {error}", str(error).split(":", 1)[0], after) from None
        parsed.append((name, float(share), None if model == CURRENT_MODEL else model, settings, frozenset(feed)))

    total = math.fsum(p[1] for p in parsed)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise fail(f"the arms' shares sum to {total:.12g}; they must sum to 1")
    arms, cumulative, start = [], 0.0, 0
    for position, (name, share, model, settings, feed_keys) in enumerate(parsed):
        cumulative += share
        stop = BUCKETS if position == len(parsed) - 1 else round(cumulative * BUCKETS)
        header = headers[position] if position < len(headers) else None
        if stop <= start:
            raise fail(f"arm {name!r}: share {share} is below the resolution of 1/{BUCKETS}", "share", header)
        model_line = _key_line(lines, headers, "model", header) if model else None
        arms.append(Arm(name, share, model, settings, range(start, stop), feed_keys, model_line))
        start = stop
    return Arms(salt, tuple(arms), source)


def check_versions(arms: Arms, models_dir: str) -> None:
    """ArmsConfigError naming the first pinned model version missing from ``models_dir``."""
    for arm in arms.arms:
        if arm.model is not None and not os.path.isfile(os.path.join(models_dir, arm.model, MANIFEST)):
            raise ArmsConfigError(_located(arms.source, arm.model_line, f"arm {arm.name!r}: no model version {arm.model!r} in {models_dir}"))


def published_versions(models_dir: str) -> list[str]:
    """The model versions published in ``models_dir``, newest first (``newest_first``)."""
    try:
        names = os.listdir(models_dir)
    except FileNotFoundError:
        return []
    return newest_first(models_dir, [n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(models_dir, n, MANIFEST))])


def load_named_version(models_dir: str, version: str) -> Artifact:
    """A published version by name: only a version directory of ``models_dir``, never another path."""
    if version not in published_versions(models_dir):
        raise FileNotFoundError(f"no model version {version!r} in {models_dir}")
    return load_version(os.path.join(models_dir, version))


def load_pinned(arms: Arms | None, models_dir: str, loaded: Mapping[str, Artifact] = {}) -> dict[str, Artifact]:
    """The artifacts of the versions the arms pin, by version; reuses those in ``loaded``."""
    if arms is None:
        return {}
    check_versions(arms, models_dir)
    pinned = {}
    for version in sorted(arms.pinned_versions()):
        pinned[version] = loaded.get(version) or load_version(os.path.join(models_dir, version))
    return pinned


def describe(arms: Arms) -> str:
    return ", ".join(f"{a.name}={a.share:g} ({a.model or CURRENT_MODEL})" for a in arms.arms) or "none"


def _feed_value(key: str, value: Any) -> Any:
    default = _FEED_DEFAULTS[key]
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: must be an array of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key}: must be a non-negative number, got {value!r}")
        _check_flag_bounds(key, value)
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: must be a non-negative integer, got {value!r}")
    _check_flag_bounds(key, value)
    return value


def _check_flag_bounds(key: str, value: float) -> None:
    """The bounds the key's server flag has: an arm takes what the flag takes, no more
    (per_key_limit 0, say, which the flag refuses, would have slipped through)."""
    from serving.config import FLAGS_BY_DEST

    flag = FLAGS_BY_DEST.get(key)
    if flag is None:
        return
    if flag.minimum is not None and value < flag.minimum:
        raise ValueError(f"{key}: must be >= {flag.minimum:g} (as {flag.flag}), got {value!r}")
    if flag.maximum is not None and value > flag.maximum:
        raise ValueError(f"{key}: must be <= {flag.maximum:g} (as {flag.flag}), got {value!r}")


def _validate_settings(settings: FeedSettings) -> None:
    if settings.max_per_seller < 1:
        raise ValueError(f"max_per_seller: must be >= 1, got {settings.max_per_seller}")
    for key in ("sources", "fallback_sources"):
        unknown = unknown_sources(getattr(settings, key))
        if unknown:
            raise ValueError(f"{key}: unknown {unknown}; choose from {list(SOURCE_NAMES)}")


def _located(source: str, line: int | None, message: str) -> str:
    return f"{source}: {f'line {line}: ' if line else ''}{message}"


def _check_fallback_among_sources(settings: FeedSettings) -> None:
    """As --fallback-sources given is checked (serving.config): a fallback source that is
    none of the sources never runs, and the sources it was to back up run always."""
    stray = [name for name in settings.fallback_sources if name not in settings.sources]
    if stray:
        raise ValueError(f"fallback_sources: {', '.join(stray)} is not among the sources ({', '.join(settings.sources)}): "
                         "a fallback source is one of the sources, run only when the others gather too few candidates")


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str, fail: Any, after: int | None = None) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"unknown key {key!r} {where}; expected one of: {', '.join(allowed)}", key, after)


def _key_line(lines: list[str], headers: list[int], key: str, after: int | None) -> int | None:
    """The 1-based line that sets ``key`` in the arm whose [[arm]] header is at line index
    ``after`` (None: at the top level), up to the next header: a key an arm lacks is not the
    next arm's. The arm's header line when it lacks the key."""
    start = 0 if after is None else after
    end = next((header for header in headers if header > start), len(lines))
    line = _line_of(lines, key, start, end)
    return line if line is not None or after is None else after + 1


def _line_of(lines: list[str], key: str, after: int, end: int) -> int | None:
    """Best effort: the 1-based line in line indices [``after``, ``end``) that sets or opens ``key``."""
    name = r"""["']?""" + re.escape(key) + r"""["']?"""
    pattern = re.compile(rf"\s*(?:(?:[\w\"'-]+\s*\.\s*)*{name}\s*[=.]|\[\[?\s*(?:[\w\"'-]+\s*\.\s*)*{name}\s*\]\]?)")
    for number in range(after, end):
        if pattern.match(lines[number]):
            return number + 1
    return None
