"""Memory-mapping an array stored uncompressed inside an ``.npz`` archive.

``numpy.load`` reads every member of an ``.npz`` into memory. A member written without
compression (``numpy.savez``) is a plain ``.npy`` file laid out contiguously in the zip, so it
can be mapped in place: the zip's local header says where it starts, the ``.npy`` header says
its dtype and shape. Compressed members are read into memory instead.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["load_member", "read_npy_header"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from the ``.npy`` header at the stream's position."""
    major, _ = np.lib.format.read_magic(stream)
    if major == 1:
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def load_member(path: Path, name: str) -> np.ndarray:
    """``name`` from the archive at ``path``: a read-only memory map when stored, else read."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            raise ValueError(f"no member {name}.npy") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
    with path.open("rb") as stream:
        stream.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(stream.read(_LOCAL_HEADER.size))
        name_length, extra_length = fields[9], fields[10]
        data_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        stream.seek(data_start)
        shape, fortran, dtype = read_npy_header(stream)
        offset = stream.tell()
    if int(np.prod(shape)) * dtype.itemsize > info.file_size - (offset - data_start):
        raise ValueError(f"{name}.npy is truncated: its header promises more data than it holds")
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    if not shape or 0 in shape:  # nothing to map: a scalar or an empty array
        with zipfile.ZipFile(path) as archive, archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
