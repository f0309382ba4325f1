"""Adapters: read a partner file as Arrow batches, map its columns, judge every row."""
