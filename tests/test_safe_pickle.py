import collections
import importlib
import os
import pickle
import subprocess
import sys
import uuid
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import CheckpointError
from model.safe_pickle import Skipped, UnsafeCheckpoint, load_checkpoint

FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization

# Stand-ins for mmengine's objects, in a module that is gone by the time the file is read.
THROWAWAY = """
import numpy as np


class HistoryBuffer:
    def __init__(self):
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])
        self.max_length = 1000000


class ConfigDict(dict):
    pass
"""


def _state_dict():
    weight = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["backbone.weight"] = weight
    sd["backbone.column"] = weight[:, 2]  # a strided view sharing the weight's storage
    sd["head.weight"] = torch.linspace(-1, 1, 10).half().reshape(2, 5)
    sd["head.bias"] = torch.tensor([0.5, -0.5], dtype=torch.float16)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as module.state_dict() has
    return sd


@pytest.fixture
def mmengine_like(tmp_path, monkeypatch):
    """A checkpoint laid out like mmengine's, holding instances of a vanished module's classes."""
    name = f"throwaway_{uuid.uuid4().hex}"
    source = tmp_path / f"{name}.py"
    source.write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    checkpoint = {
        "meta": {
            "mmengine_version": "0.10.3",
            "epoch": 30,
            "seed": np.int64(42),
            "best_score": np.float64(0.8125),
            "classes": np.array([3, 1, 4], dtype=np.int32),
            "cfg": module.ConfigDict(model={"type": "ZeroI2V"}),
        },
        "state_dict": _state_dict(),
        "message_hub": module.HistoryBuffer(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
    }
    paths = {}
    for fmt, zip_format in FORMATS.items():
        paths[fmt] = tmp_path / f"{fmt}.pth"
        torch.save(checkpoint, paths[fmt], _use_new_zipfile_serialization=zip_format)
    del sys.modules[name]
    monkeypatch.undo()
    source.unlink()
    importlib.invalidate_caches()
    return name, paths


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_mmengine_layout_without_importing_it(mmengine_like, fmt):
    module, paths = mmengine_like
    ckpt = load_checkpoint(paths[fmt])
    assert module not in sys.modules

    expected = _state_dict()
    sd = ckpt["state_dict"]
    assert list(sd) == list(expected)
    for key, tensor in expected.items():
        assert type(sd[key]) is torch.Tensor and sd[key].device.type == "cpu"
        assert sd[key].dtype == tensor.dtype
        assert torch.equal(sd[key], tensor)
    assert sd["head.weight"].dtype == torch.float16
    column = sd["backbone.column"]
    assert column.stride() == (6,)
    assert column.untyped_storage().data_ptr() == sd["backbone.weight"].untyped_storage().data_ptr()
    assert sd._metadata == {"": {"version": 1}}

    meta = ckpt["meta"]
    assert meta["mmengine_version"] == "0.10.3" and meta["epoch"] == 30
    assert meta["seed"] == 42 and meta["seed"].dtype == np.int64
    assert meta["best_score"] == 0.8125 and isinstance(meta["best_score"], np.float64)
    np.testing.assert_array_equal(meta["classes"], [3, 1, 4])
    assert meta["classes"].dtype == np.int32
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)

    hub, cfg = ckpt["message_hub"], meta["cfg"]
    assert isinstance(hub, Skipped) and isinstance(cfg, Skipped)
    assert type(hub).qualname == f"{module}.HistoryBuffer"
    assert type(cfg).qualname == f"{module}.ConfigDict"
    assert "HistoryBuffer" in repr(hub)
    with pytest.raises(AttributeError):
        _ = hub._log_history  # its state was dropped, not kept
    with pytest.raises(UnsafeCheckpoint):
        type(hub)()  # the placeholder class never builds anything


