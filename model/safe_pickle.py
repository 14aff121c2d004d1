"""Read a torch checkpoint downloaded from the internet without running anything in it.

The ZeroI2V authors' checkpoints are mmengine/mmaction2 files written by torch.save: a pickle.
Unpickling calls whatever functions the file names, so `torch.load(weights_only=False)` of a
file from the internet runs the file's code, and `weights_only=True` refuses the mmengine
objects (HistoryBuffer, message hub state, ConfigDict) these files carry next to the weights.

The rule here: torch.load's own reader (zip and legacy formats, storages) runs with a pickle
module whose unpickler

- hands out real objects only for a narrow allowlist, each wrapped to check its arguments:
  the rebuilders of dense tensors and parameters, torch dtypes and storage types, torch.Size,
  OrderedDict, set, the protocol-2 spelling of bytes, and numpy scalars, dtypes and arrays of
  numeric or string dtypes (never object arrays);
- imports nothing else: any other global becomes a `Skipped` placeholder class. An instance
  made the way protocol-2 pickles make plain objects (NEWOBJ, then state set by BUILD,
  SETITEMS, APPENDS) stays a `Skipped` instance that keeps its class's name and drops its state;
- refuses, before calling anything, a file that calls a global off the allowlist (REDUCE, INST,
  OBJ, NEWOBJ_EX): `UnsafeCheckpoint` names the global, e.g. "posix.system".
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import os
import pickle
import stat
import struct
import sys
import tarfile
import types
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from model.checkpoint import CheckpointError

__all__ = ["Skipped", "UnsafeCheckpoint", "load_checkpoint"]


class UnsafeCheckpoint(CheckpointError):
    """A pickle that asks to call a global off the allowlist; `global_name` names it."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


def _refusal(qualname: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"the pickle asks to call {qualname}, which is not on the allowlist "
        "(tensor, container and numpy rebuilders); refused before calling anything",
        qualname,
    )


class _RefuseCalls(type):
    # Defence in depth: the opcode handlers below never call a placeholder, but should any
    # path reach `cls(...)`, it raises instead of building anything.
    def __call__(cls, *args, **kwargs):
        raise _refusal(cls.qualname)

    def __repr__(cls):
        return f"<skipped class {cls.qualname}>"


class Skipped(metaclass=_RefuseCalls):
    """Stands in for a global off the allowlist (the class) and for its instances.

    `qualname` is the global's dotted name as the file spells it; the instance's state is
    dropped. Calling the class raises UnsafeCheckpoint.
    """

    __slots__ = ()
    qualname = "?"

    def __repr__(self):
        return f"Skipped({self.qualname!r})"


def _placeholder(qualname: str) -> type:
    return _RefuseCalls("Skipped", (Skipped,), {"__slots__": (), "qualname": qualname})


# ---- allowlisted callables: each checks its arguments, then calls the real rebuilder --------


def _int(x, what: str) -> int:
    if type(x) is not int or x < 0:
        raise CheckpointError(f"corrupt: {what} is {x!r}, not a non-negative int")
    return x


def _ints(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, tuple):  # torch.Size is a tuple
        raise CheckpointError(f"corrupt: {what} is a {type(x).__name__}, not a tuple")
    return tuple(_int(v, what) for v in x)


def _storage(x) -> torch.storage.TypedStorage:
    # Only torch's persistent_load makes these: a storage read from the file's own records.
    if not isinstance(x, torch.storage.TypedStorage):
        raise CheckpointError(f"corrupt: a tensor's storage is a {type(x).__name__}")
    return x


def _no_hooks(hooks) -> OrderedDict:
    # torch.save never writes hooks (they are callables); a file that carries some is not
    # plain data.
    if not isinstance(hooks, dict) or hooks:
        raise CheckpointError("corrupt: a tensor carries backward hooks")
    return OrderedDict()


