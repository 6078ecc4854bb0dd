"""Why ``torch.load(weights_only=True)`` refused a weights file, told from its bytes alone.

Torch's refusals all read alike ("Weights only load failed ..."), whether the file is random
bytes, cut short, a plain ``pickle.dump`` or a pickle that would run code. :func:`refusal`
looks at the file without executing anything, only after torch refused it: an empty file; a
zip archive (torch.save's format) that cannot be read or holds no ``data.pkl``; and the
pickles themselves, walked opcode by opcode with :func:`pickletools.genops` (which parses and
never builds an object), so a file that names ``os.system`` or a whole ``nn.Module`` is told
apart from one that breaks at byte N or is a plain Python pickle. Reads are bounded by
:data:`MAX_PICKLE_BYTES` and :data:`MAX_OPCODES`.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from eviltwins.errors import DataError, EviltwinsError, UnsafeFileError
from eviltwins.paths import unreadable

#: Most pickle bytes walked (torch.save's ``data.pkl`` of a large model is a few MB).
MAX_PICKLE_BYTES = 64 * 2**20
#: Most opcodes walked.
MAX_OPCODES = 1_000_000
#: The first pickle of torch.save's legacy (pre-1.6, non-zip) format.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGIC = b"PK\x03\x04"

#: Globals a weights-only pickle may name (what ``torch.load(weights_only=True)`` allows).
SAFE_GLOBALS = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch._tensor._rebuild_from_type_v2",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
    }
)
_TENSOR_MODULES = ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
_TORCH_VALUES = (torch.dtype, torch.qscheme, torch.layout, torch.memory_format)
#: What a torch.save'd state dict's tensors are rebuilt with when pickled by plain pickle.
_UNRESTRICTED_STORAGE = "torch.storage._load_from_bytes"
_ADVICE = "re-save its state_dict as safetensors in a trusted environment"
_SAVE_HINT = "save the weights with torch.save(model.state_dict(), path) or as safetensors"


def is_tensor_machinery(name: str) -> bool:
    """Whether the pickle global ``module.name`` only rebuilds tensors and plain containers."""
    if name in SAFE_GLOBALS:
        return True
    module, _, attr = name.rpartition(".")
    if module == "torch._utils":
        return attr.startswith("_rebuild_")
    if module in _TENSOR_MODULES and attr.endswith(("Storage", "Tensor")):
        return True
    # torch.__dict__, not getattr: a name from a stranger must not reach torch's __getattr__
    return module == "torch" and isinstance(torch.__dict__.get(attr), _TORCH_VALUES)


def _global(module: str, name: str) -> str:
    """``module.name`` as Python 3 spells it (protocol 2 pickles name ``__builtin__.set``)."""
    return f"{_PY2_MODULES.get(module, module)}.{name}"


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Unreadable(Exception):
    """The file (or zip member) failed under the pickle walk: it is not the pickle's fault."""


class _Bounded:
    """A read-only view of a stream that gives at most ``limit`` bytes in all (so no pickle
    argument can size a read beyond the file), counting the bytes given (:meth:`tell`)."""

    def __init__(self, stream: IO[bytes], limit: int, start: int = 0) -> None:
        self.stream, self.left, self.pos = stream, limit, start

    def _take(self, reader: Any, n: int) -> bytes:
        try:
            data = reader(max(0, min(n, self.left)))
        except Exception as err:  # noqa: BLE001 - a corrupt zip member fails in many ways
            raise _Unreadable(err) from None
        self.left -= len(data)
        self.pos += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        return self._take(self.stream.read, self.left if n is None or n < 0 else n)

    def readline(self) -> bytes:
        return self._take(self.stream.readline, 1 << 16)  # protocol 0's text arguments

    def tell(self) -> int:
        return self.pos


@dataclass
class _Walk:
    """What one pickle's opcodes show."""

    proto: int | None = None
    globals: list[str] = field(default_factory=list)
    first_args: list[Any] = field(default_factory=list)
    model_keys: set[str] = field(default_factory=set)
    broke_at: int | None = None  # where the pickle stopped making sense
    too_big: bool = False  # walked MAX_PICKLE_BYTES / MAX_OPCODES without reaching its end


