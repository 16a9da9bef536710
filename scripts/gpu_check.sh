#!/usr/bin/env bash
# What only a machine with NVIDIA GPUs can check, in under 5 minutes on one GPU:
#   1. throughput (samples/s) of a training step and of inference: CPU, CUDA with bf16 autocast, and bf16 with
#      torch.compile (benchmarks/bench_model.py, the palsy-small network);
#   2. train_facial_palsy.py on generated faces: one epoch on the CPU for the reference figure, then on one GPU with
#      --amp bf16 --compile, then DistributedDataParallel over every GPU with nccl
#      (torchrun --nproc_per_node $(nvidia-smi -L | wc -l)), each with its training samples/s;
#   3. --cv 2 with its folds spread over the GPUs (one fold per GPU at a time).
# The outputs go to a scratch folder (GPU_CHECK_DIR, default a new temporary folder) that is listed at the end.
#
#   bash scripts/gpu_check.sh              # on a machine with NVIDIA GPUs
#   bash scripts/gpu_check.sh --dry_run    # print the commands it would run (any machine, GPU or not)
#
# Without a GPU it refuses with one line and exit status 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry_run) DRY_RUN=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument $arg (use --dry_run or --help)" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"
GPUS=$( { "$NVIDIA_SMI" -L 2>/dev/null || true; } | grep -c '^GPU' || true)
if [ "$GPUS" -lt 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        GPUS=1
        echo "note: no NVIDIA GPU found here; the commands are shown for 1 GPU"
    else
        echo "error: no NVIDIA GPU found ($NVIDIA_SMI -L lists none); this check needs CUDA (bf16 autocast," \
             "--compile, nccl); run it on a GPU machine, or add --dry_run to see its commands" >&2
        exit 2
    fi
fi

WORK="${GPU_CHECK_DIR:-}"
if [ -z "$WORK" ]; then
    if [ "$DRY_RUN" = 1 ]; then WORK=/tmp/gpu_check; else WORK="$(mktemp -d -t gpu_check.XXXXXX)"; fi
fi
CPU_THREADS="$(nproc 2>/dev/null || echo 1)"
FACES="$WORK/faces"
CSV="$WORK/annotation.csv"
TRAIN=(--data_root "$FACES" --train_csv "$CSV" --val_csv "$CSV" --cache_dir "$WORK/landmarks"
       --dim 64 --heads 2 --block_repeats 1 1 2 --batch_size 64 --learning_rate 1e-3 --save_interval 0 --overwrite)
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS")

run() {
    echo "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# training samples/s of a run: training photos x epochs / seconds of its epochs (the first epoch, which compiles,
# left out when there are more)
throughput() {
    if [ "$DRY_RUN" = 1 ]; then return; fi
    "$PYTHON" - "$1" "$2" "$CSV" <<'EOF'
import json, sys
import pandas as pd
label, log_dir, csv = sys.argv[1:4]
history = json.load(open(f'{log_dir}/training_history.json'))
seconds = history['epoch_time_s'][1:] or history['epoch_time_s']
photos = int((pd.read_csv(csv)['split'] == 'train').sum())
print(f'{label:<44} {photos * len(seconds) / sum(seconds):>10.1f} training samples/s '
      f'(global batch {history["batch"]["global"]})')
EOF
}

echo "GPUs: $GPUS; scratch folder: $WORK"

echo "== 1. one training step and inference, samples/s (benchmarks/bench_model.py, palsy-small) =="
BENCH=(--preset palsy-small --impl fused --batch_size 64 --steps 10 --warmup 3 --repeats 2)
run "$PYTHON" benchmarks/bench_model.py "${BENCH[@]}" --device cpu --threads "$CPU_THREADS"
run "$PYTHON" benchmarks/bench_model.py "${BENCH[@]}" --device cuda --amp bf16
run "$PYTHON" benchmarks/bench_model.py "${BENCH[@]}" --device cuda --amp bf16 --compile

echo "== 2. train_facial_palsy.py: CPU, one GPU (bf16, --compile), DDP over $GPUS GPU(s) (nccl) =="
run "$PYTHON" prepare_dataset.py --dataset_type synthetic --output_root "$FACES" --num_subjects 120 \
    --images_per_subject 2 --image_size 128 --detection_check 0 --cache_dir "$WORK/landmarks" --device cuda \
    --quiet --overwrite
run "$PYTHON" prepare_dataset.py --dataset_type FNP --data_root "$FACES" --output_csv "$CSV" --quiet --overwrite
run "$PYTHON" train_facial_palsy.py "${TRAIN[@]}" --device cpu --epochs 1 --threads "$CPU_THREADS" \
    --save_dir "$WORK/cpu/c" --log_dir "$WORK/cpu/l"
run "$PYTHON" train_facial_palsy.py "${TRAIN[@]}" --device cuda --amp bf16 --compile --epochs 4 \
    --save_dir "$WORK/gpu/c" --log_dir "$WORK/gpu/l"
run "${TORCHRUN[@]}" train_facial_palsy.py "${TRAIN[@]}" --device cuda --amp bf16 --compile --epochs 4 \
    --save_dir "$WORK/ddp/c" --log_dir "$WORK/ddp/l"

echo "== 3. --cv 2, folds spread over the GPUs =="
run "${TORCHRUN[@]}" train_facial_palsy.py "${TRAIN[@]}" --device cuda --amp bf16 --epochs 2 --cv 2 \
    --save_dir "$WORK/cv/c" --log_dir "$WORK/cv/l"

echo "== training throughput =="
throughput "CPU, $CPU_THREADS threads, float32" "$WORK/cpu/l"
throughput "1 GPU, bf16 autocast, --compile" "$WORK/gpu/l"
throughput "$GPUS GPU(s), DDP (nccl), bf16, --compile" "$WORK/ddp/l"
if [ "$DRY_RUN" = 0 ]; then
    "$PYTHON" -c "import json, sys; s = json.load(open(sys.argv[1])); print('cv over the GPUs:', s['folds_run'], \
'folds, failed', s['failed_folds'] or 'none')" "$WORK/cv/l/cv_summary.json"
fi
echo "outputs: $WORK"
