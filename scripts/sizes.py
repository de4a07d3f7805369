#!/usr/bin/env python3
"""The longest files and functions of src/, outside tests: the lists the code review tracks.

    python3 scripts/sizes.py [--files N] [--functions N] [--root src]

Files: lines, over --files (default 600). Functions: lines from `fn` to its closing brace, over
--functions (default 60), in files' non-test code (a `#[cfg(test)]` module and everything after
it is left out, as are `tests.rs` files). The function bounds come from counting braces outside
strings, chars and comments: good enough for a list, not a parser.
"""

import argparse
import os
import re

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def code_of(text):
    """The text before the first `#[cfg(test)]`."""
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def braces(line, state):
    """Net `{` minus `}` of a line, skipping strings, chars and comments; `state` carries a
    block comment or a string over lines."""
    depth, i = 0, 0
    while i < len(line):
        c, rest = line[i], line[i:]
        if state["block"]:
            if rest.startswith("*/"):
                state["block"], i = False, i + 2
                continue
        elif state["string"]:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                state["string"] = False
        elif rest.startswith("//"):
            break
        elif rest.startswith("/*"):
            state["block"], i = True, i + 2
            continue
        elif re.match(r'r#*"', rest):
            hashes = re.match(r"r(#*)\"", rest).group(1)
            end = line.find('"' + hashes, i + 2 + len(hashes))
            if end < 0:
                state["raw"] = '"' + hashes
                return depth
            i = end + 1 + len(hashes)
            continue
        elif c == '"':
            state["string"] = True
        elif re.match(r"'(\\.|[^\\'])'", rest):
            i += len(re.match(r"'(\\.|[^\\'])'", rest).group(0))
            continue
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return depth


def functions(lines):
    """(name, first line, length) of every function with a body."""
    found = []
    for start, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        state = {"block": False, "string": False, "raw": None}
        depth, opened = 0, False
        for end in range(start, len(lines)):
            text = lines[end]
            if state["raw"]:
                close = text.find(state["raw"])
                if close < 0:
                    continue
                text, state["raw"] = text[close + len(state["raw"]):], None
            if not opened and ";" in text and "{" not in text:
                break  # a declaration without a body
            depth += braces(text, state)
            opened = opened or "{" in text
            if opened and depth <= 0:
                found.append((m.group(6), start + 1, end - start + 1))
                break
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="src")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--functions", type=int, default=60)
    args = parser.parse_args()
    big_files, big_fns = [], []
    for folder, _, names in os.walk(args.root):
        for name in names:
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                code = code_of(f.read()).splitlines()
            if len(code) > args.files:
                big_files.append((len(code), path))
            for fn, line, length in functions(code):
                if length > args.functions:
                    big_fns.append((length, f"{path}:{line}", fn))
    print(f"files over {args.files} lines (non-test code): {len(big_files)}")
    for n, path in sorted(big_files, reverse=True):
        print(f"  {n:5}  {path}")
    print(f"functions over {args.functions} lines: {len(big_fns)}")
    for n, at, fn in sorted(big_fns, reverse=True):
        print(f"  {n:5}  {fn}  {at}")


if __name__ == "__main__":
    main()
