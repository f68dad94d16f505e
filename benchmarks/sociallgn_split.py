"""Write one of `evaluate`'s splits of binary Last.fm in SocialLGN's file format, so that
SocialLGN's own code (github.com/leo0481/SocialLGN) can be run on the very split the feed
is scored on: a like-for-like comparison on issue 8's per-user protocol.

    python -m benchmarks.sociallgn_split --src ../shared/data/lastfm-2k --split user:0.2:0 --out SOCIALLGN/data/preprocessed/lastfm
    (cd SOCIALLGN && python main.py --model=SocialLGN --dataset=lastfm --decay=1e-4 --lr=0.001 --layer=3 --seed=2020 --topks="[10,20]" --recdim=64 --bpr_batch=2048)
    python -m training evaluate --data LASTFM_BINARY --split user:0.2:0 --no-cap-grid --no-blend --eval-users 0

It writes train_set.txt and test_set.txt (user,item, 0-based), trust.txt (user,friend, both
directions, as SocialLGN's own) and userReindex.json / itemReindex.json (Last.fm id -> index),
the files `python -m training lastfm --published-split DIR` reads back. Remove SocialLGN's
interaction_adj_mat.npz and social_adj_mat.npz from the directory first: they are built from
its own training part, and its code reads them instead of the new one when they exist (this
program refuses a directory that holds them). SocialLGN needs PyTorch, which this project
does not install; benchmarks/README.md ("Last.fm, like for like") has the run and its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from training.arguments import split_text
from training.dataset import DatasetError, Edges
from training.lastfm import (
    PUBLISHED_ITEM_INDEX,
    PUBLISHED_TEST,
    PUBLISHED_TRAIN,
    PUBLISHED_USER_INDEX,
    read_lastfm,
)
from training.splits import SplitSpec, split_for_evaluation

TRUST = "trust.txt"
PRECOMPUTED_GRAPHS = ("interaction_adj_mat.npz", "social_adj_mat.npz")


def _index(ids: set[str], prefix: str) -> dict[str, int]:
    """Our id ("u2", "a51") -> 0-based index, in the order of the Last.fm numbers."""
    return {name: index for index, name in enumerate(sorted(ids, key=lambda name: int(name[len(prefix):])))}


def _write_pairs(path: str, header: str, pairs) -> int:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        count = 0
        for a, b in pairs:
            handle.write(f"{a},{b}\n")
            count += 1
    return count


def write_split(src: str, spec: SplitSpec, out: str) -> dict[str, int]:
    """Write ``spec``'s split of binary Last.fm at ``src`` into ``out``; returns the row counts."""
    stale = [name for name in PRECOMPUTED_GRAPHS if os.path.exists(os.path.join(out, name))]
    if stale:
        raise FileExistsError(f"{os.path.join(out, stale[0])} holds a graph of another split; remove "
                              f"{' and '.join(stale)} first (SocialLGN reads them instead of the new split)")
    dataset = read_lastfm(src, binary=True)
    train, test, _ = split_for_evaluation(dataset, spec)
    users, items = _index(set(dataset.likes.src), "u"), _index(set(dataset.likes.dst), "a")
    os.makedirs(out, exist_ok=True)

    def indexed(edges: Edges):
        return ((users[u], items[i]) for u, i in zip(edges.src, edges.dst))

    friends = [(users[a], users[b]) for a, b in zip(dataset.friends.src, dataset.friends.dst) if a in users and b in users]
    counts = {
        "train": _write_pairs(os.path.join(out, PUBLISHED_TRAIN), "user,item", indexed(train.likes)),
        "test": _write_pairs(os.path.join(out, PUBLISHED_TEST), "user,item", indexed(test)),
        "trust": _write_pairs(os.path.join(out, TRUST), "user,friend",
                              (pair for a, b in friends for pair in ((a, b), (b, a)))),
    }
    for name, mapping, prefix in ((PUBLISHED_USER_INDEX, users, "u"), (PUBLISHED_ITEM_INDEX, items, "a")):
        with open(os.path.join(out, name), "w", encoding="utf-8") as handle:
            json.dump({key[len(prefix):]: index for key, index in mapping.items()}, handle)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sociallgn_split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="the Last.fm 2K folder (user_artists.dat, user_friends.dat)")
    parser.add_argument("--split", default="user:0.2:0", type=split_text(),
                        help="user:FRACTION[:SEED] or random:FRACTION[:SEED], as `evaluate --split` names it "
                             "(default: user:0.2:0, issue 8's protocol)")
    parser.add_argument("--out", required=True, help="SocialLGN's data/preprocessed/lastfm folder to write")
    args = parser.parse_args(argv)
    spec = SplitSpec.parse(args.split)
    if spec.kind == "time":
        parser.error("--split: Last.fm's listens carry no time; use user:FRACTION[:SEED] or random:FRACTION[:SEED]")
    try:
        counts = write_split(args.src, spec, args.out)
    except (DatasetError, OSError) as error:  # OSError: the stale graphs, or an --out that cannot be written
        print(f"sociallgn_split: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {counts['train']} training pairs, {counts['test']} test pairs ({args.split}), "
          f"{counts['trust']} trust rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