def _tensor_metadata(metadata):
    # torch's metadata is the conj/neg bits: {str: bool}.
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        type(k) is str and type(v) is bool for k, v in metadata.items()
    ):
        raise CheckpointError("corrupt: a tensor's metadata is not a {str: bool} dict")
    return metadata


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if len(size) != len(stride) or type(requires_grad) is not bool:
        raise CheckpointError("corrupt: a tensor's size, stride or requires_grad is malformed")
    # set_ (in torch's _rebuild_tensor) refuses a view reaching past its storage.
    return torch._utils._rebuild_tensor_v2(
        _storage(storage),
        _int(offset, "a tensor's storage offset"),
        size,
        stride,
        requires_grad,
        _no_hooks(hooks),
        _tensor_metadata(metadata),
    )


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    # The dtypes torch added later (uint16, float8, ...): an untyped storage plus a dtype.
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"corrupt: a tensor's dtype is a {type(dtype).__name__}")
    size, stride = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if len(size) != len(stride) or type(requires_grad) is not bool:
        raise CheckpointError("corrupt: a tensor's size, stride or requires_grad is malformed")
    return torch._utils._rebuild_tensor_v3(
        _storage(storage),
        _int(offset, "a tensor's storage offset"),
        size,
        stride,
        requires_grad,
        _no_hooks(hooks),
        dtype,
        _tensor_metadata(metadata),
    )


def _rebuild_parameter(data, requires_grad, hooks):
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
        raise CheckpointError("corrupt: a parameter's data or requires_grad is malformed")
    _no_hooks(hooks)
    return torch.nn.Parameter(data, requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, hooks, state):
    # `state` is Python attributes someone set on the Parameter, not data: dropped.
    return _rebuild_parameter(data, requires_grad, hooks)


def _torch_size(dims=()):
    return torch.Size(_ints(tuple(dims) if isinstance(dims, list) else dims, "a torch.Size"))


def _pairs(items) -> list:
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in items
    ):
        raise CheckpointError("corrupt: an OrderedDict built from something not a list of pairs")
    return [tuple(p) for p in items]


def _ordered_dict(items=()):
    return OrderedDict(_pairs(items))


def _items(items) -> list:
    if not isinstance(items, (list, tuple)):
        raise CheckpointError(f"corrupt: a set built from a {type(items).__name__}")
    return list(items)


def _set(items=()):
    return set(_items(items))


def _frozenset(items=()):
    return frozenset(_items(items))


def _bytes(*args):
    # Protocol 2 spells b"" as bytes() and other bytes as _codecs.encode(text, "latin1").
    if args:
        raise CheckpointError("corrupt: bytes(...) with arguments")
    return b""


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise CheckpointError("corrupt: _codecs.encode other than protocol 2's bytes spelling")
    return codecs.encode(text, "latin1")


# Numeric and string dtypes only: an object dtype makes numpy treat bytes as object pointers.
_NUMPY_KINDS = frozenset("biufcSU")


