"""Row models: platforms whose export spreads one product over several rows.

A shaper turns the blocks of one file, in order, into blocks of one catalog row each, before
mapping and validation. It keeps only what the next blocks need (the product row the next
variants inherit from, the parents seen so far, the few variations still waiting for theirs),
so memory does not grow with the rows. Everything is whole-column Arrow work: heads and parents
are found with masks, inherited values are ``take``n by index and ``coalesce``d into the empty
cells. ``shaped(blocks)`` is the whole of it for a caller: every block shaped, then what
``finish`` releases at the end; ``notes`` holds the warnings (``DIAGNOSTICS_SCHEMA``) about
the block last returned, and ``with_notes`` merges them into that block's judgement.

- Every model: a row with a value in any ``skip_when_set`` column, or with every
  ``skip_when_empty`` column empty (a price list's section rows), is no catalog row of its own;
  it is skipped and counted (``skipped``, the manifest's ``rows.skipped``). Magento's export
  follows each product's global row (``store_view_code`` empty) with one row per store view that
  carries only that view's overrides (often just the name), every other cell empty: such a row
  must never replace the product. Skipping them was chosen over keeping their overrides as
  per-store-view attributes: the catalog holds one row per SKU and knows no store views.
- ``GroupShaper`` (Shopify): consecutive rows with the same ``group`` value (``Handle``) are one
  product. The first row carries the product's fields; the others inherit ``inherit`` columns
  where their own cell is empty. A later row whose ``variant`` columns are all empty (an image
  row) is skipped and counted. An empty ``key`` (``Variant SKU``) becomes
  ``<Handle>/<option values joined by "/">``, or ``<Handle>`` alone when the only option value is
  ``key_default`` ("Default Title"): stable across exports, since it depends on no row position.
- ``ParentShaper`` (WooCommerce): a row naming a ``parent`` (a SKU, or ``id:<ID>``) inherits the
  ``inherit`` columns where empty from that parent, wherever the parent is in the file (an export
  sorted newest first lists variations before their parent): the parent's definition closest
  above the row, else the first one below it. A variation whose parent has not come yet is held
  back and released, inherited, in the block where its parent comes. Held rows are bounded:
  beyond ``max_held`` the oldest are released as they are, and so is a held row as soon as a
  later row of the same SKU is released (the store keeps a SKU's last row *in staging order*, so
  rows of one SKU must reach it in file order); what is still held at the end of the file
  (``finish``) has a parent the file does not have. Each row released without its parent gets a
  warning naming the row, its SKU, the parent and the columns it did not inherit. A row with an
  empty ``key`` is keyed ``id:<id>`` (with ``id`` set): WooCommerce makes SKUs optional, and a
  shop without them names its products by ID, as its Parent column does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters.presets import RowModel
from adapters.readers import Block
from adapters.validation import DIAGNOSTICS_SCHEMA, WARNING, Judged, diagnostics_lines

_NULL = pa.scalar(None, pa.string())
_NO_NOTES = DIAGNOSTICS_SCHEMA.empty_table()
MAX_HELD = 10_000           # rows a ParentShaper holds back at most when its model does not say


def _present(batch: pa.RecordBatch, names) -> list[str]:
    return [n for n in names if n and n in batch.schema.names]


def _blank_to_null(values: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), _NULL, values)


def _replace_columns(batch: pa.RecordBatch, new: dict[str, pa.Array]) -> pa.RecordBatch:
    arrays = [new.get(n, c) for n, c in zip(batch.schema.names, batch.columns)]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _filtered(block: Block, keep: pa.Array) -> Block:
    """The rows of ``block`` where ``keep``, each with its own row number, bad and typed cells."""
    return block.filter(keep)


def _concat(blocks: list[Block]) -> Block:
    """Blocks one after the other as one; a column some lack is null there (all text, as read)."""
    if len(blocks) == 1:
        return blocks[0]
    names = list(dict.fromkeys(n for b in blocks for n in b.batch.schema.names))
    arrays = []
    for name in names:
        parts = [b.batch.column(name) if name in b.batch.schema.names else pa.nulls(b.batch.num_rows, pa.string())
                 for b in blocks]
        if len({p.type for p in parts}) > 1:
            parts = [p.cast(pa.string()) for p in parts]
        arrays.append(pa.concat_arrays(parts))
    last = blocks[-1]
    return Block(pa.RecordBatch.from_arrays(arrays, names=names), last.first_row,
                 pa.concat_arrays([b.row_numbers() for b in blocks]), _concat_masks(blocks, "bad_cells"),
                 last.encoding, _concat_masks(blocks, "typed_cells"), _concat_masks(blocks, "refused_rows"))


def _concat_masks(blocks: list[Block], kind: str) -> tuple[tuple[str, pa.Array], ...]:
    """Per-column cell masks (``bad_cells``, ``typed_cells``, ``refused_rows`` per code) of blocks one after the other;
    false where a block has none for that column."""
    columns = dict.fromkeys(c for b in blocks for c, _ in getattr(b, kind))
    return tuple((c, pa.concat_arrays([dict(getattr(b, kind)).get(c, pa.array(np.zeros(b.batch.num_rows, dtype=bool)))
                                       for b in blocks])) for c in columns)


def _sku_keys(values: pa.Array) -> pa.Array:
    """As the store compares SKUs (``sku_key``): trimmed, NFC, lower case; empty is null."""
    return pc.utf8_lower(pc.utf8_normalize(pc.utf8_trim_whitespace(_blank_to_null(values)), "NFC"))


def _kinds(batch: pa.RecordBatch, column: str | None) -> pa.Array | None:
    """A type column's first word, lower case: WooCommerce writes "variation, virtual"."""
    if not column or column not in batch.schema.names:
        return None
    return pc.utf8_lower(pc.utf8_trim_whitespace(pc.replace_substring_regex(batch.column(column), r",.*$", "")))


