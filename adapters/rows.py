"""Row models: platforms whose export spreads one product over several rows.

A shaper turns the blocks of one file, in order, into blocks of one catalog row each, before
mapping and validation. It keeps only what the next block needs (the product row the next
variants inherit from, the parents seen so far), so memory does not grow with the rows.
Everything is whole-column Arrow work: heads and parents are found with masks, inherited
values are ``take``n by index and ``coalesce``d into the empty cells.

- ``GroupShaper`` (Shopify): consecutive rows with the same ``group`` value (``Handle``) are one
  product. The first row carries the product's fields; the others inherit ``inherit`` columns
  where their own cell is empty. A later row whose ``variant`` columns are all empty (an image
  row) is skipped and counted. An empty ``key`` (``Variant SKU``) becomes
  ``<Handle>/<option values joined by "/">``, or ``<Handle>`` alone when the only option value is
  ``key_default`` ("Default Title"): stable across exports, since it depends on no row position.
- ``ParentShaper`` (WooCommerce): a row naming a ``parent`` (a SKU, or ``id:<ID>``) inherits the
  ``inherit`` columns where empty from that parent, if the parent came earlier in the file
  (the last such definition of it).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters.presets import RowModel
from adapters.readers import Block

_NULL = pa.scalar(None, pa.string())


def _present(batch: pa.RecordBatch, names) -> list[str]:
    return [n for n in names if n and n in batch.schema.names]


def _blank_to_null(values: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), _NULL, values)


def _replace_columns(batch: pa.RecordBatch, new: dict[str, pa.Array]) -> pa.RecordBatch:
    arrays = [new.get(n, c) for n, c in zip(batch.schema.names, batch.columns)]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class Shaper:
    """The identity shaper, and the base of the others: ``skipped`` counts rows dropped as no
    catalog row of their own."""

    def __init__(self) -> None:
        self.skipped = 0

    def shape(self, block: Block) -> Block:
        return block

    def _keep(self, block: Block, batch: pa.RecordBatch, keep: pa.Array) -> Block:
        dropped = len(keep) - (pc.sum(keep).as_py() or 0)
        if not dropped:
            return Block(batch, block.first_row, block.rows, block.bad_cells, block.encoding)
        self.skipped += dropped
        return Block(batch.filter(keep), block.first_row, block.row_numbers().filter(keep),
                     tuple((c, m.filter(keep)) for c, m in block.bad_cells), block.encoding)


class GroupShaper(Shaper):
    def __init__(self, model: RowModel):
        super().__init__()
        self.model = model
        self._carry: dict[str, pa.Array] | None = None     # the last product row seen, one row each

    def shape(self, block: Block) -> Block:
        m, batch = self.model, block.batch
        by = m.group            # the group column; a model without one shapes nothing
        if by is None or by not in batch.schema.names or batch.num_rows == 0:
            return block
        n = batch.num_rows
        inherit = _present(batch, m.inherit)
        group = _blank_to_null(batch.column(by))
        carry = self._carry or {name: pa.nulls(1, pa.string()) for name in [by, *inherit]}
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
        if m.key and m.key in batch.schema.names:
            new[m.key] = pc.coalesce(_blank_to_null(batch.column(m.key)), self._derived_key(batch, group))
        return self._keep(block, _replace_columns(batch, new), keep)

    def _derived_key(self, batch: pa.RecordBatch, group: pa.Array) -> pa.Array:
        m = self.model
        parts = []
        for name in _present(batch, m.key_from):
            values = group if name == m.group else _blank_to_null(batch.column(name))
            if m.key_default is not None and name != m.group:
                values = pc.if_else(pc.fill_null(pc.equal(values, m.key_default), False), _NULL, values)
            parts.append(pc.utf8_trim_whitespace(values))
        if not parts:
            return pa.nulls(batch.num_rows, pa.string())
        key = pc.binary_join_element_wise(*parts, "/", null_handling="skip")
        return pc.if_else(pc.is_null(group), _NULL, key)


class ParentShaper(Shaper):
    def __init__(self, model: RowModel):
        super().__init__()
        self.model = model
        self._parents: pa.Table | None = None        # ref, then the inherited columns

    def shape(self, block: Block) -> Block:
        m, batch = self.model, block.batch
        if m.parent not in batch.schema.names or batch.num_rows == 0:
            return block
        inherit = _present(batch, m.inherit)
        rows = block.row_numbers()
        self._remember_parents(batch, inherit, rows)
        if self._parents is None:
            return block
        parent = pc.utf8_trim_whitespace(_blank_to_null(batch.column(m.parent)))
        where = pc.index_in(parent, value_set=self._parents.column("ref").combine_chunks())
        # only a parent defined above the row counts, whatever the batch boundaries
        above = pc.less(pc.take(self._parents.column("at").combine_chunks(), where), rows)
        where = pc.if_else(pc.fill_null(above, False), where, pa.scalar(None, where.type))
        new = {}
        for name in inherit:
            if name in self._parents.column_names:
                inherited = pc.take(self._parents.column(name).combine_chunks(), where)
                new[name] = pc.coalesce(_blank_to_null(batch.column(name)), inherited)
        return Block(_replace_columns(batch, new), block.first_row, block.rows, block.bad_cells, block.encoding)

    def _remember_parents(self, batch: pa.RecordBatch, inherit: list[str], rows: pa.Array) -> None:
        m = self.model
        names = batch.schema.names
        is_parent = pc.is_null(_blank_to_null(batch.column(m.parent)))
        if m.parent_type_column in names and m.parent_types:
            kinds = pc.utf8_lower(pc.utf8_trim_whitespace(batch.column(m.parent_type_column)))
            is_parent = pc.and_(is_parent, pc.is_in(kinds, value_set=pa.array(list(m.parent_types))))
        is_parent = pc.fill_null(is_parent, False)
        if not pc.any(is_parent).as_py():
            return
        chosen = batch.filter(is_parent)
        at = rows.filter(is_parent)
        refs = []
        if m.key in names:
            refs.append(pc.utf8_trim_whitespace(chosen.column(m.key)))
        if m.id and m.id in names:
            refs.append(pc.binary_join_element_wise("id:", pc.utf8_trim_whitespace(chosen.column(m.id)), ""))
        tables = [pa.table({"ref": ref, "at": at, **{n: chosen.column(n) for n in inherit}}) for ref in refs]
        if not tables:
            return
        known = [self._parents] if self._parents is not None else []
        merged = pa.concat_tables(known + tables)
        merged = merged.filter(pc.is_valid(merged.column("ref")))
        # one row per parent, the last definition winning (as rows do): first match when reversed
        reversed_rows = merged.take(pa.array(np.arange(merged.num_rows - 1, -1, -1, dtype=np.int64)))
        refs = pc.unique(reversed_rows.column("ref"))
        self._parents = reversed_rows.take(pc.index_in(refs, value_set=reversed_rows.column("ref")))


SHAPERS = {"group": GroupShaper, "parent": ParentShaper}


def shaper_for(model: RowModel | None) -> Shaper:
    return SHAPERS[model.model](model) if model is not None else Shaper()
