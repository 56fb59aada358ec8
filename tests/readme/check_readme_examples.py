#!/usr/bin/env python3
"""The README's C++ examples are the compiled code of examples/readme_examples.cc.

Every ```cpp block of README.md, less its leading #include lines, must equal line for line the
region of that file between `// README example N` and `// README example N end` (N counts the
blocks from 1; the region's common indentation is removed), and each of those #include lines must
be in the file. The file is built with the examples, so a README example that
would not compile fails the build, and one that drifts from the compiled code fails this test.
Usage: check_readme_examples.py README.md examples/readme_examples.cc
"""
import re
import sys
import textwrap


def readme_blocks(text):
    """(includes, rest) of each ```cpp block."""
    blocks = []
    for m in re.finditer(r"^```cpp\n(.*?)^```", text, re.M | re.S):
        lines = m.group(1).rstrip("\n").split("\n")
        includes = []
        while lines and (lines[0].startswith("#include") or not lines[0].strip()):
            line = lines.pop(0)
            if line.strip():
                includes.append(line)
        blocks.append((includes, "\n".join(lines)))
    return blocks


def source_regions(text):
    regions = {}
    pattern = r"^[ \t]*// README example (\d+)\n(.*?)^[ \t]*// README example \1 end\n"
    for m in re.finditer(pattern, text, re.M | re.S):
        regions[int(m.group(1))] = textwrap.dedent(m.group(2)).rstrip("\n")
    return regions


def main():
    readme_path, source_path = sys.argv[1], sys.argv[2]
    blocks = readme_blocks(open(readme_path, encoding="utf-8").read())
    source = open(source_path, encoding="utf-8").read()
    regions = source_regions(source)
    source_lines = set(source.split("\n"))
    failures = []
    for n, (includes, block) in enumerate(blocks, start=1):
        for include in includes:
            if include not in source_lines:
                failures.append(f"README example {n}: {include} is not in {source_path}")
        region = regions.get(n)
        if region is None:
            failures.append(f"README example {n} has no region in {source_path}")
        elif region != block:
            for i, (a, b) in enumerate(zip(block.split("\n"), region.split("\n")), start=1):
                if a != b:
                    failures.append(f"README example {n}, line {i}:\n  README: {a}\n  source: {b}")
                    break
            else:
                failures.append(f"README example {n}: lengths differ ({len(block.splitlines())} "
                                f"lines in the README, {len(region.splitlines())} in the source)")
    for n in sorted(set(regions) - set(range(1, len(blocks) + 1))):
        failures.append(f"{source_path} has a region {n} but the README has {len(blocks)} examples")
    if not blocks:
        failures.append(f"no ```cpp blocks in {readme_path}")
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{len(blocks)} README examples checked, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
