"""Write PyTorch's `torch.save` zip format without torch, for A1111-style `.pt` embeddings.

The format (torch >= 1.6): an uncompressed zip whose records live under one folder (`archive/`):
`data.pkl` (pickle protocol 2 of the object; every tensor is a call to `torch._utils._rebuild_tensor_v2`
whose storage is a persistent id `("storage", torch.<Type>Storage, key, "cpu", numel)`), `data/<key>` (raw
little-endian storage bytes, 64-byte aligned), `byteorder` and `version`. Only the objects `.pt` embeddings
need are supported: dict, list, tuple, str, int, float, bool, None and numpy arrays / Bf16Tensor. The result
loads with `torch.load(path, weights_only=True)`.
"""
import struct
import zipfile

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write
from .safetensors_io import Bf16Tensor

STORAGE_TYPES = {np.dtype("<f4"): "FloatStorage", np.dtype("<f2"): "HalfStorage", np.dtype("<f8"): "DoubleStorage",
                 np.dtype("<i8"): "LongStorage", np.dtype("<i4"): "IntStorage", np.dtype("u1"): "ByteStorage",
                 np.dtype("?"): "BoolStorage"}
ALIGNMENT = 64
ARCHIVE = "archive"


class _PickleWriter:
    """Emits pickle protocol-2 opcodes by hand (torch's globals need not be importable here)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.storages = []  # (key, bytes)

    def global_(self, module, name):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def obj(self, value):
        if value is None:
            self.out += b"N"
        elif value is True or value is False:
            self.out += b"\x88" if value else b"\x89"
        elif isinstance(value, int):
            self._int(value)
        elif isinstance(value, float):
            self.out += b"G" + struct.pack(">d", value)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(value, dict):
            self.out += b"}"
            if value:
                self.out += b"("
                for key, item in value.items():
                    self.obj(key)
                    self.obj(item)
                self.out += b"u"
        elif isinstance(value, list):
            self.out += b"]"
            if value:
                self.out += b"("
                for item in value:
                    self.obj(item)
                self.out += b"e"
        elif isinstance(value, tuple):
            self._tuple(value)
        elif isinstance(value, (np.ndarray, Bf16Tensor, np.generic)):
            self._tensor(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__} into a torch file")

    def _int(self, value):
        if -2**31 <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def _tuple(self, items):
        self.out += b"("
        for item in items:
            self.obj(item)
        self.out += b"t"

    def _tensor(self, value):
        if isinstance(value, Bf16Tensor):
            array, storage = np.ascontiguousarray(value.bits, dtype="<u2"), "BFloat16Storage"
        else:
            array = np.asarray(value)
            little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
            if little not in STORAGE_TYPES:
                raise TypeError(f"cannot write a {array.dtype} array into a torch file")
            array, storage = np.ascontiguousarray(array, dtype=little), STORAGE_TYPES[little]
        key = str(len(self.storages))
        self.storages.append((key, array.tobytes()))
        strides = tuple(int(np.prod(array.shape[i + 1:], dtype=np.int64)) for i in range(array.ndim))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"("  # arguments: storage, offset, size, stride, requires_grad, backward_hooks
        self.out += b"("  # the persistent id of the storage
        self.obj("storage")
        self.global_("torch", storage)
        self.obj(key)
        self.obj("cpu")
        self.obj(int(array.size))
        self.out += b"tQ"
        self.obj(0)
        self._tuple(tuple(int(d) for d in array.shape))
        self._tuple(strides)
        self.obj(False)
        self.global_("collections", "OrderedDict")
        self.out += b")R"
        self.out += b"tR"

    def finish(self):
        return bytes(self.out + b".")


def _write_record(archive, name, data, align):
    info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    if align:
        # Pad the local header's extra field so the record's bytes start on a 64-byte boundary (torch mmap).
        start = archive.fp.tell() + 30 + len(info.filename.encode()) + 4
        padding = -start % ALIGNMENT
        info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
    archive.writestr(info, data)


def write_torch_file(path, obj):
    """torch.save-compatible file of `obj` (see module docstring for what `obj` may contain); atomic."""
    writer = _PickleWriter()
    try:
        writer.obj(obj)
    except TypeError as e:
        raise UserError(f"cannot save {path}: {e}") from e
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            _write_record(archive, "data.pkl", writer.finish(), align=False)
            _write_record(archive, "byteorder", b"little", align=False)
            for key, data in writer.storages:
                _write_record(archive, f"data/{key}", data, align=True)
            _write_record(archive, "version", b"3\n", align=False)
