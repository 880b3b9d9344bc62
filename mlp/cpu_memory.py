"""Peak live tensor bytes on the CPU, where PyTorch keeps no allocation counter.

A TorchDispatchMode sees every tensor an operator returns, forward, backward and optimizer
alike. Each distinct storage is counted once, from the moment it first appears until Python
frees it (a weakref finalizer), so views, in-place updates and stolen gradients add nothing.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytesTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages on one device type and their peak.

    Tensors made before the tracker was entered are invisible to it until passed to
    `track()`. Memory a kernel allocates and frees inside one operator is not seen: on the
    CPU the only such buffers in an MLP step are small (see mlp.estimate's device rules).
    """

    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self.current_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, weakref.finalize] = {}

    def track(self, tensors) -> None:
        """Count tensors that already exist (parameters, a batch made earlier)."""
        for t in tensors:
            self._add(t)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak_bytes = self.current_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        nbytes = storage.nbytes()
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self._live[key] = weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        self.current_bytes -= nbytes
        self._live.pop(key, None)
