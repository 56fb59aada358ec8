#!/usr/bin/env python3
"""No include points up a layer.

Every file under include/laneguard/ and src/ belongs to a layer (its folder says which); each
quoted or angled include of a laneguard header (public "laneguard/...", or private "<layer>/...")
must name a header of the same layer or of one the layer is allowed to use. Usage:
check_layers.py SOURCE_DIR. Prints each violation as file:line and exits 1 if there is any.
"""
import os
import re
import sys

# What each layer may include besides itself. core and trace do not know each other.
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "trace": {"base"},
    "observe": {"base", "core", "trace"},
    "worker": {"base", "core", "trace", "observe"},
    "process": {"base", "core", "trace", "observe", "worker"},
    "exporters": {"base", "core", "trace", "observe", "worker", "process"},
    "server": {"base", "core", "trace", "observe", "worker", "process", "exporters"},
    "cli": {"base", "core", "trace", "observe", "worker", "process", "exporters", "server"},
}

PUBLIC_TOP = {
    "clock.h": "base", "error.h": "base", "result.h": "base",
    "config.h": "core", "manager.h": "core", "metrics.h": "core", "observer.h": "core",
    "memory.h": "core",
    "worker.h": "worker", "executor.h": "worker",
    "process.h": "process",
}


def public_layer(rel):  # rel: path below include/laneguard/
    parts = rel.split("/")
    if len(parts) == 1:
        return PUBLIC_TOP.get(parts[0])
    if parts[0] == "internal":
        return "base"
    return parts[0] if parts[0] in ALLOWED else None


def include_layer(target):
    if target.startswith("laneguard/"):
        return public_layer(target[len("laneguard/"):])
    first = target.split("/")[0]
    return first if first in ALLOWED and "/" in target else None


def main():
    root = sys.argv[1]
    problems, files = [], 0
    for top in ("include/laneguard", "src"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if not name.endswith((".h", ".cc")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.join(root, top))
                layer = public_layer(rel) if top.startswith("include") else rel.split("/")[0]
                if layer not in ALLOWED:
                    problems.append(f"{os.path.relpath(path, root)}: in no layer")
                    continue
                files += 1
                for n, line in enumerate(open(path, encoding="utf-8"), start=1):
                    m = re.match(r'\s*#\s*include\s*[<"]([^>"]+)[>"]', line)
                    if not m:
                        continue
                    target = include_layer(m.group(1))
                    if target is None or target == layer or target in ALLOWED[layer]:
                        continue
                    problems.append(f"{os.path.relpath(path, root)}:{n}: {layer} includes "
                                    f"{m.group(1)} ({target})")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{files} files checked, {len(problems)} includes point up a layer or sideways")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
