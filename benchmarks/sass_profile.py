"""Static profile of a Triton kernel compiled for Hopper (sm_90) on a machine without a GPU.

Compiles a `triton.jit` function ahead of time with the argument specialisation Triton's launcher
would give the same arguments, then reads what the compiled code costs: registers, stack frame
(spills), shared memory, whether the tile loop issues wgmma (`HGMMA` in SASS), and the SASS
instructions of the tile loop. `kernel_stats.py` runs this over every kernel at its default
configs; tests use it to keep the no-spill/wgmma property.

The tools come with Triton's wheel (`triton/backends/nvidia/bin`: ptxas, cuobjdump, nvdisasm).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Hopper, compute capability 9.0, 32 threads per warp.
SM90 = ("cuda", 90, 32)

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def _nvidia_bin(tool: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    return str(path) if path.exists() else tool


def triton_type(value: Any) -> tuple[str, bool]:
    """(signature type, 16-divisible) of one launch argument, as Triton's launcher specialises it.

    Tensors become pointers (aligned when their address is a multiple of 16); ints equal to 1
    become compile-time constants, others i32/i64 (divisible when a multiple of 16); floats fp32.
    """
    import torch

    if isinstance(value, torch.Tensor):
        name = {
            torch.float32: "fp32",
            torch.float16: "fp16",
            torch.bfloat16: "bf16",
            torch.float64: "fp64",
            torch.int64: "i64",
            torch.int32: "i32",
            torch.int8: "i8",
            torch.uint8: "u8",
        }[value.dtype]
        return "*" + name, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"cannot specialise a {type(value).__name__} argument")


def compile_for_sm90(
    kernel: Any, args: dict[str, Any], constexprs: dict[str, Any], num_warps: int, num_stages: int
) -> Any:
    """`triton.compile` of `kernel` (a JITFunction) for sm_90 with the specialisation of `args`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(kernel, "fn", kernel)
    import inspect

    names = list(inspect.signature(fn).parameters)
    signature: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for index, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
            consts[name] = constexprs[name]
            continue
        value = args[name]
        kind, divisible = triton_type(value)
        signature[name] = kind
        if kind == "constexpr":
            consts[name] = value
        elif divisible:
            attrs[(index,)] = [["tt.divisibility", 16]]
    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:
        source = ASTSource(kernel, signature, consts, attrs)
    else:  # Triton 3.0-3.1: signature and constants by parameter index, alignment in AttrsDescriptor
        from triton.compiler.compiler import AttrsDescriptor

        index = {name: i for i, name in enumerate(names)}
        source = ASTSource(
            kernel,
            {index[n]: t for n, t in signature.items() if t != "constexpr"},
            {index[n]: v for n, v in consts.items()},
            AttrsDescriptor(
                divisible_by_16={i for (i,) in attrs},
                equal_to_1={index[n] for n, t in signature.items() if t == "constexpr" and n not in constexprs},
            ),
        )
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    return triton.compile(source, target=GPUTarget(*SM90), options=options)


@dataclass
class Loop:
    start: int  # index of the first instruction
    end: int  # index of the backward branch
    opcodes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.opcodes)

    def count(self, *prefixes: str) -> int:
        return sum(op.startswith(prefixes) for op in self.opcodes)


@dataclass
class SassProfile:
    """What one compiled kernel costs, read from its cubin."""

    registers: int
    stack_bytes: int
    shared_bytes: int
    instructions: int
    spill_stores: int
    spill_loads: int
    loops: list[Loop]

    @property
    def mma_loops(self) -> list[Loop]:
        return [loop for loop in self.loops if loop.count("HGMMA", "HMMA")]

    def _hot_loops(self) -> tuple[Loop | None, Loop | None]:
        """(tile loop, chunk loop inside it or None). The hot loop is the innermost loop issuing
        tensor-core instructions with the fewest instructions (the kernels keep rarely-taken tiles
        in loops of their own); when it sits inside another loop it is a loop over feature chunks,
        and the smallest loop around it is the tile loop. Without any tensor-core loop (the FFMA
        form of an IEEE dot), the same among loops issuing FFMA."""
        innermost = [loop for loop in self.loops if not any(o is not loop and _inside(o, loop) for o in self.loops)]
        candidates = [loop for loop in innermost if loop.count("HGMMA", "HMMA")]
        candidates = candidates or [loop for loop in innermost if loop.count("FFMA")]
        if not candidates:
            return None, None
        hot = min(candidates, key=lambda loop: loop.size)
        around = [loop for loop in self.loops if loop is not hot and _inside(hot, loop)]
        if around:
            return min(around, key=lambda loop: loop.size), hot
        return hot, None

    @property
    def tile_loop(self) -> Loop | None:
        return self._hot_loops()[0]

    def summary(self, chunks: int = 1) -> dict[str, Any]:
        """The profile's numbers; `chunks`: iterations of a feature-chunk loop inside the tile loop
        (its body then counts `chunks` times per tile)."""
        loop, inner = self._hot_loops()
        extra = (chunks - 1) * inner.size if inner is not None else 0

        def count(*prefixes: str) -> int:
            if loop is None:
                return 0
            return loop.count(*prefixes) + ((chunks - 1) * inner.count(*prefixes) if inner is not None else 0)

        return {
            "registers": self.registers,
            "stack_bytes": self.stack_bytes,
            "shared_bytes": self.shared_bytes,
            "wgmma": bool(count("HGMMA")),
            "mma_sync": bool(count("HMMA")),
            "sass_per_tile": loop.size + extra if loop else None,
            "tile_loop_spills": count("LDL", "STL"),
            "tile_loop_mufu": count("MUFU"),
            "tile_loop_mma": count("HGMMA", "HMMA"),
            "spill_stores": self.spill_stores,
            "spill_loads": self.spill_loads,
            "sass_total": self.instructions,
            "loops": [loop.size for loop in self.loops],
        }


def _inside(inner: Loop, outer: Loop) -> bool:
    return outer.start <= inner.start and inner.end <= outer.end


def parse_sass(sass: str) -> tuple[list[str], list[Loop]]:
    """Opcodes in program order and the loops (backward branches) of one kernel's SASS."""
    opcodes: list[str] = []
    labels: dict[str, int] = {}
    branches: list[tuple[int, str]] = []
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(opcodes)
            continue
        match = _INSTR.match(line)
        if not match:
            continue
        op = match.group(2) + match.group(3)
        if match.group(2) == "BRA":
            target = _BRANCH_TARGET.search(line)
            if target:
                branches.append((len(opcodes), target.group(1)))
        opcodes.append(op)
    loops = []
    for index, target in branches:
        start = labels.get(target)
        if start is not None and start <= index:
            loops.append(Loop(start, index, opcodes[start : index + 1]))
    return opcodes, loops


def profile_binary(binary: Any) -> SassProfile:
    """Registers, stack, shared memory and SASS loops of a `triton.compile` result."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as handle:
            handle.write(binary.asm["cubin"])
        usage = subprocess.run(
            [_nvidia_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([_nvidia_bin("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))  # type: ignore[union-attr]
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))  # type: ignore[union-attr]
    opcodes, loops = parse_sass(sass)
    return SassProfile(
        registers=registers,
        stack_bytes=stack,
        shared_bytes=int(binary.metadata.shared),
        instructions=len(opcodes),
        spill_stores=sum(op.startswith("STL") for op in opcodes),
        spill_loads=sum(op.startswith("LDL") for op in opcodes),
        loops=loops,
    )
