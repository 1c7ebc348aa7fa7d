"""Galleries larger than memory: memory-mapped embeddings and faiss IVF indexes whose inverted lists stay on disk.

Two pieces `GalleryIndex` (the sibling `gallery_index.py`) builds on:

* `MappedEmbeddings` opens the embedding matrix of a saved gallery (`gallery_embeddings.safetensors`, the file
  `GalleryIndex.save` writes; the format is unchanged) as a read-only, copy-on-write memory map. The safetensors
  layout is `u64 n | n bytes of JSON header | raw row-major data`, so the rows are the bytes from `8 + n` on, and a
  tensor over them costs no copy. Exact search reads them in blocks and hands each block's pages back to the kernel
  (`madvise(MADV_DONTNEED)`; the page cache may keep them, the process does not), so a search's resident memory is
  one block, not the matrix.
* `merge_ivf_on_disk` / `read_ivf_on_disk`: IVF-Flat / IVF-PQ indexes trained once, filled shard by shard, merged
  into one `.ivfdata` file as faiss documents it (`faiss.contrib.ondisk.merge_ondisk`, `OnDiskInvertedLists`), and
  read back with the inverted lists memory-mapped (`IO_FLAG_ONDISK_SAME_DIR | IO_FLAG_READ_ONLY`): a search touches
  only the lists of the `nprobe` probed cells.

`write_embeddings` writes the safetensors file from row blocks (byte-identical to `safetensors.torch.save_file` of
the whole matrix), so neither saving nor merging needs the matrix in memory.

This file is a flat Hub-module sibling of `gallery_index.py`: it imports only numpy and torch (faiss lazily, inside
a `try`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch


#: Tensor name of the matrix inside the embeddings file.
EMBEDDINGS_KEY = "embeddings"
#: safetensors dtype tag -> (torch dtype, numpy dtype the bytes are mapped as). bfloat16 has no numpy dtype: its bytes
#: are mapped as uint16 and viewed as bfloat16 by torch (same size, no copy).
SAFETENSORS_DTYPES = {
    "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16),
    "BF16": (torch.bfloat16, np.uint16),
}
_TAG_OF_DTYPE = {torch_dtype: tag for tag, (torch_dtype, _) in SAFETENSORS_DTYPES.items()}
#: Bytes of rows a streaming pass (search, digest, copy) maps in before handing the pages back.
STREAM_BLOCK_BYTES = 64 << 20
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


def import_faiss():
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported only when a faiss backend is requested
    except ImportError as error:
        raise ImportError(
            "The faiss backend of GalleryIndex needs faiss: `pip install faiss-cpu` (or faiss-gpu). "
            "The default torch backend needs nothing extra."
        ) from error
    return faiss


# --------------------------------------------------------------------------------------------------------------------
# Memory-mapped embeddings
# --------------------------------------------------------------------------------------------------------------------


def _safetensors_header(shape: tuple[int, ...], dtype: torch.dtype) -> bytes:
    """The 8-byte length + JSON header `safetensors.torch.save_file({"embeddings": t}, metadata={"format": "pt"})`
    writes for a tensor of `shape` / `dtype` (compact JSON, space-padded to a multiple of 8 bytes)."""
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    header = {
        "__metadata__": {"format": "pt"},
        EMBEDDINGS_KEY: {"dtype": _TAG_OF_DTYPE[dtype], "shape": list(shape), "data_offsets": [0, nbytes]},
    }
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_embeddings(
    path: str, shape: tuple[int, ...], dtype: torch.dtype, blocks: Iterable[torch.Tensor]
) -> str:
    """Write a safetensors embeddings file from consecutive row `blocks`; return the SHA-256 of the data bytes.

    The blocks (in `dtype`, rows of `shape[1:]`) are written as they come, so the matrix is never whole in memory.
    The file is byte-identical to `save_file({"embeddings": torch.cat(blocks)}, path, metadata={"format": "pt"})`,
    and the digest is the one `GalleryIndex` records (`embeddings_sha256`). Raises if the blocks do not add up to
    `shape`. Not atomic by itself: callers write to a temporary name and rename.
    """
    digest = hashlib.sha256()
    rows = 0
    with open(path, "wb") as handle:
        handle.write(_safetensors_header(tuple(shape), dtype))
        for block in blocks:
            block = block.detach().cpu().contiguous()
            if block.dtype != dtype or tuple(block.shape[1:]) != tuple(shape[1:]):
                raise ValueError(
                    f"write_embeddings {path!r}: a block of shape {tuple(block.shape)} / {block.dtype}, expected rows "
                    f"of {tuple(shape[1:])} / {dtype}"
                )
            data = memoryview(block.view(torch.uint8).numpy()).cast("B") if block.numel() else b""
            digest.update(data)
            handle.write(data)
            rows += block.shape[0]
    if rows != shape[0]:
        raise ValueError(f"write_embeddings {path!r}: the blocks hold {rows} rows, expected {shape[0]}")
    return digest.hexdigest()


def stream_rows(total_rows: int, row_bytes: int, multiple: int = 1) -> int:
    """Rows per streaming block: about `STREAM_BLOCK_BYTES` of them, rounded down to a multiple of `multiple` when
    that fits (exact search passes its own block size, so a streamed search runs the same matrix products as an
    in-memory one), else of 256; never more than `total_rows`, never fewer than one."""
    rows = max(1, STREAM_BLOCK_BYTES // max(1, row_bytes))
    unit = multiple if multiple <= rows else 256
    rows = max(1, rows - rows % unit) if rows >= unit else rows
    return max(1, min(rows, total_rows))


class MappedEmbeddings:
    """The matrix of a safetensors embeddings file, memory-mapped: `tensor` is a torch view of the file's bytes.

    The map is private and copy-on-write (`mmap.ACCESS_COPY`): pages are read from the file when first touched, and a
    write to the tensor would change this process's copy only, never the file. Nothing is read at opening but the
    header. Refused, with the file named: a missing file, a header that is not safetensors, a tensor other than
    `embeddings`, an unsupported dtype, and a file shorter than its header says (truncated).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"MappedEmbeddings: {self.path!r} not found")
        file_size = os.path.getsize(self.path)
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"MappedEmbeddings: {self.path!r} holds {file_size} bytes: not a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > min(_HEADER_LIMIT, file_size - 8):
                raise ValueError(
                    f"MappedEmbeddings: {self.path!r} declares a {header_size}-byte header in a {file_size}-byte file: "
                    "not a safetensors file, or truncated"
                )
            try:
                header = json.loads(handle.read(header_size))
            except (ValueError, UnicodeDecodeError) as error:
                raise ValueError(f"MappedEmbeddings: {self.path!r} has no valid safetensors header ({error})") from error
            if not isinstance(header, dict) or not isinstance(header.get(EMBEDDINGS_KEY), dict):
                raise ValueError(
                    f"MappedEmbeddings: {self.path!r} holds no tensor {EMBEDDINGS_KEY!r} (has "
                    f"{sorted(header) if isinstance(header, dict) else type(header).__name__})"
                )
            entry = header[EMBEDDINGS_KEY]
            if entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise ValueError(
                    f"MappedEmbeddings: {self.path!r} stores dtype {entry.get('dtype')!r}; expected one of "
                    f"{list(SAFETENSORS_DTYPES)}"
                )
            torch_dtype, numpy_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(size) for size in entry.get("shape", ()))
            begin, end = (int(offset) for offset in entry.get("data_offsets", (0, -1)))
        item_size = np.dtype(numpy_dtype).itemsize
        count = int(np.prod(shape)) if shape else 0
        self.data_start = 8 + header_size + begin
        if end - begin != count * item_size or len(shape) not in (2, 3) or count == 0:
            raise ValueError(
                f"MappedEmbeddings: {self.path!r} header gives shape {shape} and {end - begin} data bytes; expected a "
                f"non-empty (N, D) or (N, K, D) matrix of {count * item_size} bytes"
            )
        if file_size < self.data_start + count * item_size:
            raise ValueError(
                f"MappedEmbeddings: {self.path!r} is truncated: {file_size} bytes, but its header needs "
                f"{self.data_start + count * item_size} (shape {shape}, {entry['dtype']}); copy or save it again"
            )
        self._file = open(self.path, "rb")  # noqa: SIM115 - kept open: `gather` reads rows with preadv
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        array = np.frombuffer(self._map, dtype=numpy_dtype, count=count, offset=self.data_start).reshape(shape)
        tensor = torch.from_numpy(array)
        self.tensor = tensor.view(torch_dtype) if torch_dtype == torch.bfloat16 else tensor
        self.row_bytes = (count // shape[0]) * item_size

    def release(self, start_row: int, stop_row: int) -> None:
        """Hand the pages of rows `[start_row, stop_row)` back to the kernel; a later read faults them in again.

        The range is widened to whole pages: a page shared with a neighbouring row is dropped too, which is harmless
        (it is clean and is read again from the file if needed).
        """
        if stop_row <= start_row or not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = self.data_start + start_row * self.row_bytes
        last = min(len(self._map), self.data_start + stop_row * self.row_bytes)
        first -= first % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows at `positions` (any shape of int64 row numbers), read from the file with `os.preadv` into a new
        tensor, not through the map: a fault on the map makes the kernel map in a whole page-cache folio around the
        row (64 KiB of fault-around, or a large folio of up to 2 MiB), so touching a few thousand random rows would
        make most of the file resident. Runs of consecutive rows are read in one call."""
        if not hasattr(os, "preadv"):  # e.g. Windows: read through the map
            return self.tensor[positions.cpu()]
        flat = positions.reshape(-1).cpu()
        unique, inverse = torch.unique(flat, return_inverse=True)  # sorted: file order
        rows = torch.empty((unique.numel(), *self.tensor.shape[1:]), dtype=self.tensor.dtype)
        if unique.numel():
            if int(unique[0]) < 0 or int(unique[-1]) >= self.tensor.shape[0]:
                raise IndexError(f"MappedEmbeddings.gather: rows must lie in [0, {self.tensor.shape[0]})")
            buffer = memoryview(rows.view(torch.uint8).numpy()).cast("B")
            # One preadv per run of consecutive rows.
            breaks = (torch.nonzero(unique[1:] - unique[:-1] != 1).squeeze(1) + 1).tolist()
            starts = [0, *breaks]
            stops = [*breaks, unique.numel()]
            first_rows = unique[starts].tolist()
            for start, stop, row in zip(starts, stops, first_rows):
                size = (stop - start) * self.row_bytes
                got = os.preadv(self._file.fileno(), [buffer[start * self.row_bytes : stop * self.row_bytes]],
                                self.data_start + row * self.row_bytes)
                if got != size:
                    raise ValueError(f"MappedEmbeddings: {self.path!r} ended while reading row {row}")
        out = rows[inverse]
        return out.view(*positions.shape, *self.tensor.shape[1:])

    def blocks(self, rows_per_block: int) -> Iterator[tuple[int, torch.Tensor]]:
        """`(start_row, rows)` over the whole matrix, each block's pages released once the caller moves on."""
        total = self.tensor.shape[0]
        for start in range(0, total, rows_per_block):
            stop = min(total, start + rows_per_block)
            yield start, self.tensor[start:stop]
            self.release(start, stop)

    def scan(self) -> tuple[str, int | None]:
        """One streaming pass: the SHA-256 of the data bytes and the first row holding NaN / infinity (or None)."""
        digest = hashlib.sha256()
        bad_row = None
        flat_rows = self.tensor.reshape(self.tensor.shape[0], -1)
        for start, block in self.blocks(stream_rows(self.tensor.shape[0], self.row_bytes)):
            digest.update(memoryview(block.view(torch.uint8).numpy()).cast("B"))
            if bad_row is None:
                finite = torch.isfinite(flat_rows[start : start + block.shape[0]].float()).all(dim=1)
                if not bool(finite.all()):
                    bad_row = start + int((~finite).nonzero()[0, 0])
        return digest.hexdigest(), bad_row


def tensor_blocks(tensor: torch.Tensor, mapped: MappedEmbeddings | None = None) -> Iterator[torch.Tensor]:
    """Consecutive row blocks of `tensor` (about `STREAM_BLOCK_BYTES` each), released after use when mapped."""
    if len(tensor) == 0:
        return
    if mapped is not None:
        for _, block in mapped.blocks(stream_rows(len(tensor), mapped.row_bytes)):
            yield block
        return
    row_bytes = max(1, tensor[0].numel() * tensor.element_size())
    step = stream_rows(len(tensor), row_bytes)
    for start in range(0, len(tensor), step):
        yield tensor[start : start + step]


def write_file_atomically(path: str, write_fn) -> Any:
    """`write_fn(tmp_path)` into a hidden temporary file beside `path`, then `os.replace` it onto `path`; returns what
    `write_fn` returned. The file gets the permissions of a plain `open()` (mkstemp's are 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        result = write_fn(tmp_path)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return result


# --------------------------------------------------------------------------------------------------------------------
# faiss IVF with on-disk inverted lists
# --------------------------------------------------------------------------------------------------------------------


def _trained_state(index: Any, faiss: Any) -> dict[str, np.ndarray | tuple]:
    """What makes two IVF indexes' codes comparable: layout, coarse centroids and (IVF-PQ) the PQ codebooks."""
    ivf = faiss.extract_index_ivf(index)
    state: dict[str, Any] = {
        "layout": (type(ivf).__name__, ivf.d, ivf.nlist, ivf.code_size, ivf.metric_type),
        "coarse centroids": ivf.quantizer.reconstruct_n(0, ivf.nlist),
    }
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    if pq is not None:
        state["PQ codebooks"] = faiss.vector_to_array(pq.centroids)
    return state


def check_same_training(reference: Any, other: Any, reference_name: str, other_name: str) -> None:
    """ValueError naming both files unless `other` has `reference`'s IVF layout, coarse quantizer and PQ codebooks
    (bit for bit): codes of differently trained indexes address different cells and cannot be merged."""
    faiss = import_faiss()
    mine, theirs = _trained_state(reference, faiss), _trained_state(other, faiss)
    for key, value in mine.items():
        other_value = theirs.get(key)
        same = value == other_value if isinstance(value, tuple) else (
            other_value is not None and value.shape == other_value.shape and np.array_equal(value, other_value)
        )
        if not same:
            raise ValueError(
                f"{other_name!r} was trained differently from {reference_name!r} ({key} differ); fill every shard "
                "from one trained index (train_faiss once, build_faiss(trained=...)) before merging them on disk"
            )


def merge_ivf_on_disk(shard_files: list[str], index_path: str, ivfdata_path: str, ivfdata_name: str) -> int:
    """Merge the IVF indexes in `shard_files` (each filled from the same trained index) into one index whose inverted
    lists live in `ivfdata_path`; write that index to `index_path`. Returns the number of vectors.

    Shard lists are read memory-mapped (`IO_FLAG_MMAP`) and concatenated per cell by `merge_ondisk`, so list `c`
    holds shard 0's entries of cell `c`, then shard 1's, ... Each entry's id is then set to its row in the merged
    gallery, `id + Σ_{j<i} n_j` for an entry of shard i (faiss 1.15.1's `shift_ids=True` was seen to add
    `Σ_{1≤j≤i} n_j` instead, so the shift is done here, one list at a time). These are the lists one `add` of all
    rows in shard order gives, hence the same search results. The index file records the lists' file as
    `ivfdata_name` (a bare file name, resolved beside the index when read with `IO_FLAG_ONDISK_SAME_DIR`), so the
    folder can move.
    """
    import_faiss()
    try:  # inside `try`: transformers' import check of a Hub folder must not require faiss
        from faiss.contrib.ondisk import merge_ondisk  # noqa: PLC0415 - part of faiss, imported with it
    except ImportError as error:
        raise ImportError("merge_ivf_on_disk needs faiss.contrib.ondisk (faiss >= 1.7)") from error
    faiss = import_faiss()

    shards = [_read_faiss(name, faiss.IO_FLAG_MMAP) for name in shard_files]
    for name, shard in zip(shard_files[1:], shards[1:]):
        check_same_training(shards[0], shard, shard_files[0], name)
    # The trained, empty index: shard 0 read again, its lists replaced by empty ones.
    reference = _read_faiss(shard_files[0], faiss.IO_FLAG_MMAP)
    ivf = faiss.extract_index_ivf(reference)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns (and frees) it now; merge_ondisk replaces it in turn
    ivf.ntotal = reference.ntotal = 0
    with _faiss_notes_to_stderr():
        merge_ondisk(reference, list(shard_files), ivfdata_path, shift_ids=False)
    merged = faiss.downcast_InvertedLists(ivf.invlists)
    shard_lists = [faiss.extract_index_ivf(shard).invlists for shard in shards]
    offsets = np.cumsum([0] + [shard.ntotal for shard in shards[:-1]]).astype(np.int64)
    code_size = ivf.code_size
    for cell in range(ivf.nlist):
        sizes = [lists.list_size(cell) for lists in shard_lists]
        count = int(sum(sizes))
        if count == 0 or not offsets[1:].any():
            continue
        ids = faiss.rev_swig_ptr(merged.get_ids(cell), count).copy() + np.repeat(offsets, sizes)
        codes = faiss.rev_swig_ptr(merged.get_codes(cell), count * code_size).copy()
        merged.update_entries(cell, 0, count, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    write_ivf_on_disk(reference, index_path, ivfdata_name)
    return int(reference.ntotal)


def write_ivf_on_disk(index: Any, index_path: str, ivfdata_name: str) -> None:
    """Write an index with on-disk lists, recording its lists' file as the bare name `ivfdata_name`."""
    faiss = import_faiss()
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    previous = lists.filename
    lists.filename = ivfdata_name
    try:
        faiss.write_index(index, index_path)
    finally:
        lists.filename = previous


@contextlib.contextmanager
def _faiss_notes_to_stderr() -> Iterator[None]:
    """Send what faiss' C++ code prints on stdout ("resizing ...", "updating ondisk filename ...") to stderr, so a
    command writing results on stdout (`csmcir-search`) stays clean. C stdio buffers are flushed on both sides."""
    try:
        libc = ctypes.CDLL(None)
        saved = os.dup(1)
    except (OSError, TypeError):  # no C library handle (e.g. Windows) or no stdout descriptor: leave it be
        yield
        return
    try:
        sys.stdout.flush()
        libc.fflush(None)
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _read_faiss(path: str, flags: int) -> Any:
    faiss = import_faiss()
    try:
        with _faiss_notes_to_stderr():
            return faiss.read_index(path, flags)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read the faiss index {path!r} ({message})") from error


def read_ivf_on_disk(index_path: str, ivfdata_path: str) -> Any:
    """Read an index written by `merge_ivf_on_disk`, its inverted lists memory-mapped read-only from `ivfdata_path`
    (which must sit beside `index_path` under the name the index records). Refused, with the file named: a missing
    or truncated `.ivfdata`, an index whose lists are not on disk."""
    faiss = import_faiss()
    if not os.path.isfile(ivfdata_path):
        raise ValueError(
            f"{ivfdata_path!r} not found: {index_path!r} keeps its inverted lists there (copy the whole index folder)"
        )
    index = _read_faiss(index_path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise ValueError(f"{index_path!r} holds in-memory inverted lists, not on-disk ones")
    if os.path.abspath(lists.filename) != os.path.abspath(ivfdata_path):
        raise ValueError(f"{index_path!r} keeps its inverted lists in {lists.filename!r}, not {ivfdata_path!r}")
    size = os.path.getsize(ivfdata_path)
    if size < lists.totsize:
        raise ValueError(
            f"{ivfdata_path!r} is truncated: {size} bytes, but {index_path!r} needs {lists.totsize}; copy it again"
        )
    return index
