"""``python -m serving versions`` / ``retire``: the model versions of a models directory, and
retiring old ones.

  python -m serving versions (--models DIR | --config FILE) [--arms FILE ...]
  python -m serving retire (--models DIR | --config FILE) [--keep N] [--arms FILE ...] [--dry-run] [VERSION ...]

The models directory and the arms file can come from the server's settings as the server
reads them: --config FILE (or FEEDRANK_CONFIG), FEEDRANK_MODELS, FEEDRANK_ARMS; a flag
beats its variable, which beats the file. Given, --arms replaces the server's arms file.

``versions`` lists the version directories newest first: name, creation time, size on
disk, the model's ndcg@10 on the trainer's held-out split when its manifest has one, and
what protects it (CURRENT, an arm that pins it, incomplete).

``retire`` deletes all but the newest --keep complete versions (default 5), or with
VERSION names only those (and with --keep too, both). It never retires the version
CURRENT names, one an arm of an --arms file pins (give every arms file a server runs
with: a feed process or server that restarts loads its versions from disk and cannot
start without them), nor one that is incomplete (a file missing: still being copied in,
perhaps); it prints which it kept and why. A VERSION that is one of those, or no version
of the models directory, is an error, and nothing is retired. A version is first renamed
to a hidden name, atomically, then deleted: a server reading it at that moment finds the
whole version or none, and a retire that dies halfway leaves a hidden directory that no
reader takes for a version and the next retire deletes. Versions are written under
hidden names too (``train``): neither command sees one until it is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.arms import load_arms
from serving.config import CONFIG_ENV, FLAGS_BY_DEST, ConfigError, bytes_under, resolve_settings
from training.artifact import (
    CURRENT,
    MANIFEST,
    REQUIRED_FILES,
    absent_files,
    current_version,
    newest_first,
    ranker_of,
    recorded_files,
    remove_retired,
    retire_version,
    retired_leftovers,
)
from training.flag_types import bounded
from training.tune import OBJECTIVE_METRIC

DEFAULT_KEEP = 5
SHARED_FLAGS = (FLAGS_BY_DEST["models"], FLAGS_BY_DEST["arms"])  # the server settings these commands read too


@dataclass(frozen=True)
class VersionInfo:
    """One version directory, as listed."""

    name: str
    created_at: str  # as its manifest records it; "" when it records none
    size_bytes: int
    metric: float | None  # the model's OBJECTIVE_METRIC on the trainer's held-out split, when recorded
    incomplete: str  # why a loader would refuse it ("index.faiss missing"); "" when it is complete


def list_versions(models_dir: str) -> list[VersionInfo]:
    """Every visible directory of ``models_dir``, newest first (``newest_first``); hidden ones
    are versions being written or retired, never listed."""
    names = [n for n in os.listdir(models_dir) if not n.startswith(".") and os.path.isdir(os.path.join(models_dir, n))]
    return [_version_info(os.path.join(models_dir, name)) for name in newest_first(models_dir, names)]


def _version_info(path: str) -> VersionInfo:
    name, size = os.path.basename(path), bytes_under(path)
    try:
        manifest = _manifest(path)
    except ValueError as error:
        return VersionInfo(name, "", size, None, str(error))
    metric = ((manifest.get("metrics") or {}).get("model") or {}).get(OBJECTIVE_METRIC)
    absent = absent_files(path, (*REQUIRED_FILES, *recorded_files(manifest)))
    return VersionInfo(
        name, str(manifest.get("created_at") or ""), size,
        metric if isinstance(metric, (int, float)) and not isinstance(metric, bool) else None,
        f"{', '.join(absent)} missing" if absent else _ranker_refused(path, manifest),
    )


def _ranker_refused(path: str, manifest: Mapping) -> str:
    """Why a server of this code refuses the version's ranker (a newer trainer's features); "" when it loads it."""
    try:
        ranker_of(path, manifest)
    except ValueError as error:
        return str(error).removeprefix(f"model version {path}: ")
    return ""


def _manifest(path: str) -> dict:
    """The manifest of version directory ``path``; ValueError saying why there is none that reads."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{MANIFEST} missing") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{MANIFEST} does not read ({type(error).__name__})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST} is no JSON object")
    return manifest


