"""Reader for IDX files, the format of (Fashion-)MNIST."""

import gzip
import os
import zlib

import numpy as np

from normlab.data.errors import DatasetError

# Only unsigned bytes are needed (MNIST pixels and labels); the other IDX types
# are named so that a rejected file gets a readable message.
_UINT8_CODE = 0x08
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_FIX_HINT = (
    "Re-install it with `apt-get install --reinstall dataset-fashion-mnist` or"
    " pass --data_dir to a directory holding good copies."
)


def _error(path: str, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}. {_FIX_HINT}")


def _read_bytes(path: str) -> bytes:
    """Returns the (decompressed) content of `path`."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise _error(path, "file not found") from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        # EOFError: the gzip stream stops before its end marker (a cut download).
        raise _error(path, f"not a valid gzip file ({e})") from e
    except OSError as e:
        raise _error(path, f"cannot read the file ({e})") from e


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file of unsigned bytes, gzipped (`.gz`) or raw.

    The format: two zero bytes, a type code (0x08 = unsigned byte, the only one
    accepted), the number of dimensions d, then d big-endian uint32 sizes, then
    exactly prod(sizes) bytes of data.

    Args:
      path: The file; it is decompressed if its name ends in `.gz`.

    Returns:
      A writable uint8 array of shape `sizes`.

    Raises:
      DatasetError: The file is missing, unreadable, not gzip although named
        `.gz`, has a bad header, or its data is truncated or followed by extra
        bytes.
    """
    content = _read_bytes(path)
    if not content:
        raise _error(path, "file is empty")
    if len(content) < 4:
        raise _error(
            path, f"truncated header: expected 4 bytes of magic number, found {len(content)}"
        )
    magic = int.from_bytes(content[:4], "big")
    if content[0] != 0 or content[1] != 0:
        raise _error(
            path,
            f"bad magic number 0x{magic:08x}, expected 0x00000803 (images) or 0x00000801 (labels)",
        )
    type_code, ndim = content[2], content[3]
    if type_code != _UINT8_CODE:
        type_name = _TYPE_NAMES.get(type_code, "unknown type")
        raise _error(
            path,
            f"unsupported data type code 0x{type_code:02x}"
            f" ({type_name}) in magic number 0x{magic:08x}; only 0x08"
            " (unsigned byte) is supported",
        )
    if ndim == 0:
        raise _error(path, f"magic number 0x{magic:08x} declares 0 dimensions")

    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise _error(
            path,
            f"truncated header: expected {header_size} bytes for"
            f" {ndim} dimension sizes, found {len(content)}",
        )
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(content) - header_size
    if found < expected:
        raise _error(
            path, f"truncated: expected {expected} bytes of data for shape {shape}, found {found}"
        )
    if found > expected:
        raise _error(
            path,
            f"{found - expected} trailing bytes after the"
            f" {expected} bytes of data for shape {shape}",
        )
    # np.frombuffer views the immutable bytes; copy so callers get a normal,
    # writable array.
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape).copy()


def find_idx_file(directory: str, name: str) -> str | None:
    """Returns `directory/name` or `directory/name.gz`, whichever exists.

    The uncompressed file wins when both exist (it is what `gunzip` produced).
    """
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None
