"""Model artifacts: ``models/<version>/`` directories and the ``models/CURRENT`` pointer.

A version directory holds
  manifest.json   version, created_at, params, data fingerprint, metrics, ranker
  ids.npz         user_ids, item_ids (unicode arrays; loaded with allow_pickle=False)
  factors.npz     user_factors, item_factors (float32)
  index.faiss     the MIPS index, plus index.faiss.json (kind and parameters)
  knn.npz         optional: the item-kNN similarity matrix (scipy.sparse CSR, item rows)
  user_neighbours.npy, user_neighbour_scores.npy
                  optional: each trained user's first-page neighbour search
                  (embeddings.user_neighbours; manifest model.user_neighbours gives k)
  evaluation.svg  optional: the evaluation chart (manifest "charts" names it)
It is written under a temporary name and renamed into place, so a reader never sees a
half-written version; CURRENT is then replaced atomically (os.replace) from a temporary
file of its writer's own, so a reader sees either the old version or the new one, even
while several publishers race. Each step is fsynced before the next one names it: the
version's files and directory, then CURRENT, then the models directory; after a power
loss CURRENT never names a version whose files are not on disk. A version is retired the
other way round (``retire_version``): renamed to a hidden name, then deleted. A name
starting with '.' (a version being written or retired) is no version to any reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from embeddings.index import MipsIndex
from embeddings.knn import ItemKNN
from embeddings.model import DEFAULT_FOLDIN_ALPHA, EmbeddingModel
from embeddings.user_neighbours import ROWS_FILE, SCORES_FILE, UserNeighbours
from ranking.feed import recorded_pools
from ranking.ranker import LinearRanker

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
IDS = "ids.npz"
FACTORS = "factors.npz"
INDEX = "index.faiss"
KNN = "knn.npz"
EVALUATION_CHART = "evaluation.svg"
# The files every version has: without one, a directory is no version a loader reads.
REQUIRED_FILES = (MANIFEST, IDS, FACTORS, INDEX)
# A version retired is renamed to this prefix and its name, then deleted: hidden, as no reader takes a version.
RETIRED_PREFIX = ".retired-"
# Names publish writes itself: an extra file must not replace one of them.
_ARTIFACT_FILES = frozenset({MANIFEST, IDS, FACTORS, INDEX, INDEX + ".json", KNN, ROWS_FILE, SCORES_FILE})


@dataclass(frozen=True)
class Artifact:
    """A loaded model version: what a serving process swaps in on reload."""

    version: str
    path: str
    manifest: dict[str, Any]
    model: EmbeddingModel
    ranker: LinearRanker


def new_version(now: datetime | None = None, salt: str = "") -> str:
    """A sortable version name: UTC timestamp to the millisecond plus a short hash, e.g.
    20261123T124500123Z-3f9a1c. Two versions published within one second sort in the order
    they were made (to the second, as names before had it, they sorted by their hash); a
    name of the older form still sorts against these by time."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    digest = hashlib.sha256(f"{now.isoformat()}|{salt}|{os.getpid()}|{os.urandom(8).hex()}".encode()).hexdigest()
    return f"{stamp}-{digest[:6]}"


_NAME_TIME = re.compile(r"(?P<second>[0-9]{8}T[0-9]{6})(?P<millisecond>[0-9]{3})?Z-.+")
_NO_TIME = datetime.min.replace(tzinfo=timezone.utc)


def newest_first(models_dir: str, names: list[str]) -> list[str]:
    """Version directory names of ``models_dir``, newest first: by the time each manifest
    records (created_at), else the time the name carries (``new_version``'s form, or the
    older one without milliseconds). One that tells neither, such as a directory copied in
    by hand as "my-test" without a manifest's time, sorts as the oldest, never as the
    newest; within a second, the name's milliseconds decide."""
    def key(name: str) -> tuple[datetime, datetime, str]:
        named = _name_time(name)
        return _recorded_time(os.path.join(models_dir, name)) or named, named, name
    return sorted(names, key=key, reverse=True)


