"""Convert the HetRec 2011 Last.fm 2K dataset into a dataset directory.

  python -m training lastfm --src ../shared/data/lastfm-2k --out DIR [--temporal]

Artists become items (in stock, no seller, no creation time); the symmetric
``user_friends.dat`` becomes ``friends.csv`` (one row per pair). There are no follows.
Ids are prefixed ("u2", "a51") so users and artists never collide. The likes are either:

- (default) user-artist listens from ``user_artists.dat``, with the listening count in
  the ``weight`` column and no time (the file has none);
- (``--temporal``) dated tag assignments from ``user_taggedartists.dat``: a user who
  tagged an artist on some day liked it then. Each (user, artist) pair is one like at
  the day of its first tag (midnight UTC), weight 1, so a time split of it is a real
  "predict what they pick up next" evaluation. Five tags carry years before 2005 (the
  service's launch; 1956, 1957, 1979): they are kept as given and fall into training.

With ``--published-split DIR`` the likes are cut by a split published with a paper
instead of a seeded one: DIR holds SocialLGN's ``data/preprocessed/lastfm`` files
(``train_set.txt`` and ``test_set.txt``, CSV ``user,item`` of 0-based indices, and
``userReindex.json`` and ``itemReindex.json``, each original id -> index). ``--out``
then holds the training part, and ``OUT/test_pairs.csv`` the test pairs for
``python -m training evaluate --test``. That split is a global random 80/20 cut of the
pairs (each user holds out 1 to 22 of their artists, binomially), not 20 % of each user.

The data is for non-commercial research only (see the dataset's README): convert it
into a scratch directory, never into this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
from datetime import MAXYEAR, MINYEAR, datetime, timezone

import numpy as np

from stores.events import MAX_UNIX_SECONDS
from training.dataset import ACCEPTED_TIMES, MIN_UNIX_SECONDS, Dataset, DatasetError, Edges, Items
from training.flag_types import input_path
from training.splits import split_by_mask

USER_ARTISTS = "user_artists.dat"
PUBLISHED_TRAIN, PUBLISHED_TEST = "train_set.txt", "test_set.txt"
PUBLISHED_USER_INDEX, PUBLISHED_ITEM_INDEX = "userReindex.json", "itemReindex.json"
TEST_PAIRS = "test_pairs.csv"
USER_FRIENDS = "user_friends.dat"
USER_TAGGED_ARTISTS = "user_taggedartists.dat"
ARTISTS = "artists.dat"


class _Rows(list):
    """The rows of a file, and ``lines``: the line of the file each is on (blank lines are skipped)."""

    lines: list[int]


def _rows(path: str, columns: int, encoding: str = "utf-8", delimiter: str = "\t",
          header: list[str] | None = None) -> _Rows:
    """Rows after the header (checked against ``header`` when given); quoting disabled
    (artist names contain quotes)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise DatasetError(name, 0, "<file>", f"required file missing: {path}")
    text = _text(path, encoding).removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    first = next(reader, None)
    if header is not None and [h.strip() for h in first or []] != header:
        # Checked, not skipped: a file without it lost its first row, and an empty one read as no rows.
        expected = f"{', '.join(header)} (tab-separated)" if delimiter == "\t" else delimiter.join(header)
        got = "an empty file" if first is None else repr(delimiter.join(first))
        raise DatasetError(name, 1, header[0], f"expected the header {expected}, got {got}")
    rows = _Rows()
    rows.lines = []
    for row in reader:
        if not row:
            continue
        if len(row) != columns:
            raise DatasetError(name, reader.line_num, "<row>", f"expected {columns} fields, got {len(row)}")
        rows.append(row)
        rows.lines.append(reader.line_num)
    return rows


