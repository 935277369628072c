"""Count the host syncs of training code on any machine, a CPU included.

A host sync is a device read (the host waits for the device's queue to get a value) or a blocking
host-to-device copy (from pageable memory PyTorch waits for the stream). On a GPU,
torch.cuda.set_sync_debug_mode catches them; on a CPU every tensor is on the same device, so
SyncTrace tracks where each tensor *would* live by where it comes from:

  device   moved with .to(d) / .cuda() (made a real copy, as on a GPU), made by a factory given a
           CUDA device, assigned to a parameter's .data, or computed from a device tensor;
  host     made without a device (from Python data, a module-level table, AveragedModel's step
           counter), or with device="cpu" spelled as a string (how torch.optim makes its host-side
           step counters), or computed from host tensors only;
  x.device a factory given device=x.device puts its output where x is (the trace remembers
           which tensor each recent .device object came from);
  pending  made by a factory given another CPU torch.device object (the trainer's `device`): the
           tensor takes the place of the first placed tensor it meets (0-dim host tensors, which
           CUDA ops take as numbers, do not count), and is read as a device tensor until then.
           A torch.tensor(data, device=...) that turns out to be on the device is a copy.

Places follow the torch-function level (Python calls) and the ATen level (so the intermediates of
C++ ops are tracked too). A tensor of no known place (a Parameter() wrapper is made out of sight of
both modes) gives no evidence: nothing is counted on it. Counted, on device (and pending) tensors:

  reads   .item(), bool() / int() / float(), a tensor passed where torch takes a number (the
          argument parser calls .item()), .tolist(), .cpu(), .numpy(), a device-to-host copy_, and
          the ops whose output size depends on the data (nonzero, unique, masked_select, bincount,
          repeat_interleave without output_size, boolean-mask indexing);
  copies  a host tensor's .to(d) / .cuda(), device.copy_(host), torch.tensor(data) onto the
          device; with non_blocking=True they are counted apart, as async copies (pinned memory:
          no sync).

Not counted: the class-range checks F.one_hot makes on a CPU only (its CUDA kernel skips them,
ATen's Onehot.cpp). Not seen: a device tensor's .to("cpu") when the training device is the CPU too
(nothing tells it from .to(d); the project reads with .cpu(), .item() and .tolist()). Each event
keeps the innermost source line outside torch, so a failing count says where the syncs are.

Also counts the ATen ops run (`ops`): on a CPU, the stand-in for kernel launches.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
HOST, DEVICE, PENDING = "host", "device", "pending"
_TORCH_DIR = str(Path(torch.__file__).parent)
# ATen ops whose output size depends on the values: the host reads them to allocate the output.
_DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.equal.default,
    aten.repeat_interleave.Tensor,
}
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default}
_READS = (torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy)


class SyncTrace:
    """with SyncTrace() as trace: run(); then trace.reads, trace.copies, trace.where().

    Places tensors from the moment it is entered; counts only while `counting` (start() and
    stop() bound a window, e.g. the training loop without its setup)."""

    def __init__(self, counting: bool = True):
        self.counting = counting
        self.events: Counter[tuple[str, str]] = Counter()  # (kind, source line) -> n
        self.ops = 0
        self._place: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> HOST | DEVICE | PENDING
        self._copies: WeakIdKeyDictionary = WeakIdKeyDictionary()  # pending tensor -> its _PendingCopy set
        self._devices: OrderedDict[int, tuple[torch.device, str | None]] = OrderedDict()  # .device objects
        self._quiet = 0  # > 0 inside calls whose reads happen on a CPU only
        self._modes = contextlib.ExitStack()

    # --------------------------------------------------------------------------- public
    def __enter__(self) -> SyncTrace:
        self._modes.enter_context(_Functions(self))
        self._modes.enter_context(_Dispatch(self))
        return self

    def __exit__(self, *exc) -> None:
        self._modes.close()

    def start(self) -> None:
        self.counting = True

    def stop(self) -> None:
        self.counting = False

    def mark_host(self, *tensors: torch.Tensor) -> None:
        """Declare tensors made before the trace as host tensors (a DataLoader's dataset)."""
        for x in tensors:
            self._place[x] = HOST

    def reset(self) -> None:
        self.events.clear()
        self.ops = 0

    def count(self, kind: str) -> int:
        return sum(n for (k, _), n in self.events.items() if k == kind)

    @property
    def reads(self) -> int:
        return self.count("read")

    @property
    def copies(self) -> int:
        return self.count("copy")

    @property
    def syncs(self) -> int:
        return self.reads + self.copies

    def where(self) -> str:
        """The events by kind and source line, most frequent first."""
        return "\n".join(f"{n:6d} {kind:10s} {line}" for (kind, line), n in self.events.most_common())

    # --------------------------------------------------------------------------- internals
    def place(self, x: object) -> str | None:
        return self._place.get(x) if isinstance(x, torch.Tensor) else None

    def settle(self, inputs: object) -> tuple[str | None, frozenset]:
        """The place of an op's outputs given its inputs, and the copies pending on them; pending
        inputs take the place on the way (a torch.tensor(data) that lands on the device is a copy)."""
        tensors = [x for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)]
        evidence = {self._place.get(x) for x in tensors if not (x.dim() == 0 and self._place.get(x) == HOST)} - {None}
        pending = [x for x in tensors if self._place.get(x) == PENDING]
        copies = frozenset().union(*(self._copies.get(x, ()) for x in pending))
        if DEVICE in evidence or HOST in evidence:
            where = DEVICE if DEVICE in evidence else HOST
            for x in pending:
                self._place[x] = where
            for c in copies:
                if not c.settled and where == DEVICE:
                    self.record("copy", c.line)
                c.settled = True
            return where, frozenset()
        return (PENDING, copies) if pending else (None, frozenset())

    def mark(self, out: object, place: str | None, inputs: object = (), copies: frozenset = frozenset()) -> None:
        """Place the tensors of `out`, except those passed through from `inputs` as they were
        (in-place ops, grouping functions); all pending outputs carry the pending copies."""
        if place is None:
            return
        passed = {id(x) for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)}
        for x in tree_flatten(out)[0]:
            if not isinstance(x, torch.Tensor):
                continue
            if id(x) not in passed:
                self._place[x] = place
            if copies and self._place.get(x) == PENDING:
                self._copies[x] = self._copies.get(x, frozenset()) | copies

    def device_of(self, x: torch.Tensor, device: torch.device) -> torch.device:
        """Remember that `device` (a fresh object per .device call) came from tensor x."""
        self._devices[id(device)] = (device, self.place(x))  # holding it keeps its id unique
        if len(self._devices) > 4096:
            self._devices.popitem(last=False)
        return device

    def factory_place(self, kwargs: dict) -> str | None:
        """Where a factory's explicit device= puts its output (None: no device given)."""
        device = kwargs.get("device")
        if device is None:
            return None
        if isinstance(device, str):
            return HOST if device.split(":")[0] == "cpu" else DEVICE
        if id(device) in self._devices and self._devices[id(device)][0] is device:
            return self._devices[id(device)][1] or PENDING
        return PENDING if torch.device(device).type == "cpu" else DEVICE

    def source_line(self) -> str:
        frames = [f for f in traceback.extract_stack() if not f.filename.startswith(_TORCH_DIR)]
        frames = [f for f in frames if f.filename != __file__]
        return f"{frames[-1].filename}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"

    def record(self, kind: str, line: str | None = None) -> None:
        if self.counting and not self._quiet:
            self.events[kind, line or self.source_line()] += 1