def _name_time(name: str) -> datetime:
    match = _NAME_TIME.fullmatch(name)
    if match is None:
        return _NO_TIME
    try:
        second = datetime.strptime(match["second"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:  # digits that are no date
        return _NO_TIME
    return second.replace(microsecond=int(match["millisecond"] or 0) * 1000)


def _recorded_time(version_dir: str) -> datetime | None:
    """The manifest's created_at (UTC when it names no zone); None when it has none that reads."""
    try:
        with open(os.path.join(version_dir, MANIFEST), encoding="utf-8") as f:
            created = json.load(f).get("created_at")
        recorded = datetime.fromisoformat(created)
    except (OSError, ValueError, TypeError, AttributeError):  # unreadable, not JSON or not an object, no time
        return None
    return recorded if recorded.tzinfo is not None else recorded.replace(tzinfo=timezone.utc)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable in a manifest: {type(value).__name__}")


def check_extra_file_name(name: str) -> None:
    """ValueError unless ``name`` is a plain, visible file name that publish does not write itself."""
    separators = {"/", os.sep, os.altsep} - {None}
    if not name or name.startswith(".") or any(sep in name for sep in separators):
        raise ValueError(f"extra file name {name!r}: must be a plain file name, without a path separator "
                         "and not starting with '.'")
    if name in _ARTIFACT_FILES:
        raise ValueError(f"extra file name {name!r}: publish writes that file itself")


def publish(
    models_dir: str, model: EmbeddingModel, manifest: dict[str, Any], files: Mapping[str, bytes] = {}, make_current: bool = True
) -> str:
    """Write ``model`` as a new version under ``models_dir`` and point CURRENT at it (not
    with ``make_current`` False: a candidate to pin in an A/B arm).

    ``manifest`` should carry params, data_fingerprint, metrics and ranker
    ({"features": [...], "weights": {...}, "bias": float}); version and created_at are
    filled in here. ``files`` (name -> content) are written into the version directory
    too, e.g. {EVALUATION_CHART: svg}. Returns the new version directory.
    """
    if "ranker" not in manifest:
        raise ValueError("manifest needs a 'ranker' entry: {'features', 'weights', 'bias'}")
    for name in files:
        check_extra_file_name(name)
    os.makedirs(models_dir, exist_ok=True)
    remove_abandoned_versions(models_dir)
    created = datetime.now(timezone.utc)
    version = new_version(created, salt=str(manifest.get("data_fingerprint", "")))
    full_manifest = {
        **manifest,
        "version": version,
        "created_at": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "model": {
            "n_users": len(model.user_ids),
            "n_items": len(model.item_ids),
            "factors": model.dim,
            "regularization": model.regularization,
            "alpha": model.alpha,
            "index": {"kind": model.index.kind, **model.index.params},
            "item_knn": {"nnz": model.item_knn.nnz} if model.item_knn is not None else None,
            "user_neighbours": (
                {"k": model.user_neighbours.k, "ef_search": model.user_neighbours.ef_search}
                if model.user_neighbours is not None else None
            ),
        },
    }

    tmp = tempfile.mkdtemp(prefix=f".{version}@{socket.gethostname()}@{os.getpid()}@", dir=models_dir)
    try:
        np.savez(
            os.path.join(tmp, IDS),
            user_ids=np.array(model.user_ids, dtype=np.str_),
            item_ids=np.array(model.item_ids, dtype=np.str_),
        )
        np.savez(os.path.join(tmp, FACTORS), user_factors=model.user_factors, item_factors=model.item_factors)
        model.index.save(os.path.join(tmp, INDEX))
        if model.item_knn is not None:
            model.item_knn.save(os.path.join(tmp, KNN))
        if model.user_neighbours is not None:
            model.user_neighbours.save(tmp)
        for name, content in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(full_manifest, f, indent=2, sort_keys=True, default=_json_default)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _fsync_version(tmp)
        final = os.path.join(models_dir, version)
        os.rename(tmp, final)
        _fsync(models_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        set_current(models_dir, version)
    return final


_WRITING = re.compile(r"\.(?P<version>[^@]+)@(?P<host>.+)@(?P<pid>[0-9]+)@[^@]*")


def remove_abandoned_versions(models_dir: str) -> list[str]:
    """Delete the version directories a writer on this host began and never finished
    because it died (killed: its own cleanup never ran), and return their names.

    Each is named by its writer's host and pid while it is written. One of another host
    (a shared models directory) or of a live process is left alone; so is a pid reused
    since, until that process ends too.
    """
    host, removed = socket.gethostname(), []
    for name in os.listdir(models_dir):
        match = _WRITING.fullmatch(name)
        if match is None or match["host"] != host or _is_alive(int(match["pid"])):
            continue
        shutil.rmtree(os.path.join(models_dir, name), ignore_errors=True)
        removed.append(name)
    return removed


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def retire_version(models_dir: str, version: str) -> None:
    """Delete version directory ``version`` of ``models_dir``; ValueError when CURRENT names it.

    The directory is first renamed, atomically, to a hidden name (RETIRED_PREFIX): a reader
    finds the whole version or none, never one half deleted, and one that dies halfway
    leaves only a hidden directory, which no reader takes for a version and
    ``remove_retired`` deletes.
    """
    def named_by_current() -> bool:
        return os.path.exists(os.path.join(models_dir, CURRENT)) and current_version(models_dir) == version

    refusal = f"model version {version!r} is the one {os.path.join(models_dir, CURRENT)} names"
    if named_by_current():
        raise ValueError(refusal)
    retired = os.path.join(models_dir, f"{RETIRED_PREFIX}{version}-{secrets.token_hex(4)}")
    os.rename(os.path.join(models_dir, version), retired)
    _fsync(models_dir)
    if named_by_current():  # a rollback that found the version before the rename wrote CURRENT since: give it back
        os.rename(retired, os.path.join(models_dir, version))
        _fsync(models_dir)
        raise ValueError(refusal)
    shutil.rmtree(retired)


def retired_leftovers(models_dir: str) -> list[str]:
    """The hidden directories retirements that died halfway left in ``models_dir`` (or one still deleting)."""
    return [name for name in os.listdir(models_dir) if name.startswith(RETIRED_PREFIX)]


def remove_retired(models_dir: str) -> list[str]:
    """Delete ``retired_leftovers``; their names."""
    leftovers = retired_leftovers(models_dir)
    for name in leftovers:
        shutil.rmtree(os.path.join(models_dir, name), ignore_errors=True)  # another retire may be deleting it too
    return leftovers


def set_current(models_dir: str, version: str) -> None:
    """Point ``models_dir/CURRENT`` at ``version`` atomically and durably (also used for rollback)."""
    if not os.path.isfile(os.path.join(models_dir, version, MANIFEST)):
        raise FileNotFoundError(f"no model version {version!r} in {models_dir}")
    # A name of this writer's own: a shared one is truncated by one writer while another renames it.
    tmp = os.path.join(models_dir, f".{CURRENT}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(models_dir, CURRENT))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync(models_dir)


def _fsync_version(directory: str) -> None:
    """fsync every file of a just-written version directory once, then the directory itself."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                _fsync(entry.path)
    _fsync(directory)


def _fsync(path: str) -> None:
    """fsync a file's data, or a directory's entries (a rename in it is durable only then)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_version(models_dir: str) -> str:
    """The version name CURRENT points at. FileNotFoundError when there is none."""
    path = os.path.join(models_dir, CURRENT)
    if os.path.exists(models_dir) and not os.path.isdir(models_dir):
        raise FileNotFoundError(f"models directory {models_dir}: not a directory (the directory that holds CURRENT and the versions)")
    try:
        with open(path, encoding="utf-8") as f:
            version = f.read().strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no published model: {path} does not exist. Train one with "
            f"`python -m training train --data DATA_DIR --out {models_dir}`."
        ) from None
    except (OSError, UnicodeDecodeError) as error:  # a directory, not ours to read, not text
        raise ValueError(f"{path}: cannot be read: {getattr(error, 'strerror', None) or error}") from None
    if not version:
        raise FileNotFoundError(f"{path} is empty; republish a model or write a version name into it")
    return version


def load_current(models_dir: str) -> Artifact:
    """Load the version CURRENT points at."""
    return load_version(os.path.join(models_dir, current_version(models_dir)))


@contextlib.contextmanager
def _unreadable_named(path: str, name: str | None = None) -> Iterator[None]:
    """A file of a version the server may not read, or the disk fails to read (the file may be
    whole), as one ValueError naming it: ``name``, else the file the OSError names."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        named = name or (os.path.basename(error.filename) if error.filename else "a file")
        raise ValueError(f"model version {path}: {named} cannot be read ({type(error).__name__}: {reason})") from None


@contextlib.contextmanager
def _damage_named(path: str, name: str) -> Iterator[None]:
    """A file of a version that does not read (cut short, overwritten, unreadable) as one ValueError naming it."""
    with _unreadable_named(path, name):  # outside: its ValueError is not "damaged"
        try:
            yield
        except (ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"model version {path}: {name} is damaged ({type(error).__name__}: {reason[:300]})") from None


def load_version(path: str) -> Artifact:
    """Load one version directory. FileNotFoundError names any missing file."""
    if not os.path.isdir(path):  # retired (deleted), or never published: not a half-written one
        raise FileNotFoundError(f"model version {path} does not exist")
    _require(path, REQUIRED_FILES)
    with _damage_named(path, MANIFEST), open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    _check_manifest_shape(path, manifest)
    try:  # refused here, as a version that does not load: not when the server builds its feeds from it
        recorded_pools(manifest.get("feed") or {})
    except ValueError as error:
        raise ValueError(f"model version {path}: {MANIFEST} {error}") from None
    ranker = ranker_of(path, manifest)
    info = manifest.get("model", {})
    _require(path, recorded_files(manifest))
    with _damage_named(path, IDS), np.load(os.path.join(path, IDS), allow_pickle=False) as ids:
        user_ids = ids["user_ids"].tolist()
        item_ids = ids["item_ids"].tolist()
    with _damage_named(path, FACTORS), np.load(os.path.join(path, FACTORS), allow_pickle=False) as factors:
        user_factors = factors["user_factors"].astype(np.float32, copy=False)
        item_factors = factors["item_factors"].astype(np.float32, copy=False)
    with _damage_named(path, INDEX):
        index = MipsIndex.load(os.path.join(path, INDEX))
    if not np.array_equal(index.vectors, item_factors):
        raise ValueError(f"{path}: index.faiss does not hold the item factors of factors.npz")
    index.vectors = item_factors  # one copy of the table, not two
    knn_path = os.path.join(path, KNN)
    with _unreadable_named(path, KNN):  # its own ValueErrors already name it
        item_knn = ItemKNN.load(knn_path, item_ids) if os.path.exists(knn_path) else None
    table = info.get("user_neighbours")
    with _unreadable_named(path):  # rows or scores: the OSError names which
        user_neighbours = (
            UserNeighbours.load(path, int(table["k"]), int(table["ef_search"]), len(user_ids), len(item_ids))
            if table else None
        )
    model = EmbeddingModel(
        user_ids,
        item_ids,
        user_factors,
        item_factors,
        index,
        regularization=float(info.get("regularization", manifest.get("params", {}).get("regularization", 0.0))),
        alpha=float(info.get("alpha", DEFAULT_FOLDIN_ALPHA)),
        item_knn=item_knn,
        user_neighbours=user_neighbours,
    )
    return Artifact(manifest["version"], path, manifest, model, ranker)


def _check_manifest_shape(path: str, manifest: Any) -> None:
    """ValueError naming the version when its manifest parses but is not what publish writes
    (edited by hand, another tool's): not an AttributeError or KeyError from deep inside."""
    if not isinstance(manifest, dict):
        raise ValueError(f"model version {path}: {MANIFEST} is not a JSON object")
    if not isinstance(manifest.get("version"), str) or not manifest["version"]:
        raise ValueError(f"model version {path}: {MANIFEST} has no version (a non-empty string)")
    if not isinstance(manifest.get("model", {}), dict):
        raise ValueError(f"model version {path}: {MANIFEST} model is not a JSON object")


def recorded_files(manifest: Mapping[str, Any]) -> list[str]:
    """The optional files a version's manifest records: without one it is another model."""
    info = manifest.get("model", {})
    return ([KNN] if info.get("item_knn") else []) + ([ROWS_FILE, SCORES_FILE] if info.get("user_neighbours") else [])


def absent_files(path: str, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that directory ``path`` lacks, in order."""
    return [name for name in names if not os.path.exists(os.path.join(path, name))]


def _require(path: str, names: Sequence[str]) -> None:
    """FileNotFoundError naming the first of ``names`` that version directory ``path`` lacks."""
    absent = absent_files(path, names)
    if absent:
        raise FileNotFoundError(f"model version {path} is incomplete: {absent[0]} is missing")


def ranker_of(path: str, manifest: Mapping[str, Any]) -> LinearRanker:
    """The manifest's ranker; ValueError naming the version when it is missing or weighs
    features this version does not know (a newer trainer's)."""
    spec = manifest.get("ranker")
    if not isinstance(spec, dict) or not isinstance(spec.get("weights"), dict):
        raise ValueError(f"model version {path}: {MANIFEST} has no ranker weights (ranker.weights)")
    try:
        return LinearRanker.from_mapping(spec["weights"], float(spec.get("bias", 0.0)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"model version {path}: {MANIFEST} ranker: {error} (trained by a newer version? "
                         "upgrade the servers before the trainer)") from None
