#!/usr/bin/env bash
# The aarch64 proof: edgedet inside a real arm64 Debian 12 (Raspberry Pi OS is Debian bookworm),
# run under qemu-user from this x86_64 machine, installed the way a Pi user installs it.
#
# usage: scripts/arm64_check.sh [--quick] [--cache DIR] [--out DIR]
#
#   --quick      CI's bounded subset: everything but the unit suite (see below)
#   --cache DIR  rootfs tarball, aarch64 wheels, prepared rootfs (default $EDGEDET_ARM64_CACHE or
#                /var/cache/edgedet-arm64); outside the clone, so a second run is fast
#   --out DIR    results and summary.md (default build/arm64-check)
#   --reuse      keep the installed rootfs of the last run, reinstall only edgedet (development)
#
# Steps (each prints one line; the summary lists them all):
#   host      qemu-user-static + binfmt (aarch64), mmdebstrap; apt-get installs what is missing
#   rootfs    arm64 bookworm: python3, mosquitto, ffmpeg, systemd, tzdata (built once, then cached);
#             programs run on an emulated Cortex-A76 (the Pi 5's core; ARM64_CPU=... to change)
#   install   scripts/install.sh inside the rootfs, from aarch64 wheels downloaded on the host:
#             /opt/edgedet (TorchScript, CPU torch) and /opt/edgedet-lite (--backend ncnn plus
#             onnxruntime: no torch installed at all)
#   parity    `edgedet detect` inside vs on this x86 host with the same model files (exported
#             here): TorchScript, ONNX Runtime, NCNN (and NCNN's fp16 storage, not with --quick);
#             same count and classes, boxes <= 1 px, scores <= 0.01 (scripts/arm64_tools.py compare)
#   daemon    a 30 s `edgedet run` on a file camera publishing to the rootfs's mosquitto (NCNN,
#             from the venv without torch; the full run adds ONNX Runtime and TorchScript);
#             messages checked against edgedet/schemas; exit 0 on SIGTERM; peak RSS
#   config    `edgedet check-config` on the example config
#   systemd   `systemd-analyze verify` on the unit install.sh wrote
#   unit      the unit test suite inside the rootfs (skipped by --quick)
#
# Needs root (apt-get, mount, chroot) and the x86 venv with the demo model: `make arm64-check`.
# Timings under emulation mean nothing: the summary reports none as speed.
# Exit status: 0 every step passed, 1 a step failed, 2 bad arguments.
set -euo pipefail

REPO="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly REPO
CACHE="${EDGEDET_ARM64_CACHE:-/var/cache/edgedet-arm64}"
OUT="$REPO/build/arm64-check"
QUICK=0
REUSE=0
readonly SUITE=bookworm
readonly ROOTFS_PACKAGES=python3,python3-venv,python3-pip,mosquitto,ffmpeg,systemd,procps,ca-certificates,tzdata
# The newest torch whose aarch64 wheel is CPU-only (install.sh's TORCH_AARCH64).
TORCH_AARCH64="$(sed -n 's/^readonly TORCH_AARCH64=//p' "$REPO/scripts/install.sh")"
readonly TORCH_AARCH64
readonly DAEMON_SECONDS=30
# The emulated CPU: the Raspberry Pi 5's Cortex-A76 (NEON, fp16 arithmetic, dot product; no SVE,
# no bf16). qemu's default "max" has SVE, which oneDNN picks and qemu runs ~10x slower.
ARM64_CPU="${ARM64_CPU:-cortex-a76}"

while (($# > 0)); do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --reuse) REUSE=1; shift ;;
        --cache) CACHE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h | --help) sed -n '5,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) printf 'arm64_check.sh: unknown argument: %s\n' "$1" >&2; exit 2 ;;
    esac
done

HOST_PY="$REPO/.venv/bin/python"
[[ -x "$HOST_PY" ]] || { echo "arm64_check.sh: error: no x86 venv at $REPO/.venv (run: make venv model)" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "arm64_check.sh: error: needs root (apt-get, mount, chroot)" >&2; exit 1; }

ROOT="$CACHE/root"
mkdir -p "$CACHE" "$OUT"
OUT="$(cd -- "$OUT" && pwd -P)"
SUMMARY=()
FAILED=0
START=$SECONDS
declare -a BG_PIDS=()

