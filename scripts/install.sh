#!/usr/bin/env bash
# Install or upgrade edgedet as a systemd service on Debian, Raspberry Pi OS or Ubuntu / JetPack.
#
# usage: scripts/install.sh [--prefix DIR] [--root DIR] [--dry-run] [--no-enable] [--model PATH]
#                           [--backend NAME] [--skip-venv]
#
#   --prefix DIR   install directory; the venv goes to DIR/venv (default /opt/edgedet)
#   --root DIR     install into a throwaway root: files go under DIR, user creation, ownership
#                  and systemctl are printed as skipped (for tests and image builds)
#   --dry-run      print every action, one per line prefixed "+ ", and change nothing
#   --no-enable    install only: do not enable, start or restart the service
#   --model PATH   copy a model (from `edgedet export`: a .torchscript or .onnx file, or an
#                  *_openvino_model/ or *_ncnn_model/ directory) to /var/lib/edgedet/models/
#   --backend NAME torchscript (default), onnxruntime, openvino or ncnn (default: by --model's
#                  name): installs that backend's extra; onnxruntime and ncnn install no torch
#   --skip-venv    leave the venv alone (no python -m venv, no pip); for tests and for hosts
#                  where the venv is managed another way
#   --local-broker CENTRAL_HOST[:PORT]
#                  store-and-forward (docs/FLEET.md): a local mosquitto on 127.0.0.1:1883 bridged to
#                  the central broker (cleansession false, queued QoS 1, TLS on port 8883 by default)
#   --node ID      the node_id the bridge forwards (default: this host's short name)
#   --topic-prefix P  the mqtt.topic_prefix (default edgedet)
#   --bridge-ca FILE  CA of the central broker (required for TLS); --bridge-cert/--bridge-key FILE
#                  a client certificate for it; --no-tls: plain MQTT to the centre (port 1883)
#   --print-bridge CENTRAL_HOST[:PORT]  print the bridge section and exit (changes nothing)
#
# Environment: PYTHON (default python3) is the interpreter the venv is made from (>= 3.10).
#
# Re-running upgrades in place: the venv gets the package from this checkout, the unit file is
# replaced, a running service is restarted. /etc/edgedet/edgedet.yaml and edgedet.env are only
# ever created, never overwritten. Output: "+ command" for an action, "- skipped (why): command",
# "# note" (write_config, write_env_template and write_unit are functions of this script).
# Exit status: 0 ok, 1 a step failed, 2 bad arguments.
set -euo pipefail

readonly DEFAULT_PREFIX=/opt/edgedet
readonly SERVICE=edgedet.service
readonly SVC_USER=edgedet
readonly EXAMPLE_MODEL_PATH=/var/lib/edgedet/models/yolov8n.torchscript
readonly TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# The newest torch whose aarch64 wheel on PyPI is CPU-only (2.11 and later pull CUDA 13 libraries, GBs).
readonly TORCH_AARCH64=2.10.0

REPO="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly REPO
PREFIX="$DEFAULT_PREFIX"
ROOT=""
DRY_RUN=0
ENABLE=1
MODEL=""
BACKEND=""
SKIP_VENV=0
PYTHON="${PYTHON:-python3}"
LOCAL_BROKER=""
PRINT_BRIDGE=""
NODE_ID=""
TOPIC_PREFIX=edgedet
BRIDGE_CA=""
BRIDGE_CERT=""
BRIDGE_KEY=""
BRIDGE_TLS=1

usage() {
    sed -n '4,25s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

bad_usage() {
    printf 'install.sh: %s\n' "$*" >&2
    usage >&2
    exit 2
}

note() {
    printf '# %s\n' "$*"
}

# Print "+ cmd args..." (shell-quoted) and run it unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ((DRY_RUN == 0)); then
        "$@"
    fi
}

# Print "- skipped (why): cmd args..." for a step --root (or a missing systemd) leaves out.
skip() {
    local why="$1"
    shift
    printf -- '- skipped (%s):' "$why"
    printf ' %q' "$@"
    printf '\n'
}

