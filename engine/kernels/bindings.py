"""The one table between Python and the C kernels, read from their headers (engine/kernels/csrc/).

  kernels.h  every entry point's prototype -> function(name): the C function with its ctypes signature
             (int -> c_int, float -> c_float, int64_t -> c_int64, any pointer -> c_void_p), and the
             structs those functions read -> structure(name): a ctypes.Structure of the same fields;
  common.h   every `#define NAME <integer>` -> constant(name): the layout constants Python packs with.

No signature is written twice: a prototype changed in kernels.h changes the binding. The library itself is
built and loaded by engine/kernels/build.py.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.kernels import build

CSRC = Path(__file__).with_name("csrc")
PROTOTYPES = CSRC / "kernels.h"
CONSTANTS = CSRC / "common.h"

_SCALARS = {"int": ctypes.c_int, "float": ctypes.c_float, "int64_t": ctypes.c_int64}
_DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(-?\d+)\s*(?://.*)?$", re.MULTILINE)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{([^}]*)\}\s*;")
_MEMBER = re.compile(r"\s*((?:const\s+)?(?:struct\s+)?\w+)\s*(.*)", re.DOTALL)
_PROTOTYPE = re.compile(r"\s*([\w ]+?)\s*\b(\w+)\s*\(([^()]*)\)\s*", re.DOTALL)


@dataclass(frozen=True)
class Prototype:
    """One C function of kernels.h as ctypes calls it."""
    name: str
    restype: type
    argtypes: tuple[type, ...]


def _code(path: Path) -> str:
    """The header's text without comments and preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"^\s*#[^\n]*", "", text, flags=re.MULTILINE)


def _ctype(declaration: str, structs: dict[str, type]) -> type:
    """The ctypes type of one C declaration with its name ("const float *x", "int64_t n", "struct matrix o")."""
    if "*" in declaration:
        return ctypes.c_void_p
    words = re.sub(r"\bconst\b", " ", declaration).split()[:-1]  # the type without its declared name
    if words[:1] == ["struct"] and len(words) == 2 and words[1] in structs:
        return structs[words[1]]
    if len(words) == 1 and words[0] in _SCALARS:
        return _SCALARS[words[0]]
    raise ValueError(f"{PROTOTYPES.name}: no ctypes binding for {declaration.strip()!r}")


@functools.cache
def structures() -> dict[str, type[ctypes.Structure]]:
    """kernels.h's structs as ctypes Structures (C's field order and layout), by struct name."""
    structs: dict[str, type[ctypes.Structure]] = {}
    for name, body in _STRUCT.findall(_code(PROTOTYPES)):
        fields = []
        for member in filter(str.strip, body.split(";")):  # "const float *ln1, *ln2": one type, its fields
            base, declarators = _MEMBER.match(member).groups()
            for declarator in declarators.split(","):
                field = declarator.replace("*", " ").split()[-1]
                fields.append((field, _ctype(f"{base} {declarator}", structs)))
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return structs


def structure(name: str) -> type[ctypes.Structure]:
    """The ctypes Structure of kernels.h's `struct name`."""
    return structures()[name]


@functools.cache
def prototypes() -> dict[str, Prototype]:
    """Every function kernels.h declares, by name."""
    structs = structures()
    found = {}
    for declaration in filter(str.strip, _STRUCT.sub(";", _code(PROTOTYPES)).split(";")):
        match = _PROTOTYPE.fullmatch(declaration)
        if match is None:
            raise ValueError(f"{PROTOTYPES.name}: not a function prototype: {declaration.strip()!r}")
        restype, name, params = match.groups()
        if restype.split() != ["int"]:
            raise ValueError(f"{PROTOTYPES.name}: {name} must return int, not {restype!r}")
        params = [] if params.strip() in ("", "void") else params.split(",")
        found[name] = Prototype(name, ctypes.c_int, tuple(_ctype(p, structs) for p in params))
    return found


@functools.cache
def function(name: str) -> Callable[..., int] | None:
    """The kernel library's C function `name` (declared in kernels.h) with its ctypes signature, or None
    when the library could not be built (callers then compute with torch)."""
    prototype = prototypes()[name]  # KeyError: not an entry point of kernels.h
    library = build.kernels()
    if library is None:
        return None
    fn = getattr(library, name)
    fn.restype, fn.argtypes = prototype.restype, list(prototype.argtypes)
    return fn


@functools.cache
def constants() -> dict[str, int]:
    """common.h's integer constants (`#define NAME <integer>`), by name."""
    return {name: int(value) for name, value in _DEFINE.findall(CONSTANTS.read_text())}


def constant(name: str) -> int:
    """One of common.h's integer constants."""
    return constants()[name]
