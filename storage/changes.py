"""Change detection in Arrow: which rows of a file the catalog already holds, before staging.

A snapshot re-sent every night mostly repeats what the catalog holds. Staging those rows only to
find in SQL that nothing changed costs as much as writing them, so the SQLite store reads the
partner's ``(sku_key, row_hash)`` once, hashes each incoming batch over the merged columns
(whole-column numpy work, no Python per row) and stages only the rows that are new or differ.

``row_hashes`` is a 64-bit hash of a row's merged columns: the string columns' bytes joined in
8-byte words, each word mixed (murmur3's multipliers) and summed per row, plain and weighted by
its position; then each column's length (``-1`` for NULL) and each integer column (with its
NULL flag) folded in, so that no shifting of bytes between columns and no NULL/empty confusion
can make two rows alike. Equal
hashes are taken as equal rows; a partner can only ever hit its own rows, and a chance collision
(2⁻⁶⁴ per changed row) would leave one update for the next file.

Before that, ``record_hashes`` hashes each record as it was read (every cell's text, the same
way, salted with a fingerprint of everything else that decides what the record becomes), and
``Existing.recognise`` finds the records the catalog last took as they are: those are not even
mapped or validated (``inbox_daemon.pipeline``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.base import MERGED_COLUMNS

_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_SEED = np.uint64(0x9E3779B97F4A7C15)
HASH_VERSION = 1        # stored hashes of another version simply never match: those rows are compared in SQL


def _fmix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser on a uint64 array (numpy's uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(33))
    x = x * _M1
    x = x ^ (x >> np.uint64(33))
    x = x * _M2
    return x ^ (x >> np.uint64(33))


_ZERO = pa.scalar("\0")
_C1, _C2 = np.uint64(0x2545F4914F6CDD1D), np.uint64(0x9FB21C651E98DF25)


def _words_hash(arrays: list[pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """(a uint64 hash of each row of ``arrays`` joined, NULL as empty; each row's byte length).

    Arrow joins the values with NUL padding to whole 8-byte words, so every row starts on a
    word of one buffer, read as uint64 without a copy. Each word is mixed on its own; the row
    sums them, once plain and once weighted by the word's position in the row (so that moving
    bytes around changes the hash): two reductions, no per-row or per-byte work."""
    n = len(arrays[0])
    filled = [pc.fill_null(a, "") for a in arrays]
    total = np.zeros(n, dtype=np.int64)
    for values in filled:
        total += pc.binary_length(values).to_numpy(zero_copy_only=False)
    joined = pc.binary_join_element_wise(*filled, pc.binary_repeat(_ZERO, pa.array(8 - (total & 7))), "")
    width = np.int64 if pa.types.is_large_string(joined.type) else np.int32
    _, offsets_buf, data_buf = joined.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width, count=n + 1,
                            offset=joined.offset * np.dtype(width).itemsize).astype(np.int64)
    words = np.frombuffer(data_buf, dtype="<u8", count=int(offsets[-1] - offsets[0]) // 8, offset=int(offsets[0]))
    starts = (offsets[:-1] - offsets[0]) // 8
    mixed = (words ^ _C1) * _M1
    mixed ^= mixed >> np.uint64(32)
    mixed *= _M2
    plain = np.add.reduceat(mixed, starts)
    weighted = np.add.reduceat(mixed * np.arange(len(words), dtype=np.uint64), starts)
    weighted -= starts.astype(np.uint64) * plain          # weights counted from each row's start
    return _fmix(plain ^ _fmix(weighted + _C2)), total


def hash_binary(array: pa.Array) -> np.ndarray:
    """A uint64 hash of each value of a string or binary array (NULL hashes like empty)."""
    if len(array) == 0:
        return np.empty(0, dtype=np.uint64)
    h, length = _words_hash([array])
    return _fmix(h ^ length.astype(np.uint64))


_STRINGS = tuple(c for c in MERGED_COLUMNS if c not in ("price_cents", "stock", "active"))
_INTEGERS = ("price_cents", "stock", "active")
_COLUMN_KEYS = _fmix(np.arange(1001, 1001 + len(_STRINGS) + 2 * len(_INTEGERS) + 1, dtype=np.uint64) * _SEED)


def row_hashes(batch: pa.RecordBatch, carried: Collection[str] | None = None) -> np.ndarray:
    """The 64-bit hash of each row's merged columns, as int64 (what SQLite stores): the bytes
    of the string columns joined, plus one word per string column (its length, -1 for NULL)
    and two per integer column (its value, its NULL flag), each mixed with its column's key.

    ``carried``: the columns the file sets (all when None). The set is mixed in, so that a hash
    only ever equals one of a file that set the same columns: the stored hash is that of the
    last file that wrote (or matched) the product, and equal hashes then mean equal values in
    every column the new file sets. A file that sets every column mixes in nothing."""
    n = batch.num_rows
    if n == 0:
        return np.empty(0, dtype=np.int64)
    strings = [batch.column(c) for c in _STRINGS]
    fields = np.empty((n, len(_COLUMN_KEYS)), dtype=np.int64)
    for i, column in enumerate(strings):
        fields[:, i] = pc.fill_null(pc.binary_length(column), -1).to_numpy(zero_copy_only=False)
    for i, name in enumerate(_INTEGERS):
        column = batch.column(name)
        fields[:, len(strings) + 2 * i] = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        fields[:, len(strings) + 2 * i + 1] = column.is_null().to_numpy(zero_copy_only=False)
    fields[:, -1] = HASH_VERSION | _missing_mask(carried) << 8
    mixed = (fields.view(np.uint64) ^ _COLUMN_KEYS) * _M1
    mixed ^= mixed >> np.uint64(32)
    return _fmix(_words_hash(strings)[0] + (mixed * _M2).sum(axis=1, dtype=np.uint64)).view(np.int64)


def record_hashes(batch: pa.RecordBatch, salt: int, typed: Collection[tuple[str, pa.Array]] = ()) -> np.ndarray:
    """The 64-bit hash of each record of a file as it was read (every column's text, before any
    mapping or validation), as int64, mixed with ``salt``: the fingerprint of everything else
    that decides what the record becomes (``record_salt``). Equal hashes under one salt mean the
    record becomes the same catalog row again, so a record the catalog last took as it is needs
    no judging (``Existing.recognise``). ``typed``: cells that were numbers, not text (.xlsx),
    which are read differently: a bit per column in the hash."""
    n = batch.num_rows
    if n == 0:
        return np.empty(0, dtype=np.int64)
    columns = [c if pa.types.is_string(c.type) or pa.types.is_large_string(c.type) else c.cast(pa.string())
               for c in batch.columns]
    lengths = np.empty((n, len(columns) + 1), dtype=np.int64)
    for i, column in enumerate(columns):
        lengths[:, i] = pc.fill_null(pc.binary_length(column), -1).to_numpy(zero_copy_only=False)
    kinds = np.zeros(n, dtype=np.int64)
    names = batch.schema.names
    for name, mask in typed:
        if name in names:
            kinds |= pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(np.int64) << (names.index(name) % 63)
    lengths[:, -1] = kinds
    keys = _fmix(np.arange(1, len(columns) + 2, dtype=np.uint64) * _SEED ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    mixed = (lengths.view(np.uint64) ^ keys) * _M1
    mixed ^= mixed >> np.uint64(32)
    return _fmix(_words_hash(columns)[0] + (mixed * _M2).sum(axis=1, dtype=np.uint64)).view(np.int64)


def _nearest(sorted_values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted value, the index in ``sorted_values`` (not empty) where it is, if it is
    anywhere. The wanted values are looked up in their own sorted order: each search then
    starts where the last one ended, in memory the last one just read, instead of from the top
    of a tree of cache misses (hashes come in no order): 19,500 hashes into 455,000 took a
    quarter of the time, sort included."""
    order = np.argsort(wanted)
    near = np.empty(len(wanted), dtype=np.int64)
    near[order] = np.searchsorted(sorted_values, wanted[order])
    return np.minimum(near, len(sorted_values) - 1)


