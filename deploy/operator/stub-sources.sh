#!/bin/sh
# The dependency layer of deploy/operator/Dockerfile. With only the workspace's
# Cargo.toml files present:
#   stub-sources.sh create   writes an empty stand-in for every source file cargo
#                            needs to load the workspace (each member's src/lib.rs,
#                            every `path = "…"` of a target, every [[test]] and
#                            [[bench]] by its name), and lists them in .stubs
#   stub-sources.sh remove   deletes them again, so that none outlives the layer
# Run from the workspace's root.
set -eu

case "${1:-}" in
create)
  : >.stubs
  for manifest in crates/*/Cargo.toml examples/Cargo.toml; do
    dir="${manifest%/Cargo.toml}"
    {
      echo src/lib.rs
      # `path = "x.rs"` of any target; `name = "n"` under [[test]] / [[bench]].
      awk '
        /^\[/ { section = $0 }
        /^path *= *"[^"]*\.rs"/ { split($0, p, "\""); print p[2] }
        section == "[[test]]" && /^name *= *"/ { split($0, n, "\""); print "tests/" n[2] ".rs" }
        section == "[[bench]]" && /^name *= *"/ { split($0, n, "\""); print "benches/" n[2] ".rs" }
      ' "$manifest"
    } | while read -r file; do
      if [ ! -e "$dir/$file" ]; then
        mkdir -p "$(dirname "$dir/$file")"
        echo 'fn main() {}' >"$dir/$file"
        echo "$dir/$file" >>.stubs
      fi
    done
  done
  ;;
remove)
  xargs rm -f <.stubs
  rm -f .stubs
  ;;
*)
  echo "usage: stub-sources.sh create|remove" >&2
  exit 2
  ;;
esac