def _plain_dtype(dtype, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise CheckpointError(f"corrupt: {what} has a {type(dtype).__name__} as its dtype")
    if dtype.kind not in _NUMPY_KINDS or dtype.hasobject:
        raise CheckpointError(
            f"refused: {what} of numpy dtype {str(dtype)!r} (only numeric and string dtypes)"
        )
    return dtype


def _numpy_dtype(spec, align=False, copy=False):
    # copy=True (what numpy writes) makes a fresh dtype; without it the BUILD that follows
    # would set the state of numpy's shared singleton.
    if type(spec) is not str or type(align) is not bool or copy is not True:
        raise CheckpointError("corrupt: numpy.dtype(...) other than numpy's own pickle spelling")
    try:
        dtype = np.dtype(spec, align, True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt: numpy dtype {spec!r}: {e}") from None
    return _plain_dtype(dtype, "a numpy dtype record")


def _numpy_scalar(dtype, data):
    _plain_dtype(dtype, "a numpy scalar")
    if type(data) is not bytes or len(data) != dtype.itemsize:
        raise CheckpointError("corrupt: a numpy scalar's bytes do not match its dtype")
    return _np_scalar(dtype, data)


def _numpy_reconstruct(subtype, shape, code):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by BUILD.
    if subtype is not np.ndarray or type(shape) is not tuple or shape != (0,) or code != b"b":
        raise CheckpointError("refused: numpy _reconstruct other than a plain numpy.ndarray")
    return _np_reconstruct(np.ndarray, (0,), b"b")


_np_scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
_np_reconstruct = np.zeros(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct

_CALLABLE = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch.Size": _torch_size,
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.bytes": _bytes,
    "_codecs.encode": _codecs_encode,
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
}
# Values, not called: torch dtypes (torch.save writes torch.float16 as a global), the
# untyped storage type torch's persistent_load compares against, and numpy.ndarray as
# _reconstruct's first argument. (Typed storage names such as torch.HalfStorage never reach
# this table: torch's own find_class maps them to its StorageType first.)
_VALUES = {
    f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}
_VALUES["torch.UntypedStorage"] = _VALUES["torch.storage.UntypedStorage"] = torch.UntypedStorage
_VALUES["numpy.ndarray"] = np.ndarray
_ALLOWED = {**_VALUES, **_CALLABLE}
_NAME_OF = {id(obj): name for name, obj in _ALLOWED.items()}
_CALLS = {id(f) for f in _CALLABLE.values()}


def _is_skipped_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, Skipped)


def _name_of(obj) -> str:
    if _is_skipped_class(obj):
        return obj.qualname
    return _NAME_OF.get(id(obj), f"a {type(obj).__name__} object")


# ---- the unpickler ------------------------------------------------------------------------


class _Dispatch(dict):
    def __missing__(self, opcode):
        raise CheckpointError(f"corrupt: unknown or refused pickle opcode {bytes([opcode])!r}")


class _SafeUnpickler(pickle._Unpickler):
    # The pure-Python unpickler: its opcode table can be replaced, so every opcode that
    # calls, mutates or looks something up goes through the handlers below. (A subclass of
    # the C _pickle.Unpickler only lets find_class and persistent_load be hooked.)
    dispatch = _Dispatch(pickle._Unpickler.dispatch)
    max_storage_bytes = 0  # set per file to its size: nothing in it is larger

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        # Length prefixes come from the file, and a file object's read(n) allocates n bytes
        # before reading: no read may ask for more than the whole file holds.
        read, limit = self._file_read, self.max_storage_bytes
        self._file_read = lambda n=-1: read(n if 0 <= n <= limit else limit)
        self._skipped: dict[str, type] = {}
        self._claimed: dict[str, int] = {}  # bytes each storage claims: all fit in the file
        self._torch_persistent_load = None

    def find_class(self, module, name):
        sys.audit("pickle.find_class", module, name)
        if self.proto < 3 and self.fix_imports:  # protocol 2 writes Python 2 names
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if qualname not in self._skipped:
            self._skipped[qualname] = _placeholder(qualname)
        return self._skipped[qualname]

    # torch assigns its persistent_load to the unpickler it makes; the property keeps it
    # behind a check: the only persistent ids are storage records (and, in the legacy
    # format, nn.Module class records, whose source torch would compare and could write
    # a .patch file for).
    @property
    def persistent_load(self):
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, function):
        self._torch_persistent_load = function

    def _checked_persistent_load(self, pid):
        if self._torch_persistent_load is None:
            raise CheckpointError("corrupt: a persistent id outside torch's data pickle")
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"corrupt: persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2 and _is_skipped_class(pid[1]):
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise CheckpointError(f"corrupt: persistent id of kind {kind!r}")
        storage_type, key, location, numel = pid[1:5]
        if storage_type is torch.UntypedStorage:
            dtype = torch.uint8
        elif isinstance(storage_type, torch.serialization.StorageType):
            dtype = storage_type.dtype
        else:
            raise CheckpointError(f"corrupt: storage type {_name_of(storage_type)}")
        if not isinstance(key, str) or not isinstance(location, (str, bytes)):
            raise CheckpointError("corrupt: a storage record's key or location is malformed")
        nbytes = _int(numel, "a storage's size") * torch._utils._element_size(dtype)
        self._claimed[key] = nbytes
        if sum(self._claimed.values()) > self.max_storage_bytes:
            raise CheckpointError(
                f"truncated or corrupt: storages up to {key!r} claim more bytes than the file"
            )
        if len(pid) == 6 and pid[5] is not None:  # legacy view: (view key, offset, size)
            view = pid[5]
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
                raise CheckpointError("corrupt: a storage view record is malformed")
            _int(view[1], "a storage view's offset"), _int(view[2], "a storage view's size")
        return self._torch_persistent_load(pid)

    def _refuse_call(self, target):
        if _is_skipped_class(target):
            raise _refusal(target.qualname)
        if id(target) not in _NAME_OF:  # not a global at all: a damaged stream
            raise CheckpointError(f"corrupt: the pickle calls a {type(target).__name__} object")
        raise UnsafeCheckpoint(
            f"the pickle asks to call {_name_of(target)} in a way torch.save never writes; "
            "refused before calling anything",
            _name_of(target),
        )

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in _CALLS:
            self._refuse_call(func)
        if not isinstance(args, tuple):
            raise CheckpointError("corrupt: REDUCE arguments are not a tuple")
        self.stack[-1] = func(*args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not _is_skipped_class(cls) or not isinstance(args, tuple):
            self._refuse_call(cls)
        # The class is never imported, so there is no __new__ to run: a placeholder instance.
        self.append(object.__new__(cls))

    def load_newobj_ex(self):
        self.stack.pop()
        self.stack.pop()
        self._refuse_call(self.stack.pop())

    def load_inst(self):
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self._refuse_call(self.find_class(module, name))

    def load_obj(self):
        args = self.pop_mark()
        self._refuse_call(args[0] if args else None)

    def load_ext(self):
        # Extension codes index copyreg's process-wide registry (and pickle caches them
        # globally); torch.save never writes them.
        raise CheckpointError("refused: pickle extension codes (EXT1/EXT2/EXT4)")

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Skipped):
            return
        if type(inst) is OrderedDict:  # a state dict's `_metadata` attribute
            if not (isinstance(state, dict) and all(type(k) is str for k in state)):
                raise CheckpointError("corrupt: an OrderedDict's attributes are not a dict")
            inst.__dict__.update(state)
        elif type(inst) is np.ndarray:
            _check_array_state(state)
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            _set_dtype_state(inst, state)
        else:
            raise CheckpointError(f"corrupt: the pickle sets the state of a {type(inst).__name__}")

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    def load_setitems(self):
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    @staticmethod
    def _setitems(target, items):
        if isinstance(target, Skipped):  # a dict subclass's items (e.g. ConfigDict): dropped
            return
        if type(target) not in (dict, OrderedDict):
            raise CheckpointError(f"corrupt: the pickle sets items of a {type(target).__name__}")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_append(self):
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self):
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    @staticmethod
    def _extend(target, items):
        if isinstance(target, Skipped):
            return
        if type(target) is not list:
            raise CheckpointError(f"corrupt: the pickle appends to a {type(target).__name__}")
        target.extend(items)

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise CheckpointError(f"corrupt: the pickle adds items to a {type(target).__name__}")
        target.update(items)

    def load_protocol_5_buffer(self):
        # BYTEARRAY8 allocates its declared length before reading; torch.save never writes
        # protocol 5.
        raise CheckpointError("refused: protocol 5 buffers and bytearrays")


