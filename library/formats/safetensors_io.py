"""safetensors read/write with numpy only, validating the header before any tensor data is touched.

Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
{str: str}}, then the data region; offsets are relative to the data region. bfloat16 has no numpy dtype: BF16
tensors are read as float32 (bit shift, exact), and `Bf16Tensor` lets a writer store BF16.
"""
import dataclasses
import hashlib
import json
import os
import struct

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write

HEADER_SIZE_LIMIT = 100 * 1024 * 1024  # the reference implementation refuses larger headers too
DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
NUMPY_TO_SAFETENSORS = {np.dtype(v).newbyteorder("<") if v.itemsize > 1 else v: k
                        for k, v in DTYPES.items() if k != "BF16"}


@dataclasses.dataclass
class Bf16Tensor:
    """A tensor to store as BF16: the upper 16 bits of float32 values, rounded to nearest even."""
    bits: np.ndarray  # uint16, the tensor's shape

    @classmethod
    def from_float32(cls, array):
        as_int = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = (as_int + 0x7FFF + ((as_int >> 16) & 1)) >> 16
        nan = np.isnan(np.asarray(array, dtype=np.float32))
        bits = np.where(nan, 0x7FC0, rounded).astype(np.uint16)
        return cls(bits)

    @property
    def shape(self):
        return self.bits.shape

    def to_float32(self):
        return bf16_bits_to_float32(self.bits)


def bf16_bits_to_float32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclasses.dataclass
class TensorInfo:
    dtype: str
    shape: tuple
    begin: int
    end: int


def _bad(path, what):
    return UserError(f"{path} is not a valid .safetensors file: {what}")


def read_header(path):
    """Validated (tensor infos by name, metadata dict, data start offset). Raises UserError on anything wrong."""
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"the file is only {file_size} bytes (truncated or empty)")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > HEADER_SIZE_LIMIT or 8 + header_size > file_size:
                raise _bad(path, f"header length {header_size} does not fit in the file of {file_size} bytes "
                                 "(truncated or not a safetensors file)")
            raw = f.read(header_size)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"the header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    data_size = file_size - 8 - header_size
    infos = {name: _tensor_info(path, name, entry, data_size) for name, entry in header.items()}
    _check_no_overlap(path, infos)
    return infos, metadata, 8 + header_size


def _tensor_info(path, name, entry, data_size):
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise _bad(path, f"tensor {name!r} has unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _bad(path, f"tensor {name!r} data [{begin}, {end}) lies outside the {data_size}-byte data region "
                         "(truncated file?)")
    expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise _bad(path, f"tensor {name!r} has {end - begin} bytes but {dtype} {shape} needs {expected}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def _check_no_overlap(path, infos):
    previous_end, previous_name = 0, None
    for name, info in sorted(infos.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < previous_end:
            raise _bad(path, f"tensors {previous_name!r} and {name!r} overlap")
        previous_end, previous_name = max(previous_end, info.end), name


def read_safetensors(path, keys=None, bf16_as_float32=True):
    """(tensors {name: np.ndarray}, metadata) after validating the header; `keys` reads only those tensors.

    BF16 tensors come back as float32 (exact); with bf16_as_float32=False as `Bf16Tensor`.
    """
    infos, metadata, data_start = read_header(path)
    if keys is not None:
        missing = [k for k in keys if k not in infos]
        if missing:
            raise UserError(f"{path} has no tensor(s) {missing[:5]} (it has {len(infos)} tensors)")
        infos = {k: infos[k] for k in keys}
    tensors = {}
    try:
        with open(path, "rb") as f:
            for name, info in infos.items():
                f.seek(data_start + info.begin)
                raw = f.read(info.end - info.begin)
                if len(raw) != info.end - info.begin:
                    raise _bad(path, f"tensor {name!r} is truncated")
                array = np.frombuffer(raw, dtype=DTYPES[info.dtype]).reshape(info.shape).copy()
                if info.dtype == "BF16":
                    array = bf16_bits_to_float32(array) if bf16_as_float32 else Bf16Tensor(array)
                tensors[name] = array
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from e
    return tensors, metadata


def _prepare(name, tensor):
    """(safetensors dtype, contiguous little-endian array) for one tensor to write."""
    if isinstance(tensor, Bf16Tensor):
        return "BF16", np.ascontiguousarray(tensor.bits, dtype="<u2").reshape(tensor.bits.shape)
    array = np.asarray(tensor)
    little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    if little not in NUMPY_TO_SAFETENSORS:
        raise UserError(f"cannot store tensor {name!r} of dtype {array.dtype} in safetensors")
    # reshape: ascontiguousarray turns 0-dim arrays (LoRA alphas) into shape (1,)
    return NUMPY_TO_SAFETENSORS[little], np.ascontiguousarray(array, dtype=little).reshape(array.shape)


def _ordered(tensors):
    """Write order of the reference library for one dtype: larger items first, then by name."""
    prepared = {name: _prepare(name, t) for name, t in tensors.items()}
    return sorted(prepared.items(), key=lambda item: (-item[1][1].dtype.itemsize, item[0]))


def _header_bytes(ordered, metadata):
    header = {}
    if metadata:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise UserError(f"safetensors metadata must map strings to strings; bad entries: {list(bad)[:5]}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, array) in ordered:
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data region 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path, tensors, metadata=None):
    """Write {name: np.ndarray | Bf16Tensor} (+ str->str metadata) atomically."""
    ordered = _ordered(tensors)
    header = _header_bytes(ordered, metadata)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            for _, (_, array) in ordered:
                f.write(array.tobytes())


def data_region_sha256(tensors):
    """sha256 of the data region `write_safetensors` would write (metadata does not change it; kohya's
    `sshs_model_hash` is this value)."""
    digest = hashlib.sha256()
    for _, (_, array) in _ordered(tensors):
        digest.update(array.tobytes())
    return digest.hexdigest()
