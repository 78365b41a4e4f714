#!/usr/bin/env bash
# Builds the Debian package into target/debian/.
#   packaging/build-deb.sh [--profile dev|release]   (default: release)
# Needs cargo-deb ($CARGO_DEB, or cargo-deb on PATH; tests/run installs the
# pinned one into .test-tools/). The man page and shell completions are
# generated from the binary's own command-line definitions first.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
[ "${1:-}" = "--profile" ] && profile=${2:?profile}
deb=${CARGO_DEB:-cargo-deb}
cargo build --locked -p vaultline-agent --profile "$profile"
dir=$profile; [ "$profile" = dev ] && dir=debug
rm -rf target/generated target/debian
"target/$dir/vaultline" generate target/generated > /dev/null
fast=(); [ "$profile" = dev ] && fast=(--fast)   # a test build: speed over size
"$deb" -p vaultline-agent --profile "$profile" --no-build --no-strip "${fast[@]}" --output target/debian/
