#!/usr/bin/env bash
# Build the p3-executor .deb with cargo-deb: the two binaries, then the man pages and shell
# completions generated from the clap definitions (crates/xtask), then `cargo deb --no-build`.
#
#   packaging/build-deb.sh [--profile release|dev] [--no-build] [--deb-version V] [--fast] [--output DIR]
#
# --profile dev    package the debug build (the packaging test: no release build needed)
# --no-build       use binaries already built for that profile (`cargo test --workspace`
#                  builds the debug ones, the xtask included)
# --deb-version V  Debian version instead of <Cargo version>-1 (the upgrade test's bump)
# --fast           lighter compression (tests)
# --output DIR     where the .deb goes (default target/debian)
#
# Needs cargo-deb (`cargo install cargo-deb --locked --version 3.8.0`) and dpkg-dev (for the
# shared-library dependencies). Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
deb_version=
fast=()
output=target/debian
while (($#)); do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --deb-version) deb_version=$2; shift 2 ;;
    --fast) fast=(--fast); shift ;;
    --output) output=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in dev|debug) profile=dev; out_dir=$target_dir/debug ;; *) out_dir=$target_dir/$profile ;; esac

if ((build)); then
  # The runner binary in a cargo invocation of its own: built together with the steps, cargo
  # unifies features and the runner would link HTTP/2 (h2) it never uses, which every runner
  # call pays for at start-up; and linked with fat LTO (see [profile.release.package.p3-executor]
  # in Cargo.toml). The xtask only reads the clap definitions.
  cargo build --locked --profile "$profile" -p p3-executor-steps -p p3-executor-aws -p p3-executor-xtask
  cargo build --locked --profile "$profile" --config 'profile.release.lto="fat"' -p p3-executor --bin p3-executor
fi
for bin in p3-executor p3-executor-steps p3-executor-aws p3-executor-xtask; do
  [[ -x $out_dir/$bin ]] || { echo "build-deb.sh: $out_dir/$bin is not built (drop --no-build)" >&2; exit 1; }
done

# Generated files go under target/packaging (never committed); the cargo-deb assets in
# Cargo.toml name them there.
gen=target/packaging
"$out_dir/p3-executor-xtask" man "$gen/man" >/dev/null
"$out_dir/p3-executor-xtask" completions "$gen/completions" >/dev/null

# The Debian changelog (lintian requires one): one entry for this version, pointing to the
# GitLab release notes. SOURCE_DATE_EPOCH, when set, makes the date reproducible.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
deb_version=${deb_version:-$version-1}
maintainer=$(sed -n 's/^maintainer = "\(.*\)"/\1/p' Cargo.toml | head -n1)
commit=$("$out_dir/p3-executor" --version | sed -n 's/.*(commit \([^,]*\),.*/\1/p')
date=$(date -u -R ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"})
{
  printf 'p3-executor (%s) unstable; urgency=medium\n\n' "$deb_version"
  printf '  * p3-executor %s, built from commit %s.\n' "$version" "${commit:-unknown}"
  printf '  * What changed: the GitLab release of v%s.\n\n' "$version"
  printf ' -- %s  %s\n' "$maintainer" "$date"
} > "$gen/changelog"

args=(--no-build --locked --profile "$profile" -p p3-executor --output "$output" "${fast[@]}")
[[ -n $deb_version ]] && args+=(--deb-version "$deb_version")
mkdir -p "$output"
# cargo-deb warns that it does not recommend the dev profile; the test uses it knowingly.
cargo deb "${args[@]}" 2> >(grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' >&2)