def _nearest(def_ref: pa.Array, def_seq: np.ndarray, ref: pa.Array, seq: np.ndarray) -> pa.Array:
    """For each (``ref``, ``seq``): the index of the definition of ``ref`` closest above ``seq``,
    else the first one below it, else null. Definitions and requests are sorted together by
    (ref, seq); a running maximum of the definitions' positions finds each request's nearest
    definition above, a running minimum from the end the nearest below."""
    out = np.full(len(ref), -1, dtype=np.int64)
    asking = np.asarray(pc.is_valid(ref).to_numpy(zero_copy_only=False), dtype=bool)
    n_def = len(def_ref)
    if n_def and asking.any():
        asked_at = np.nonzero(asking)[0]
        refs = pa.concat_arrays([def_ref, ref.filter(pa.array(asking))])
        order = pc.sort_indices(pa.table({"ref": refs, "seq": np.concatenate([def_seq, seq[asking]])}),
                                sort_keys=[("ref", "ascending"), ("seq", "ascending")]).to_numpy()
        sorted_refs = refs.take(pa.array(order))
        is_def = order < n_def                          # else a request, number ``order - n_def``
        at = np.arange(len(order))
        above = np.maximum.accumulate(np.where(is_def, at, -1))
        below = np.minimum.accumulate(np.where(is_def, at, len(order))[::-1])[::-1]

        def same_ref(where: np.ndarray, ok: np.ndarray) -> np.ndarray:
            there = sorted_refs.take(pa.array(np.clip(where, 0, len(order) - 1)))
            return ok & np.asarray(pc.fill_null(pc.equal(there, sorted_refs), False).to_numpy(zero_copy_only=False))
        above_ok = same_ref(above, above >= 0)
        below_ok = same_ref(below, below < len(order))
        chosen = np.where(above_ok, above, np.where(below_ok, below, -1))
        found = np.where(chosen >= 0, order[np.clip(chosen, 0, None)], -1)
        requests = ~is_def
        out[asked_at[order[requests] - n_def]] = found[requests]
    return pa.array(out, mask=out < 0)


