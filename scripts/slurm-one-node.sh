#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm and munge), for tests and trials.
#
#   scripts/slurm-one-node.sh start    install the packages if missing, write the configuration,
#                                      start munged, slurmctld and slurmd, wait for the node
#   scripts/slurm-one-node.sh stop     stop the three daemons this script started
#   scripts/slurm-one-node.sh status   sinfo
#
# Needs root (apt-get, the daemons). Its state (spool, logs, pid files) lives in
# $SLURM_ONE_NODE_DIR (default /tmp/slurm-one-node). The configuration goes to
# /etc/slurm/slurm.conf, where Slurm's commands look for it; a slurm.conf not written by this
# script is left alone and the start fails. Exit status 77: the packages cannot be installed.
set -euo pipefail

DIR=${SLURM_ONE_NODE_DIR:-/tmp/slurm-one-node}
CONF=/etc/slurm/slurm.conf
MARK="# written by scripts/slurm-one-node.sh"

log() { echo "slurm-one-node: $*" >&2; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    log "installing slurmctld, slurmd, slurm-client and munge with apt-get"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends slurmctld slurmd slurm-client munge; } >"$DIR/apt.log" 2>&1; then
        log "cannot install Slurm's packages (see $DIR/apt.log):"
        tail -5 "$DIR/apt.log" >&2
        exit 77
    fi
}

write_conf() {
    local host cpus node mem
    host=$(hostname -s)
    # the node as slurmd sees this machine (CPUs, sockets, cores, threads, memory)
    node=$(slurmd -C | head -1 | sed 's/ UpTime=.*//; s/ RealMemory=[0-9]*//')
    mem=$(slurmd -C | head -1 | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
    node="$node RealMemory=$((mem * 9 / 10))"  # leave a tenth of the memory to the system
    cpus=$(nproc)
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script: not touching it"
        exit 1
    fi
    mkdir -p /etc/slurm
    cat >"$CONF" <<CONF
$MARK ($cpus CPUs)
ClusterName=onenode
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MinJobAge=600
SlurmdTimeout=60
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if [[ -f $DIR/munged.pid ]] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    # munged writes its pid file as the munge user; keep a copy with the others
    for _ in $(seq 50); do
        if [[ -s /run/munge/munged.pid ]]; then cp /run/munge/munged.pid "$DIR/munged.pid"; break; fi
        sleep 0.1
    done
}

start() {
    mkdir -p "$DIR/ctld" "$DIR/slurmd"
    install
    write_conf
    start_munge
    if ! { [[ -f $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; }; then
        slurmctld -i
    fi
    if ! { [[ -f $DIR/slurmd.pid ]] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; }; then
        slurmd
    fi
    for _ in $(seq 120); do
        if sinfo -h -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
            log "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
            return 0
        fi
        sleep 0.5
    done
    log "the node did not come up; logs: $DIR/slurmctld.log $DIR/slurmd.log"
    tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    exit 1
}

stop_one() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_one "$DIR/slurmd.pid"
    stop_one "$DIR/slurmctld.pid"
    stop_one "$DIR/munged.pid"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
