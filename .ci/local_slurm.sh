#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, for the tests marked `slurm` (tests/test_slurm.py) and for trying
# `hmem ... --launcher slurm` on one machine. Debian 12's packages (Slurm 22.05, munge); run as root.
#
#   .ci/local_slurm.sh install    apt-get install slurmctld slurmd slurm-client munge (slurmdbd mariadb-server too
#                                 with HMEM_SLURM_ACCOUNTING=1, the default: sacct needs them)
#   .ci/local_slurm.sh start      write /etc/slurm/slurm.conf for this host (its cores as one node, partition
#                                 `debug`), start munged, [mariadb + slurmdbd], slurmctld, slurmd; wait for `sinfo`
#                                 to show the node idle
#   .ci/local_slurm.sh stop       stop the daemons this script started (by their pid files)
#   .ci/local_slurm.sh status     sinfo + squeue
#
# Works in a container without systemd or cgroups: proctrack/linuxproc, task/none, jobacct_gather/none. Every
# daemon runs as root with its own pid and log file under /var/lib/hmem-slurm (logs: $STATE/log/). A
# slurm.conf that this script did not write is never overwritten (start refuses).
set -euo pipefail

STATE=${HMEM_SLURM_STATE:-/var/lib/hmem-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hmem_lit .ci/local_slurm.sh"
ACCOUNTING=${HMEM_SLURM_ACCOUNTING:-1}
HOST=$(hostname -s)

die() { echo "local_slurm: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"; }

install() {
    need_root
    local pkgs=(slurmctld slurmd slurm-client munge)
    [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
    if dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then echo "local_slurm: packages already installed"; return; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    echo "local_slurm: installed ${pkgs[*]} ($(slurmctld -V))"
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$STATE"/{ctld,d,log,run} /etc/slurm
    # the node as slurmd sees it (CPUs, sockets, cores, threads, memory), so slurmd registers without a mismatch
    local node
    node=$(slurmd -C | head -1)
    local acct="AccountingStorageType=accounting_storage/none"
    [ "$ACCOUNTING" = 1 ] && acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
    cat >"$CONF" <<EOF
$MARK
ClusterName=hmemtest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups in a container: track processes by parent pid, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# short waits: a test cluster, jobs end within seconds of scancel / requeue
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$ACCOUNTING" = 1 ]; then
        cat >/etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=hmem_slurm_acct
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
        chmod 600 /etc/slurm/slurmdbd.conf
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    su -s /bin/sh munge -c "/usr/sbin/munged"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged did not start"
}

start_accounting() {
    [ "$ACCOUNTING" = 1 ] || return 0
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        (mysqld_safe --skip-syslog >"$STATE/log/mysqld.out" 2>&1 &)
        for _ in $(seq 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
        mysqladmin ping >/dev/null 2>&1 || die "mariadb did not start (see $STATE/log/mysqld.out)"
    fi
    running slurmdbd || /usr/sbin/slurmdbd
    for _ in $(seq 100); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
    sacctmgr -n show cluster >/dev/null 2>&1 || die "slurmdbd did not answer (see $STATE/log/slurmdbd.log)"
    sacctmgr -n show cluster format=cluster | grep -qw hmemtest || sacctmgr -i add cluster hmemtest >/dev/null
}

running() { local f="$STATE/run/$1.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

start() {
    need_root
    command -v slurmctld >/dev/null || die "slurmctld is not installed: run '$0 install' first"
    write_conf
    start_munge
    start_accounting
    running slurmctld || /usr/sbin/slurmctld
    running slurmd || /usr/sbin/slurmd
    for _ in $(seq 150); do
        if [ "$(sinfo -h -n "$HOST" -o %t 2>/dev/null)" = idle ]; then
            sinfo
            return 0
        fi
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 0.2
    done
    sinfo || true
    die "the node did not become idle (logs: $STATE/log/)"
}

stop_pid() {
    local f="$STATE/run/$1.pid"
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        local pid
        pid=$(cat "$f")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}

stop() {
    scancel --state=RUNNING,PENDING --full 2>/dev/null || true
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid slurmdbd
    if [ "$ACCOUNTING" = 1 ] && mysqladmin ping >/dev/null 2>&1; then mysqladmin shutdown 2>/dev/null || true; fi
    local m
    m=$(cat /run/munge/munged.pid 2>/dev/null || true)
    if [ -n "$m" ] && kill -0 "$m" 2>/dev/null; then kill "$m"; fi
    echo "local_slurm: stopped"
}

status() { sinfo; squeue; }

[ $# -ge 1 ] || die "usage: $0 install|start|stop|status ..."
for cmd in "$@"; do
    case "$cmd" in
    install | start | stop | status) "$cmd" ;;
    *) die "unknown command $cmd (install | start | stop | status)" ;;
    esac
done
