#!/usr/bin/env bash
# A real single-node Slurm cluster on this host, for the tests that submit jobs through submitit.
# Idempotent, and quiet when everything is already up (run by every `make test`):
#   - installs Debian's packages when missing (slurmctld, slurmd, slurm-client, slurmdbd, munge, mariadb-server);
#   - writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (marked as ours; a config that is not ours is
#     never overwritten: the script stops instead);
#   - starts munged, MariaDB, slurmdbd, slurmctld and slurmd directly (no systemd: the machine may have no init);
#   - waits (bounded) until the node is up and `srun -N1 true` runs; on failure prints the daemons' log tails.
# Accounting (slurmdbd + MariaDB) is part of the cluster because submitit reads job states with `sacct`:
# without it a cancelled or failed job is never seen as finished.
#
#   bash scripts/install-slurm.sh         # install / start / check
#   bash scripts/install-slurm.sh stop    # stop the Slurm daemons (and munged/MariaDB if this script started them)
set -euo pipefail

if [ "$(id -u)" -ne 0 ] && [ "${1:-}" != "stop" ]; then
  # Nothing to do as root when our cluster already runs jobs (e.g. started earlier by root).
  if head -n 1 /etc/slurm/slurm.conf 2>/dev/null | grep -q '^# Managed by llamalab scripts/install-slurm.sh' \
     && timeout 10 scontrol ping 2>/dev/null | grep -q ' is UP' \
     && timeout 60 srun -N1 -n1 -t 1 --mem=16 -J install-slurm-check true >/dev/null 2>&1; then
    exit 0
  fi
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    exec sudo -n bash "$0" "$@"
  fi
  echo "install-slurm: needs root (or password-less sudo) to install and start Slurm" >&2
  exit 1
fi

CLUSTER=llamalab
PARTITION=debug
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
MARK_PREFIX="# Managed by llamalab scripts/install-slurm.sh"   # how the script recognises its own config files
MARK="$MARK_PREFIX (single-node test cluster); edits are overwritten."
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
OURS=/run/llamalab-slurm            # pids of the shared daemons (munged, MariaDB) that this script started
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
DBD_PID=/run/slurmdbd.pid
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
MARIADB_LOG=/var/log/mysql/error.log
WAIT_S=${LLAMALAB_SLURM_WAIT_S:-60}

acted=0
say() { echo "install-slurm: $*" >&2; acted=1; }

# A live process (a killed daemon stays a zombie until init reaps it, which can take a moment).
alive() { # pid
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}
# The pid of a running daemon: from its pid file when that process still lives with the expected name, else none.
daemon_pid() { # name pidfile
  local pid
  pid="$(cat "$2" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$1" ] && alive "$pid"; then
    echo "$pid"
  fi
}
# Running at all (also when started by someone else without our pid file)?
running() { # name pidfile
  local pid
  [ -z "$(daemon_pid "$1" "$2")" ] || return 0
  for pid in $(pgrep -x "$1" 2>/dev/null); do
    alive "$pid" && return 0
  done
  return 1
}

stop_pid() { # name pid
  local i
  kill "$2" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    alive "$2" || return 0
    sleep 0.2
  done
  say "$1 (pid $2) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -9 "$2" 2>/dev/null || true
}

stop_slurm_daemons() {
  local name pidfile pid
  for name in slurmd:$SLURMD_PID slurmctld:$CTLD_PID slurmdbd:$DBD_PID; do
    pidfile=${name#*:}; name=${name%%:*}
    pid="$(daemon_pid "$name" "$pidfile")"
    if [ -n "$pid" ]; then
      say "stopping $name (pid $pid)"
      stop_pid "$name" "$pid"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_slurm_daemons
  for name in mariadbd munged; do
    pid="$(daemon_pid "$name" "$OURS/$name.pid")"
    if [ -n "$pid" ]; then
      say "stopping $name (pid $pid, started by this script)"
      stop_pid "$name" "$pid"
    fi
    rm -f "$OURS/$name.pid"
  done
  exit 0
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [stop]" >&2
  exit 2
fi

show_logs() {
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmdbd.log" \
           /var/log/munge/munged.log "$MARIADB_LOG"; do
    if [ -f "$f" ]; then
      echo "----- tail of $f -----" >&2
      tail -n 25 "$f" >&2
    fi
  done
  echo "----- sinfo -----" >&2
  timeout 10 sinfo -N -l >&2 2>&1 || true
}
fail() { say "FAILED: $*"; show_logs; exit 1; }

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local limit=$1 start=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - start)) -lt "$limit" ] || return 1
    sleep 1
  done
}

# --- 1. packages ---------------------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client slurmdbd:slurmdbd munged:munge \
           mariadbd:mariadb-server; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d (or the absence of an init system) keeps the packages from starting their services: we do it below.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. configuration ----------------------------------------------------------------------------------------------
HOST="$(hostname -s)"
# slurmd -C prints the node's real hardware line: NodeName=... CPUs=... Boards=... RealMemory=...
NODE_LINE="$(slurmd -C | head -n 1)"
case "$NODE_LINE" in
  "NodeName=$HOST "*) ;;
  *) fail "unexpected 'slurmd -C' output: $NODE_LINE" ;;
