"""Parquet and Arrow IPC (Feather v2) files, read as tables with their column names.

Both keep their schema at the end of the file, so they are spooled like a zip (memory, then disk,
never beyond ``max_container_bytes``) and read when complete — in the worker thread for the taps.
The table becomes what a CSV would be: one line of column names, then one tab-separated line per
row, so the scanner's header-column context types the values exactly as it does for a CSV or an
xlsx sheet. Reading goes a record batch at a time (``BATCH_ROWS`` rows; Parquet one row group's
pages at a time through a buffered stream), so memory follows the batch, not the file; every
line produced is metered against the body's budget, so a table that decompresses or repeats
(dictionary / run-length encoding) past the ratio or size limit stops like any other bomb.

Columns are turned into text by Arrow's compute kernels (C speed): dates and timestamps as ISO
dates (``1975-03-14``: a date of birth stored as a date reads like one), numbers and strings as
their text, nulls as empty cells; tabs and line breaks inside a value become spaces so that a row
stays one line. Nested values (lists, structs, maps) are written as Python would print them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from sensor.decode.containers import PartSink, Spool, _Lines
from sensor.decode.limits import CorruptInput, LimitExceeded

if TYPE_CHECKING:
    import pyarrow as pa

    from sensor.decode.containers import Sniffer

BATCH_ROWS = 4096
MAX_COLUMNS = 16384                # as many as a spreadsheet row
PARQUET_BUFFER = 1 << 20           # column chunks are streamed through a buffer this size


class ColumnarSpool(Spool):
    """A Parquet file (``kind="parquet"``) or an Arrow IPC file (``kind="arrow"``)."""

    def __init__(self, sniffer: "Sniffer", kind: str):
        super().__init__(sniffer)
        self.kind = kind

    def _read(self, out: PartSink) -> None:
        import pyarrow as pa
        s = self.s
        try:
            schema, batches = self._open()
            if len(schema.names) > MAX_COLUMNS:
                raise LimitExceeded("members", f"more than {MAX_COLUMNS} columns")
            out.begin_part("lines", s.name)
            lines = _Lines(out, s.budget.limits.piece)
            header = "\t".join(_clean(n) for n in schema.names) + "\n"
            s.budget.take(len(header))
            lines.add(header)
            for batch in batches:
                if s.stop():
                    return
                cols = [_column_text(batch.column(i)) for i in range(batch.num_columns)]
                text = "".join(["\t".join(row) + "\n" for row in zip(*cols)])
                s.budget.take(len(text))
                lines.add(text)
            lines.flush()
        except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
            raise CorruptInput(self.kind, f"unreadable {self.kind} file ({type(e).__name__})") from None

    def _open(self) -> tuple["pa.Schema", Iterator["pa.RecordBatch"]]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        if self.kind == "parquet":
            pf = pq.ParquetFile(self.file, buffer_size=PARQUET_BUFFER, pre_buffer=False)
            return pf.schema_arrow, pf.iter_batches(batch_size=BATCH_ROWS)
        reader = pa.ipc.open_file(self.file)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _column_text(col: "pa.Array") -> list[str]:
    """One column of a batch as the text of its cells (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
        t = col.type
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        if pa.types.is_date(t):
            col = col.cast(pa.timestamp("s"))
        text = pc.strftime(col, format="%Y-%m-%d")
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        text = col
    elif (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
          or pa.types.is_boolean(t) or pa.types.is_time(t) or pa.types.is_duration(t)):
        text = col.cast(pa.string())
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [_clean(v.decode("utf-8", "replace")) if v is not None else "" for v in col.to_pylist()]
    else:
        return [_clean(str(v)) if v is not None else "" for v in col.to_pylist()]
    text = pc.replace_substring_regex(pc.fill_null(text.cast(pa.string()), ""), pattern="[\t\r\n]",
                                      replacement=" ")
    return text.to_pylist()