for _opcode, _handler in {
    pickle.REDUCE: _SafeUnpickler.load_reduce,
    pickle.NEWOBJ: _SafeUnpickler.load_newobj,
    pickle.NEWOBJ_EX: _SafeUnpickler.load_newobj_ex,
    pickle.INST: _SafeUnpickler.load_inst,
    pickle.OBJ: _SafeUnpickler.load_obj,
    pickle.EXT1: _SafeUnpickler.load_ext,
    pickle.EXT2: _SafeUnpickler.load_ext,
    pickle.EXT4: _SafeUnpickler.load_ext,
    pickle.BUILD: _SafeUnpickler.load_build,
    pickle.SETITEM: _SafeUnpickler.load_setitem,
    pickle.SETITEMS: _SafeUnpickler.load_setitems,
    pickle.APPEND: _SafeUnpickler.load_append,
    pickle.APPENDS: _SafeUnpickler.load_appends,
    pickle.ADDITEMS: _SafeUnpickler.load_additems,
    pickle.BYTEARRAY8: _SafeUnpickler.load_protocol_5_buffer,
    pickle.NEXT_BUFFER: _SafeUnpickler.load_protocol_5_buffer,
    pickle.READONLY_BUFFER: _SafeUnpickler.load_protocol_5_buffer,
}.items():
    _SafeUnpickler.dispatch[_opcode[0]] = _handler


