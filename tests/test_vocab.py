"""Vocabulary codes: the bulk (pyarrow) path and the one-by-one path agree."""

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from ranking.vocab import BULK_ENCODE_MIN, UNKNOWN, Vocabulary, count_and_newest, distinct_inverse, encode, positions_in


def one_by_one(vocabulary: Vocabulary, ids: list[str], add: bool) -> np.ndarray:
    return np.array([vocabulary.add(i) if add else vocabulary.code(i) for i in ids], dtype=np.int32)


@pytest.mark.parametrize("distinct", [3, BULK_ENCODE_MIN // 2, 2 * BULK_ENCODE_MIN])
def test_bulk_codes_match_first_sight_order(distinct):
    rng = np.random.default_rng(distinct)
    ids = [f"id{k}" for k in rng.integers(0, distinct, 3 * BULK_ENCODE_MIN)]
    bulk, single = Vocabulary(["id5", "seed"]), Vocabulary(["id5", "seed"])
    assert (bulk.codes(ids, add=True) == one_by_one(single, ids, add=True)).all()
    assert bulk.ids(range(len(bulk))) == single.ids(range(len(single)))
    assert (bulk.hashes(np.arange(len(bulk))) == single.hashes(np.arange(len(single)))).all()


def test_bulk_codes_without_add_leave_unknown_ids_out():
    vocabulary = Vocabulary(["a", "b"])
    ids = ["a", "zz", "b"] * BULK_ENCODE_MIN
    codes = vocabulary.codes(ids)
    assert codes.tolist()[:3] == [0, UNKNOWN, 1]
    assert len(vocabulary) == 2


def test_encode_and_positions_in():
    codes, distinct = encode(["b", "a", "b", "c"])
    assert codes.tolist() == [0, 1, 0, 2] and distinct == ["b", "a", "c"]
    assert positions_in(["c", "x", "b"], ["b", "c"]).tolist() == [1, -1, 0]
    assert encode([])[1] == [] and len(positions_in([], ["a"])) == 0


@settings(deadline=None)  # the first example loads the compiled code
@given(st.lists(st.tuples(st.integers(-3, 40), st.floats(-1e9, 1e9) | st.just(float("-inf"))), max_size=60))
def test_the_compiled_groupings_agree_with_numpy(rows):
    keys = np.array([key for key, _ in rows], dtype=np.int32)
    times = np.array([time for _, time in rows], dtype=np.float64)
    distinct, inverse = distinct_inverse(keys)
    expected, expected_inverse = np.unique(keys, return_inverse=True)
    assert distinct.tolist() == expected.tolist() and inverse.tolist() == expected_inverse.ravel().tolist()
    grouped, counts, newest = count_and_newest(keys, times)
    assert grouped.tolist() == expected.tolist()
    assert counts.tolist() == np.bincount(expected_inverse.ravel(), minlength=len(expected)).tolist()
    assert newest.tolist() == [times[keys == key].max() for key in expected.tolist()]


def test_a_reader_never_sees_a_code_before_its_id_and_hash():
    """Readers take no lock: every code they are handed must already have its id and hash."""
    import sys
    import threading

    from ranking.vocab import stable_hash

    vocabulary = Vocabulary(["seed"])
    batches = [[f"b{b}-{k}" for k in range(2_000)] for b in range(30)]
    failures: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for batch in batches:
                codes = vocabulary.codes(batch)
                known = codes[codes >= 0]
                if not len(known):
                    continue
                try:
                    hashes, ids = vocabulary.hashes(known), vocabulary.ids(known.tolist())
                except IndexError as error:
                    failures.append(f"{len(known)} codes of {batch[0]}'s batch: {error}")
                    return
                expected = [stable_hash(i) for i in ids]
                if hashes.tolist() != expected or ids != [batch[k] for k in np.flatnonzero(codes >= 0).tolist()]:
                    failures.append(f"wrong hash or id in {batch[0]}'s batch")
                    return

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the reader lands inside the writer's adds
    reader.start()
    try:
        for batch in batches:
            vocabulary.codes(batch, add=True)
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not failures, failures[0]
    assert len(vocabulary) == 1 + 30 * 2_000


ids_lists = st.lists(st.sampled_from(["a", "b", "c", "", "d é", "e"]), max_size=30)


@settings(deadline=None)
@given(ids_lists, st.data())
def test_encoded_ids_keep_exactly_the_encoding_of_their_values(values, data):
    from ranking.vocab import EncodedIds, take_ids

    encoded = EncodedIds(values)
    assert encoded == values
    codes, distinct = encode(encoded)
    assert codes.tolist() == encode(values)[0].tolist() and distinct == encode(values)[1]
    with pytest.raises(ValueError):
        codes[:1] = 0  # shared: nobody may change it in place
    rows = np.array(data.draw(st.lists(st.integers(0, max(len(values) - 1, 0)), max_size=20) if values else st.just([])), dtype=np.int64)
    taken = take_ids(encoded, rows)
    assert isinstance(taken, EncodedIds) and taken == [values[i] for i in rows.tolist()]
    assert [c.tolist() if isinstance(c, np.ndarray) else c for c in taken.encoding()] == [encode(list(taken))[0].tolist(), encode(list(taken))[1]]
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values))), dtype=bool)
    assert encoded.take(mask) == [v for v, keep in zip(values, mask) if keep]
    assert positions_in(encoded, ["c", "a"]).tolist() == positions_in(values, ["c", "a"]).tolist()


@settings(deadline=None)
@given(st.lists(ids_lists, max_size=4), st.lists(st.booleans(), min_size=4, max_size=4))
def test_encoding_a_concatenation_part_by_part_is_encoding_it_whole(columns, as_encoded):
    from ranking.vocab import EncodedIds, encode_concatenation

    parts = [EncodedIds(c) if wrap else c for c, wrap in zip(columns, as_encoded)]
    codes, distinct = encode_concatenation(parts)
    whole = [v for c in columns for v in c]
    assert codes.dtype == np.int32 and codes.tolist() == encode(whole)[0].tolist() and distinct == encode(whole)[1]


def test_changing_encoded_ids_drops_their_encoding():
    import pickle

    from ranking.vocab import EncodedIds

    changes = [
        lambda ids: ids.append("z"), lambda ids: ids.extend(["z"]), lambda ids: ids.insert(0, "z"),
        lambda ids: ids.__setitem__(0, "z"), lambda ids: ids.__delitem__(0), lambda ids: ids.pop(),
        lambda ids: ids.remove("b"), lambda ids: ids.sort(), lambda ids: ids.reverse(), lambda ids: ids.clear(),
        lambda ids: ids.__iadd__(["z"]), lambda ids: ids.__imul__(2),
    ]  # fmt: skip
    for change in changes:
        ids = EncodedIds(["b", "a", "b"])
        ids.encoding()
        change(ids)
        assert encode(ids)[0].tolist() == encode(list(ids))[0].tolist() and encode(ids)[1] == encode(list(ids))[1]
    kept = pickle.loads(pickle.dumps(EncodedIds.of_codes(np.array([2, 0, 2]), ["x", "y", "z"])))
    assert kept == ["z", "x", "z"] and encode(kept)[0].tolist() == [0, 1, 0] and encode(kept)[1] == ["z", "x"]
