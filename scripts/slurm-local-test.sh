#!/usr/bin/env bash
# Proves scripts/slurm-study.sh against a real single-node Slurm on
# localhost, from Debian's packages: installs slurm-wlm and munge if needed,
# starts munged, slurmctld and slurmd, runs the `smoke` study as a 3-task
# job array plus the report job, and checks that the tables equal those of a
# plain single-machine run; then the quick version, whose report must land in
# its own folder. Needs root (it writes /etc/slurm). Usage:
#   scripts/slurm-local-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command -v slurmctld >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
host=$(hostname -s)
mkdir -p /etc/slurm /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm /run/munge /etc/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break; sleep 1; done
sinfo
# The reference: a plain run into a scratch folder.
scratch=$(mktemp -d)
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/sparsity-lab"
"$bin" --exp smoke --out "$scratch/plain" >/dev/null
# The same study through Slurm: 3 shards and the report job, into results/smoke.
rm -rf "$root/results/smoke"
scripts/slurm-study.sh smoke 3
for _ in $(seq 300); do [ -z "$(squeue -h)" ] && break; sleep 1; done
squeue
ls "$root/results/smoke/runs"/*.json | wc -l | xargs echo "run files:"
for f in results.md results.csv metrics.csv; do
  cmp "$scratch/plain/$f" "$root/results/smoke/$f" && echo "$f: identical to the plain run"
done
grep -h "reproduction:" "$root"/slurm-logs/sl-smoke-report-*.out | tail -1
# The quick version goes to its own folder, and so does its report.
scripts/slurm-study.sh smoke 2 --quick
for _ in $(seq 300); do [ -z "$(squeue -h)" ] && break; sleep 1; done
test -f "$root/results/smoke/quick/results.md" && echo "quick: report written to results/smoke/quick"
echo "slurm: ok"