def _text(path: str, encoding: str) -> str:
    """The file decoded; DatasetError at the line and character of the first byte that does not decode."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        character = len(data[line_start:error.start].decode(encoding, errors="replace")) + 1
        raise DatasetError(os.path.basename(path), line, "<text>",
                           f"not valid {encoding}: byte 0x{data[error.start]:02x} at character {character}") from None


def _int_column(rows: _Rows, index: int, file: str, column: str) -> list[int]:
    out = []
    for line, row in zip(rows.lines, rows):
        try:
            out.append(int(row[index]))
        except ValueError:
            raise DatasetError(file, line, column, f"expected an integer, got {row[index]!r}") from None
    return out


def read_lastfm(src: str, temporal: bool = False, binary: bool = False) -> Dataset:
    """The Last.fm 2K files in ``src`` as a Dataset (see the module docstring for the mapping).

    Items are every artist of ``artists.dat`` (if present) followed by any other artist
    the likes name, in file order; likes keep the order of their file.
    """
    if not os.path.isdir(src):
        what = "not a directory" if os.path.exists(src) else "no such directory"
        raise DatasetError("", 0, "<directory>", f"Last.fm source directory {src}: {what}")
    likes = _tag_likes(src) if temporal else _listen_likes(src)
    if binary:
        likes = Edges(likes.src, likes.dst, likes.ts)
    items = Items.without_listing(_artist_ids(src, likes.dst))
    follows = Edges([], [], np.empty(0))
    return Dataset(items=items, likes=likes, follows=follows, friends=_friendships(src))


def _listen_likes(src: str) -> Edges:
    listens = _rows(os.path.join(src, USER_ARTISTS), 3, header=["userID", "artistID", "weight"])
    users = _int_column(listens, 0, USER_ARTISTS, "userID")
    artists = _int_column(listens, 1, USER_ARTISTS, "artistID")
    counts = _int_column(listens, 2, USER_ARTISTS, "weight")
    if min(counts, default=1) <= 0:
        line, count = next((line, c) for line, c in zip(listens.lines, counts) if c <= 0)
        raise DatasetError(USER_ARTISTS, line, "weight", f"expected a positive listening count, got {count}")
    if max(counts, default=1) > sys.float_info.max:
        line, count = next((line, c) for line, c in zip(listens.lines, counts) if c > sys.float_info.max)
        raise DatasetError(USER_ARTISTS, line, "weight", f"expected a positive listening count, got a number of "
                                                         f"{len(str(count))} digits, past what a weight (a float64) holds")
    return Edges(
        src=[f"u{u}" for u in users],
        dst=[f"a{a}" for a in artists],
        ts=np.full(len(users), np.nan),
        weight=np.asarray(counts, dtype=np.float64),
    )


def _tag_likes(src: str) -> Edges:
    """One like per (user, artist) pair at the day of the user's first tag on the artist."""
    columns = ("userID", "artistID", "tagID", "day", "month", "year")
    tags = _rows(os.path.join(src, USER_TAGGED_ARTISTS), 6, header=list(columns))
    users, artists, _, days, months, years = (
        _int_column(tags, i, USER_TAGGED_ARTISTS, name) for i, name in enumerate(columns)
    )
    first: dict[tuple[int, int], float] = {}
    for line, user, artist, day, month, year in zip(tags.lines, users, artists, days, months, years):
        try:
            when = datetime(year, month, day, tzinfo=timezone.utc).timestamp()
        except ValueError as error:
            column = "year" if not MINYEAR <= year <= MAXYEAR else "month" if not 1 <= month <= 12 else "day"
            raise DatasetError(USER_TAGGED_ARTISTS, line, column, f"not a date: {year}-{month}-{day} ({error})") from None
        if not MIN_UNIX_SECONDS <= when <= MAX_UNIX_SECONDS:  # else the dataset written would not load
            raise DatasetError(USER_TAGGED_ARTISTS, line, "year",
                               f"{year:04}-{month:02}-{day:02} is outside the accepted times, {ACCEPTED_TIMES}")
        pair = (user, artist)
        if when < first.get(pair, np.inf):
            first[pair] = when
    return Edges(
        src=[f"u{u}" for u, _ in first],
        dst=[f"a{a}" for _, a in first],
        ts=np.fromiter(first.values(), np.float64, len(first)),
    )


def _artist_ids(src: str, liked: list[str]) -> list[str]:
    item_ids: list[str] = []
    artists_path = os.path.join(src, ARTISTS)
    if os.path.isfile(artists_path):
        item_ids = [f"a{a}" for a in _int_column(_rows(artists_path, 4, header=["id", "name", "url", "pictureURL"]), 0, ARTISTS, "id")]
    known = set(item_ids)
    return item_ids + [a for a in dict.fromkeys(liked) if a not in known]


def _friendships(src: str) -> Edges:
    """``user_friends.dat`` lists each friendship in both directions: one row per pair here."""
    pairs = _rows(os.path.join(src, USER_FRIENDS), 2, header=["userID", "friendID"])
    a = _int_column(pairs, 0, USER_FRIENDS, "userID")
    b = _int_column(pairs, 1, USER_FRIENDS, "friendID")
    friends = dict.fromkeys(tuple(sorted((f"u{x}", f"u{y}"))) for x, y in zip(a, b) if x != y)
    return Edges([x for x, _ in friends], [y for _, y in friends], np.full(len(friends), np.nan))