def test_tensor_dtypes_of_the_newer_rebuilder_and_parameters(tmp_path):
    path = tmp_path / "ckpt.pth"
    saved = {
        "u16": torch.tensor([1, 60000]).to(torch.uint16),  # written by _rebuild_tensor_v3
        "param": torch.nn.Parameter(torch.ones(3)),
        "bf16": torch.tensor([1.5, 2.5], dtype=torch.bfloat16),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "misc": {"set": {1, 2}, "bytes": b"\x00\xff", "empty": b"", "text": np.str_("hi")},
    }
    torch.save(saved, path)
    ckpt = load_checkpoint(path)
    for key in ("u16", "param", "bf16"):
        assert ckpt[key].dtype == saved[key].dtype and torch.equal(ckpt[key], saved[key])
    assert isinstance(ckpt["param"], torch.nn.Parameter)
    assert ckpt["dtype"] is torch.float16 and ckpt["size"] == torch.Size([2, 3])
    assert ckpt["misc"] == saved["misc"]


def test_numpy_1_names(tmp_path):
    # numpy 1.x writes numpy.core.multiarray where numpy 2 writes numpy._core.multiarray.
    data = pickle.dumps({"x": np.float64(1.5), "a": np.arange(3)}, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data or b"numpy.core.multiarray" in data
    path = tmp_path / "numpy1.pth"
    _torch_zip(path, old)
    ckpt = load_checkpoint(path)
    assert ckpt["x"] == 1.5 and ckpt["a"].tolist() == [0, 1, 2]


# ---- files that ask to run something ---------------------------------------------------------


class _Reducer:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _assert_refused(path, names, pwned):
    with pytest.raises(UnsafeCheckpoint) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path))
    assert info.value.global_name in names
    assert any(name in str(info.value) for name in names)
    assert not pwned.exists()


def _payloads(pwned):
    return {
        "system": (_Reducer(os.system, f"touch {pwned}"), ("posix.system", "os.system")),
        "eval": (
            _Reducer(eval, f"__import__('os').system('touch {pwned}')"),
            ("builtins.eval",),
        ),
        "popen": (_Reducer(subprocess.Popen, ["touch", str(pwned)]), ("subprocess.Popen",)),
    }


@pytest.mark.parametrize("payload", ["system", "eval", "popen"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_save_of_a_call_is_refused(tmp_path, payload, fmt):
    pwned = tmp_path / "pwned"
    obj, names = _payloads(pwned)[payload]
    path = tmp_path / "evil.pth"
    # Buried next to real weights: the refusal must not depend on where the call sits.
    checkpoint = {"state_dict": _state_dict(), "meta": {"hook": obj}}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=FORMATS[fmt])
    _assert_refused(path, names, pwned)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("payload", ["system", "eval", "popen"])
def test_raw_pickle_of_a_call_is_refused(tmp_path, payload, protocol):
    pwned = tmp_path / "pwned"
    obj, names = _payloads(pwned)[payload]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"state_dict": obj}, protocol=protocol))
    _assert_refused(path, names, pwned)


def _raw_opcode_payloads(pwned):
    """Hand-written pickles that call posix.system through opcodes other than REDUCE."""
    command = f"touch {pwned}".encode()
    arg = b"X" + len(command).to_bytes(4, "little") + command  # BINUNICODE
    return {
        "INST": b"\x80\x02(" + arg + b"iposix\nsystem\n.",
        "OBJ": b"\x80\x02(cposix\nsystem\n" + arg + b"o.",
        "NEWOBJ_EX": b"\x80\x04cposix\nsystem\n(" + arg + b"t}\x92.",
    }


def _torch_zip(path, data_pkl: bytes):
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", data_pkl, len(data_pkl))
    writer.write_end_of_file()
    del writer


def _torch_legacy(path, main_pickle: bytes):
    header = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, {})
    )
    path.write_bytes(header + main_pickle + pickle.dumps([], protocol=2))


@pytest.mark.parametrize("container", ["raw", "zip", "legacy"])
@pytest.mark.parametrize("opcode", ["INST", "OBJ", "NEWOBJ_EX"])
def test_calls_through_other_opcodes_are_refused(tmp_path, opcode, container):
    pwned = tmp_path / "pwned"
    payload = _raw_opcode_payloads(pwned)[opcode]
    path = tmp_path / "evil.pth"
    if container == "raw":
        path.write_bytes(payload)
    elif container == "zip":
        _torch_zip(path, payload)
    else:
        _torch_legacy(path, payload)
    _assert_refused(path, ("posix.system",), pwned)