esac
CPUS="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
MEM_MB="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
DEF_MEM=$((MEM_MB / CPUS))
[ "$DEF_MEM" -le 1024 ] || DEF_MEM=1024  # jobs that ask for no memory get this per CPU, not the whole node

SLURM_CONF_TEXT="$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups in containers: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
Waittime=0
# Finished jobs stay visible to scontrol/squeue for 5 minutes.
MinJobAge=300
# Accounting: submitit reads job states with sacct.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE DefaultTime=60 DefMemPerCPU=$DEF_MEM State=UP
"

DBD_CONF_TEXT="$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
"

changed=0
write_conf() { # path text mode
  if [ -e "$1" ] && [[ "$(head -n 1 "$1")" != "$MARK_PREFIX"* ]]; then
    say "$1 exists and was not written by this script; not overwriting it."
    say "Move it away (or run the tests on a machine whose Slurm is configured for them) and run again."
    exit 1
  fi
  if [ ! -e "$1" ] || [ "$(cat "$1")" != "$(printf '%s' "$2")" ]; then
    mkdir -p "$(dirname "$1")"
    printf '%s' "$2" >"$1.tmp"
    chmod "$3" "$1.tmp"
    mv "$1.tmp" "$1"
    say "wrote $1"
    changed=1
  fi
}
write_conf "$CONF" "$SLURM_CONF_TEXT" 644
write_conf "$DBD_CONF" "$DBD_CONF_TEXT" 600  # slurmdbd refuses a config readable by others
mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$OURS"

if [ "$changed" -eq 1 ]; then
  stop_slurm_daemons  # they read the old config; started again below
fi

# Starts a daemon in its own session, detached from our stdio (make's pipes must not stay open).
spawn() { setsid "$@" </dev/null >/dev/null 2>&1 & }

# --- 3. munge ------------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  say "creating the munge key /etc/munge/munge.key"
  install -d -o munge -g munge -m 0700 /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  say "starting munged"
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || fail "munged did not start"
  cp "$MUNGE_PID" "$OURS/munged.pid" 2>/dev/null || true
  wait_for 10 munge_ok || fail "munge does not answer"
fi

# --- 4. MariaDB (slurmdbd's storage) --------------------------------------------------------------------------------
mariadb_ok() { mariadb-admin --silent ping; }
if ! mariadb_ok >/dev/null 2>&1; then
  say "starting MariaDB"
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
  spawn /usr/sbin/mariadbd --user=mysql --log-error="$MARIADB_LOG"
  wait_for 30 mariadb_ok || fail "MariaDB did not start"
  cp "$MARIADB_PID" "$OURS/mariadbd.pid" 2>/dev/null || true
fi

# --- 5. slurmdbd, slurmctld, slurmd --------------------------------------------------------------------------------
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }
if ! running slurmdbd "$DBD_PID"; then
  say "starting slurmdbd"
  spawn slurmdbd
  wait_for 30 dbd_ok || fail "slurmdbd does not answer"
fi
ctld_ok() { timeout 10 scontrol ping | grep -q UP; }
if ! running slurmctld "$CTLD_PID"; then
  say "starting slurmctld"
  spawn slurmctld
fi
wait_for "$WAIT_S" ctld_ok || fail "slurmctld does not answer"
# slurmctld registers the cluster in the accounting database itself; make sure it is there.
if ! dbd_ok 2>/dev/null | grep -qx "$CLUSTER"; then
  wait_for 20 bash -c "timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER" \
    || fail "cluster $CLUSTER is not registered in slurmdbd"
fi
if ! running slurmd "$SLURMD_PID"; then
  say "starting slurmd"
  spawn slurmd
fi

# --- 6. wait for the node, then run a job --------------------------------------------------------------------------
node_state() { timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1; }
node_ready() {
  case "$(node_state)" in
    *'*'*) return 1 ;;  # not responding (yet): slurmd is still registering
    idle | mixed | allocated | completing) return 0 ;;
    *down* | *drain* | *fail* | inval*)
      # slurmd answers but the node was set down or drained (e.g. after an unexpected restart): resume it.
      timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
      return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "$WAIT_S" node_ready || fail "node $HOST is not up (state: $(node_state))"
# A job must run; skipped only on an already-running cluster whose node is busy with others' jobs (it would queue).
if [ "$acted" -eq 1 ] || [ "$(node_state)" != allocated ]; then
  out="$(timeout 60 srun -N1 -n1 -t 1 --mem=16 -J install-slurm-check true 2>&1)" \
    || fail "srun -N1 true did not run: $out"
fi
out="$(timeout 10 sacct -n -X -o JobID 2>&1)" || fail "sacct does not work (accounting through slurmdbd): $out"

if [ "$acted" -eq 1 ]; then
  say "Slurm is up: cluster $CLUSTER, node $HOST ($CPUS CPUs, $MEM_MB MB), default partition $PARTITION" \
      "(stop it with: bash scripts/install-slurm.sh stop)"
fi
