#!/usr/bin/env python3
"""Runs every command of a CMake compile database with -fsyntax-only added: the compiler's front
end only (parsing, semantic analysis and its warnings, clang's -Wthread-safety among them), no code
generation and no links. Used by `make thread-safety`.

Usage: syntax_only.py BUILD_DIR JOBS
Each file's diagnostics are printed together; the exit status is 1 if any command failed.
"""
import concurrent.futures
import json
import pathlib
import shlex
import subprocess
import sys


def check(entry):
    args = shlex.split(entry["command"]) + ["-fsyntax-only"]
    result = subprocess.run(args, cwd=entry["directory"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, check=False)
    return entry["file"], result.returncode, result.stdout


def main():
    build_dir, jobs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    entries = json.loads((build_dir / "compile_commands.json").read_text())
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for file, returncode, output in pool.map(check, entries):
            print(f"syntax-only: {file}", flush=True)
            if output:
                print(output, end="", flush=True)
            if returncode != 0:
                failed.append(file)
    if failed:
        print(f"syntax-only: {len(failed)} of {len(entries)} files failed:", *failed, sep="\n  ")
        return 1
    print(f"syntax-only: {len(entries)} files checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
