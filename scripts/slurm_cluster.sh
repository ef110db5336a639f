#!/usr/bin/env bash
# A single-node Slurm on this machine, from Debian's packages, for `make test-slurm` (scripts/slurm_test.sh):
# munged, MariaDB (the accounting store slurmdbd needs), slurmdbd, slurmctld and slurmd, all as root, every file
# under one state directory. Three partitions on the one node: cpu (default), gpu and npu; the node advertises the
# GRES gpu:1 and npu:1 by count only (gres.conf without device files, AutoDetect=off): Slurm schedules and accounts
# them, nothing can use them.
#
#   scripts/slurm_cluster.sh run CMD...   start the cluster, run CMD (SLURM_CONF set), stop every daemon (also when
#                                         CMD fails or is interrupted); exits with CMD's status
#   scripts/slurm_cluster.sh stop         stop what a killed `run` left (by the pid files)
#
# Isolation: `run` re-executes itself in new network and mount namespaces (unshare): the daemons, CMD and every
# Slurm client CMD starts share a network with only a loopback interface, so no Slurm, slurmdbd or MariaDB port is
# reachable from outside (slurmdbd has no bind-address setting); /run/munge and /etc/slurm are private bind mounts,
# so a munged or Slurm configuration of the host (if any) is neither used nor changed; the munge key is this
# cluster's own.
#
# Environment: PORTCHECK_SLURM_STATE (state directory, default /tmp/portcheck-slurm; wiped on start),
# PORTCHECK_SLURM_PORT_BASE (default 16817: slurmctld, slurmd, slurmdbd on BASE, BASE+1, BASE+2; MariaDB BASE+3),
# PORTCHECK_SLURM_START_TIMEOUT (seconds each daemon may take to answer, default 120).
set -euo pipefail

STATE=${PORTCHECK_SLURM_STATE:-/tmp/portcheck-slurm}
BASE=${PORTCHECK_SLURM_PORT_BASE:-16817}
CTLD_PORT=$BASE
SLURMD_PORT=$((BASE + 1))
DBD_PORT=$((BASE + 2))
DB_PORT=$((BASE + 3))
CLUSTER=portcheck
NODE=portcheck-node
HOST=$(hostname -s)
DB_PASS=portcheck-slurm
START_TIMEOUT=${PORTCHECK_SLURM_START_TIMEOUT:-120}
DAEMONS=(slurmd slurmctld slurmdbd mariadb munged)  # stop order

log() { echo "[slurm_cluster] $*" >&2; }