def _walk(stream: _Bounded, capped: bool) -> _Walk:
    """Walk one pickle (to its STOP) from ``stream``; nothing is built. ``capped``: the bytes
    behind ``stream`` go on past its limit."""
    w = _Walk()
    memo: dict[Any, str] = {}  # only the memoised strings (module and global names)
    memoised = 0
    pushed: list[Any] = [None, None]  # the last two values put on the stack, when strings
    at = stream.tell()
    try:
        for n, (op, arg, _) in enumerate(pickletools.genops(stream)):
            if n >= MAX_OPCODES:
                w.too_big = True
                return w
            name = op.name
            if len(w.first_args) < 4:
                w.first_args.append(arg)
            if name == "PROTO":
                w.proto = arg
            elif name in ("GLOBAL", "INST"):
                mod, _, attr = str(arg).partition(" ")
                w.globals.append(_global(mod, attr))
            elif name == "STACK_GLOBAL":
                mod, attr = pushed[-2:]
                ok = isinstance(mod, str) and isinstance(attr, str)
                w.globals.append(_global(mod, attr) if ok else "an object named at run time")
            elif name.startswith("EXT"):
                w.globals.append(f"extension {arg} of the copyreg registry")
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                key = memoised if name == "MEMOIZE" else arg
                memoised += name == "MEMOIZE"
                if isinstance(pushed[-1], str):
                    memo[key] = pushed[-1]
                else:
                    memo.pop(key, None)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed = [pushed[-1], memo.get(arg)]
            elif op.stack_after:
                pushed = [pushed[-1], arg if isinstance(arg, str) else None]
            if arg in ("_modules", "_parameters"):
                w.model_keys.add(arg)
            at = stream.tell()
    except _Unreadable:
        raise
    except Exception:  # noqa: BLE001 - pickletools says why in ValueError and friends
        if capped and stream.left <= 0:
            w.too_big = True
        else:
            w.broke_at = at
    return w