def protections(versions: Sequence[VersionInfo], current: str | None, pins: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Why each version that must not be retired must not be: CURRENT, the arms that pin it
    (``pins``: version -> arm descriptions), or its being incomplete."""
    reasons: dict[str, list[str]] = {}
    for version in versions:
        why = (["CURRENT"] if version.name == current else []) + pins.get(version.name, [])
        if version.incomplete:
            why.append(f"incomplete: {version.incomplete}")
        if why:
            reasons[version.name] = why
    return reasons


@dataclass(frozen=True)
class RetirePlan:
    retire: list[str]  # newest first
    kept: dict[str, list[str]]  # version -> why it is kept


def plan_retirement(versions: Sequence[VersionInfo], protected: Mapping[str, list[str]], keep: int | None,
                    named: Sequence[str]) -> RetirePlan:
    """What ``retire`` does to ``versions`` (newest first): retire the ``named`` ones and,
    with ``keep``, every complete version after the newest ``keep`` complete ones, except
    the ``protected`` ones. ValueError naming a version ``named`` that is unknown or protected."""
    known = {version.name for version in versions}
    for name in named:
        if name not in known:
            raise ValueError(f"VERSION {name!r}: no such version directory; see `python -m serving versions`")
        if name in protected:
            raise ValueError(f"VERSION {name!r}: not retired, it is {'; '.join(protected[name])}")
    kept = {name: list(why) for name, why in protected.items()}
    complete = [version.name for version in versions if not version.incomplete]
    newest = set(complete[:keep]) if keep is not None else set()
    retire = []
    for name in (version.name for version in versions):
        if name in kept:
            continue
        if name in named or (keep is not None and name not in newest):
            retire.append(name)
        elif name in newest:
            kept[name] = [f"one of the newest {keep}"]
    return RetirePlan(retire, kept)


def arm_pins(paths: Sequence[str]) -> dict[str, list[str]]:
    """The versions the arms files at ``paths`` pin: version -> "pinned by arm 'x' (FILE)"."""
    pins: dict[str, list[str]] = {}
    for path in paths:
        try:
            arms = load_arms(path)
        except (OSError, ValueError) as error:
            from serving.server import start_error  # an OSError as "PATH: reason", as serve says it; not a light import

            raise ValueError(f"--arms: {start_error(error)}") from None
        for arm in arms.arms:
            if arm.model is not None:
                pins.setdefault(arm.model, []).append(f"pinned by arm {arm.name!r} ({path})")
    return pins


def version_table(versions: Sequence[VersionInfo], notes: Mapping[str, str]) -> str:
    """A fixed-width table of ``versions``, each with its note."""
    rows = [("VERSION", "CREATED", "SIZE", OBJECTIVE_METRIC, "")]
    for version in versions:
        metric = f"{version.metric:.4f}" if version.metric is not None else "-"
        rows.append((version.name, version.created_at or "-", _size(version.size_bytes), metric, notes.get(version.name, "")))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        f"{name:<{widths[0]}}  {created:<{widths[1]}}  {size:>{widths[2]}}  {metric:>{widths[3]}}  {note}".rstrip()
        for name, created, size, metric, note in rows
    )


def _size(size_bytes: int) -> str:
    units, size, power = ("B", "KB", "MB", "GB", "TB"), float(size_bytes), 0
    while size >= 1000 and power < len(units) - 1:
        size, power = size / 1000, power + 1
    return f"{size_bytes} B" if power == 0 else f"{size:.1f} {units[power]}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="the server's TOML config file: its 'models' and 'arms' count when the flags and their "
                             f"variables are not given, as for the server (a relative path in it is relative to the file; env {CONFIG_ENV})")
    parser.add_argument("--models", metavar="DIR",
                        help=f"the models directory (the server's --models; env {SHARED_FLAGS[0].env}, or 'models' in the --config file)")
    parser.add_argument("--arms", action="append", metavar="FILE",
                        help="an A/B arms file (the server's --arms); the versions its arms pin are never retired. "
                             f"Repeat it for every server's file (default: env {SHARED_FLAGS[1].env}, or 'arms' in the --config file)")


def resolve_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Set ``args.models`` and ``args.arms`` by the server's precedence, flag > environment >
    --config file; returns where the models directory came from. A usage error of ``parser``
    for a bad config file or no models directory."""
    given = argparse.Namespace(config=args.config, models=args.models)  # --arms, repeatable, is not the server's
    try:
        values, sources = resolve_settings(given, flags=SHARED_FLAGS)
    except ConfigError as error:
        parser.error(str(error))
    if not values["models"]:
        parser.error(f"--models is required (or {SHARED_FLAGS[0].env}, or 'models' in the --config file)")
    args.models = values["models"]
    args.arms = args.arms or ([values["arms"]] if values["arms"] else [])
    return sources["models"]


def read_state(parser: argparse.ArgumentParser, args: argparse.Namespace
               ) -> tuple[list[VersionInfo], dict[str, list[str]], str | None, dict[str, list[str]]]:
    """The versions of the models directory, their protections, the version CURRENT names
    (None without CURRENT) and the arms' pins (``arm_pins``); a usage error of ``parser``
    for a bad setting."""
    models_source = resolve_paths(parser, args)
    if not os.path.isdir(args.models):
        parser.error(f"{models_source} {args.models}: {'not a directory' if os.path.exists(args.models) else 'no such directory'}")
    try:
        pins = arm_pins(args.arms)
        # CURRENT may be absent (every version published with --no-current); an empty one is an error.
        current = current_version(args.models) if os.path.exists(os.path.join(args.models, CURRENT)) else None
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    versions = list_versions(args.models)
    return versions, protections(versions, current, pins), current, pins


def dangling_names(models_dir: str, versions: Sequence[VersionInfo], current: str | None,
                   pins: Mapping[str, list[str]]) -> list[str]:
    """What is wrong when CURRENT, or an arm's pin, names no version a server can load (a typo
    in a rollback, a version deleted by hand, one still being copied in): each server keeps
    serving the version it loaded before (a server that starts refuses the arms file), which
    nothing on disk names, and which a retire would take for unprotected."""
    problems = []
    if current is not None and (why := _unloadable(current, versions)):
        problems.append(f"{os.path.join(models_dir, CURRENT)} names {current!r}, which is {why}: servers "
                        "cannot load it and keep serving the version they loaded before; write a complete version into it")
    for version, arms in sorted(pins.items()):
        if why := _unloadable(version, versions):
            problems.append(f"{version!r}, {'; '.join(arms)}, is {why}: servers cannot load it and keep "
                            "serving the version they loaded before, and one that starts refuses the file; pin a complete version")
    return problems


def _unloadable(name: str, versions: Sequence[VersionInfo]) -> str:
    """Why a server cannot load version ``name`` of ``versions``; "" when it can."""
    version = next((version for version in versions if version.name == name), None)
    if version is None:
        return "no version directory here"
    return f"a version servers refuse ({version.incomplete})" if version.incomplete else ""


def versions_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving versions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    versions, protected, current, pins = read_state(parser, args)
    print(version_table(versions, {name: "; ".join(why) for name, why in protected.items()}))
    for problem in dangling_names(args.models, versions, current, pins):
        print(f"warning: {problem}", file=sys.stderr)


def retire_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving retire", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--keep", type=bounded(int, minimum=0), metavar="N",
                        help=f"keep the newest N complete versions, retire the others (default: {DEFAULT_KEEP}; "
                             "with VERSION names: none retired but those, unless --keep is given)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be retired and kept, change nothing")
    parser.add_argument("versions", nargs="*", metavar="VERSION", help="a version directory name to retire")
    args = parser.parse_args(argv)
    keep = args.keep if args.keep is not None or args.versions else DEFAULT_KEEP
    versions, protected, current, pins = read_state(parser, args)
    problems = dangling_names(args.models, versions, current, pins)
    if problems:  # the version the servers still serve is unknown: any could be it
        parser.error(f"{'; and '.join(problems)}; nothing retired until then")
    try:
        plan = plan_retirement(versions, protected, keep, args.versions)
    except ValueError as error:
        parser.error(str(error))
    verb = "would retire" if args.dry_run else "retire"
    notes = {**{name: "keep: " + "; ".join(why) for name, why in plan.kept.items()}, **dict.fromkeys(plan.retire, verb)}
    print(version_table(versions, notes))
    leftovers = retired_leftovers(args.models) if args.dry_run else remove_retired(args.models)
    for name in leftovers:
        print(f"{'would remove' if args.dry_run else 'removed'} {name}, left by a retire that did not finish")
    if args.dry_run:
        print(f"dry run: would retire {len(plan.retire)} of {len(versions)} versions")
        return
    for name in plan.retire:
        try:
            retire_version(args.models, name)
        except (OSError, ValueError) as error:  # CURRENT moved to it meanwhile, or it is gone, or not ours to move
            from serving.server import start_error  # an OSError as "PATH: reason", as serve says it; not a light import

            sys.exit(f"error: {name}: {start_error(error)}")
    print(f"retired {len(plan.retire)} of {len(versions)} versions")
