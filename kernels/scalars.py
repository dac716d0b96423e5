"""Float scalars for Triton kernels that must keep float64 precision: the one rule every launcher here follows.

Triton passes a Python float as float32, which would round guidance scales, clip ranges, centres and scales for the
float64 kernels. So a launcher passes `float_bits(value)`, the int64 bit pattern of the float, and the kernel calls
`from_bits(arg)` to get the float64 back. The JIT types an int argument by its value (i32 when it fits, as the
pattern of 0.0 does, else i64), so every such parameter is annotated `tl.int64` (as are Philox seeds and offsets):
the JIT then types it i64 whatever the value, one compiled variant, the one the AOT specs list
(tests/build/test_triton_launch_types.py holds the specs to the launches). `from_bits` still widens to int64 first, so
the interpreter, which passes Python ints unannotated, computes the same float.
"""
from __future__ import annotations

import struct

import triton
import triton.language as tl


def float_bits(value: float | None) -> int:
    """The int64 bit pattern of a Python float (None means 0.0: an argument whose branch the kernel skips)."""
    return struct.unpack("<q", struct.pack("<d", 0.0 if value is None else float(value)))[0]


@triton.jit
def from_bits(bits):
    """The float64 whose bit pattern `bits` (i32 or i64) holds."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


def aot_specs() -> list[tuple]:
    """No kernel of its own: `from_bits` is compiled inside each kernel that calls it (see their aot_specs)."""
    return []