def refusal(path: Path, err: BaseException) -> EviltwinsError:
    """The one-line error for the weights file ``path`` that ``torch.load(weights_only=True)``
    refused with ``err``, naming the real cause (read from the file; nothing is run)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(4)
            f.seek(0)
            if size == 0:
                return DataError(f"weights file {path} is empty (0 bytes); {_SAVE_HINT}")
            if head == ZIP_MAGIC:
                return _zip_refusal(path, f, err)
            return _pickle_refusal(path, f, size, head, err)
    except _Unreadable as bad:
        cause = bad.args[0] if bad.args else bad
        if isinstance(cause, OSError) and not isinstance(cause, zipfile.BadZipFile):
            return DataError(f"weights file {path} {unreadable(cause)}")
        return _corrupt(path, "its zip archive cannot be read")
    except OSError as bad:
        return DataError(f"weights file {path} {unreadable(bad)}")


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"weights file {path} is corrupt or truncated ({why}); replace the file")


def _zip_refusal(path: Path, f: IO[bytes], err: BaseException) -> EviltwinsError:
    try:
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except Exception:  # noqa: BLE001 - zipfile fails in many ways on a damaged archive
        return _corrupt(path, "its zip archive cannot be read")
    pkl = next((i for i in infos if i.filename.rpartition("/")[2] == "data.pkl"), None)
    if pkl is None:
        return DataError(
            f"weights file {path} is a zip archive, not a file written by torch.save (it holds "
            f"no data.pkl); {_SAVE_HINT}"
        )
    try:
        member = archive.open(pkl)
    except Exception as bad:  # noqa: BLE001 - encrypted, unknown compression, bad header
        raise _Unreadable(bad) from None
    with member:
        limit = min(pkl.file_size, MAX_PICKLE_BYTES)
        w = _walk(_Bounded(member, limit), capped=pkl.file_size > MAX_PICKLE_BYTES)
    return _judge(path, w, "its data.pkl", "torch", err)


def _pickle_refusal(
    path: Path, f: IO[bytes], size: int, head: bytes, err: BaseException
) -> EviltwinsError:
    stream = _Bounded(f, min(size, MAX_PICKLE_BYTES))
    capped = size > MAX_PICKLE_BYTES
    first = _walk(stream, capped)
    looks_pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if first.broke_at is not None and not looks_pickled:
        return DataError(
            f"weights file {path} is not a PyTorch weights file (neither torch.save's zip "
            f"format nor a pickle); {_SAVE_HINT}"
        )
    if first.broke_at is None and not first.too_big and LEGACY_MAGIC in first.first_args:
        # torch.save's legacy format: protocol version, system info, then the object
        w = _Walk()
        for _ in range(3):
            part = _walk(stream, capped)
            w.globals += part.globals
            w.model_keys |= part.model_keys
            w.broke_at, w.too_big = part.broke_at, part.too_big
            if part.broke_at is not None or part.too_big:
                break
        return _judge(path, w, "its pickled data", "legacy", err)
    return _judge(path, first, "its pickle", "plain", err)


def _judge(path: Path, w: _Walk, where: str, kind: str, err: BaseException) -> EviltwinsError:
    """The refusal for a file whose pickle showed ``w`` (``kind``: torch, legacy or plain)."""
    bad = [g for g in w.globals if not is_tensor_machinery(g)]
    if bad:
        named = next((g for g in bad if not g.startswith("torch.")), bad[0])
        if w.model_keys or any(g.startswith("torch.nn.modules.") for g in bad):
            return UnsafeFileError(
                f"refused to load {path}: it holds a whole pickled model (it would build "
                f"{named}), not a state_dict; unpickling it could run code, and nothing in it "
                "was run: in a trusted environment, load it and save model.state_dict() as "
                "safetensors"
            )
        if kind == "plain" and set(bad) == {_UNRESTRICTED_STORAGE}:
            return UnsafeFileError(
                f"refused to load {path}: it is a plain Python pickle (protocol {w.proto}), "
                f"not a file written by torch.save, and its tensors would be rebuilt by "
                f"{_UNRESTRICTED_STORAGE}, which unpickles without limits and could run code; "
                f"nothing in it was run: {_ADVICE}"
            )
        return UnsafeFileError(
            f"refused to load {path}: it holds pickled objects beyond tensors (it would build "
            f"{named}), which could run code; nothing in it was run: {_ADVICE}"
        )
    if w.broke_at is not None:
        return _corrupt(path, f"{where} breaks at byte {w.broke_at:,}")
    if w.too_big:
        return DataError(
            f"weights file {path} is not readable by torch.load(weights_only=True) "
            f"({_sentence(err)}), and {where} is too large to check (over "
            f"{MAX_PICKLE_BYTES // 2**20} MB or {MAX_OPCODES:,} opcodes); {_SAVE_HINT}"
        )
    if kind == "plain":
        proto = f"protocol {w.proto}" if w.proto is not None else "protocol 0 or 1"
        return DataError(
            f"weights file {path} is a plain Python pickle ({proto}), not a file written by "
            f"torch.save; {_SAVE_HINT}"
        )
    if w.proto is not None and w.proto != 2:
        return DataError(
            f"weights file {path} was written by torch.save with pickle protocol {w.proto}, "
            "which torch.load(weights_only=True) cannot read; re-save it with the default "
            "protocol (2) or as safetensors in a trusted environment"
        )
    if kind == "legacy":  # the pickles are whole: what follows them, the tensor data, is not
        return _corrupt(path, f"its tensor data cannot be read: {_sentence(err)}")
    return DataError(
        f"weights file {path} is a torch.save file that torch.load(weights_only=True) cannot "
        f"read ({_sentence(err)}); {_SAVE_HINT}"
    )


def _sentence(err: BaseException) -> str:
    """The first sentence of ``err``'s message when it is short, else its type's name (a
    library message is never cut off mid-sentence)."""
    text = " ".join(str(err).split())
    text = text.partition("WeightsUnpickler error: ")[2] or text  # torch's detail, after a preamble
    first = text.split(". ")[0].rstrip(".")
    return first if first and len(first) <= 120 else type(err).__name__
