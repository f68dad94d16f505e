"""Arrays of an uncompressed .npz, memory-mapped read-only where they lie in the archive.

``np.load`` reads every member of an .npz into the process's own memory (its
``mmap_mode`` applies to .npy files only). A model's item-kNN matrix is written
uncompressed (``scipy.sparse.save_npz(compressed=False)``), so each member is a plain
.npy at some offset of the file: mapped there, every server process on a machine
(workers, feed processes) shares one copy in the page cache instead of holding its own
(0.75 GB per process at 1M items). The factors are read as before: mapped too, a first
page cost 2 % more CPU on 50k items, and they are a sixth of the kNN matrix's size
(benchmarks/README.md, "2026-12-04 (evening)").
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"


def load_mapped_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path`` by name (without ``.npy``), read-only.

    A member stored uncompressed is memory-mapped; a compressed one (or one numpy cannot
    map, such as an object array) is read as ``np.load`` would. ValueError names the file
    when it is not an .npz.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not an .npz archive ({error})") from None
    with archive, open(path, "rb") as raw:
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            mapped = _mapped_member(path, raw, member) if member.compress_type == zipfile.ZIP_STORED else None
            if mapped is None:
                with archive.open(member) as stream:
                    mapped = np.lib.format.read_array(stream, allow_pickle=False)
                mapped.flags.writeable = False
            arrays[name] = mapped
    return arrays


def _mapped_member(path: str, raw, member: zipfile.ZipInfo) -> np.ndarray | None:
    raw.seek(member.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if signature != _LOCAL_SIGNATURE:
        raise ValueError(f"{path}: member {member.filename} has no local header where the archive says")
    start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    raw.seek(start)
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(raw)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(raw)
    else:
        return None
    if dtype.hasobject:
        return None
    offset = raw.tell()
    if offset - start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > member.file_size:
        raise ValueError(f"{path}: member {member.filename} is shorter than its header says")
    if not np.prod(shape, dtype=np.int64):
        empty = np.zeros(shape, dtype, order="F" if fortran_order else "C")  # a zero-length map is refused
        empty.flags.writeable = False
        return empty
    # A plain array over the map: a memmap's every slice pays for its subclass.
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"))