def with_notes(judged: Judged, notes: pa.Table) -> Judged:
    """``judged`` with a shaper's ``notes`` about the same block merged into its diagnostics (in
    row order) and counted in ``warned``, which counts rows: a row warned twice counts once."""
    if not notes.num_rows:
        return judged
    diagnostics = judged.diagnostics
    warned = diagnostics.filter(pc.equal(diagnostics.column("severity"), WARNING)).column("row").combine_chunks()
    fresh = pc.sum(pc.invert(pc.is_in(pc.unique(notes.column("row").combine_chunks()), value_set=warned))).as_py() or 0
    merged = pa.concat_tables([diagnostics, notes.cast(DIAGNOSTICS_SCHEMA)])
    merged = merged.take(pc.sort_indices(merged, sort_keys=[("row", "ascending")]))     # a stable sort
    return dataclasses.replace(judged, diagnostics=merged, warned=judged.warned + fresh)


class Shaper:
    """The identity shaper, and the base of the others: ``skipped`` counts rows dropped as no
    catalog row of their own; ``notes`` are the warnings about the block last returned."""

    def __init__(self, model: RowModel | None = None, *, sku: tuple[str, ...] = ()) -> None:
        self.model = model
        self.skipped = 0
        self.notes: pa.Table = _NO_NOTES
        # the columns that may hold the catalog key, the partner's first (as mapping tries them)
        self._sku_candidates = tuple(sku) + (model.keys if model else ())

    def shaped(self, blocks: Iterable[Block]) -> Iterator[Block]:
        """Every block shaped, then what ``finish`` releases; read ``notes`` after each one."""
        source = iter(blocks)
        try:
            for block in source:
                yield self.shape(block)
            rest = self.finish()
            if rest is not None:
                yield rest
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()             # a reader stopped early closes its file now, not when collected

    def shape(self, block: Block) -> Block:
        self.notes = _NO_NOTES
        return self._shape(self._unscoped(block))

    def finish(self) -> Block | None:
        """The rows still held back once the last block is shaped, if any."""
        self.notes = _NO_NOTES
        return None

    def _shape(self, block: Block) -> Block:
        return block

    def _unscoped(self, block: Block) -> Block:
        """Without the rows that have a value in a ``skip_when_set`` column, or none in every
        ``skip_when_empty`` column (counted)."""
        m, batch = self.model, block.batch
        if m is None or not batch.num_rows:
            return block
        keep = None
        for name in _present(batch, m.skip_when_set):
            unset = pc.is_null(_blank_to_null(batch.column(name)))
            keep = unset if keep is None else pc.and_(keep, unset)
        required = _present(batch, m.skip_when_empty)
        if required:
            some = pc.is_valid(_blank_to_null(batch.column(required[0])))
            for name in required[1:]:
                some = pc.or_(some, pc.is_valid(_blank_to_null(batch.column(name))))
            keep = some if keep is None else pc.and_(keep, some)
        return block if keep is None else self._keep(block, batch, keep)

    def _keep(self, block: Block, batch: pa.RecordBatch, keep: pa.Array) -> Block:
        dropped = len(keep) - (pc.sum(keep).as_py() or 0)
        kept = dataclasses.replace(block, batch=batch)
        if not dropped:
            return kept
        self.skipped += dropped
        return kept.filter(keep)

    def _sku_column(self, batch: pa.RecordBatch) -> str | None:
        by_lower = {n.lower(): n for n in reversed(batch.schema.names)}
        for name in self._sku_candidates:
            if name in batch.schema.names or name.lower() in by_lower:
                return name if name in batch.schema.names else by_lower[name.lower()]
        return None


