#!/usr/bin/env bash
# Install p3-executor from a checkout on a Debian runner host (run as root). The .deb is the
# usual way (README, Install); this is for hosts that build from source.
#
#   scripts/install.sh [--binary PATH] [--prefix /usr/local] [--job-user p3-job] [--no-deps]
#
# Builds the release binaries and the man pages and completions (unless --binary names a
# built p3-executor, with p3-executor-steps and p3-executor-aws, and man/ and completions/ if present, next to it),
# checks that every file it needs is there before it changes anything, installs them under
# the prefix, creates the job user, the directories of
# packaging/tmpfiles/p3-executor.conf, the annotated example config if none exists yet, the
# gc timer (packaging/systemd), and finally runs `p3-executor check`. The same unit,
# tmpfiles and man-page files as the .deb: one definition of each.
set -euo pipefail

prefix=/usr/local
binary=
job_user=p3-job
deps=1
while (($#)); do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --job-user) job_user=$2; shift 2 ;;
    --no-deps) deps=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root: it creates a system user and root-only directories" >&2
  exit 1
fi
# --binary is relative to where the script was started, not to the checkout.
if [[ -n $binary ]]; then binary=$(realpath -m -- "$binary"); fi
cd "$(dirname "$0")/.."

if [[ -z $binary ]]; then
  # The runner binary in a cargo invocation of its own with fat LTO, as packaging/build-deb.sh
  # builds it: built with the steps, feature unification would link HTTP/2 it never uses into
  # every runner call (see [profile.release.package.p3-executor] in Cargo.toml).
  echo "install.sh: building the release binaries, man pages and completions (the first build takes several minutes)..." >&2
  cargo build --release --locked -p p3-executor-steps -p p3-executor-aws -p p3-executor-xtask
  cargo build --release --locked --config 'profile.release.lto="fat"' -p p3-executor --bin p3-executor
  binary=target/release/p3-executor
  target/release/p3-executor-xtask man target/packaging/man >/dev/null
  target/release/p3-executor-xtask completions target/packaging/completions >/dev/null
  docs=target/packaging
else
  docs=$(dirname "$binary")
fi
bindir=$(dirname "$binary")

# Every file this script installs or reads, checked before anything is changed: a release
# tarball missing one stops here, naming it, instead of half-way through the install.
missing=()
for f in "$binary" "$bindir/p3-executor-steps" "$bindir/p3-executor-aws"; do
  [[ -f $f && -x $f ]] || missing+=("$f (an executable)")
done
for f in packaging/tmpfiles/p3-executor.conf executor-config/config.toml \
  packaging/systemd/p3-executor-gc.service packaging/systemd/p3-executor-gc.timer \
  packaging/systemd/p3-executor-audit-ship.service \
  packaging/systemd/gitlab-runner.service.d/p3-executor.conf; do
  [[ -f $f ]] || missing+=("$f (from the checkout)")
done
if [[ -d $docs/completions ]]; then
  for f in p3-executor.bash _p3-executor p3-executor.fish; do
    [[ -f $docs/completions/$f ]] || missing+=("$docs/completions/$f")
  done
fi
if ((${#missing[@]})); then
  echo "install.sh: nothing was changed: these files are missing:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "  a release tarball must carry p3-executor, p3-executor-steps and p3-executor-aws side by side (unpack it whole and pass --binary <dir>/p3-executor); run this script from the checkout it came with" >&2
  exit 1
fi

if ((deps)); then
  # The .deb's Depends: git runs in the job's get_sources stage; krb5-user provides
  # kinit/klist/kdestroy for credentials; adduser creates the job user (bash is Essential).
  echo "install.sh: installing bash, git, krb5-user, ca-certificates and adduser with apt-get..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bash git krb5-user ca-certificates adduser >/dev/null
fi

install -D -m 0755 "$binary" "$prefix/bin/p3-executor"
# The built-in steps; `p3-executor <step>` runs it from the same directory.
install -D -m 0755 "$bindir/p3-executor-steps" "$prefix/bin/p3-executor-steps"
# The host-side AWS calls: `audit ship|verify --s3|show --s3` and web-identity S3 credentials.
install -D -m 0755 "$bindir/p3-executor-aws" "$prefix/bin/p3-executor-aws"

# Man pages and completions where man-db, bash-completion, zsh and fish look under /usr/local.
if compgen -G "$docs/man/*.1" >/dev/null; then
  install -d "$prefix/share/man/man1"
  for page in "$docs"/man/*.1; do
    gzip -9n -c "$page" > "$prefix/share/man/man1/$(basename "$page").gz"
    chmod 0644 "$prefix/share/man/man1/$(basename "$page").gz"
  done
else
  echo "install.sh: no man pages in $docs/man (a release tarball carries them): skipped" >&2
fi
if [[ -d $docs/completions ]]; then
  install -D -m 0644 "$docs/completions/p3-executor.bash" "$prefix/share/bash-completion/completions/p3-executor"
  install -D -m 0644 "$docs/completions/_p3-executor" "$prefix/share/zsh/site-functions/_p3-executor"
  install -D -m 0644 "$docs/completions/p3-executor.fish" "$prefix/share/fish/vendor_completions.d/p3-executor.fish"
fi

if ! getent passwd "$job_user" >/dev/null; then
  # As the .deb's postinst does: a system user with its own group, no home, no shell.
  adduser --system --group --quiet --no-create-home --home /nonexistent --shell /usr/sbin/nologin "$job_user"
  echo "created job user $job_user"
fi

# The directories and their modes: the .deb's tmpfiles file, in the admin's tmpfiles dir (so
# systemd-tmpfiles also restores the modes at boot). Without systemd-tmpfiles, its `d` lines
# are applied directly.
install -D -m 0644 packaging/tmpfiles/p3-executor.conf /etc/tmpfiles.d/p3-executor.conf
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles --create p3-executor.conf
else
  grep -E '^d[[:space:]]' /etc/tmpfiles.d/p3-executor.conf | while read -r _type path mode user group _age; do
    install -d -m "$mode" -o "$user" -g "$group" "$path"
  done
fi

if [[ ! -e /etc/p3-executor/config.toml ]]; then
  install -m 0600 /dev/null /etc/p3-executor/config.toml
  sed "s/^job_user = .*/job_user = \"$job_user\"/" executor-config/config.toml > /etc/p3-executor/config.toml
  echo "installed example config /etc/p3-executor/config.toml: edit it, then run p3-executor check"
fi

# gc every hour: the .deb's units, ExecStart pointing at this prefix. Earlier versions of
# this script wrote a cron entry; the timer replaces it.
rm -f /etc/cron.d/p3-executor-gc
install -d /etc/systemd/system
sed "s|^ExecStart=/usr/bin/p3-executor |ExecStart=$prefix/bin/p3-executor |" \
  packaging/systemd/p3-executor-gc.service > /etc/systemd/system/p3-executor-gc.service
install -m 0644 packaging/systemd/p3-executor-gc.timer /etc/systemd/system/p3-executor-gc.timer
chmod 0644 /etc/systemd/system/p3-executor-gc.service
# A cgroup per job under the runner's own: on cgroup v2, gitlab-runner.service must delegate
# its subtree (effective at the runner's next restart).
install -d /etc/systemd/system/gitlab-runner.service.d
install -m 0644 packaging/systemd/gitlab-runner.service.d/p3-executor.conf \
  /etc/systemd/system/gitlab-runner.service.d/p3-executor.conf
# Audit shipping ([audit.s3]), started by the gc service.
sed "s|^ExecStart=/usr/bin/p3-executor |ExecStart=$prefix/bin/p3-executor |" \
  packaging/systemd/p3-executor-audit-ship.service > /etc/systemd/system/p3-executor-audit-ship.service
chmod 0644 /etc/systemd/system/p3-executor-audit-ship.service
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  systemctl enable --now p3-executor-gc.timer
else
  echo "install.sh: systemd is not running here: p3-executor-gc.timer is installed but not" \
       "started; run \`$prefix/bin/p3-executor gc\` hourly some other way" >&2
fi

echo "installed $prefix/bin/p3-executor ($("$prefix/bin/p3-executor" --version))"
"$prefix/bin/p3-executor" check || echo "fix the problems above before registering the runner"