while (($# > 0)); do
    case "$1" in
        --prefix | --root | --model | --backend | --local-broker | --print-bridge | --node | --topic-prefix | --bridge-ca \
            | --bridge-cert | --bridge-key)
            (($# >= 2)) || bad_usage "$1 needs a value"
            case "$1" in
                --prefix) PREFIX="$2" ;;
                --root) ROOT="$2" ;;
                --model) MODEL="$2" ;;
                --backend) BACKEND="$2" ;;
                --local-broker) LOCAL_BROKER="$2" ;;
                --print-bridge) PRINT_BRIDGE="$2" ;;
                --node) NODE_ID="$2" ;;
                --topic-prefix) TOPIC_PREFIX="$2" ;;
                --bridge-ca) BRIDGE_CA="$2" ;;
                --bridge-cert) BRIDGE_CERT="$2" ;;
                --bridge-key) BRIDGE_KEY="$2" ;;
            esac
            shift 2
            ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --model=*) MODEL="${1#*=}"; shift ;;
        --backend=*) BACKEND="${1#*=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --skip-venv) SKIP_VENV=1; shift ;;
        --no-tls) BRIDGE_TLS=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) bad_usage "unknown argument: $1" ;;
    esac
done

MODEL="${MODEL%/}"
if [[ -z "$BACKEND" ]]; then
    case "$MODEL" in
        *.onnx) BACKEND=onnxruntime ;;
        *_openvino_model | *.xml) BACKEND=openvino ;;
        *_ncnn_model) BACKEND=ncnn ;;
        *) BACKEND=torchscript ;;
    esac
fi
case "$BACKEND" in
    torchscript | onnxruntime | openvino | ncnn) ;;
    *) bad_usage "--backend: expected torchscript, onnxruntime, openvino or ncnn (got $BACKEND)" ;;
esac

# ------------------------------------------------------------------------------------ bridge

readonly BRIDGE_CONF=/etc/mosquitto/conf.d/edgedet-bridge.conf
readonly BRIDGE_CERTS=/etc/mosquitto/certs/edgedet

# The bridge section for central broker $1 (HOST[:PORT]): the fleet contract's topics out, the
# node's feedback (and info, for the duplicate-node check) in; queued QoS 1 in a persistent session.
bridge_section() {
    local central="$1" host port
    host="${central%:*}"
    port="${central##*:}"
    if [[ "$host" == "$central" ]]; then
        port=$((BRIDGE_TLS ? 8883 : 1883))
    fi
    local p="$TOPIC_PREFIX/$NODE_ID"
    cat <<EOF
# edgedet store-and-forward bridge (scripts/install.sh --local-broker; docs/FLEET.md)
connection edgedet-uplink
address $host:$port
clientid edgedet-bridge-$NODE_ID
cleansession false
try_private true
bridge_protocol_version mqttv311
notifications true
notifications_local_only false
notification_topic $p/uplink
restart_timeout 2 60
topic $p/status out 1
topic $p/info both 1
topic $p/+/status out 1
topic $p/+/stats out 1
topic $p/+/events out 1
topic $p/+/snapshot out 1
topic $p/+/+/active out 1
topic $p/feedback in 1
EOF
    if ((BRIDGE_TLS)); then
        echo "bridge_cafile $BRIDGE_CERTS/ca.crt"
        if [[ -n "$BRIDGE_CERT" ]]; then
            echo "bridge_certfile $BRIDGE_CERTS/client.crt"
            echo "bridge_keyfile $BRIDGE_CERTS/client.key"
        fi
    fi
}

# The whole conf.d file: a loopback-only listener for the daemon, deep queues, then the bridge.
write_bridge_conf() {
    local dst="$1"
    mkdir -p -- "$(dirname -- "$dst")"
    {
        echo "# Written by edgedet's scripts/install.sh --local-broker; re-running it replaces this file."
        echo "listener 1883 127.0.0.1"
        echo "allow_anonymous true"
        echo "# Queued QoS 1 messages for the bridge while the uplink is down (0 = no byte limit)."
        echo "max_queued_messages 100000"
        echo "max_queued_bytes 0"
        bridge_section "$LOCAL_BROKER"
    } >"$dst.new"
    chmod 0644 "$dst.new"
    mv -f -- "$dst.new" "$dst"
}

if [[ -z "$NODE_ID" ]]; then
    NODE_ID="$(hostname -s 2>/dev/null || echo edgedet)"