def _check_array_state(state) -> None:
    if not (isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int):
        raise CheckpointError("corrupt: a numpy array's state is malformed")
    if state[0] != 1:
        raise CheckpointError("corrupt: a numpy array's state is malformed")
    _, shape, dtype, fortran, data = state
    _plain_dtype(dtype, "a numpy array")
    count = math.prod(_ints(shape, "a numpy array's shape"))
    if type(fortran) is not bool or type(data) is not bytes or len(data) != count * dtype.itemsize:
        raise CheckpointError("corrupt: a numpy array's data does not match its shape and dtype")


def _set_dtype_state(dtype: np.dtype, state) -> None:
    # Plain (unstructured) dtypes only, and the result must equal the dtype numpy itself
    # parses from its type string: flags or sizes from the file cannot make numpy misread
    # memory.
    if not (
        isinstance(state, tuple)
        and len(state) == 8
        and all(type(v) is int for v in (state[0], *state[5:]))
        and state[0] == 3
        and type(state[1]) is str
        and state[1] in ("<", ">", "|", "=")
        and all(v is None for v in state[2:5])
        and state[5] >= -1
        and state[6] in (-1, 1, 2, 4, 8, 16)
        and state[7] == dtype.flags  # the flags say whether numpy stores object pointers
    ):
        raise CheckpointError("refused: a numpy dtype state other than a plain dtype's")
    dtype.__setstate__(state)
    reference = np.dtype(dtype.str)
    if (
        dtype != reference
        or dtype.itemsize != reference.itemsize
        or dtype.alignment != reference.alignment
        or dtype.flags != reference.flags
    ):
        raise CheckpointError(f"corrupt: numpy dtype state {state!r} is inconsistent")
    _plain_dtype(dtype, "a numpy dtype record")


def _pickle_module(max_storage_bytes: int) -> types.ModuleType:
    # What torch.load takes as pickle_module: it subclasses `.Unpickler` (for find_class
    # and persistent_load) and calls `.load` for the legacy format's header records.
    unpickler = type("Unpickler", (_SafeUnpickler,), {"max_storage_bytes": max_storage_bytes})
    module = types.ModuleType(__name__ + ".pickle_module")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    return module


# ---- the file -----------------------------------------------------------------------------

_ZIP = b"PK\x03\x04"
# torch.save's legacy (non-zip) format starts with its magic number pickled at protocol 2.
_LEGACY = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def load_checkpoint(path) -> dict:
    """The top-level dict of the torch.save file at `path`, data only, tensors on the CPU.

    Globals off the allowlist come back as `Skipped` placeholders (e.g. mmengine objects);
    a file that calls one raises UnsafeCheckpoint. Every failure is a CheckpointError whose
    message starts with `path`.
    """
    try:
        obj = _load(path)
    except UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(f"{path}: {e}", e.global_name) from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(obj, dict):
        what = type(obj).qualname if isinstance(obj, Skipped) else type(obj).__name__
        raise CheckpointError(f"{path}: the top-level object is a {what}, not a dict")
    return obj


def _load(path):
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can refuse it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise CheckpointError("no such file") from None
    except IsADirectoryError:
        raise CheckpointError("not a regular file (a directory)") from None
    except OSError as e:
        if os.path.isdir(path):
            raise CheckpointError("not a regular file (a directory)") from None
        raise CheckpointError(f"cannot open: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise CheckpointError(f"not a regular file ({kind})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return _read(f, info.st_size)
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}") from None


def _read(f, size: int):
    head = f.read(64)
    f.seek(0)
    if not head:
        raise CheckpointError("not a torch checkpoint (an empty file)")
    if head.startswith(_ZIP):
        _check_zip(f)
    elif head.startswith(_LEGACY):
        _check_not_tar(f)
    elif _ZIP.startswith(head) or _LEGACY.startswith(head):  # shorter than either header
        raise CheckpointError(f"truncated or corrupt: only {len(head)} bytes of a torch header")
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        _verdict_on_plain_pickle(f, size)
    else:
        raise CheckpointError(f"not a torch checkpoint ({_what_it_is(head, size)})")
    f.seek(0)
    return _torch_load(f, size)


