#!/usr/bin/env python3
"""Checks the library's layer order (docs/decisions/layers.md): a module may use
only modules of its own layer or of layers below it, and no two files may import
each other through a cycle. Also refuses a bare `tokio::spawn` outside the owners
allowed to spawn. Exit status 1 with one line per violation."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "crates/multicluster-runtime/src"

# Lowest first. A path prefix (relative to src, without .rs) decides a file's layer.
LAYERS = [
    ("support", ["redact", "backoff", "term", "exposition", "serving", "collections"]),
    ("cluster + cache", ["cluster", "cache"]),
    ("contract", ["multicluster", "error", "runnable"]),
    ("providers", ["providers"]),
    ("controller", ["controller", "webhook"]),
    ("manager", ["manager"]),
    ("crate root", ["lib"]),
]

# Imports allowed against the order, each with its reason.
EXCEPTIONS = {
    # The builder registers the controller with the manager (as controller-runtime's
    # builder does); nothing else of the controller knows the manager.
    ("controller/builder", "manager"),
}


# Imports refused even though they go down the order, each with its reason.
FORBIDDEN = {
    # The manager knows its components only as `Aware` and `Runnable` (issue 18):
    # what a controller needs comes to it in the engagement or from the builder.
    ("manager", "controller"),
}


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "/".join(parts)


def layer_of(module: str) -> int:
    top = module.split("/")[0]
    for index, (_, prefixes) in enumerate(LAYERS):
        if top in prefixes:
            return index
    raise SystemExit(f"check-layers: {module} is in no layer; add it to LAYERS")


USE = re.compile(r"\bcrate::([a-z_]+(?:::[a-z_]+)*)")


def without_tests(text: str) -> str:
    """The file up to its `#[cfg(test)] mod tests`: tests may reach anywhere."""
    cut = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod tests", text)
    return text[: cut.start()] if cut else text


def imports(path: Path):
    text = without_tests(path.read_text())
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        for match in USE.finditer(line):
            yield lineno, match.group(1).replace("::", "/")


def target_module(path: str) -> str:
    """The file-level module a `crate::a::b::C` path names (longest existing prefix)."""
    parts = path.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if (SRC / f"{candidate}.rs").exists() or (SRC / candidate / "mod.rs").exists():
            return candidate
    return parts[0]


TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod ([a-z_]+);")


def test_only_modules():
    """Modules declared `#[cfg(test)] mod name;`: test code, whatever their name."""
    found = set()
    for path in SRC.rglob("*.rs"):
        # `mod name;` in a/b.rs or a/b/mod.rs is a/b/name; in lib.rs, name.
        parent = "" if path.name == "lib.rs" else module_of(path)
        for name in TEST_MOD.findall(path.read_text()):
            found.add(f"{parent}/{name}".lstrip("/"))
    return found


def main() -> int:
    problems = []
    edges = {}
    tests = test_only_modules()
    for path in sorted(SRC.rglob("*.rs")):
        module = module_of(path)
        if module in tests or any(module.startswith(t + "/") for t in tests):
            continue
        mine = layer_of(module)
        for lineno, used in imports(path):
            target = target_module(used)
            theirs = layer_of(target)
            allowed = any(module == m and target.startswith(t) for m, t in EXCEPTIONS)
            if not allowed:
                edges.setdefault(module, set()).add(target)
            if any(module.startswith(m) and target.startswith(t) for m, t in FORBIDDEN):
                problems.append(
                    f"{path.relative_to(SRC.parent.parent.parent)}:{lineno}: {module} uses {target}, "
                    "which docs/decisions/layers.md forbids"
                )
            if theirs > mine and not allowed:
                problems.append(
                    f"{path.relative_to(SRC.parent.parent.parent)}:{lineno}: {module} "
                    f"({LAYERS[mine][0]}) uses {target} ({LAYERS[theirs][0]}), a layer above it"
                )
        if module not in SPAWNERS:
            for lineno, line in enumerate(without_tests(path.read_text()).splitlines(), 1):
                if "tokio::spawn(" in line and not line.strip().startswith("//"):
                    problems.append(
                        f"{path.relative_to(SRC.parent.parent.parent)}:{lineno}: a bare tokio::spawn; "
                        "spawn through the component's TaskTracker or JoinSet"
                    )
    problems.extend(cycles(unit_edges(edges)))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


# Files allowed a bare tokio::spawn (none: every task has an owner).
SPAWNERS = set()


def unit_of(module: str) -> str:
    """What a cycle is checked between: a top-level module, with the modules that
    share a layer (cluster and cache; the contract's files) as one."""
    return LAYERS[layer_of(module)][0] if layer_of(module) in (1, 2) else module.split("/")[0]


def unit_edges(edges):
    units = {}
    for module, targets in edges.items():
        for target in targets:
            a, b = unit_of(module), unit_of(target)
            if a != b and "lib" not in (a, b):
                units.setdefault(a, set()).add(b)
    return units


def cycles(edges):
    """Import cycles between files, each reported once."""
    found = []
    seen = set()
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == node:
                    continue
                if nxt == start and len(trail) > 1:
                    key = frozenset(trail)
                    if key not in seen:
                        seen.add(key)
                        found.append("import cycle: " + " -> ".join(trail + [start]))
                elif nxt not in trail and len(trail) < 6:
                    stack.append((nxt, trail + [nxt]))
    return found


if __name__ == "__main__":
    sys.exit(main())
