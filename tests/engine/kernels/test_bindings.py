"""The one table between Python and the C kernels: engine/kernels/bindings.py against what gcc itself reads
from the headers (every prototype, struct layout and layout constant), and the headers against the library."""

import ctypes
import re
import subprocess
from pathlib import Path

import pytest
import torch

from engine.kernels import bindings, build, grid, kquant

CSRC = bindings.CSRC
INTERNAL_HEADERS = ("pool.h", "strip.h", "amx.h", "i16.h")  # functions the C files share among themselves only
ENTRY_POINTS = "kernels.h"


def _gcc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gcc", *args], capture_output=True, text=True)


def _declarations(tmp_path: Path) -> dict[str, dict[str, list[str]]]:
    """{header: {function: [C parameter types]}} of the extern functions each csrc header declares, as gcc
    prints them (-aux-info)."""
    unit, info = tmp_path / "headers.c", tmp_path / "aux.txt"
    unit.write_text("".join(f'#include "{h}"\n' for h in (ENTRY_POINTS, *INTERNAL_HEADERS)))
    compiled = _gcc("-fsyntax-only", f"-I{CSRC}", "-aux-info", str(info), str(unit))
    assert compiled.returncode == 0, compiled.stderr
    found: dict[str, dict[str, list[str]]] = {h: {} for h in (ENTRY_POINTS, *INTERNAL_HEADERS)}
    for path, name, params in re.findall(r"/\* (\S+):\d+:NC \*/ extern [\w ]+?\b(\w+) \((.*)\);", info.read_text()):
        if Path(path).parent == CSRC:
            found[Path(path).name][name] = [] if params == "void" else params.split(", ")
    return found


def test_every_c_function_is_declared_in_a_header_its_file_includes(tmp_path):
    """A non-static function without a prior prototype, a call to an undeclared function, or a definition
    that disagrees with its declaration fails the build."""
    flags = [*build._flags(), "-Werror=missing-prototypes", "-Werror=implicit-function-declaration"]
    sources = sorted(map(str, CSRC.glob("*.c")))
    compiled = _gcc(*flags, "-o", str(tmp_path / "k.so"), *sources, "-lm")
    assert compiled.returncode == 0, compiled.stderr[-3000:]


def test_kernels_h_declares_exactly_the_entry_points_the_library_defines(tmp_path):
    declared = _declarations(tmp_path)
    internal = {name for h in INTERNAL_HEADERS for name in declared[h]}
    library = build.kernels()
    assert library is not None
    symbols = subprocess.run(["nm", "-D", "--defined-only", library._name], capture_output=True, text=True,
                             check=True).stdout
    defined = set(re.findall(r"^\w+ T (\w+)$", symbols, flags=re.MULTILINE))
    assert set(declared[ENTRY_POINTS]) == defined - internal
    assert internal <= defined and not internal & set(declared[ENTRY_POINTS])


def test_python_can_bind_only_entry_points_of_kernels_h(tmp_path):
    for internal in _declarations(tmp_path)["pool.h"]:  # defined in the library, declared elsewhere
        with pytest.raises(KeyError):
            bindings.function(internal)


def _ctype(c_type: str) -> type:
    if "*" in c_type:
        return ctypes.c_void_p
    return {"int": ctypes.c_int, "float": ctypes.c_float, "int64_t": ctypes.c_int64}[c_type]


def test_every_entry_point_is_bound_with_its_c_parameter_types(tmp_path):
    declared = _declarations(tmp_path)[ENTRY_POINTS]
    assert set(bindings.prototypes()) == set(declared)
    for name, params in declared.items():
        fn = bindings.function(name)
        assert fn is not None and fn.restype is ctypes.c_int
        assert fn.argtypes == [_ctype(p) for p in params], name


def _c_values(tmp_path: Path, expressions: dict[str, str]) -> dict[str, int]:
    """The value of each C expression, compiled with common.h and kernels.h."""
    program = tmp_path / "values.c"
    prints = "".join(f'    printf("%s %lld\\n", "{key}", (long long)({expr}));\n' for key, expr in expressions.items())
    program.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "common.h"\n#include "kernels.h"\n'
                       f"int main(void) {{\n{prints}    return 0;\n}}\n")
    compiled = _gcc(f"-I{CSRC}", "-o", str(tmp_path / "values"), str(program))
    assert compiled.returncode == 0, compiled.stderr
    out = subprocess.run([str(tmp_path / "values")], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("struct", ["matrix", "layer_weights"])
def test_the_ctypes_structs_have_the_c_layout(struct, tmp_path):
    python = bindings.structure(struct)
    fields = [name for name, _ in python._fields_]
    c = _c_values(tmp_path, {"size": f"sizeof(struct {struct})",
                             **{f: f"offsetof(struct {struct}, {f})" for f in fields}})
    assert c == {"size": ctypes.sizeof(python), **{f: getattr(python, f).offset for f in fields}}


def _on_grid(fmt: str, n: int, k: int) -> torch.Tensor:
    """A float32 [n, k] matrix that is exactly Q4_1 ("q4_1") or Q8_0 ("q8_0") blocks."""
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(n, k // 32, generator=g) + 0.5).half().float().repeat_interleave(32, 1) / 64
    if fmt == "q4_1":
        q = torch.randint(0, 16, (n, k), generator=g).float()
        q[:, 0::32], q[:, 1::32] = 0, 15  # the extremes fix each block's d and m
        return q * d + torch.randn(n, k // 32, generator=g).half().float().repeat_interleave(32, 1)
    q = torch.randint(-127, 128, (n, k), generator=g).float()
    q[:, 0::32] = 127
    return q * d


def test_the_python_layout_constants_are_common_h_s(tmp_path):
    formats = ["GRID_Q4_1", "GRID_Q8_0", "GRID_Q4_K", "GRID_Q5_K", "GRID_Q6_K", "GRID_Q5_1"]
    names = ["PANEL", "BLOCK", "SUPER", "GROUP", *formats, "GRID_INT16"]
    sizes = ["Q4_PANEL_BYTES", "Q8_PANEL_BYTES", "Q4_GROUP_BYTES", "Q8_GROUP_BYTES", "Q5_GROUP_BYTES", "Q4K_GROUP_BYTES",
             "Q5K_GROUP_BYTES", "Q6K_GROUP_BYTES"]
    c = _c_values(tmp_path, {name: name for name in names + sizes})
    assert bindings.constants() == {name: c[name] for name in names}
    assert (grid.PANEL, grid.BLOCK, grid.GROUP, kquant.SUPER) == (c["PANEL"], c["BLOCK"], c["GROUP"], c["SUPER"])
    assert grid.FORMATS == {name.removeprefix("GRID_").lower(): c[name] for name in formats}
    assert kquant.GROUP_BYTES == {f"q{n}_k": c[f"Q{n}K_GROUP_BYTES"] for n in (4, 5, 6)}
    assert grid.INT16_FORMAT_OFFSET == c["GRID_INT16"]
    for fmt in ("q4_1", "q8_0"):  # the bytes grid.py packs per block are the bytes the kernels step over
        w = _on_grid(fmt, 100, 96)
        panels, groups = grid.find_grid(w, "float32"), grid.find_grid(w, "int16")
        assert panels.format == groups.format == fmt
        assert panels.packed.shape == (2, 3, c[f"{fmt[:2].upper()}_PANEL_BYTES"])
        assert groups.packed.shape == (7, 3, c[f"{fmt[:2].upper()}_GROUP_BYTES"])