def test_torch_uses_the_restricted_unpickler_for_both_formats(tmp_path):
    # NEWOBJ_EX of an unknown class: a stock unpickler with the same find_class would build a
    # placeholder (the class's __new__ is not the refusing metaclass call); only the replaced
    # opcode table refuses it, so this shows torch's zip and legacy readers both use it.
    payload = b"\x80\x04cmmengine.fake\nThing\n)}\x92."
    for name, write in (("zip", _torch_zip), ("legacy", _torch_legacy)):
        path = tmp_path / f"{name}.pth"
        write(path, payload)
        with pytest.raises(UnsafeCheckpoint, match="mmengine.fake.Thing"):
            load_checkpoint(path)


def test_object_numpy_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"meta": {"mixed": np.array([1, "a"], dtype=object)}}, path)
    with pytest.raises(CheckpointError, match="dtype"):
        load_checkpoint(path)


def test_calling_an_allowlisted_value_is_refused(tmp_path):
    path = tmp_path / "ndarray.pkl"
    # numpy.ndarray is allowed as _reconstruct's argument, not as something to call.
    path.write_bytes(b"\x80\x02cnumpy\nndarray\nK\x05\x85R.")
    with pytest.raises(UnsafeCheckpoint, match="numpy.ndarray"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated
def test_torchscript_archive_is_refused(tmp_path):
    class Add(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Add()), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(path)


# ---- damaged and wrong files ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_checkpoints(tmp_path, fmt):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": _state_dict()}, good, _use_new_zipfile_serialization=FORMATS[fmt])
    data = good.read_bytes()
    for cut in (10, len(data) // 4, len(data) // 2, len(data) - 100, len(data) - 10):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: ")
        assert not isinstance(info.value, UnsafeCheckpoint)


def test_missing_storage_record(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(3), "b": torch.zeros(2)}, good)
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if not name.endswith("data/1"):
                dst.writestr(name, src.read(name))
    with pytest.raises(CheckpointError, match=r"truncated or corrupt: .*data/1 is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("opcode", [b"\x8d", b"\x96"])  # BINUNICODE8, BYTEARRAY8
def test_huge_length_prefixes_allocate_nothing(tmp_path, opcode):
    # A file object's read(n) allocates n bytes first: a length of 2**50 must not reach it.
    path = tmp_path / "huge.pth"
    _torch_legacy(path, b"\x80\x05" + opcode + (2**50).to_bytes(8, "little") + b"abc.")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "MemoryError" not in str(info.value)


def test_not_torch_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    tensors = {"w": torch.ones(2, 2)}
    save_file(tensors, tmp_path / "model.safetensors")
    save_file(tensors, tmp_path / "renamed.pth")
    zipped = tmp_path / "archive.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "hello")
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, detail in (
        (text, "text file"),
        (tmp_path / "model.safetensors", "safetensors"),
        (tmp_path / "renamed.pth", "safetensors"),
        (zipped, "zip archive"),
        (plain, "pickle"),
        (empty, "empty"),
    ):
        with pytest.raises(CheckpointError, match="not a torch checkpoint") as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: ") and detail in str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_checkpoint(tmp_path / "absent.pth")
    assert str(info.value).startswith(str(tmp_path / "absent.pth"))
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)


def test_fifo_is_not_waited_on(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(fifo)


def test_top_level_must_be_a_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    with pytest.raises(CheckpointError, match="top-level object is a list, not a dict"):
        load_checkpoint(path)


def test_compressed_records_are_refused(tmp_path):
    """A deflated record could inflate to gigabytes from a small file; torch.save never
    compresses, so one is refused before anything is read."""
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="compressed records"):
        load_checkpoint(packed)
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], torch.zeros(1000))