class _PendingCopy:
    """A torch.tensor(data, device=x.device) whose place is not known yet, and where it was made."""

    def __init__(self, line: str):
        self.line, self.settled = line, False


class _Functions(TorchFunctionMode):
    """Python-level calls: factories, moves, and the reads the ATen level does not see on a CPU
    (.tolist(), .cpu(), .numpy() do not dispatch there)."""

    def __init__(self, trace: SyncTrace):
        super().__init__()
        self.t = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = self.t
        if func is torch.nn.functional.one_hot:
            t._quiet += 1
            try:
                return func(*args, **kwargs)
            finally:
                t._quiet -= 1
        if func in (torch.Tensor.to, torch.Tensor.cuda):
            return self._move(func, args, kwargs)
        if getattr(func, "__self__", None) is torch.Tensor.device and func.__name__ == "__get__":
            return t.device_of(args[0], func(*args, **kwargs))
        if getattr(func, "__name__", "") == "__set__" and len(args) == 2:  # param.data = tensor
            out = func(*args, **kwargs)
            if t.place(args[1]) is not None:
                t._place[args[0]] = t.place(args[1])
            return out
        if func is torch.Tensor.copy_:
            dst, src = args[0], args[1]
            if t.place(dst) == DEVICE and t.place(src) == HOST:
                t.record("async copy" if kwargs.get("non_blocking") else "copy")
            elif t.place(dst) == HOST and t.place(src) == DEVICE:
                t.record("read")
        place, copies = t.settle((args, kwargs))
        if func in _READS and place in (DEVICE, PENDING):
            t.record("read")
        out = func(*args, **kwargs)
        if place is None:
            place = t.factory_place(kwargs)
            if place is None and not any(isinstance(x, torch.Tensor) for x in tree_flatten((args, kwargs))[0]):
                place = HOST  # made from Python data or shapes alone
            if func is torch.tensor and place == PENDING:
                copies = frozenset([_PendingCopy(t.source_line())])
            elif func is torch.tensor and place == DEVICE:
                t.record("copy")
        t.mark(out, place, (args, kwargs), copies)
        return out

    def _move(self, func, args, kwargs):
        t, x = self.t, args[0]
        if func is torch.Tensor.cuda:
            device, non_blocking = torch.device("cuda"), kwargs.get("non_blocking", False)
        else:
            parsed = {k: v for k, v in kwargs.items() if k != "copy"}
            device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args[1:], **parsed)
        if device is None or t.place(x) in (DEVICE, PENDING):  # a cast, or nothing to move
            out = func(*args, **kwargs)
            t.mark(out, t.place(x), (x,), t._copies.get(x, frozenset()))
            return out
        t.record("async copy" if non_blocking else "copy")
        if func is torch.Tensor.cuda:
            out = func(*args, **kwargs)
        else:  # a real copy, as on a GPU: on a CPU .to() would hand back the host tensor itself
            extra = {} if memory_format is None else {"memory_format": memory_format}
            out = x.to(device=device, dtype=dtype, non_blocking=non_blocking, copy=True, **extra)
        t.mark(out, DEVICE)
        return out


class _Dispatch(TorchDispatchMode):
    """ATen-level ops: .item() and its kin all end in _local_scalar_dense, including the calls
    C++ makes (a tensor passed as a Scalar argument); places follow C++ intermediates."""

    def __init__(self, trace: SyncTrace):
        super().__init__()
        self.t = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = self.t
        if t.counting and not t._quiet:
            t.ops += 1
        place, copies = t.settle((args, kwargs))
        if place in (DEVICE, PENDING) and _reads(func, args, kwargs):
            t.record("read")
        out = func(*args, **kwargs)
        t.mark(out, place, (args, kwargs), copies)
        return out


def _reads(func, args: tuple, kwargs: dict) -> bool:
    """Whether ATen op `func` on device inputs reads them back to the host."""
    if func is aten._local_scalar_dense.default or func in _DATA_DEPENDENT:
        return not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None)
    if func in _BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
        bool_index = any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
        value = args[2] if len(args) > 2 else None
        # x[mask] = scalar takes index_put_'s masked_fill path: no read
        return bool_index and not (isinstance(value, torch.Tensor) and value.dim() == 0)
    return False