fail() {
  log "ERROR: $*"
  for f in "$STATE"/log/*.log; do
    [[ -f $f ]] && { log "--- tail of $f"; tail -n 15 "$f" >&2; }
  done
  exit 1
}

wait_for() {  # wait_for DAEMON DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds; fail when
  local daemon=$1 what=$2; shift 2  # DAEMON's pid file names a dead process or START_TIMEOUT passes
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${START_TIMEOUT}s waiting for $what"
    if [[ -f $STATE/run/$daemon.pid ]] && ! kill -0 "$(cat "$STATE/run/$daemon.pid")" 2>/dev/null; then
      fail "$daemon exited while starting"
    fi
    sleep 0.5
  done
}

write_configs() {
  mkdir -p "$STATE"/{etc,log,run,spool/ctld,spool/d,munge,munge-run,mysql}
  chmod 700 "$STATE/munge"
  chmod 755 "$STATE/munge-run"
  # A key of this cluster's own (the package's /etc/munge/munge.key stays untouched).
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 600 "$STATE/munge/munge.key"

  cat >"$STATE/etc/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: one node, scheduling and accounting only.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by their parent, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 5 minutes; sacct keeps them for good.
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu,gres/npu
# sacct shows the plugin's --comment (rule_<rule>_wildcards_<target>).
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu,npu
# The node's configured sizes count, not the machine's (RealMemory above the profile's mem_mb of 32000).
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=64000 Gres=gpu:1,npu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
PartitionName=npu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

  # No autodetection, no device. npu: a count (Slurm has no npu plugin: it tracks the count). gpu: Slurm 22.05's gpu
  # plugin drops a GPU without File= ("Removing file-less GPU"), so File= names /dev/null, a character device that
  # nothing opens (no cgroup device constraint here: task/none).
  cat >"$STATE/etc/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/null Count=1
Name=npu Count=1
EOF

  cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

pid_alive() { [[ -f $STATE/run/$1.pid ]] && kill -0 "$(cat "$STATE/run/$1.pid")" 2>/dev/null; }

start_munge() {
  # Slurm's clients and daemons talk to munged on its default socket (/run/munge/munge.socket.2): inside the mount
  # namespace that directory is this cluster's own.
  mkdir -p /run/munge
  mount --bind "$STATE/munge-run" /run/munge
  munged --key-file="$STATE/munge/munge.key" --pid-file="$STATE/run/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed" --force
  wait_for munged munged munge -n
}

mysql_cmd() { mariadb --no-defaults --socket="$STATE/mysql.sock" -uroot "$@"; }

start_mariadb() {
  mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root --auth-root-authentication-method=socket \
    --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
  # setsid: its own process group, so that `stop` ends it and nothing else.
  setsid mariadbd --no-defaults --datadir="$STATE/mysql" --user=root --socket="$STATE/mysql.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" \
    --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    --skip-name-resolve </dev/null >/dev/null 2>&1 &
  wait_for mariadb mariadb mysql_cmd -e "SELECT 1"
  mysql_cmd -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start() {
  for cmd in munged slurmctld slurmd slurmdbd mariadbd sacctmgr sinfo; do
    command -v "$cmd" >/dev/null || fail "$cmd is missing (make test-slurm installs the Debian packages)"
  done
  stop 2>/dev/null || true
  rm -rf "$STATE"
  write_configs
  # Slurm's default configuration path, inside the mount namespace only: the jobstep plugin starts a job's `srun`
  # with every SLURM_* variable but a few removed (SLURM_CONF among them), so srun reads /etc/slurm/slurm.conf.
  mkdir -p /etc/slurm
  mount --bind "$STATE/etc" /etc/slurm
  export SLURM_CONF=$STATE/etc/slurm.conf
  local t0=$SECONDS
  start_munge
  start_mariadb
  slurmdbd || fail "slurmdbd did not start"
  wait_for slurmdbd slurmdbd sacctmgr -i list cluster
  # The cluster, and an account `portcheck` root belongs to (root also keeps its default account `root`).
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -i add account portcheck Cluster="$CLUSTER" Description=portcheck Organization=portcheck >/dev/null
  sacctmgr -i add user root Account=portcheck Cluster="$CLUSTER" >/dev/null
  slurmctld || fail "slurmctld did not start"
  wait_for slurmctld slurmctld scontrol ping
  slurmd -N "$NODE" || fail "slurmd did not start"
  wait_for slurmd "node $NODE idle" bash -c "sinfo -h -n $NODE -o %t | grep -qx idle"
  log "up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %t %G' | tr '\n' ' ')"
}

stop() {
  local name pid
  for name in "${DAEMONS[@]}"; do
    [[ -f $STATE/run/$name.pid ]] || continue
    pid=$(cat "$STATE/run/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/run/$name.pid"
  done
}

case ${1:-} in
  stop) stop ;;
  run)
    shift
    [[ $# -gt 0 ]] || { echo "usage: $0 run COMMAND..." >&2; exit 2; }
    if [[ -z ${PORTCHECK_SLURM_NAMESPACED:-} ]]; then
      command -v unshare >/dev/null || fail "unshare (util-linux) is missing"
      PORTCHECK_SLURM_NAMESPACED=1 exec unshare --net --mount --propagation private --fork -- "$0" run "$@"
    fi
    # Loopback only. The second address: Slurm binds with getaddrinfo(AI_ADDRCONFIG), which finds no IPv4 address
    # while 127.0.0.1 is the only one.
    { ip link set lo up && ip addr add 127.0.0.2/8 dev lo; } || fail "cannot set up the network namespace's loopback"
    trap stop EXIT
    trap 'exit 130' INT TERM
    start >/dev/null
    export SLURM_CONF=$STATE/etc/slurm.conf
    "$@"
    ;;
  *) echo "usage: $0 run COMMAND... | stop" >&2; exit 2 ;;
esac