def _check_zip(f) -> None:
    try:
        records = torch._C.PyTorchFileReader(f).get_all_records()
    except RuntimeError as e:
        raise _zip_error(e) from None
    except UnicodeDecodeError:  # record names are UTF-8 in every zip torch writes
        raise CheckpointError("truncated or corrupt: a zip record name is not UTF-8") from None
    # The same reader class torch.load uses, on the same bytes, so it sees the same records.
    if "constants.pkl" in records:
        raise CheckpointError(
            "not a torch.save checkpoint but a TorchScript archive (torch.load would hand it "
            "to torch.jit.load); refused"
        )
    if "data.pkl" not in records:
        raise CheckpointError("not a torch checkpoint (a zip archive without data.pkl)")
    # torch.save stores every record uncompressed, and torch's reader would inflate a deflated
    # one: refused, so no record is larger than the file (a 100 KB zip can inflate to GBs).
    f.seek(0)
    try:
        packed = [i.filename for i in zipfile.ZipFile(f).infolist() if i.compress_type]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"truncated or corrupt zip: {e}") from None
    if packed:
        raise CheckpointError(
            f"compressed records ({', '.join(packed[:3])}): torch.save never compresses, and a "
            f"compressed record may inflate far past the file's size; refused"
        )


def _check_not_tar(f) -> None:
    # torch.load tries the pre-1.0 tar format first, extracting members to a temporary
    # directory; a file that parses as tar is refused rather than extracted.
    try:
        tarfile.open(fileobj=f, mode="r:").close()
    except tarfile.TarError:
        return
    finally:
        f.seek(0)
    raise CheckpointError("the pre-1.0 tar checkpoint format is not supported")


def _verdict_on_plain_pickle(f, size: int) -> None:
    # A bare pickle is not a torch checkpoint, but a malicious one deserves its own name:
    # unpickling it with the safe unpickler runs nothing and finds any refused call.
    try:
        _pickle_module(size).load(f, encoding="utf-8")
    except UnsafeCheckpoint:
        raise
    except Exception:
        pass
    raise CheckpointError("not a torch checkpoint (a Python pickle not written by torch.save)")


def _what_it_is(head: bytes, size: int) -> str:
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "a safetensors file; read it with safetensors"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return f"a text file starting {head[:24].decode()!r}"
    return f"starts with {head[:8]!r}"


def _torch_load(f, size: int):
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise CheckpointError(
            "cannot be read while TORCH_FORCE_WEIGHTS_ONLY_LOAD is set: torch.load then refuses "
            "the restricted unpickler this loader needs"
        )
    try:
        return torch.load(
            f,
            map_location="cpu",
            pickle_module=_pickle_module(size),
            weights_only=False,  # the restricted unpickler replaces weights_only's
            mmap=False,
        )
    except CheckpointError:
        raise
    except Exception as e:  # anything else torch or the pickle stream raise: a damaged file
        raise _damage(e) from None


def _zip_error(e: RuntimeError) -> CheckpointError:
    text = str(e)
    if "central directory" in text:
        return CheckpointError("truncated or corrupt: the zip central directory is missing")
    if "failed reading zip archive" in text:
        reason = text.split("zip archive:", 1)[1].split(". This is", 1)[0].strip()
        return CheckpointError(f"truncated or corrupt: unreadable zip archive ({reason})")
    reason = text.split("] .", 1)[-1].strip() or text
    return CheckpointError(f"not a torch checkpoint (a zip archive torch cannot read: {reason})")


def _damage(e: Exception) -> CheckpointError:
    text = str(e)
    if isinstance(e, (EOFError, struct.error)) or "truncated" in text or "Ran out of input" in text:
        return CheckpointError("truncated or corrupt: the pickle stream ends early")
    if "failed locating file" in text:
        record = text.split("failed locating file", 1)[1].split(":", 1)[0].strip()
        return CheckpointError(f"truncated or corrupt: the zip record {record} is missing")
    if isinstance(e, RuntimeError) and "zip archive" in text:
        return _zip_error(e)
    if "unexpected EOF" in text:
        return CheckpointError("truncated or corrupt: the storage data ends early")
    detail = text.split("\n", 1)[0][:200]
    return CheckpointError(f"truncated or corrupt: {type(e).__name__}: {detail}")