def _int64s(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _valid(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return values.is_valid().to_numpy(zero_copy_only=False)


def _missing_mask(carried: Collection[str] | None) -> int:
    """A bit per merged column the file does not set (0 for a file that sets every one)."""
    if carried is None:
        return 0
    return sum(1 << i for i, c in enumerate(MERGED_COLUMNS) if c not in carried)


@dataclass
class Existing:
    """A partner's catalog as the change detection needs it: its keys in the order they were
    read (a key's position indexes every other array), the stored row hash, record hash and
    ``active`` of each, and what this file did to each of them. The index that finds a key's
    position (``positions``) is built when first asked for: a re-sent file whose records are
    all recognised never needs it."""
    keys: pa.Array                      # sku_key
    row_hashes: np.ndarray              # int64; NULL hashes never match (has_hash False)
    has_hash: np.ndarray
    active: np.ndarray
    version: int                        # the partner's catalog version when this was read
    checked: bool = True                # False: nothing was read, nothing is left out, nothing to check
    products: int = 0                   # the partner's products then
    # per key: the hash of the record it was last taken from (``record_hashes``), NULL: unknown
    records: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    has_record: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    last_unchanged: np.ndarray = field(init=False)   # per key: last row of the file equal to it, or -1
    last_staged: np.ndarray = field(init=False)      # per key: last row of the file staged for it, or -1
    last_rejected: np.ndarray = field(init=False)    # per key: last row of the file rejected, or -1
    present: np.ndarray = field(init=False)          # per key: the file has a row of it (valid or not)

    def __post_init__(self) -> None:
        n = len(self.keys)
        self._key_index: tuple[np.ndarray, np.ndarray] | None = None
        self.last_unchanged = np.full(n, -1, dtype=np.int64)
        self.last_staged = np.full(n, -1, dtype=np.int64)
        self.last_rejected = np.full(n, -1, dtype=np.int64)
        self.present = np.zeros(n, dtype=bool)
        if len(self.records) != n:
            self.records, self.has_record = np.zeros(n, np.int64), np.zeros(n, bool)
        # the known records, sorted, and the key of each; a record two keys claim (it cannot
        # happen but by a collision) is left out: it must never be taken for either
        known = np.flatnonzero(self.has_record)
        # not a stable sort: a record two keys claim is left out whatever their order (numpy's
        # quicksort of 455,000 hashes: 7 ms; its stable sort: 37 ms)
        order = known[np.argsort(self.records[known])]
        sorted_records = self.records[order]
        unique = np.ones(len(order), bool)
        if len(order) > 1:
            twice = sorted_records[1:] == sorted_records[:-1]
            unique[1:] &= ~twice
            unique[:-1] &= ~twice
        self._record_keys, self._sorted_records = order[unique], sorted_records[unique]
        # per key: the record of its last row equal to the catalog, when that must be stored
        self.last_record = np.zeros(n, np.int64)
        self.store_record = np.zeros(n, bool)

    @classmethod
    def unread(cls, version: int, products: int) -> Existing:
        """Nothing read (a small file into a large catalog): no row is left out of staging."""
        return cls(keys=pa.array([], pa.string()), row_hashes=np.empty(0, np.int64), has_hash=np.empty(0, bool),
                   active=np.empty(0, bool),
                   version=version, checked=False, products=products)

    @classmethod
    def from_table(cls, table: pa.Table, version: int) -> Existing:
        keys = table.column("sku_key").combine_chunks() if table.num_rows else pa.array([], pa.string())
        hashes = table.column("row_hash")
        records = table.column("record_hash") if "record_hash" in table.column_names else pa.nulls(len(keys), pa.int64())
        return cls(keys=keys, row_hashes=_int64s(hashes), has_hash=_valid(hashes),
                   active=pc.equal(table.column("active"), 1).to_numpy(zero_copy_only=False),
                   version=version, products=table.num_rows, records=_int64s(records), has_record=_valid(records))

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(the keys' hashes sorted, the position of each): made once, on first use."""
        if self._key_index is None:
            hashes = hash_binary(self.keys)
            order = np.argsort(hashes)
            self._key_index = hashes[order], order
        return self._key_index

    def positions(self, keys: pa.Array) -> np.ndarray:
        """Where each key is in this catalog, or -1 (a new key)."""
        if not len(self.keys) or not len(keys):
            return np.full(len(keys), -1, dtype=np.int64)
        sorted_hashes, order = self._index()
        wanted = hash_binary(keys)
        near = _nearest(sorted_hashes, wanted)
        found, at = sorted_hashes[near] == wanted, order[near]
        # the hash only finds the place; the key itself must be equal (a hash collision is "new")
        found &= pc.fill_null(pc.equal(self.keys.take(pa.array(at)), keys), False).to_numpy(zero_copy_only=False)
        return np.where(found, at, -1)

    def recognise(self, records: np.ndarray) -> np.ndarray:
        """Where the key is of each record the catalog last took as it is (``record_hashes``
        under the same salt), or -1. Reads nothing it writes: safe beside a staging thread."""
        if not len(self._sorted_records) or not len(records):
            return np.full(len(records), -1, dtype=np.int64)
        at = _nearest(self._sorted_records, records)
        return np.where(self._sorted_records[at] == records, self._record_keys[at], -1)

    def took(self, at: np.ndarray, rows: np.ndarray) -> None:
        """Rows recognised (``recognise``): each equals what the catalog holds for its key."""
        self._unchanged(at, rows, None)

    def split(self, batch: pa.RecordBatch, hashes: np.ndarray, records: pa.Array | None = None) -> np.ndarray:
        """Which rows of a valid batch the catalog holds as they are (True: not to be staged);
        records what the file holds per key for ``blockers`` and ``absent``, and for a key whose
        last such row came from another record than the one stored, that row's (``records``,
        NULL for a row that had a diagnostics line: never stored)."""
        at = self.positions(batch.column("sku_key"))
        known = at >= 0
        safe = np.where(known, at, 0)
        unchanged = known & self.has_hash[safe] & (self.row_hashes[safe] == hashes)
        rows = batch.column("row").to_numpy(zero_copy_only=False)
        self._unchanged(at[unchanged], rows[unchanged], None if records is None else records.filter(pa.array(unchanged)))
        staged_known = known & ~unchanged
        np.maximum.at(self.last_staged, at[staged_known], rows[staged_known])
        self.present[at[known]] = True
        return unchanged

    def _unchanged(self, at: np.ndarray, rows: np.ndarray, records: pa.Array | None) -> None:
        """Rows equal to the catalog (a key's rows come in file order): the last one of each key
        decides whether its record is to be stored (``records_to_store``)."""
        np.maximum.at(self.last_unchanged, at, rows)
        self.present[at] = True
        last = rows == self.last_unchanged[at]
        if records is None:
            self.store_record[at[last]] = False           # the stored record is this row's
            return
        values, valid = _int64s(records)[last], _valid(records)[last]
        at = at[last]
        self.last_record[at] = values
        self.store_record[at] = valid & ~(self.has_record[at] & (self.records[at] == values))

    def records_to_store(self) -> pa.Table:
        """(sku_key, record_hash) of keys whose last row in the file equals the catalog but came
        from another record than the one stored: stored, so the next file skips it unjudged."""
        at = np.flatnonzero(self.store_record & (self.last_unchanged > self.last_staged))
        return pa.table({"sku_key": self.keys.take(pa.array(at)), "record_hash": pa.array(self.last_record[at])})

    def saw(self, keys: pa.Array, rows: np.ndarray) -> None:
        """Rows the file had but rejected: their keys are present (a snapshot does not deactivate
        them), and a rejected row after a key's last valid one leaves the key as it is."""
        at = self.positions(keys)
        known = at >= 0
        self.present[at[known]] = True
        np.maximum.at(self.last_rejected, at[known], rows[known])

    def blockers(self) -> pa.Table:
        """Keys whose last row in the file is one equal to the catalog, after an earlier row of
        the same key that was staged: the staged row must not be applied (the later row wins,
        and it says "as it is")."""
        at = np.nonzero(self.last_unchanged > self.last_staged)[0]
        at = at[self.last_staged[at] >= 0]
        return pa.table({"sku_key": self.keys.take(pa.array(at)), "row": pa.array(self.last_unchanged[at])})

    def unchanged_counts(self) -> tuple[int, int, int]:
        """(keys with a row equal to the catalog; of them, keys that also had a row staged; keys
        with no row staged whose last valid row, one equal to the catalog, a rejected row follows)."""
        seen = self.last_unchanged >= 0
        staged = self.last_staged >= 0
        blocked = seen & ~staged & (self.last_rejected > self.last_unchanged)
        return int(seen.sum()), int((seen & staged).sum()), int(blocked.sum())

    def absent(self) -> pa.Array:
        """Active keys of the catalog the file has no row of: what a snapshot deactivates."""
        return self.keys.filter(pa.array(self.active & ~self.present))