say() { printf '[arm64 %4ds] %s\n' "$((SECONDS - START))" "$*"; }
record() { SUMMARY+=("$*"); say "$*"; }
fail() { FAILED=1; record "FAIL $*"; }

# Mount points at or under $1, deepest first.
mounts_under() {
    awk -v root="$1" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
    local m
    for m in $(mounts_under "$ROOT"); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# rm -rf a tree, never while anything is mounted under it (a bound /dev or wheel cache would go too).
remove_tree() {
    [[ -e "$1" ]] || return 0
    if [[ -n "$(mounts_under "$1")" ]]; then
        echo "arm64_check.sh: error: still mounted under $1: $(mounts_under "$1" | tr '\n' ' ')" >&2
        exit 1
    fi
    rm -rf --one-file-system -- "$1"
}

# Run a command inside the rootfs (binfmt's F flag makes the host's qemu serve the chroot).
inside() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        QEMU_CPU="$ARM64_CPU" PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# The same for a background job: `inside_bg cmd &` makes $! the program's own pid (chroot and env
# exec it), so its RSS can be read and a signal reaches it.
inside_bg() {
    exec chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 QEMU_CPU="$ARM64_CPU" "$@"
}

# ------------------------------------------------------------------------------------ host
step_host() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if ((${#missing[@]})); then
        say "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
        || { fail "host: binfmt qemu-aarch64 with the F flag is not registered"; exit 1; }
    record "host: $(qemu-aarch64-static --version | head -1), binfmt qemu-aarch64 enabled"
}

# ------------------------------------------------------------------------------------ rootfs
step_rootfs() {
    local key tar
    key="$(printf '%s %s v1' "$SUITE" "$ROOTFS_PACKAGES" | sha256sum | cut -c1-12)"
    tar="$CACHE/rootfs-$SUITE-arm64-$key.tar"
    if [[ -f "$tar" ]]; then
        say "rootfs: cached $tar"
    else
        say "rootfs: mmdebstrap arm64 $SUITE (first run only; several minutes)"
        # mmdebstrap picks the output format by the name's suffix: the partial file ends in .tar too.
        rm -f -- "$tar.partial.tar"
        mmdebstrap --quiet --arch=arm64 --variant=apt --include="$ROOTFS_PACKAGES" "$SUITE" "$tar.partial.tar" \
            >"$OUT/mmdebstrap.log" 2>&1 || { fail "rootfs: mmdebstrap failed (see $OUT/mmdebstrap.log)"; exit 1; }
        mv -f -- "$tar.partial.tar" "$tar"
    fi
    cleanup
    if ((REUSE)) && [[ -x "$ROOT/opt/edgedet/venv/bin/edgedet" ]]; then
        say "rootfs: reusing the installed $ROOT (--reuse)"
    else
        REUSE=0
        remove_tree "$ROOT"
        mkdir -p "$ROOT"
        tar -xf "$tar" -C "$ROOT"
    fi
    mkdir -p "$ROOT/wheels" "$ROOT/src"
    mount -t proc proc "$ROOT/proc"
    # No /sys: it would describe the x86 host's CPUs, and onnxruntime's cpuinfo crashes on that
    # under emulation (without it, cpuinfo warns and falls back).
    mount --bind /dev "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    mount --bind "$CACHE/wheels" "$ROOT/wheels"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    local arch py
    arch="$(inside uname -m)"
    py="$(inside python3 -V)"
    [[ "$arch" == aarch64 ]] || { fail "rootfs: uname -m says $arch"; exit 1; }
    record "rootfs: Debian $(cat "$ROOT/etc/debian_version") arm64, $arch, $py, $(inside mosquitto -h 2>/dev/null | head -1 | sed 's/ is an MQTT.*//')"
}

# ------------------------------------------------------------------------------------ wheels
# aarch64 wheels for python 3.11, downloaded by the host's pip (no emulation) into the cache.
step_wheels() {
    mkdir -p "$CACHE/wheels"
    # pip evaluates environment markers for the host (x86_64) even with --platform, so torch's
    # x86-only CUDA requirements would come along: torch goes without its requirements, and those
    # (all pure Python) are named here.
    local torch_reqs=(filelock "typing-extensions>=4.10.0" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5")
    local reqs=(
        "opencv-python-headless>=4.8" "numpy>=1.24" "pyyaml>=6.0" "paho-mqtt>=2.0" "prometheus-client>=0.17"
        "onnxruntime>=1.17" "ncnn>=1.0.20240410" "setuptools>=68" wheel "astral>=3.2,<4"
        pytest pytest-timeout jsonschema psutil "fastapi>=0.115,<1" "uvicorn>=0.30,<1"
    )
    local -a dl=("$HOST_PY" -m pip download -q --dest "$CACHE/wheels" --only-binary=:all: --python-version 3.11
        --implementation cp --abi cp311 --abi abi3 --abi none
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_24_aarch64
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
    { "${dl[@]}" --no-deps "torch==$TORCH_AARCH64" && "${dl[@]}" "${torch_reqs[@]}" "${reqs[@]}"; } >"$OUT/wheels.log" 2>&1 \
        || { fail "wheels: pip download failed (see $OUT/wheels.log)"; exit 1; }
    if find "$CACHE/wheels" -name 'nvidia_*' | grep -q .; then
        fail "wheels: CUDA wheels were pulled in (see $OUT/wheels.log)"
        exit 1
    fi
    record "wheels: $(find "$CACHE/wheels" -name '*.whl' | wc -l) aarch64/any wheels in $CACHE/wheels ($(du -sh "$CACHE/wheels" | cut -f1))"
}

# ------------------------------------------------------------------------------------ models
# The model files a user exports on the workstation and copies to the Pi.
MODELS="$OUT/models"
step_models() {
    mkdir -p "$MODELS"
    local pt="$REPO/.cache/demo-model/best.pt"
    cp -f "$REPO/models/demo.torchscript" "$MODELS/demo.torchscript"
    if [[ ! -f "$MODELS/demo.onnx" ]]; then
        "$REPO/.venv/bin/edgedet" export --weights "$pt" --format onnx -o "$MODELS/demo.onnx" >"$OUT/export-onnx.log" 2>&1 \
            || { fail "models: onnx export failed (see $OUT/export-onnx.log)"; return; }
    fi
    if [[ -d "$REPO/models/demo_ncnn_model" ]]; then
        rm -rf "$MODELS/demo_ncnn_model"
        cp -r "$REPO/models/demo_ncnn_model" "$MODELS/demo_ncnn_model"
    elif [[ ! -d "$MODELS/demo_ncnn_model" ]]; then
        "$REPO/.venv/bin/edgedet" export --weights "$pt" --format ncnn -o "$MODELS/demo_ncnn_model" \
            >"$OUT/export-ncnn.log" 2>&1 || { fail "models: ncnn export failed (see $OUT/export-ncnn.log)"; return; }
    fi
    record "models: exported on x86_64: demo.torchscript, demo.onnx, demo_ncnn_model/"
}

# The source tree as a Pi user has it: the checkout's files (tracked and untracked, not ignored),
# the models above and the demo assets.
step_source() {
    remove_tree "$ROOT/src"
    mkdir -p "$ROOT/src"
    (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$ROOT/src"
    mkdir -p "$ROOT/src/models" "$ROOT/src/.cache"
    cp -r "$MODELS/." "$ROOT/src/models/"
    cp -r "$REPO/.cache/demo" "$ROOT/src/.cache/demo"
    rm -rf "$ROOT/src/.cache/demo/frames"
    mkdir -p "$ROOT/src/.cache/demo/frames"
    cp "$REPO/.cache/demo/frames/00050.jpg" "$ROOT/src/.cache/demo/frames/"
}

# ------------------------------------------------------------------------------------ install
step_install() {
    local log="$OUT/install.log"
    if ((REUSE)); then
        local v
        : >"$log"
        for v in /opt/edgedet /opt/edgedet-lite; do
            inside sh -c "cd /src && $v/venv/bin/pip install -q --no-deps . && $v/venv/bin/pip install -q 'astral>=3.2,<4'" \
                >>"$log" 2>&1 || { fail "install: reinstalling edgedet from /src failed (see $log)"; exit 1; }
        done
        record "install: edgedet reinstalled from /src into the existing venvs (--reuse)"
        return
    fi
    : >"$log"
    if ! inside env PYTHON=python3 bash /src/scripts/install.sh --no-enable --model /src/models/demo.torchscript \
        >>"$log" 2>&1; then
        fail "install: scripts/install.sh (torchscript) failed (see $log)"
        exit 1
    fi
    if ! inside env PYTHON=python3 bash /src/scripts/install.sh --no-enable --prefix /opt/edgedet-lite \
        --backend ncnn --model /src/models/demo_ncnn_model >>"$log" 2>&1; then
        fail "install: scripts/install.sh --backend ncnn failed (see $log)"
        exit 1
    fi
    inside /opt/edgedet-lite/venv/bin/pip install -q onnxruntime >>"$log" 2>&1 \
        || { fail "install: onnxruntime into the lite venv failed (see $log)"; exit 1; }
    if inside /opt/edgedet-lite/venv/bin/python -c 'import torch' 2>/dev/null; then
        fail "install: /opt/edgedet-lite has torch"
    fi
    local v
    v="$(inside /opt/edgedet/venv/bin/python -c 'import edgedet, torch, cv2, numpy; print("edgedet", edgedet.__version__, "torch", torch.__version__, "cv2", cv2.__version__, "numpy", numpy.__version__)' 2>/dev/null)"
    record "install: /opt/edgedet: $v"
    v="$(inside /opt/edgedet-lite/venv/bin/python -c 'import onnxruntime, ncnn; print("onnxruntime", onnxruntime.__version__, "ncnn", ncnn.__version__, "(no torch)")' 2>&1 | tail -1)"
    record "install: /opt/edgedet-lite: $v"
}

# ------------------------------------------------------------------------------------ parity
IMAGES=(bus.jpg zidane.jpg frames/00050.jpg)
step_parity() {
    local name model venv ref half tol imgs=() host_imgs=() i
    for i in "${IMAGES[@]}"; do
        [[ -f "$ROOT/src/.cache/demo/$i" ]] || continue
        imgs+=("/src/.cache/demo/$i")
        host_imgs+=("$REPO/.cache/demo/$i")
    done
    # ncnn-fp16: NCNN with model.half (fp16 weights and blobs, fp32 arithmetic) against x86's fp32.
    local names=(torchscript onnxruntime ncnn)
    ((QUICK)) || names+=(ncnn-fp16) # --quick: fp16 storage is slow to emulate (about 8 min)
    for name in "${names[@]}"; do
        half=() ref="$name" tol=(--box-px 1 --score 0.01)
        case "$name" in
            torchscript) model=demo.torchscript venv=/opt/edgedet/venv ;;
            onnxruntime) model=demo.onnx venv=/opt/edgedet-lite/venv ;;
            ncnn) model=demo_ncnn_model venv=/opt/edgedet-lite/venv ;;
            ncnn-fp16) model=demo_ncnn_model venv=/opt/edgedet-lite/venv ref=ncnn half=(--half) ;;
        esac
        if [[ ! -s "$OUT/x86-$ref.jsonl" ]] && ! "$REPO/.venv/bin/edgedet" detect --model "$MODELS/$model" "${host_imgs[@]}" \
            >"$OUT/x86-$ref.jsonl" 2>"$OUT/x86-$ref.err"; then
            fail "parity $name: x86 detect failed ($(tail -1 "$OUT/x86-$ref.err"))"
            continue
        fi
        if ! inside "$venv/bin/edgedet" detect --threads 2 "${half[@]}" --model "/src/models/$model" "${imgs[@]}" \
            >"$OUT/arm64-$name.jsonl" 2>"$OUT/arm64-$name.err"; then
            fail "parity $name: arm64 detect failed ($(tail -1 "$OUT/arm64-$name.err"))"
            continue
        fi
        local line
        if line="$("$HOST_PY" "$REPO/scripts/arm64_tools.py" compare "$OUT/x86-$ref.jsonl" "$OUT/arm64-$name.jsonl" \
            "${tol[@]}" --name "$name")"; then
            record "$line"
        else
            fail "$line"
        fi
    done
}

# ------------------------------------------------------------------------------------ daemon
free_port() {
    "$HOST_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Peak RSS (MiB) of process $1, as the host sees it (under qemu-user: the emulator's own memory too).
peak_rss() {
    awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

RSS_LINES=()
daemon_run() {
    local name="$1" model="$2" venv="$3" port mport cfg pid listener rc rss="?"
    port="$(free_port)"
    mport="$(free_port)"
    cfg="/tmp/arm64-$name.yaml"
    cat >"$ROOT$cfg" <<EOF
node_id: arm64-$name
state_dir: /tmp/state-$name
cameras:
  demo:
    url: /src/.cache/demo/demo.mp4
    loop: true
    realtime: true
model:
  path: /src/models/$model
mqtt:
  host: 127.0.0.1
  port: $port
metrics:
  port: $mport
EOF
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$ROOT/tmp/mosquitto-$name.conf"
    inside_bg mosquitto -c "/tmp/mosquitto-$name.conf" >"$OUT/mosquitto-$name.log" 2>&1 &
    BG_PIDS+=($!)
    local broker=$!
    "$HOST_PY" "$REPO/scripts/arm64_tools.py" listen --port "$port" --out "$OUT/messages-$name.jsonl" \
        --until-detections 1 --timeout 900 >"$OUT/listen-$name.log" 2>&1 &
    listener=$!
    BG_PIDS+=("$listener")
    local t0=$SECONDS
    inside_bg "$venv/bin/edgedet" run -c "$cfg" >"$OUT/daemon-$name.log" 2>&1 &
    pid=$!
    BG_PIDS+=("$pid")
    # The run lasts DAEMON_SECONDS after the first detections message, or until the listener gives up.
    wait "$listener" && rc=0 || rc=$?
    if ((rc == 0)); then
        local until=$((SECONDS + DAEMON_SECONDS))
        while ((SECONDS < until)) && kill -0 "$pid" 2>/dev/null; do
            rss="$(peak_rss "$pid")"
            sleep 1 # a fixed run length is the check itself, not a synchronisation
        done
    fi
    local now
    now="$(peak_rss "$pid")"
    [[ "$now" == "?" ]] || rss="$now"
    kill -TERM "$pid" 2>/dev/null || true
    local drc=0
    wait "$pid" || drc=$?
    kill "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
    if ((rc != 0)); then
        fail "daemon $name: no detections messages ($(tail -1 "$OUT/listen-$name.log"); daemon: $(tail -1 "$OUT/daemon-$name.log"))"
        return
    fi
    if ((drc != 0)); then
        fail "daemon $name: exit $drc on SIGTERM ($(tail -1 "$OUT/daemon-$name.log"))"
        return
    fi
    local schema
    if ! schema="$("$HOST_PY" "$REPO/scripts/arm64_tools.py" validate "$OUT/messages-$name.jsonl" 2>&1)"; then
        fail "daemon $name: $schema"
        return
    fi
    RSS_LINES+=("| $name | $rss |")
    record "daemon $name: ran $((SECONDS - t0)) s (emulated), $schema, exit 0 on SIGTERM, peak RSS $rss MiB"
}

step_daemon() {
    # --quick: NCNN from the venv without torch; the full run measures every backend's RSS.
    daemon_run ncnn demo_ncnn_model /opt/edgedet-lite/venv
    if ((QUICK == 0)); then
        daemon_run onnxruntime demo.onnx /opt/edgedet-lite/venv
        daemon_run torchscript demo.torchscript /opt/edgedet/venv
    fi
    # What qemu itself adds to an RSS: the same figure for an idle python3 inside and on the host.
    local q
    q="$(inside python3 -c 'print(round(int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) / 1024))')"
    record "daemon: an idle python3 is $q MiB RSS under qemu vs $(python3 -c 'import resource; print(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))') MiB natively"
}

# ------------------------------------------------------------------------------------ config, systemd
step_config() {
    # The example as install.sh wrote it (model.path: the installed demo model), with the clip its
    # replay camera names; its secrets come from the environment (edgedet.env under systemd).
    local msg
    mkdir -p "$ROOT/var/lib/edgedet/clips"
    cp "$REPO/.cache/demo/demo.mp4" "$ROOT/var/lib/edgedet/clips/loading-dock.mp4"
    if msg="$(inside env MQTT_PASSWORD=arm64-check-secret CAM_PASS=arm64-check-secret \
        /opt/edgedet-lite/venv/bin/edgedet check-config /etc/edgedet/edgedet.yaml 2>&1)"; then
        record "config: edgedet check-config on the example config (/etc/edgedet/edgedet.yaml from install.sh): ok"
    else
        printf '%s\n' "$msg" >"$OUT/check-config.log"
        fail "config: check-config: $(grep -m1 '^error' <<<"$msg" || tail -1 <<<"$msg")"
    fi
}

step_systemd() {
    local msg
    if msg="$(inside systemd-analyze verify /etc/systemd/system/edgedet.service 2>&1)"; then
        record "systemd: systemd-analyze verify edgedet.service: ok ($(inside systemd --version | head -1))"
    else
        printf '%s\n' "$msg" >"$OUT/systemd-verify.log"
        fail "systemd: systemd-analyze verify: $(head -1 <<<"$msg")"
    fi
}

# ------------------------------------------------------------------------------------ unit
step_unit() {
    if ((QUICK)); then
        record "unit: skipped (--quick)"
        return
    fi
    local t0=$SECONDS rc=0
    # dev's test tools and the web extra (the console's unit tests); export/openvino tests skip.
    inside /opt/edgedet/venv/bin/pip install -q pytest pytest-timeout jsonschema psutil fastapi uvicorn >"$OUT/unit-pip.log" 2>&1 \
        || { fail "unit: pip install pytest failed (see $OUT/unit-pip.log)"; return; }
    # ARM64_UNIT_TIMEOUT (seconds, default none): stop the suite there and report how far it got.
    timeout "${ARM64_UNIT_TIMEOUT:-0}" chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        QEMU_CPU="$ARM64_CPU" sh -c 'cd /src && /opt/edgedet/venv/bin/python -m pytest -q -p no:cacheprovider -o addopts="-ra --timeout=900" tests/unit' \
        >"$OUT/unit.log" 2>&1 || rc=$?
    local last
    last="$(grep -E '[0-9]+ (passed|failed)' "$OUT/unit.log" | tail -1)"
    if ((rc == 124)); then
        local done_tests
        done_tests="$(grep -E '^[.sFEx]+ +\[ *[0-9]+%\]$' "$OUT/unit.log" | tr -cd '.' | wc -c)"
        local failed_tests
        failed_tests="$(grep -E '^[.sFEx]+ +\[ *[0-9]+%\]$' "$OUT/unit.log" | tr -cd 'FE' | wc -c)"
        record "unit: stopped by ARM64_UNIT_TIMEOUT after $((SECONDS - t0)) s: $done_tests passed, $failed_tests failed so far (see $OUT/unit.log)"
        ((failed_tests == 0)) || FAILED=1
        return
    fi
    if ((rc == 0)); then
        record "unit: $last inside the rootfs ($((SECONDS - t0)) s emulated)"
    else
        fail "unit: exit $rc: $last (see $OUT/unit.log)"
    fi
}

step_host
step_wheels
step_rootfs
step_models
step_source
step_install
# ARM64_STEPS (development): the checks to run, of "parity daemon config systemd unit".
STEPS=" ${ARM64_STEPS:-parity daemon config systemd unit} "
rm -f "$OUT"/x86-*.jsonl "$OUT"/arm64-*.jsonl
for step in parity daemon config systemd unit; do
    if [[ "$STEPS" == *" $step "* ]]; then
        "step_$step"
    else
        record "$step: skipped (ARM64_STEPS)"
    fi
done

{
    echo "# arm64 check ($(date -u +%Y-%m-%dT%H:%MZ), $([[ $QUICK == 1 ]] && echo quick || echo full), $((SECONDS - START)) s)"
    echo
    printf -- '- %s\n' "${SUMMARY[@]}"
    echo
    echo "| backend | daemon peak RSS under qemu (MiB) |"
    echo "|---|---|"
    printf '%s\n' "${RSS_LINES[@]}"
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
if ((FAILED)); then
    echo "arm64 check: FAILED" >&2
    exit 1
fi
echo "arm64 check: passed"
