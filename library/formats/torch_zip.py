"""PyTorch's `torch.save` zip format without torch: write (A1111-style `.pt` embeddings) and read (a restricted
unpickler that only builds dicts/lists/tuples/scalars and numpy arrays; anything else is refused).

The format (torch >= 1.6): an uncompressed zip whose records live under one folder (`archive/`):
`data.pkl` (pickle protocol 2 of the object; every tensor is a call to `torch._utils._rebuild_tensor_v2`
whose storage is a persistent id `("storage", torch.<Type>Storage, key, "cpu", numel)`), `data/<key>` (raw
little-endian storage bytes, 64-byte aligned), `byteorder` and `version`. Only the objects `.pt` embeddings
need are supported: dict, list, tuple, str, int, float, bool, None and numpy arrays / Bf16Tensor. The result
loads with `torch.load(path, weights_only=True)`.
"""
import collections
import io
import pickle
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
            # reshape: ascontiguousarray turns 0-dim arrays (LoRA alphas) into shape (1,)
            array = np.ascontiguousarray(value.bits, dtype="<u2").reshape(np.shape(value.bits))
            storage = "BFloat16Storage"
        else:
            array = np.asarray(value)
            little = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
            if little not in STORAGE_TYPES:
                raise TypeError(f"cannot write a {array.dtype} array into a torch file")
            array, storage = np.ascontiguousarray(array, dtype=little).reshape(array.shape), STORAGE_TYPES[little]
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


# ---- reading --------------------------------------------------------------------------------------------------

class UnsupportedTorchFile(Exception):
    """The file uses something this reader does not build (legacy format, modules, custom classes)."""


STORAGE_DTYPES = {name: dtype for dtype, name in STORAGE_TYPES.items()}
STORAGE_DTYPES.update({"BFloat16Storage": np.dtype("<u2"), "CharStorage": np.dtype("i1"),
                       "ShortStorage": np.dtype("<i2")})


class _StorageType:
    def __init__(self, name):
        self.name = name


class _ParameterDict(dict):
    """Stands in for an old pickled torch ParameterDict: exposes `_parameters` like the real one."""

    def __setstate__(self, state):
        self._parameters = dict(state.get("_parameters", {}))


def _rebuild_tensor(storage, offset, size, stride, *unused):
    array, bf16 = storage  # bf16: None, "float32" (convert) or "keep" (a Bf16Tensor)
    itemsize = array.dtype.itemsize
    if not size:
        view = array[offset:offset + 1].reshape(())
    else:
        view = np.lib.stride_tricks.as_strided(array[offset:], shape=tuple(size),
                                               strides=tuple(s * itemsize for s in stride))
    view = np.array(view)  # own the memory, drop the strides
    if bf16 == "keep":
        return Bf16Tensor(view)
    return (view.astype(np.uint32) << 16).view(np.float32) if bf16 else view


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


def _reconstructor(cls, base, state):
    if cls is not _ParameterDict:
        raise UnsupportedTorchFile(f"cannot rebuild an object of {cls}")
    return _ParameterDict()


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): object,
    ("torch.nn.parameter", "Parameter"): object,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ParameterDict"): _ParameterDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins this way
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, load_storage):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsupportedTorchFile(f"the file needs {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsupportedTorchFile(f"unexpected persistent id {pid!r:.80}")
        return self._load_storage(pid[1].name, str(pid[2]))


def read_torch_file(path, bf16_as_float32=True):
    """Load a torch.save zip file into dicts/lists/scalars and numpy arrays (bf16 becomes float32, or with
    bf16_as_float32=False a `Bf16Tensor`).

    Raises UnsupportedTorchFile for anything beyond that (the legacy pre-1.6 format included); such files
    need torch itself. Never imports or runs code named by the file.
    """
    if not zipfile.is_zipfile(path):
        raise UnsupportedTorchFile("not a zip-format torch file (legacy format)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnsupportedTorchFile("no single <folder>/data.pkl record")
        prefix = pickles[0][:-len("data.pkl")]
        cache = {}

        def load_storage(storage_name, key):
            if key not in cache:
                dtype = STORAGE_DTYPES[storage_name]
                array = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)
                bf16 = ("float32" if bf16_as_float32 else "keep") if storage_name == "BFloat16Storage" else None
                cache[key] = (array, bf16)
            return cache[key]

        try:
            return _RestrictedUnpickler(archive.read(pickles[0]), load_storage).load()
        except UnsupportedTorchFile:
            raise
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, AttributeError) as e:
            raise UnsupportedTorchFile(f"cannot unpickle: {e}") from e
