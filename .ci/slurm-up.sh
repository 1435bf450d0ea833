#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (Debian/Ubuntu, root, no systemd needed) so that
# tests/test_slurm.py can run the workflow through profiles/slurm for real. Safe to run again: it only
# installs, writes or starts what is missing, and restarts the daemons when slurm.conf changed.
#
# Partitions: `cpu` (default) and `gpu`, both on this node. The node has 2 GPU GRES (`Gres=gpu:2`), so the
# GPU rules' `--gpus`/`--gres` requests are real requests that Slurm must accept and record. There are no
# GPUs: Slurm 22.05 ignores a count-only gres.conf line (slurmd then reports 0 GPUs and the node goes
# INVAL), so gres.conf names two character devices made with `mknod NAME c 1 3` (the numbers of
# /dev/null), with AutoDetect=off. Jobs see CUDA_VISIBLE_DEVICES, but no CUDA: training runs on CPU.
# Accounting is off (no slurmdbd), so `sacct` cannot report jobs: use `--slurm-status-command squeue`
# (MinJobAge below keeps finished jobs visible to squeue long enough).
#
# Usage: .ci/slurm-up.sh            (environment: SLURM_UP_TIMEOUT, seconds to wait for the node; 60)
set -euo pipefail

WAIT_S=${SLURM_UP_TIMEOUT:-60}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
FAKE_GPUS=(/dev/ggn-ci-gpu0 /dev/ggn-ci-gpu1)   # stand-ins for /dev/nvidia0 and /dev/nvidia1
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

say() { printf '[slurm-up] %s\n' "$*"; }
die() { printf '[slurm-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons); try: sudo $0"

# --- 1. packages ---------------------------------------------------------------------------------
need_install=()
for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_install+=("${pair#*:}")
done
if [ ${#need_install[@]} -gt 0 ]; then
    say "installing ${need_install[*]} (apt-get)"
    # Keep package scripts from starting daemons before the config exists (docker images usually
    # ship this file already; a CI VM might not).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q || die "apt-get update failed (network or apt lock?)"
    timeout 600 apt-get install -y -q --no-install-recommends "${need_install[@]}" \
        || die "apt-get install ${need_install[*]} failed"
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    trap - EXIT
else
    say "packages already installed: $(sbatch --version)"
fi

# --- 2. munge ------------------------------------------------------------------------------------
getent passwd munge >/dev/null || die "user 'munge' is missing; reinstall the munge package"
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    say "munged already running"
else
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start; see /var/log/munge/munged.log"
    for _ in $(seq 20); do
        timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
    timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 \
        || die "munged is not answering; see /var/log/munge/munged.log"
fi

# --- 3. fake GPU devices, gres.conf and slurm.conf -----------------------------------------------
for dev in "${FAKE_GPUS[@]}"; do
    if [ ! -c "$dev" ]; then
        rm -f "$dev"
        mknod "$dev" c 1 3 || die "mknod $dev c 1 3 failed (needs root and a /dev that allows device nodes)"
        say "made fake GPU device $dev (c 1 3)"
    fi
done
cpus=$(nproc)
total_mb=$(free -m | awk '/^Mem:/ {print $2}')
# slurmd drains a node that reports less memory than RealMemory; leave it a margin.
margin_mb=$(( total_mb / 20 > 512 ? total_mb / 20 : 512 ))
real_mb=$(( total_mb - margin_mb ))
[ "$real_mb" -gt 0 ] || die "could not work out memory from 'free -m' (total ${total_mb} MB)"

new_conf=$(cat <<EOF
# Written by .ci/slurm-up.sh: a one-node test cluster on ${HOST}. Re-running the script rewrites it.
ClusterName=ggn-ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
# Finished jobs stay visible to squeue and scontrol this long: the snakemake status check uses them, and
# tests/test_slurm.py reads the records of every job of a run at its end (on a busy machine, a long one).
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mb} Gres=gpu:${#FAKE_GPUS[@]} State=UNKNOWN
PartitionName=cpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP
EOF
)

new_gres=$(printf '# Written by .ci/slurm-up.sh: fake GPUs (character devices c 1 3), so that GPU requests can be scheduled.\n'
           printf 'AutoDetect=off\n'
           for dev in "${FAKE_GPUS[@]}"; do printf 'Name=gpu File=%s\n' "$dev"; done)

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
conf_changed=0
write_if_changed() {  # write_if_changed PATH CONTENT WHAT
    if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then
        say "$1 unchanged ($3)"
    else
        printf '%s\n' "$2" > "$1.tmp"
        mv "$1.tmp" "$1"
        conf_changed=1
        say "wrote $1 ($3)"
    fi
}
write_if_changed "$GRES_CONF" "$new_gres" "${#FAKE_GPUS[@]} GPUs: ${FAKE_GPUS[*]}"
write_if_changed "$CONF" "$new_conf" \
    "node ${HOST}: ${cpus} CPUs, ${real_mb} MB of ${total_mb} MB, gpu:${#FAKE_GPUS[@]}; partitions cpu, gpu"

# --- 4. daemons ----------------------------------------------------------------------------------
running() {  # running NAME PIDFILE: the pid file names a live process called NAME
    local pid
    [ -s "$2" ] || return 1
    pid=$(cat "$2")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

stop() {  # stop NAME PIDFILE
    local pid
    running "$1" "$2" || return 0
    pid=$(cat "$2")
    say "stopping $1 (pid $pid) to load the new slurm.conf/gres.conf"
    kill "$pid"
    for _ in $(seq 40); do running "$1" "$2" || return 0; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
}

if [ "$conf_changed" = 1 ]; then
    stop slurmd "$SLURMD_PID"
    stop slurmctld "$CTLD_PID"
fi

if running slurmctld "$CTLD_PID"; then
    say "slurmctld already running (pid $(cat "$CTLD_PID"))"
else
    say "starting slurmctld"
    timeout 30 slurmctld || die "slurmctld failed to start; see ${LOG_DIR}/slurmctld.log"
fi
if running slurmd "$SLURMD_PID"; then
    say "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
    say "starting slurmd"
    timeout 30 slurmd -N "$HOST" || die "slurmd failed to start; see ${LOG_DIR}/slurmd.log"
fi

# --- 5. wait for the node ------------------------------------------------------------------------
say "waiting up to ${WAIT_S}s for node ${HOST} to be idle"
deadline=$(( $(date +%s) + WAIT_S ))
state=""
resumed=0
while :; do
    state=$(timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        down | drained | draining)
            # e.g. left down by an earlier run with another config; it is healthy now or it stays down.
            if [ "$resumed" = 0 ]; then
                say "node is ${state}; resuming it"
                timeout 10 scontrol update NodeName="$HOST" State=RESUME || true
                resumed=1
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        printf '[slurm-up] ERROR: node %s not idle after %ss (state: %s)\n' "$HOST" "$WAIT_S" "${state:-none}" >&2
        timeout 10 sinfo -R >&2 || true
        for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
            printf -- '--- tail %s\n' "$f" >&2
            tail -n 20 "$f" >&2 2>/dev/null || true
        done
        exit 1
    fi
    sleep 1
done

say "cluster up: node ${HOST} is ${state}"
timeout 10 sinfo
