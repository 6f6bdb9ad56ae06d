#!/usr/bin/env python3
"""Lists the allocation sites of a DHAT profile (dhat-rs JSON) by the bytes they
still held at the end of the run, grouped by the first frame that names this
library (or, failing that, the first frame outside the allocator).

    bench/dhat-sites.py PROFILE.json [--top N] [--per N] [--frames N]

--per N divides bytes and blocks by N (e.g. objects or clusters) for a per-unit view.
"""
import argparse
import collections
import json

NOISE = ("dhat::", "alloc::alloc", "alloc::raw_vec", "__rust", "core::ptr",
         "<alloc::", "alloc::vec", "alloc::string", "alloc::sync", "alloc::boxed",
         "alloc::collections::btree::node", "hashbrown::raw", "std::collections::hash")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--per", type=float, default=1.0)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    data = json.load(open(args.profile))
    ftbl = data["ftbl"]
    groups = collections.defaultdict(lambda: [0, 0, None])
    total = 0
    for pp in data["pps"]:
        if not pp["eb"]:
            continue
        total += pp["eb"]
        frames = [ftbl[i].split(": ", 1)[-1].split(" (")[0] for i in pp["fs"]]
        useful = [f for f in frames if not f.startswith(NOISE) and "[root]" not in f]
        ours = [i for i, f in enumerate(useful) if "multicluster_runtime" in f]
        start = ours[0] if ours else 0
        key = tuple(useful[max(0, start - 1):start - 1 + args.frames + 1])
        group = groups[key]
        group[0] += pp["eb"]
        group[1] += pp["ebk"]
    print(f"bytes held at the end: {total:,} ({total / args.per:,.0f} per unit)")
    for key, (bytes_, blocks, _) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{bytes_ / args.per:12,.0f} B {blocks / args.per:8.2f} blocks")
        for frame in key:
            print(f"      {frame[:150]}")


if __name__ == "__main__":
    main()