class GroupShaper(Shaper):
    def __init__(self, model: RowModel, *, sku: tuple[str, ...] = ()):
        super().__init__(model, sku=sku)
        self.model: RowModel = model
        self._carry: dict[str, pa.Array] | None = None     # the last product row seen, one row each

    def _shape(self, block: Block) -> Block:
        m, batch = self.model, block.batch
        # the group column (the first of the model's that the file has); a file without one shapes nothing
        by = next((g for g in m.groups if g in batch.schema.names), None)
        if by is None or batch.num_rows == 0:
            return block
        n = batch.num_rows
        inherit = _present(batch, m.inherit)
        group = _blank_to_null(batch.column(by))
        carry = self._carry or {name: pa.nulls(1, pa.string()) for name in [by, *inherit]}
        if m.group_continues:            # an empty group cell: the group above goes on
            group = pc.fill_null_forward(pa.concat_arrays([carry[by], group])).slice(1)
        previous = pa.concat_arrays([carry[by], group.slice(0, n - 1)])
        # a head starts a product: its group differs from the row before (no group: its own head)
        head = pc.fill_null(pc.invert(pc.fill_null(pc.equal(group, previous), False)), True)
        head = pc.or_(head, pc.is_null(group))
        # index of each row's head in [carry] + batch: heads point at themselves
        positions = pa.array(np.arange(1, n + 1, dtype=np.int64))
        head_at = pc.fill_null_forward(pa.concat_arrays([
            pa.array([0], pa.int64()), pc.if_else(head, positions, pa.scalar(None, pa.int64()))]))
        head_at = head_at.slice(1)
        new = {}
        for name in inherit:
            source = pa.concat_arrays([carry[name], batch.column(name)])
            new[name] = pc.coalesce(_blank_to_null(batch.column(name)), pc.take(source, head_at))
        self._carry = {name: pc.take(pa.concat_arrays([carry[name], new.get(name, group)]),
                                     pa.array([int(head_at[-1].as_py())]))
                       for name in [by, *inherit]}
        self._carry[by] = group.slice(n - 1, 1)
        variant = _present(batch, m.variant)
        keep = head
        for name in variant:
            keep = pc.or_(keep, pc.is_valid(_blank_to_null(batch.column(name))))
        key = next((k for k in m.keys if k in batch.schema.names), None)
        if key is not None:
            new[key] = pc.coalesce(_blank_to_null(batch.column(key)), self._derived_key(batch, by, group))
        return self._keep(block, _replace_columns(batch, new), keep)

    def _derived_key(self, batch: pa.RecordBatch, by: str, group: pa.Array) -> pa.Array:
        m = self.model
        parts = []
        for name in _present(batch, m.key_from):
            values = group if name == by else _blank_to_null(batch.column(name))
            if m.key_default is not None and name != by:
                values = pc.if_else(pc.fill_null(pc.equal(values, m.key_default), False), _NULL, values)
            parts.append(pc.utf8_trim_whitespace(values))
        if not parts:
            return pa.nulls(batch.num_rows, pa.string())
        key = pc.binary_join_element_wise(*parts, "/", null_handling="skip")
        return pc.if_else(pc.is_null(group), _NULL, key)


# the diagnostics' ``code`` of a row released without its parent: the file has no such parent
# (known at its end), or the row could wait no longer (held rows bounded, a later row of its SKU)
_NOT_FOUND = "parent_not_found"
_TOO_LATE = "parent_not_inherited"