def split_as_published(dataset: Dataset, directory: str) -> tuple[Dataset, Edges]:
    """(training part, test pairs) of ``dataset`` (read_lastfm's) as the split files in
    ``directory`` cut it (see the module docstring for their format).

    Every pair of the files must be a like of ``dataset``, in one part only, and every like
    must be in one part: a published split of other data is an error, not a silent subset.
    Raises DatasetError located at the file, line and column of the first bad row.
    """
    users = _index_names(directory, PUBLISHED_USER_INDEX, "u")
    items = _index_names(directory, PUBLISHED_ITEM_INDEX, "a")
    row_of = {pair: row for row, pair in enumerate(zip(dataset.likes.src, dataset.likes.dst))}
    part = np.full(len(row_of), -1, dtype=np.int8)
    for part_code, file in enumerate((PUBLISHED_TRAIN, PUBLISHED_TEST)):
        rows = _rows(os.path.join(directory, file), 2, delimiter=",", header=["user", "item"])
        for line, user, item in zip(rows.lines, _int_column(rows, 0, file, "user"), _int_column(rows, 1, file, "item")):
            if user not in users or item not in items:
                column, value, names = ("user", user, PUBLISHED_USER_INDEX) if user not in users else ("item", item, PUBLISHED_ITEM_INDEX)
                raise DatasetError(file, line, column, f"index {value} is not in {names}")
            row = row_of.get((users[user], items[item]))
            if row is None:
                raise DatasetError(file, line, "user", f"{users[user]} never listened to {items[item]} in {USER_ARTISTS}")
            if part[row] != -1:
                where = "twice" if part[row] == part_code else f"also in {PUBLISHED_TRAIN}"
                raise DatasetError(file, line, "user", f"the pair {users[user]},{items[item]} is {where}")
            part[row] = part_code
    missing = np.flatnonzero(part == -1)
    if len(missing):
        raise DatasetError(PUBLISHED_TRAIN, 0, "<file>", f"{len(missing)} likes of {USER_ARTISTS} are in neither part "
                           f"(the first: {dataset.likes.src[missing[0]]},{dataset.likes.dst[missing[0]]})")
    return split_by_mask(dataset, part == 1)


def _index_names(directory: str, file: str, prefix: str) -> dict[int, str]:
    """index -> our id ("u2", "a51") from a JSON object of original id -> index."""
    path = os.path.join(directory, file)
    if not os.path.isfile(path):
        raise DatasetError(file, 0, "<file>", f"required file missing: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            mapping = json.load(handle)
        except json.JSONDecodeError as error:
            raise DatasetError(file, error.lineno, "<json>", f"not valid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise DatasetError(file, 1, "<file>", "expected a JSON object of original id -> integer index")
    return {index: f"{prefix}{original}" for original, index in mapping.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m training lastfm``."""
    parser.add_argument("--src", required=True,
                        help="folder with the HetRec 2011 Last.fm 2K files (user_artists.dat, user_friends.dat, artists.dat; "
                             "user_taggedartists.dat with --temporal)")
    parser.add_argument("--binary", action="store_true",
                        help="drop the listening counts: every user-artist pair weighs 1 (the protocol SocialLGN "
                             "and most papers report under)")
    likes = parser.add_mutually_exclusive_group()
    likes.add_argument("--temporal", action="store_true",
                       help="likes from the dated tag assignments (one per user-artist pair, at its first tag), "
                            "for time-split evaluation; default: listens with their counts, undated")
    likes.add_argument("--published-split", metavar="DIR", type=input_path,
                       help="cut the likes as SocialLGN's published split does (DIR: their data/preprocessed/lastfm, "
                            "with train_set.txt, test_set.txt, userReindex.json, itemReindex.json): --out gets the "
                            "training part and OUT/test_pairs.csv the test pairs, for `evaluate --test`; it cuts the "
                            "listens of user_artists.dat, so not with --temporal")
    parser.add_argument("--out", required=True, type=_output_directory,
                        help="dataset directory to write (items.csv, likes.csv with weight, friends.csv); keep it "
                             "outside the repository: the data is for non-commercial use only")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (accepted like every command's; the conversion draws none)")


def _output_directory(path: str) -> str:
    """``path`` unless it, or the nearest of its parents that exists, is not a writable directory."""
    if not path:
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError(f"{existing} exists and is not a directory")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path}: {existing} is not writable")
    return path


def run(args: argparse.Namespace) -> None:
    """Entry point of ``python -m training lastfm``."""
    from training.dataset import write_dataset

    dataset = read_lastfm(args.src, temporal=args.temporal, binary=args.binary)
    test = None
    if args.published_split:
        dataset, test = split_as_published(dataset, args.published_split)
    write_dataset(dataset, args.out)
    kind = "dated tag pairs" if args.temporal else "listens"
    print(
        f"{args.out}: {len(dataset.items)} items (artists), {len(dataset.likes)} likes ({kind}), "
        f"{len(dataset.friends)} friendships, {len(set(dataset.likes.src))} users"
    )
    path = os.path.join(args.out, TEST_PAIRS)
    if test is None:
        # A split's test pairs from an earlier run would no longer match the likes just written.
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    else:
        from training.evaluate import write_test_file

        write_test_file(path, test)
        print(f"{path}: {len(test)} test pairs of {len(set(test.src))} users; evaluate with "
              f"python -m training evaluate --data {args.out} --test {path}")
