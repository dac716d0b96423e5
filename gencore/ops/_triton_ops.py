"""The Triton ops (torch.ops.gencore.*_triton) are registered the first time they are needed, not at import.

Registering a torch.library.triton_op imports triton and gencore.kernels, and torch's search of the op's source for
the kernels it launches imports TorchDynamo and Inductor: together about 2 s, which `import gencore` must not cost
a machine that never runs a Triton kernel (no GPU, or the cuda backend serving it). So each op module hands its
registration function to `on_first_use`, and `register_triton_ops()` runs them all, once:

  * by every public op when the triton backend serves the call (eager, or inside torch.compile: TorchDynamo calls
    it at trace time instead of tracing into it, see the end of this module), and
  * by a caller that reaches torch.ops.gencore.*_triton directly (tests, torch.library.opcheck).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from .. import backends

_registrations: list[Callable[[], None]] = []
_registered: list[bool] = []  # [True] once every registration has run
_lock = threading.Lock()  # two threads choosing triton at once must not define an op twice


def on_first_use(register: Callable[[], None]) -> Callable[[], None]:
    """Decorator: `register` (which defines an op module's Triton ops) runs on the first register_triton_ops()."""
    _registrations.append(register)
    return register


def triton_ops_registered() -> bool:
    """Whether torch.ops.gencore.*_triton exist in this process yet."""
    return bool(_registered)


def register_triton_ops() -> None:
    """Define torch.ops.gencore.*_triton (imports triton, gencore.kernels, TorchDynamo and Inductor); a no-op after
    the first call. The public ops call it themselves; call it before reaching torch.ops.gencore.*_triton directly.

    Raises ImportError (with the reason) where triton cannot be imported.
    """
    if _registered:
        return
    with _lock:
        if _registered:
            return
        err = backends._triton_error()
        if err is not None:
            raise ImportError(f"the Triton ops cannot be registered: {err}")
        for register in _registrations:
            register()
        _registered.append(True)


# What torch.compiler.assume_constant_result(register_triton_ops) would do, without importing TorchDynamo here:
# Dynamo calls the function while tracing a public op that chose triton, so a compiled graph (fullgraph=True too)
# finds the ops defined, instead of breaking the graph on the registration.
register_triton_ops._dynamo_marked_constant = True
