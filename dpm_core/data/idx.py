"""The IDX file format: a header of sizes, then the data in C order (LeCun et al. 1998 [1]).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions ``ndim``), ``ndim`` big-endian ``uint32`` sizes, then the data in C order. The
MNIST family ships them raw or gzip-compressed; compression is recognised by the gzip
magic bytes, not by the file name.

References:
    [1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to
        document recognition. Proc. IEEE, 1998.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["GZIP_MAGIC", "gunzip", "idx_header", "parse_idx"]

#: The first two bytes of a gzip stream.
GZIP_MAGIC = b"\x1f\x8b"
_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short (int16)",
    0x0C: "int (int32)",
    0x0D: "float (float32)",
    0x0E: "double (float64)",
}


def gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress the gzip stream ``raw`` read from ``path``.

    Raises:
        ValueError: if the stream is corrupt; the message names the file.
    """
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path}: corrupt gzip stream ({type(exc).__name__}: {exc}); "
            "delete it and fetch it again"
        ) from exc


def idx_header(raw: bytes, path: Path) -> tuple:
    """The sizes in the header of the (decompressed) IDX bytes ``raw`` read from ``path``: only
    the first 4 + 4 * ndim bytes are needed.

    Raises:
        ValueError: if the magic number is wrong, the type code is not ``0x08``, or the header
            is cut short. The message names the file.
    """
    if len(raw) < 4:
        raise ValueError(
            f"{path}: not an IDX file: expected a 4-byte magic number, "
            f"got {len(raw)} bytes in all"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic number: expected two zero bytes first, "
            f"got 0x{raw[0]:02x} 0x{raw[1]:02x}"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        kind = _IDX_TYPES.get(type_code, "not an IDX type code")
        raise ValueError(
            f"{path}: unsupported IDX type code 0x{type_code:02x} ({kind}); "
            "only 0x08 (unsigned byte) is supported"
        )
    if ndim == 0:
        raise ValueError(f"{path}: bad IDX header: ndim must be at least 1, got 0")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path}: truncated IDX header: ndim={ndim} needs {header_size} header "
            f"bytes, found {len(raw)}; delete it and fetch it again"
        )
    return struct.unpack(f">{ndim}I", raw[4:header_size])


def parse_idx(raw: bytes, path: Path) -> Tensor:
    """The ``uint8`` tensor held by the (decompressed) IDX bytes ``raw`` read from ``path``.

    Returns:
        A ``uint8`` tensor whose shape is the sizes in the header, e.g. ``[N, H, W]`` for
        an images file and ``[N]`` for a labels file.

    Raises:
        ValueError: if the magic number is wrong, the type code is not ``0x08``
            (unsigned byte, the only one the MNIST family uses), or the data is shorter
            or longer than the header promises. The message names the file.
    """
    dims = idx_header(raw, path)
    header_size = 4 + 4 * len(dims)
    expected = math.prod(dims)
    found = len(raw) - header_size
    if found < expected:
        raise ValueError(
            f"{path}: truncated IDX file: header promises {expected} bytes of data "
            f"(shape {list(dims)}), found {found}; delete it and fetch it again"
        )
    if found > expected:
        raise ValueError(
            f"{path}: IDX file has trailing bytes: header promises {expected} bytes of "
            f"data (shape {list(dims)}), found {found}; delete it and fetch it again"
        )
    data = np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header_size)
    # Copy so that the tensor owns writable memory rather than aliasing ``bytes``.
    return torch.from_numpy(data.reshape(dims).copy())