class ParentShaper(Shaper):
    def __init__(self, model: RowModel, *, sku: tuple[str, ...] = ()):
        super().__init__(model, sku=sku)
        self.model: RowModel = model
        self.max_held = MAX_HELD if model.max_held is None else model.max_held
        self._parents: pa.Table | None = None       # ref, seq, the inherited columns: each parent's last definition
        self._held: Block | None = None              # variations waiting for their parent, in file order
        self._held_seq = np.empty(0, dtype=np.int64)
        self._seq = 0                                # rows seen so far: the position in the file of the next one

    def _shape(self, block: Block) -> Block:
        block = self._keyed_by_id(block)
        m, n = self.model, block.batch.num_rows
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        if self._held is None and (n == 0 or m.parent not in block.batch.schema.names):
            return block
        work = _concat([self._held, block]) if self._held is not None else block
        work_seq = np.concatenate([self._held_seq, seq])
        batch = work.batch
        names = batch.schema.names
        inherit = _present(batch, m.inherit)
        parent = (pc.utf8_trim_whitespace(_blank_to_null(batch.column(m.parent))) if m.parent in names
                  else pa.nulls(batch.num_rows, pa.string()))
        kinds = _kinds(batch, m.parent_type_column)
        is_parent = pc.is_null(parent)
        if kinds is not None and m.parent_types:
            is_parent = pc.and_(is_parent, pc.is_in(kinds, value_set=pa.array(list(m.parent_types))))
        is_child = pc.is_valid(parent)
        if kinds is not None and m.child_types:
            is_child = pc.and_(is_child, pc.is_in(kinds, value_set=pa.array(list(m.child_types))))
        is_parent, is_child = pc.fill_null(is_parent, False), pc.fill_null(is_child, False)

        known = self._known(batch, work_seq, is_parent, inherit)
        where = pa.nulls(batch.num_rows, pa.int64())
        if known is not None:
            asked = pc.if_else(is_child, parent, _NULL)
            where = _nearest(known.column("ref").combine_chunks(), known.column("seq").to_numpy(), asked, work_seq)
            new = {name: pc.coalesce(_blank_to_null(batch.column(name)), known.column(name).combine_chunks().take(where))
                   for name in inherit if name in known.column_names}
            batch = _replace_columns(batch, new)
            work = dataclasses.replace(work, batch=batch)
            if known is not self._parents:              # this block defines parents
                self._parents = self._last_definitions(known)

        waiting = np.asarray(pc.and_(is_child, pc.is_null(where)).to_numpy(zero_copy_only=False), dtype=bool)
        hold, collided = self._to_hold(batch, work_seq, waiting)
        released = waiting & ~hold
        self._held = _filtered(work, pa.array(hold)) if hold.any() else None
        self._held_seq = work_seq[hold]
        if released.any():
            self.notes = self._released_early(_filtered(work, pa.array(released)), collided[released])
        return _filtered(work, pa.array(~hold)) if hold.any() else work

    def _keyed_by_id(self, block: Block) -> Block:
        """Rows with an empty ``key`` keyed ``id:<id>``: the platform's own way to name a product
        without SKU (WooCommerce's Parent column does), stable across exports of one shop."""
        m, batch = self.model, block.batch
        column = next((k for k in m.keys if k in batch.schema.names), None)
        if column is None or not (m.id and m.id in batch.schema.names):
            return block
        key = _blank_to_null(batch.column(column))
        if key.null_count == 0:
            return block
        ids = pc.utf8_trim_whitespace(_blank_to_null(batch.column(m.id)))
        derived = pc.binary_join_element_wise("id:", ids, "")
        return dataclasses.replace(block, batch=_replace_columns(batch, {column: pc.coalesce(key, derived)}))

    def _released_early(self, rows: Block, collided: np.ndarray) -> pa.Table:
        """Warnings for rows that could wait no longer for a parent that may still come."""
        reason = np.where(collided, "a later row has the same SKU",
                          f"more than {self.max_held} rows were waiting for their parent")
        parent = pc.utf8_trim_whitespace(rows.batch.column(self.model.parent))
        return self._orphans(rows, _TOO_LATE, pc.binary_join_element_wise(
            'released before its parent "', parent, '" came (', pa.array(reason, pa.string()), ")", ""))

    def finish(self) -> Block | None:
        """Variations whose parent never came: released as they are, each with a warning."""
        self.notes = _NO_NOTES
        held, self._held, self._held_seq = self._held, None, np.empty(0, dtype=np.int64)
        if held is None:
            return None
        parent = pc.utf8_trim_whitespace(held.batch.column(self.model.parent))
        self.notes = self._orphans(held, _NOT_FOUND,
                                   pc.binary_join_element_wise('parent "', parent, '" is not in the file', ""))
        return held

    def _known(self, batch: pa.RecordBatch, seq: np.ndarray, is_parent: pa.Array, inherit: list[str]) -> pa.Table | None:
        """The parents seen before this block (their last definitions) and every definition in it;
        the very table of those seen before when this block defines none."""
        m = self.model
        if not pc.any(is_parent).as_py():
            return self._parents
        chosen = batch.filter(is_parent)
        at = seq[np.asarray(is_parent.to_numpy(zero_copy_only=False), dtype=bool)]
        refs = []
        key = next((k for k in m.keys if k in batch.schema.names), None)
        if key is not None:
            refs.append(pc.utf8_trim_whitespace(_blank_to_null(chosen.column(key))))
        if m.id and m.id in batch.schema.names:
            refs.append(pc.binary_join_element_wise("id:", pc.utf8_trim_whitespace(_blank_to_null(chosen.column(m.id))), ""))
        if not refs:
            return self._parents
        known = [self._parents] if self._parents is not None else []
        known += [pa.table({"ref": ref, "seq": at, **{n: chosen.column(n) for n in inherit}}) for ref in refs]
        merged = pa.concat_tables(known, promote_options="default")
        return merged.filter(pc.is_valid(merged.column("ref")))

    @staticmethod
    def _last_definitions(known: pa.Table) -> pa.Table:
        """One row per parent, its last definition (as rows do): the first of each, latest first."""
        latest_first = known.take(pc.sort_indices(known, sort_keys=[("seq", "descending")]))
        refs = pc.unique(latest_first.column("ref"))
        return latest_first.take(pc.index_in(refs, value_set=latest_first.column("ref")))

    def _to_hold(self, batch: pa.RecordBatch, seq: np.ndarray, waiting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which waiting rows stay held, and which of the others go for a later row of their SKU.

        A row is released as soon as a later row of its SKU is (a held row must not come after
        it: the store keeps the last row of a SKU in staging order); then the oldest, beyond
        ``max_held``."""
        hold = waiting.copy()
        collided = np.zeros(len(waiting), dtype=bool)
        column = self._sku_column(batch)
        if hold.any() and (~waiting).any() and column is not None:
            keys = _sku_keys(batch.column(column))
            going = pa.array(~waiting)
            last = (pa.table({"key": keys.filter(going), "seq": seq[~waiting]})
                    .group_by("key").aggregate([("seq", "max")]))
            at = pc.index_in(keys, value_set=last.column("key"), skip_nulls=True)
            later = pc.greater(last.column("seq_max").combine_chunks().take(at), pa.array(seq))
            collided = hold & np.asarray(pc.fill_null(later, False).to_numpy(zero_copy_only=False), dtype=bool)
            hold &= ~collided
        excess = int(hold.sum()) - self.max_held
        if excess > 0:
            hold[np.nonzero(hold)[0][:excess]] = False
        return hold, collided

    def _orphans(self, rows: Block, code: str, why: pa.Array) -> pa.Table:
        """Warnings for rows released without their parent: the row, its SKU, the parent and the
        inherited columns it had empty (which stay empty)."""
        m, batch = self.model, rows.batch
        n = batch.num_rows
        empty = [pc.if_else(pc.is_null(_blank_to_null(batch.column(name))), pa.scalar(name), _NULL)
                 for name in _present(batch, m.inherit)]
        missing = (pc.binary_join_element_wise(*empty, ", ", null_handling="skip") if empty
                   else pa.array([""] * n, pa.string()))
        what = pc.if_else(pc.equal(missing, ""), pa.scalar("nothing was left to inherit (the row has every inherited column)"),
                          pc.binary_join_element_wise("not inherited: ", missing, ""))
        column = self._sku_column(batch)
        sku = pc.utf8_trim_whitespace(_blank_to_null(batch.column(column))) if column else pa.nulls(n, pa.string())
        return diagnostics_lines(rows.row_numbers(), sku, severity=WARNING, column=m.parent, code=code,
                                 message=pc.binary_join_element_wise(why, what, "; "),
                                 values=pc.utf8_trim_whitespace(batch.column(m.parent)))


SHAPERS: dict[str, type[Shaper]] = {"flat": Shaper, "group": GroupShaper, "parent": ParentShaper}


def shaper_for(model: RowModel | None, *, sku: tuple[str, ...] = ()) -> Shaper:
    """The shaper of a preset's row model; ``sku``: the columns that may hold the catalog key,
    in the order the mapping tries them (the partner's own first)."""
    if model is None:
        return Shaper(sku=sku)
    return SHAPERS[model.model](model, sku=sku)
