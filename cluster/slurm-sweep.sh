#!/bin/bash
# keyhand sweep on a SLURM GPU allocation: a Ray head on the first node, a Ray worker on each of the others,
# then `keyhand sweep --address` from the head. README: "Running on a GPU cluster".
#
#   sbatch cluster/slurm-sweep.sh ablation            # or gesture-cv, search; from the project folder
#
# The project folder (params.yaml, data/, runs/: Tune storage, MLflow store, checkpoints) must be on a file
# system every node mounts (home, /scratch, Lustre, GPFS...); keyhand is installed once in $KEYHAND_VENV:
#   python3.11 -m venv .venv && .venv/bin/pip install -e . "torch==2.13.0"
#
#SBATCH --job-name=keyhand-sweep
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --output=keyhand-sweep-%j.log
set -euo pipefail

WHAT=${1:-ablation}
PROJECT=${KEYHAND_PROJECT:-$SLURM_SUBMIT_DIR}
VENV=${KEYHAND_VENV:-$PROJECT/.venv}
GPUS_PER_TRIAL=${KEYHAND_GPUS_PER_TRIAL:-0.25}
PORT=6379
MLFLOW_PORT=5000
GPUS=${SLURM_GPUS_PER_NODE##*:}        # "4" or "a100:4" -> 4

# Ray 2.60 token authentication: one token for this job, on the shared file system, read by every node
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$PROJECT/.ray-token-$SLURM_JOB_ID"
(umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")
export RAY_USAGE_STATS_ENABLED=0

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')

cleanup() {
    # the srun steps own the Ray processes: ending them stops Ray on every node (no `ray stop`)
    kill $(jobs -p) 2>/dev/null || true
    wait || true
    rm -f "$RAY_AUTH_TOKEN_PATH"
}
trap cleanup EXIT

echo "Ray head on $head ($head_ip:$PORT); workers on ${nodes[*]:1}"
srun --nodes=1 --ntasks=1 -w "$head" --export=ALL \
    "$VENV/bin/ray" start --head --node-ip-address="$head_ip" --port=$PORT \
    --num-cpus=0 --num-gpus=0 --include-dashboard=false --block &

for i in $(seq 1 60); do   # the head's GCS answers
    "$VENV/bin/ray" status --address="$head_ip:$PORT" >/dev/null 2>&1 && break
    sleep 5
done

for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" --export=ALL \
        "$VENV/bin/ray" start --address="$head_ip:$PORT" \
        --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$GPUS" --block &
done

"$VENV/bin/python" - "$head_ip:$PORT" "${#nodes[@]}" <<'PY'
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.time() + 600
while (alive := sum(n["Alive"] for n in ray.nodes())) < want:
    if time.time() > deadline:
        sys.exit(f"only {alive} of {want} Ray nodes joined")
    time.sleep(5)
print(f"{alive} Ray nodes up: {ray.cluster_resources().get('GPU', 0):g} GPUs")
PY

cd "$PROJECT"
"$VENV/bin/keyhand" sweep "$WHAT" --address "$head_ip:$PORT" \
    --tracking-server "0.0.0.0:$MLFLOW_PORT" --gpus-per-trial "$GPUS_PER_TRIAL" --resume
