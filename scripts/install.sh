#!/usr/bin/env bash
# Install p3-executor on a Debian runner host (run as root from a checkout).
#
#   scripts/install.sh [--binary PATH] [--prefix /usr/local] [--job-user p3-job] [--no-deps]
#
# Builds the release binaries (unless --binary names a built p3-executor, with
# p3-executor-steps next to it), installs both, creates the job user,
# the config directory (0700, with the annotated example config if none exists yet), the state
# root and the audit log directory, a gc cron entry, and finally runs `p3-executor check`.
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
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root: it creates a system user and root-only directories" >&2
  exit 1
fi
cd "$(dirname "$0")/.."

if ((deps)); then
  # bash and git run job scripts; krb5-user provides kinit/klist/kdestroy for credentials.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bash git krb5-user ca-certificates >/dev/null
fi

if [[ -z $binary ]]; then
  cargo build --release --locked -p p3-executor -p p3-executor-steps
  binary=target/release/p3-executor
fi
install -D -m 0755 "$binary" "$prefix/bin/p3-executor"
# The built-in steps; `p3-executor <step>` runs it from the same directory.
install -D -m 0755 "$(dirname "$binary")/p3-executor-steps" "$prefix/bin/p3-executor-steps"

if ! id -u "$job_user" >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$job_user"
  echo "created job user $job_user"
fi

install -d -m 0700 -o root -g root /etc/p3-executor /etc/p3-executor/keytabs
if [[ ! -e /etc/p3-executor/config.toml ]]; then
  sed "s/^job_user = .*/job_user = \"$job_user\"/" executor-config/config.toml > /etc/p3-executor/config.toml
  chmod 0600 /etc/p3-executor/config.toml
  echo "installed example config /etc/p3-executor/config.toml: edit it, then run p3-executor check"
fi
# state_root is traversable (jobs reach their own credentials dir) but not listable.
install -d -m 0711 -o root -g root /var/lib/p3-executor /var/lib/p3-executor/builds
install -d -m 0750 -o root -g root /var/log/p3-executor

# Sweep jobs whose cleanup never ran (runner crash, host reboot).
cat > /etc/cron.d/p3-executor-gc <<CRON
# p3-executor: remove workspaces and credentials of jobs whose cleanup never ran
17 * * * * root $prefix/bin/p3-executor gc >/dev/null
CRON

echo "installed $prefix/bin/p3-executor ($("$prefix/bin/p3-executor" --version))"
"$prefix/bin/p3-executor" check || echo "fix the problems above before registering the runner"
