#!/usr/bin/env bash
#! A real Slurm cluster on this one machine for the tests: installs Debian's slurm-wlm + munge (once) and
#! starts/stops munged, slurmctld and two slurmd "nodes" without systemd, all inside one state folder.
#
#   source ops/slurm_cluster.sh          # install if missing (quick when installed); exports TRESNET_SLURM_CLUSTER
#   bash ops/slurm_cluster.sh start DIR  # start a cluster whose every file lives in DIR (created):
#                                        # DIR/slurm.conf (point SLURM_CONF at it), private ports, its own
#                                        # munge key and socket; waits until both nodes are idle
#   bash ops/slurm_cluster.sh stop DIR   # stop the daemons started in DIR, by PID
#
# Nothing system-wide is configured or started: /etc/slurm is untouched and every daemon gets `-f
# DIR/slurm.conf`, so several clusters (tests of other checkouts) can run side by side. The nodes n1 and
# n2 are two slurmd processes on this host (`slurmd -N`), each with its own port and spool. Jobs run as
# root. tests/tests/slurm.rs starts one per test through `start` and stops it with a Drop guard.
export TRESNET_SLURM_CLUSTER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm_cluster.sh"

_tresnet_slurm_install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
    && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "tresnet-eval: slurm-wlm and munge are missing and only root can install them" >&2
    return 1
  fi
  echo "tresnet-eval: installing Debian slurm-wlm and munge (about a minute)" >&2
  # policy-rc.d 101 keeps the packages' init scripts from starting system-wide daemons.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >&2
  local rc=$?
  [ -n "$created" ] && rm -f "$policy"
  return $rc
}

_tresnet_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Seconds to wait for the daemons to come up and the nodes to report idle: slurmd registers within a
# second or two; the margin is for a loaded 2-core machine.
_TRESNET_SLURM_START_TIMEOUT=60

_tresnet_slurm_start() {
  local dir="$1" host cpus p_ctld p_n1 p_n2 i
  mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"
  chmod 700 "$dir"
  mkdir -p "$dir/state" "$dir/spool/n1" "$dir/spool/n2" "$dir/log"
  host="$(hostname -s)"
  cpus="$(nproc)"
  p_ctld="$(_tresnet_free_port)"; p_n1="$(_tresnet_free_port)"; p_n2="$(_tresnet_free_port)"
  # munge: a key of this cluster's own, a socket in DIR; root runs it (--force), as the jobs do.
  dd if=/dev/urandom of="$dir/munge.key" bs=1 count=1024 status=none && chmod 600 "$dir/munge.key"
  /usr/sbin/munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed" || return 1
  cat > "$dir/slurm.conf" <<EOF
ClusterName=tresnet-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$p_ctld
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
# The coordinator drains on SIGTERM (--drain-timeout-ms); KillWait is how long Slurm waits before SIGKILL.
KillWait=30
MinJobAge=600
# Schedule pending jobs (a requeued one) within a second instead of the default minute: tests wait on it.
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$p_n1 CPUs=$cpus State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$p_n2 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  /usr/sbin/slurmctld -f "$dir/slurm.conf" -c || return 1
  /usr/sbin/slurmd -f "$dir/slurm.conf" -N n1 || return 1
  /usr/sbin/slurmd -f "$dir/slurm.conf" -N n2 || return 1
  for ((i = 0; i < _TRESNET_SLURM_START_TIMEOUT * 5; i++)); do
    if [ "$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ]; then
      return 0
    fi
    sleep 0.2
  done
  echo "tresnet-eval: the Slurm nodes in $dir did not become idle within ${_TRESNET_SLURM_START_TIMEOUT}s" >&2
  SLURM_CONF="$dir/slurm.conf" sinfo -N >&2
  tail -n 20 "$dir"/log/*.log >&2
  return 1
}

# Stops each daemon by the PID it wrote, waiting (bounded) for it to exit, then SIGKILLs what is left.
_tresnet_slurm_stop() {
  local dir="$1" f pid i
  for f in "$dir/slurmd-n1.pid" "$dir/slurmd-n2.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) set -uo pipefail; _tresnet_slurm_install && _tresnet_slurm_start "${2:?usage: slurm_cluster.sh start DIR}" ;;
  stop) _tresnet_slurm_stop "${2:?usage: slurm_cluster.sh stop DIR}" ;;
  "") _tresnet_slurm_install || { return 1 2>/dev/null || exit 1; } ;;
  *) echo "usage: slurm_cluster.sh [start DIR | stop DIR]" >&2; exit 2 ;;
esac
