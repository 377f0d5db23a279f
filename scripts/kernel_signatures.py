#!/usr/bin/env python3
"""kernel_signatures.py README PTX...: checks that every kernel exported by the compiled PTX has
exactly the parameters kernels/README.md gives it (the contract backend/cuda launches by), and
that every kernel the README names is exported. A pointer or a `long long` is an 8-byte
parameter, an `int`/`unsigned` a 4-byte integer, a `float` a 4-byte float. Exits 1 naming each
mismatch."""
import re
import sys


def readme_signatures(path):
    text = open(path, encoding="utf-8").read()
    sigs = {}
    for m in re.finditer(r"`(lpx_\w+)\(([^`]*)\)`", text):
        name, params = m.group(1), m.group(2).strip()
        kinds = []
        for p in filter(None, (s.strip() for s in params.split(","))):
            p = re.sub(r"\b(const|__restrict__)\b", " ", p)
            if "*" in p:
                kinds.append("u64")
                continue
            ty = " ".join(p.split()[:-1])  # drop the parameter name
            kinds.append({"long long": "u64", "int": "u32", "unsigned": "u32", "float": "f32"}.get(ty, "?" + ty))
        if name in sigs and sigs[name] != kinds:
            sys.exit(f"kernels/README.md gives {name} twice with different parameters")
        sigs[name] = kinds
    return sigs


def ptx_signatures(path):
    text = open(path, encoding="utf-8").read()
    sigs = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", text):
        kinds = []
        for p in re.finditer(r"\.param\s+\.(\w+)", m.group(2)):
            t = p.group(1)
            kinds.append({"u64": "u64", "s64": "u64", "b64": "u64", "u32": "u32", "s32": "u32", "b32": "u32", "f32": "f32"}.get(t, "?" + t))
        sigs[m.group(1)] = kinds
    return sigs


def main():
    readme, ptxs = sys.argv[1], sys.argv[2:]
    want = readme_signatures(readme)
    have = {}
    for p in ptxs:
        for name, kinds in ptx_signatures(p).items():
            have[name] = (kinds, p)
    errors = []
    for name, kinds in sorted(want.items()):
        if name not in have:
            errors.append(f"{name}: in kernels/README.md but no compiled kernel exports it")
        elif have[name][0] != kinds:
            errors.append(f"{name}: kernels/README.md gives parameters {kinds}, {have[name][1]} has {have[name][0]}")
    for name in sorted(set(have) - set(want)):
        errors.append(f"{name}: exported by {have[name][1]} but not in kernels/README.md")
    for e in errors:
        print("FAIL kernel signature: " + e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"kernel signatures: {len(want)} kernels match kernels/README.md")


main()
