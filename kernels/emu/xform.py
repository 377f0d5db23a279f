#!/usr/bin/env python3
"""xform.py KERNEL.cu OUT.cpp: rewrites a CUDA kernel file so that g++ compiles it against
shim.h (the host emulation of kernels/emu/).

* `#include <cuda_bf16.h>` (and <cuda_runtime.h>, <cuda_fp16.h>) becomes `#include "shim.h"`;
  shim.h is included first in any case.
* The body of every known inline-asm helper (table HELPERS: function name -> emulation call) is
  replaced by its emu_* call. Any `asm` left afterwards (a helper this table does not know) is a
  hard error naming the file and line: a kernel is never emulated with its asm silently dropped.
* After every `__shared__` declaration a call `emu_shared_poison(&name, sizeof(name))` is
  appended on the same line (the emulation fills shared memory with 0xff at each block start);
  a `__shared__` declaration the pattern does not recognise (e.g. `extern __shared__`, dynamic
  shared memory) is a hard error too.

Line numbers are kept (a `#line` directive, replaced bodies padded with newlines), so compiler
diagnostics, ASan reports and the emulator's barrier messages point into the .cu file.
Python 3 standard library only.
"""
import re
import sys

# name -> body (the helper's parameter names as written in kernels/matmul.cu).
HELPERS = {
    "ldmatrix_x4": "emu_ldmatrix_x4(r, p);",
    "mma_bf16_16816": "emu_mma(c, a, b0, b1);",
    "cp_async16": "emu_cp_async(s, g, valid);",
    "cp_async_commit": "emu_cp_commit();",
    "cp_async_wait_ring": "emu_cp_wait(GV_NST - 1);",
}


def fail(path, src, pos, msg):
    line = src.count("\n", 0, pos) + 1
    sys.exit("xform.py: %s:%d: %s" % (path, line, msg))


def strip_comments(src):
    """The source with comments blanked (newlines kept), for the checks."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, src, flags=re.S)


def replace_helper(path, src, name, body):
    """Replaces the body of the __device__ function `name` (if the file defines it)."""
    code = strip_comments(src)
    m = re.search(r"__device__[^;{}()]*\b%s\s*\(" % re.escape(name), code)
    if not m:
        return src
    j = code.index("{", m.end())
    # matching brace
    depth = 0
    k = j
    while True:
        c = code[k]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        k += 1
    old = src[j : k + 1]
    if "asm" not in strip_comments(old):
        fail(path, src, j, "helper %s has no asm body to replace" % name)
    return src[:j] + "{ " + body + " }" + "\n" * old.count("\n") + src[k + 1 :]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: xform.py KERNEL.cu OUT.cpp")
    path, out = sys.argv[1], sys.argv[2]
    src = open(path).read()
    for inc in ("cuda_bf16.h", "cuda_fp16.h", "cuda_runtime.h", "cuda.h"):
        src = src.replace("#include <%s>" % inc, '#include "shim.h"')
    for name, body in HELPERS.items():
        src = replace_helper(path, src, name, body)
    code = strip_comments(src)
    m = re.search(r"\basm\b|__asm__", code)
    if m:
        fail(path, src, m.start(), "inline asm the emulation cannot replace (add its helper to HELPERS in xform.py and an emu_* model to shim.h)")
    # __shared__ declarations: poison after each.
    decl = re.compile(r"__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?[A-Za-z_][\w:<>, ]*?\s+(\w+)\s*((?:\[[^\]\[;]*\])*)\s*;")
    pieces = []
    last = 0
    n_found = 0
    for m in decl.finditer(code):
        n_found += 1
        pieces.append(src[last : m.end()])
        pieces.append(" emu_shared_poison(&%s, sizeof(%s));" % (m.group(1), m.group(1)))
        last = m.end()
    m = re.search(r"extern\s+__shared__|__shared__[^;]*\[\s*\]", code)
    if m:
        fail(path, src, m.start(), "dynamic shared memory (extern __shared__ x[]) is not emulated")
    n_all = len(re.findall(r"__shared__", code))
    if n_all != n_found:
        pos = [m.start() for m in re.finditer(r"__shared__", code) if not decl.match(code, m.start())][0]
        fail(path, src, pos, "__shared__ declaration not understood by xform.py (dynamic or extern shared memory is not emulated)")
    pieces.append(src[last:])
    src = "".join(pieces)
    header = '#include "shim.h"\n#line 1 "%s"\n' % path
    open(out, "w").write(header + src)


main()
