"""Parquet through ``pyarrow.parquet.ParquetFile.iter_batches`` (row group by row group)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from adapters.readers.base import Block, ReadOptions, seekable_copy, to_text
from config.errors import UnreadableFile

BATCH_ROWS = 65_536
MAX_ROW_GROUP_BYTES = 1 << 30     # uncompressed; a row group is decoded whole, so this bounds memory


def read_parquet(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    next_row = 1
    try:
        with seekable_copy(path, compressed=compressed, options=options) as local:
            with pq.ParquetFile(local) as pf:
                for i in range(pf.metadata.num_row_groups):
                    size = pf.metadata.row_group(i).total_byte_size
                    if size > MAX_ROW_GROUP_BYTES:
                        raise UnreadableFile(
                            reason=f"row group {i} declares {size / 2**20:,.0f} MiB uncompressed, more than "
                                   f"{MAX_ROW_GROUP_BYTES / 2**20:,.0f} MiB: write smaller row groups", row=None)
                for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                    yield Block(to_text(batch, options.paths), next_row)
                    next_row += batch.num_rows
    except UnreadableFile:
        raise
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        raise UnreadableFile(reason=f"not a readable Parquet file: {str(exc).splitlines()[0]}",
                             row=next_row) from exc
