#!/usr/bin/env bash
# Set up and run the demo on a Debian machine: installs what the demo uses (git, openssl, and the
# MIT Kerberos KDC, admin and client tools for a throwaway realm), builds p3-executor, and runs
# `p3-executor demo`: jobs driven through config → prepare → run → cleanup exactly as GitLab
# Runner would, on an embedded default config (a release tag granted a Kerberos ticket by policy,
# a branch forging protected-tag variables denied, a plain job), then the audit log. No GitLab
# needed. Run as root to see job isolation (private job uids). `--keep` keeps the temp trees.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
missing=()
for pair in git:git openssl:openssl krb5kdc:krb5-kdc kadmin.local:krb5-admin-server kinit:krb5-user; do
  # krb5kdc and kadmin.local live in /usr/sbin, not on a non-root PATH.
  PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "demo.sh: installing ${missing[*]} (apt-get; about a minute)..." >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "demo.sh: needs a Rust toolchain >= 1.85 (https://rustup.rs)" >&2; exit 1; }
if [[ -x target/debug/p3-executor ]]; then
  echo "demo.sh: building p3-executor (cargo build, incremental)..." >&2
else
  echo "demo.sh: building p3-executor for the first time (cargo build: several minutes; cargo's progress follows)..." >&2
fi
# Not --quiet: cargo's progress bar shows the build is moving.
cargo build --locked
echo "demo.sh: built; running the demo" >&2
exec target/debug/p3-executor demo "$@"