fi
[[ "$NODE_ID" =~ ^[A-Za-z0-9._-]+$ ]] || bad_usage "--node: use letters, digits, '.', '_' and '-' (got '$NODE_ID')"
[[ "$TOPIC_PREFIX" =~ ^[A-Za-z0-9._/-]+$ && "$TOPIC_PREFIX" != /* && "$TOPIC_PREFIX" != */ ]] \
    || bad_usage "--topic-prefix: MQTT levels of letters, digits, '.', '_', '-' (got '$TOPIC_PREFIX')"
for central in "$LOCAL_BROKER" "$PRINT_BRIDGE"; do
    [[ -z "$central" || "$central" =~ ^[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] \
        || bad_usage "--local-broker: expected HOST[:PORT] (got '$central')"
done
if [[ -n "$PRINT_BRIDGE" ]]; then
    bridge_section "$PRINT_BRIDGE"
    exit 0
fi
if [[ -n "$LOCAL_BROKER" ]] && ((BRIDGE_TLS)); then
    [[ -n "$BRIDGE_CA" ]] || bad_usage "--local-broker: TLS to the centre needs --bridge-ca FILE (or --no-tls)"
    for f in "$BRIDGE_CA" ${BRIDGE_CERT:+"$BRIDGE_CERT"} ${BRIDGE_KEY:+"$BRIDGE_KEY"}; do
        [[ -f "$f" && -r "$f" ]] || bad_usage "--bridge-ca/--bridge-cert/--bridge-key: no readable file at '$f'"
    done
    if [[ -n "$BRIDGE_CERT" && -z "$BRIDGE_KEY" ]] || [[ -z "$BRIDGE_CERT" && -n "$BRIDGE_KEY" ]]; then
        bad_usage "--bridge-cert and --bridge-key go together"
    fi
fi

[[ "$PREFIX" == /* ]] || bad_usage "--prefix must be an absolute path (got '$PREFIX')"
PREFIX="${PREFIX%/}"
[[ -n "$PREFIX" && "$PREFIX" != *[[:space:]\|\&\\]* ]] \
    || bad_usage "--prefix must not be / or contain blanks, '|', '&' or '\\' (got '$PREFIX')"
if [[ -n "$ROOT" ]]; then
    ROOT="$(realpath -m -- "$ROOT")"
    [[ "$ROOT" != / ]] || ROOT=""
fi
if [[ -n "$MODEL" ]]; then
    [[ (-f "$MODEL" || -d "$MODEL") && -r "$MODEL" ]] || bad_usage "--model: no readable file or model directory at '$MODEL'"
    [[ "$(basename -- "$MODEL")" =~ ^[A-Za-z0-9._-]+$ ]] \
        || bad_usage "--model: use a file name of letters, digits, '.', '_' and '-' (got '$(basename -- "$MODEL")')"
    MODEL="$(realpath -- "$MODEL")"
fi
for f in pyproject.toml systemd/edgedet.service config/edgedet.example.yaml; do
    [[ -f "$REPO/$f" ]] || die "$REPO/$f is missing: run this script from an edgedet checkout"
done
if ((DRY_RUN == 0)) && [[ -z "$ROOT" ]] && ((EUID != 0)); then
    die "run as root (or try --dry-run, or --root DIR for a throwaway root)"
fi

readonly PREFIX ROOT DRY_RUN ENABLE MODEL SKIP_VENV PYTHON
readonly VENV="$PREFIX/venv"
readonly ETC=/etc/edgedet
readonly CONFIG="$ETC/edgedet.yaml"
readonly ENV_FILE="$ETC/edgedet.env"
readonly STATE=/var/lib/edgedet
readonly UNIT="/etc/systemd/system/$SERVICE"

# ------------------------------------------------------------------------------------ helpers

# "-o OWNER -g GROUP" for install(1), or nothing under --root (the user does not exist there).
OWN=()
own() {
    OWN=()
    if [[ -z "$ROOT" ]]; then
        OWN=(-o "$1" -g "$2")
    fi
}

# Create a directory (with parents) unless it exists; an existing one keeps its owner and mode.
ensure_dir() {
    local dir="$1" mode="$2" owner="$3" group="$4"
    if [[ -d "$ROOT$dir" ]]; then
        note "$ROOT$dir exists"
        return
    fi
    own "$owner" "$group"
    run install -d -m "$mode" "${OWN[@]}" "$ROOT$dir"
}

# The unit as installed: ExecStart follows --prefix.
render_unit() {
    sed "s|$DEFAULT_PREFIX/venv/|$VENV/|g" "$REPO/systemd/edgedet.service"
}

# Write the rendered unit to $1 (mode 0644) atomically.
write_unit() {
    local dst="$1"
    mkdir -p -- "$(dirname -- "$dst")"
    render_unit >"$dst.new"
    chmod 0644 "$dst.new"
    mv -f -- "$dst.new" "$dst"
}

# Copy the example config to $1 (mode 0640; group edgedet unless --root), pointing model.path at
# $2 when given.
write_config() {
    local dst="$1" model_path="${2:-}"
    local expr="s|^\\(  path: \\)$EXAMPLE_MODEL_PATH\$|\\1$model_path|"
    [[ -n "$model_path" ]] || expr=""
    (umask 0027 && sed "$expr" "$REPO/config/edgedet.example.yaml" >"$dst.new")
    if [[ -z "$ROOT" ]]; then
        chown "root:$SVC_USER" "$dst.new"
    fi
    chmod 0640 "$dst.new"
    mv -f -- "$dst.new" "$dst"
}

# Write the environment file template to $1 (mode 0640; group edgedet unless --root).
write_env_template() {
    local dst="$1"
    (
        umask 0027
        cat >"$dst.new" <<'EOF'
# Environment for edgedet.service, read by systemd (EnvironmentFile=). KEY=value, one a line.
# Keep secrets here, not in edgedet.yaml, and refer to them there as ${VAR}, for example:
#CAM_PASS=...
#MQTT_PASSWORD=...
# torch thread count: edgedet sizes its pools from the workers settings; override only if needed.
#OMP_NUM_THREADS=4
EOF
    )
    if [[ -z "$ROOT" ]]; then
        chown "root:$SVC_USER" "$dst.new"
    fi
    chmod 0640 "$dst.new"
    mv -f -- "$dst.new" "$dst"
}

is_jetson() {
    [[ -f /etc/nv_tegra_release ]] || grep -qa 'nvidia,tegra' /proc/device-tree/compatible 2>/dev/null
}

is_raspberry_pi() {
    grep -qa 'Raspberry Pi' /proc/device-tree/model 2>/dev/null
}

# ------------------------------------------------------------------------------------ steps

step_user() {
    if [[ -n "$ROOT" ]]; then
        skip "--root" useradd --system --user-group --groups video --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin "$SVC_USER"
        return
    fi
    if ! getent group video >/dev/null; then
        run groupadd --system video
    fi
    if getent passwd "$SVC_USER" >/dev/null; then
        if [[ " $(id -nG "$SVC_USER") " == *" video "* ]]; then
            note "user $SVC_USER exists (in group video)"
        else
            run usermod --append --groups video "$SVC_USER"
        fi
    else
        run useradd --system --user-group --groups video --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgedet daemon" "$SVC_USER"
    fi
}

step_dirs() {
    ensure_dir "$PREFIX" 0755 root root
    ensure_dir "$ETC" 0750 root "$SVC_USER"
    ensure_dir "$STATE" 0750 "$SVC_USER" "$SVC_USER"
    ensure_dir "$STATE/models" 0750 "$SVC_USER" "$SVC_USER"
}

step_venv() {
    local venv="$ROOT$VENV" pip="$ROOT$VENV/bin/pip" py="$ROOT$VENV/bin/python"
    if ((SKIP_VENV)); then
        skip "--skip-venv" "$PYTHON" -m venv "$venv"
        skip "--skip-venv" "$pip" install --upgrade "${REPO}[profiles]"
        return
    fi
    local arch
    arch="$(uname -m)"
    case "$arch" in
        x86_64 | aarch64) ;;
        *) die "no torch wheels for $arch: use a 64-bit OS (on a Raspberry Pi: 64-bit Raspberry Pi OS)" ;;
    esac
    if [[ -x "$py" ]]; then
        note "venv $venv exists: upgrading in place"
    else
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=/path/to/python3.10+)"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || die "$PYTHON is $("$PYTHON" -V 2>&1); edgedet needs Python >= 3.10 (set PYTHON=...)"
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
            || die "$PYTHON cannot create venvs: apt-get install python3-venv"
        if is_jetson; then
            # A torch from JetPack's system site-packages stays visible inside the venv.
            run "$PYTHON" -m venv --system-site-packages "$venv"
        else
            run "$PYTHON" -m venv "$venv"
        fi
    fi

    # profiles: astral for the example config's sun rules (small, pure Python; imported only for one).
    local extra="[profiles]"
    case "$BACKEND" in
        onnxruntime) extra="[onnx,profiles]" ;;
        openvino | ncnn) extra="[$BACKEND,profiles]" ;;
    esac
    if [[ "$BACKEND" == onnxruntime || "$BACKEND" == ncnn ]]; then
        # The daemon imports torch only for TorchScript models: leave it out (a Pi 4 2 GB saves
        # the ~300 MB it maps). pip cannot drop one dependency, so install the rest by name.
        note "backend $BACKEND: no torch (the daemon never imports it for this backend)"
        run "$pip" install --upgrade --no-deps "$REPO"
        # shellcheck disable=SC2046  # one requirement a word
        run "$pip" install --upgrade $(requirements_without_torch "$extra")
        return
    fi
    if [[ -x "$py" ]] && "$py" -c 'import torch' 2>/dev/null; then
        note "torch $("$py" -c 'import torch; print(torch.__version__)') found in the venv: left as it is"
    elif is_jetson; then
        note "Jetson: PyPI's aarch64 torch has no CUDA for Tegra. For the GPU, install NVIDIA's torch wheel for"
        note "your JetPack into the venv ($pip install <wheel>, see"
        note "https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform/),"
        note "set model.device: cuda and uncomment the Jetson DeviceAllow= lines (systemctl edit edgedet)."
        note "Installing the CPU torch $TORCH_AARCH64 from PyPI for now; an NVIDIA wheel installed later is kept on upgrade."
        run "$pip" install "torch==$TORCH_AARCH64"
    elif [[ "$arch" == x86_64 && ! -e /dev/nvidiactl ]]; then
        note "no NVIDIA GPU: installing the CPU-only torch build (no CUDA libraries)"
        run "$pip" install --index-url "$TORCH_CPU_INDEX" torch
    elif [[ "$arch" == x86_64 ]]; then
        note "NVIDIA GPU found: torch with CUDA from PyPI; uncomment the NVIDIA DeviceAllow= lines"
    else
        note "aarch64: torch $TORCH_AARCH64, the newest CPU-only aarch64 build on PyPI (later ones pull CUDA libraries)"
        run "$pip" install "torch==$TORCH_AARCH64"
    fi
    run "$pip" install --upgrade "$REPO$extra"
}

# The core requirements of pyproject.toml less torch, plus those of extras $1 ("[onnx,profiles]"),
# one a line.
requirements_without_torch() {
    "$PYTHON" - "$REPO/pyproject.toml" "${1:-}" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
extras = [e for e in sys.argv[2].strip("[]").split(",") if e]
def block(pattern):
    m = re.search(pattern + r"\s*=\s*\[(.*?)\]", text, re.S)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []
reqs = [r for r in block(r"(?m)^dependencies") if not re.match(r"torch\b", r)]
for extra in extras:
    reqs += block(r"(?m)^" + re.escape(extra))
print("\n".join(reqs))
PY
}

CONFIG_CREATED=0
step_config() {
    local model_path=""
    if [[ -n "$MODEL" ]]; then
        model_path="$STATE/models/$(basename -- "$MODEL")"
    fi
    if [[ -e "$ROOT$CONFIG" ]]; then
        note "$ROOT$CONFIG exists: kept as it is"
        if [[ -n "$model_path" ]] && ! grep -qF -- "$model_path" "$ROOT$CONFIG"; then
            note "set model.path: $model_path in $CONFIG to use the new model"
        fi
    else
        if [[ -n "$model_path" ]]; then
            run write_config "$ROOT$CONFIG" "$model_path"
        else
            run write_config "$ROOT$CONFIG"
        fi
        CONFIG_CREATED=1
    fi
    if [[ -e "$ROOT$ENV_FILE" ]]; then
        note "$ROOT$ENV_FILE exists: kept as it is"
    else
        run write_env_template "$ROOT$ENV_FILE"
    fi
}

step_model() {
    [[ -n "$MODEL" ]] || return 0
    local dst
    dst="$ROOT$STATE/models/$(basename -- "$MODEL")"
    if [[ -d "$MODEL" ]]; then
        # An *_openvino_model/ or *_ncnn_model/ directory: its files, replaced as a whole.
        if [[ -d "$dst" ]] && diff -rq -- "$MODEL" "$dst" >/dev/null 2>&1; then
            note "$dst is up to date"
            return
        fi
        own "$SVC_USER" "$SVC_USER"
        run rm -rf -- "$dst.new"
        run install -d -m 0750 "${OWN[@]}" "$dst.new"
        local f
        for f in "$MODEL"/*; do
            run install -m 0640 "${OWN[@]}" "$f" "$dst.new/"
        done
        run rm -rf -- "$dst"
        run mv -- "$dst.new" "$dst"
        return
    fi
    if [[ -f "$dst" ]] && cmp -s -- "$MODEL" "$dst"; then
        note "$dst is up to date"
        return
    fi
    own "$SVC_USER" "$SVC_USER"
    run install -m 0640 "${OWN[@]}" "$MODEL" "$dst"
}

step_unit() {
    local dst="$ROOT$UNIT"
    if [[ -f "$dst" ]] && cmp -s -- <(render_unit) "$dst"; then
        note "$dst is up to date"
        return
    fi
    run write_unit "$dst"
}

step_systemd() {
    local why="" active=0
    if [[ -n "$ROOT" ]]; then
        why="--root"
    elif [[ ! -d /run/systemd/system ]]; then
        why="systemd is not running"
    elif systemctl is-active --quiet "$SERVICE"; then
        active=1
    fi
    # The example config has placeholder cameras and broker: starting the service on it would
    # only fail, so a fresh install enables it and leaves the start to the admin.
    local -a cmds=("systemctl daemon-reload")
    if ((ENABLE && CONFIG_CREATED)); then
        cmds+=("systemctl enable $SERVICE")
    elif ((ENABLE)); then
        cmds+=("systemctl enable --now $SERVICE")
        ((active == 0)) || cmds+=("systemctl try-restart $SERVICE")
    fi
    local cmd
    local -a argv
    for cmd in "${cmds[@]}"; do
        read -r -a argv <<<"$cmd"
        if [[ -n "$why" ]]; then
            skip "$why" "${argv[@]}"
        else
            run "${argv[@]}"
        fi
    done
    if ((ENABLE && CONFIG_CREATED)); then
        note "edit $CONFIG and $ENV_FILE, check with: $VENV/bin/edgedet check-config $CONFIG"
        note "then start the service: systemctl start $SERVICE"
    elif ((active && ENABLE == 0)); then
        note "$SERVICE keeps running the previous version until: systemctl restart $SERVICE"
    fi
}

if ((DRY_RUN)); then
    note "dry run: nothing is changed"
fi
if [[ -n "$ROOT" ]]; then
    note "installing into $ROOT"
fi
step_user
step_dirs
step_venv
step_model
step_config
step_local_broker() {
    [[ -n "$LOCAL_BROKER" ]] || return 0
    if [[ -z "$ROOT" ]] && ! command -v mosquitto >/dev/null; then
        run apt-get install -y --no-install-recommends mosquitto
    fi
    if ((BRIDGE_TLS)); then
        ensure_dir "$BRIDGE_CERTS" 0750 root mosquitto
        own root mosquitto
        run install -m 0640 "${OWN[@]}" "$BRIDGE_CA" "$ROOT$BRIDGE_CERTS/ca.crt"
        if [[ -n "$BRIDGE_CERT" ]]; then
            run install -m 0640 "${OWN[@]}" "$BRIDGE_CERT" "$ROOT$BRIDGE_CERTS/client.crt"
            run install -m 0640 "${OWN[@]}" "$BRIDGE_KEY" "$ROOT$BRIDGE_CERTS/client.key"
        fi
    fi
    run write_bridge_conf "$ROOT$BRIDGE_CONF"
    if [[ -n "$ROOT" ]]; then
        skip "--root" systemctl enable --now mosquitto.service
        skip "--root" systemctl restart mosquitto.service
    elif [[ -d /run/systemd/system ]]; then
        run systemctl enable --now mosquitto.service
        run systemctl restart mosquitto.service
    else
        skip "systemd is not running" systemctl restart mosquitto.service
    fi
    note "set mqtt.host: 127.0.0.1 and node_id: $NODE_ID in $CONFIG: the local broker forwards to $LOCAL_BROKER"
}

step_unit
step_local_broker
step_systemd
note "done"
