#!/usr/bin/env bash
# Set up and run the demo on a Debian machine: installs what the demo uses (bash, git, and the
# MIT Kerberos KDC/client tools for the credential part), builds p3-executor, and runs one job
# through config → prepare → run → cleanup exactly as GitLab Runner would, on an embedded
# default config. No GitLab needed. Run as root to see job isolation (a private job uid).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
missing=()
for pair in git:git krb5kdc:krb5-kdc kinit:krb5-user; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "demo.sh: needs a Rust toolchain >= 1.85 (https://rustup.rs)" >&2; exit 1; }
cargo build --locked --quiet
exec target/debug/p3-executor demo "$@"
