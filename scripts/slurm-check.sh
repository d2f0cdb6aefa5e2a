#!/usr/bin/env bash
# Runs a pipeline on a real single-node Slurm cluster through `w2s plan --format slurm` and
# compares its tables with a local `w2s run` of the same pipeline (docs/reliability.md
# records the last output). Needs root on Debian/Ubuntu: installs slurm-wlm and munge if missing,
# writes /etc/slurm/slurm.conf for this one node, starts munged, slurmctld and slurmd.
#
#   bash scripts/slurm-check.sh [PIPELINE]        # default pipelines/quickstart.toml
#
# Takes about twice the pipeline's own time (it runs once under Slurm, once locally).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPELINE=${1:-pipelines/quickstart.toml}
WORK=${WORK:-/tmp/w2s-slurm-check}
W2S=$PWD/target/release/w2s

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi
[ -x "$W2S" ] || cargo build --release --locked

# --- a one-node cluster
node=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=w2scheck
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=check Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
[ -s /etc/munge/munge.key ] || mungekey --create
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || runuser -u munge -- munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo

# --- the same pipeline under Slurm and locally
rm -rf "$WORK"
mkdir -p "$WORK"
slurm_root=$WORK/slurm-root
local_root=$WORK/local-root
"$W2S" plan "$PIPELINE" --set "artifacts=$slurm_root" --format slurm > "$WORK/plan.sh"
echo "plan: $(grep -c 'exec "$W2S"' "$WORK/plan.sh") steps in $(grep -c '^submit ' "$WORK/plan.sh") job arrays"
start=$(date +%s)
W2S=$W2S JOBS_DIR=$WORK/jobs W2S_LOG=warn bash "$WORK/plan.sh" --cpus-per-task=1 | tee "$WORK/submit.log"
last=$(tail -n 1 "$WORK/submit.log" | sed 's/.*job \([0-9]*\).*/\1/')
while squeue -h | grep -q .; do sleep 5; done
echo "Slurm: all jobs left the queue after $(( $(date +%s) - start )) s"
failed=$(scontrol show job 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort | uniq -c)
echo "job states: $failed"
if echo "$failed" | grep -v COMPLETED | grep -q JobState; then
    tail -n 20 "$WORK"/jobs/logs/*.out
    echo "FAILED: a Slurm task did not complete" >&2
    exit 1
fi
left=$("$W2S" plan "$PIPELINE" --set "artifacts=$slurm_root" --format slurm | grep -c 'exec "$W2S"' || true)
echo "steps left after the Slurm run (recorded by the tasks): $left"

start=$(date +%s)
W2S_LOG=warn "$W2S" run "$PIPELINE" --set "artifacts=$local_root" > "$WORK/local.log"
echo "local w2s run: $(( $(date +%s) - start )) s"

status=0
for q in \
    "select * from pairs order by pair_id" \
    "select * from labels order by run_id, split_index" \
    "select * from scores order by run_id, split_index" \
    "select run_id, step, loss, lr, accuracy, pairs, tokens from train_log order by run_id, step" \
    "select run_id, stage, objective, teacher, alpha, seed, settings, fingerprint, steps, tokens, final_loss from runs order by run_id" \
    "select * from analysis_summary order by 1, 2, 3, 4, 5"; do
    a=$("$W2S" --log warn sql --artifacts "$slurm_root" --format csv "$q" | sha256sum)
    b=$("$W2S" --log warn sql --artifacts "$local_root" --format csv "$q" | sha256sum)
    rows=$("$W2S" --log warn sql --artifacts "$local_root" --format csv "$q" | tail -n +2 | wc -l)
    if [ "$a" = "$b" ]; then echo "same  ($rows rows): $q"; else echo "DIFFERENT: $q"; status=1; fi
done
[ "$left" = 0 ] || status=1
[ $status = 0 ] && echo "PASSED: the Slurm run's tables equal the local run's" || echo "FAILED" >&2
exit $status
