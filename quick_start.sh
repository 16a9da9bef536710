#!/usr/bin/env bash
# HTNet for facial palsy grading: the whole pipeline, end to end, on the built-in synthetic faces.
#
#   bash quick_start.sh                      # CPU: profile cpu_quickstart (< 10 min on 2 cores); GPU: standard
#   bash quick_start.sh --profile small      # any profile of config_examples.yaml
#   HTNET_PROFILE=fnp_6class bash quick_start.sh
#
# Steps: set up .venv -> synthetic dataset (only if ./datasets/facial_palsy/FNP holds no images) -> prepare the
# subject-disjoint annotation CSV -> train -> evaluate on the test subjects -> grade test photos -> attention maps.
# Re-running replaces only what an earlier quick start made: a run of yours in ./checkpoints/fnp is moved to
# ./checkpoints/fnp.previous-<time>, an annotation CSV of yours is used as it is, your photos are only read.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

DATA_ROOT=./datasets/facial_palsy/FNP
CSV=./datasets/facial_palsy/fnp_annotation.csv
CSV_MARK=./datasets/facial_palsy/.fnp_annotation.csv.quick_start  # SHA-256 of the CSV this script wrote
SAVE_DIR=./checkpoints/fnp
LOG_DIR=./logs/fnp
RUN_MARK=.quick_start_run  # in $SAVE_DIR: the run id of the run this script trained
EVAL_DIR=./evaluation_results
ATTENTION_DIR=./attention_visualizations
CONFIG=config_examples.yaml
STEP=0
TOTAL=7

# what an earlier quick start made, and so may replace

digest() { python -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

own_csv() {  # true when $CSV is the file an earlier quick start wrote, unchanged since
    [ -f "$CSV" ] && [ -f "$CSV_MARK" ] && [ "$(cat "$CSV_MARK")" = "$(digest "$CSV")" ]
}

own_run() {  # true when $SAVE_DIR / $LOG_DIR hold the run an earlier quick start trained, and no other
    [ -f "$SAVE_DIR/$RUN_MARK" ] || return 1
    python -c 'import sys, run_folders; sys.exit(run_folders.run_ids_in(sys.argv[1], sys.argv[2]) != {sys.argv[3]})' \
        "$SAVE_DIR" "$LOG_DIR" "$(cat "$SAVE_DIR/$RUN_MARK")"
}

mark_run() {
    python -c 'import sys, run_folders; print(run_folders.run_id_of(sys.argv[1]) or "")' "$SAVE_DIR/last.pth" \
        > "$SAVE_DIR/$RUN_MARK"
}

overwrite_flag() {  # --overwrite only for the quick start's own run; the training moves any other run aside
    if own_run; then echo --overwrite; fi
}

step() {  # step "name" command...: run one step, stop at the first failure naming it
    local name="$1"; shift
    STEP=$((STEP + 1))
    echo
    echo "==> [$STEP/$TOTAL] $name"
    local t0; t0=$(date +%s)
    if ! "$@"; then
        echo >&2
        echo "quick_start.sh: step $STEP/$TOTAL '$name' failed (command: $*)" >&2
        exit 1
    fi
    echo "    ($name: $(( $(date +%s) - t0 )) s)"
}

setup() { source scripts/setup_venv.sh; }

prepare_csv() {
    if [ -f "$CSV" ] && ! own_csv; then
        echo "    $CSV was not written by quick_start.sh: using it as it is (move it away to get a fresh one)"
        return 0
    fi
    # no CSV yet, or the one an earlier quick start wrote: replacing it loses nothing
    python prepare_dataset.py --dataset_type FNP --data_root "$DATA_ROOT" --output_csv "$CSV" \
        --split_ratio 0.7 0.15 0.15 --overwrite || return 1
    digest "$CSV" > "$CSV_MARK"
}

train() {
    local overwrite
    overwrite=$(overwrite_flag)
    python train_facial_palsy.py --config "$CONFIG" --profile "$PROFILE" \
        --data_root "$DATA_ROOT" --train_csv "$CSV" --val_csv "$CSV" --test_csv "$CSV" --dataset_type FNP \
        --save_dir "$SAVE_DIR" --log_dir "$LOG_DIR" $overwrite || return 1
    mark_run
}

main() {  # the steps; sourcing the script (as its tests do) only defines the functions above
cd "$(dirname "$0")"
PROFILE="${HTNET_PROFILE:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a name}"; shift 2 ;;
        --profile=*) PROFILE="${1#--profile=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "quick_start.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
START=$(date +%s)

step "set up .venv from requirements.txt" setup

if [ -z "$PROFILE" ]; then
    if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        PROFILE=standard
    else
        PROFILE=cpu_quickstart
    fi
fi
echo "    profile: $PROFILE (config_examples.yaml; choose another with --profile NAME or HTNET_PROFILE)"

make_data() {
    if find "$DATA_ROOT" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) 2>/dev/null | grep -q .; then
        echo "    $DATA_ROOT already holds images: using them"
    else
        echo "    $DATA_ROOT holds no images: generating the built-in synthetic palsy faces there"
        python prepare_dataset.py --dataset_type synthetic --output_root "$DATA_ROOT"
    fi
}
step "dataset" make_data

step "prepare the annotation CSV (subject-disjoint split)" prepare_csv

step "train HTNet" train

step "evaluate on the test subjects" \
    python evaluate_facial_palsy.py --model_path "$SAVE_DIR/best_model.pth" --data_root "$DATA_ROOT" \
        --test_csv "$CSV" --dataset_type FNP --output_dir "$EVAL_DIR"

# The test photos, copied out for the inference examples (./test_images/ and ./test_image.jpg).
copy_test_images() {
    python - "$CSV" "$DATA_ROOT" <<'EOF'
import shutil, sys
from pathlib import Path
import pandas as pd
csv, root = Path(sys.argv[1]), Path(sys.argv[2])
rows = pd.read_csv(csv)
rows = rows[rows['split'] == 'test']
out = Path('test_images')
out.mkdir(exist_ok=True)
manifest = out / '.quick_start_files'  # the photos an earlier quick start copied: only those are replaced
for name in (manifest.read_text().split('\n') if manifest.is_file() else []):
    if name and (out / name).is_file():
        (out / name).unlink()
paths = [Path(p) if Path(p).is_absolute() else root / p for p in rows['image_path']]
for path in paths:
    shutil.copy2(path, out / path.name)
manifest.write_text('\n'.join(path.name for path in paths) + '\n')
shutil.copy2(paths[0], 'test_image.jpg')
print(f'    {len(paths)} test photos copied to ./test_images/, one of them to ./test_image.jpg')
EOF
}
grade_photos() {
    copy_test_images
    python demo_inference.py --model_path "$SAVE_DIR/best_model.pth" --image_dir ./test_images/ \
        --output_csv ./predictions.csv
    python demo_inference.py --model_path "$SAVE_DIR/best_model.pth" --image_path ./test_image.jpg
}
step "grade the test photos" grade_photos

step "attention maps" \
    python visualize_attention.py --model_path "$SAVE_DIR/best_model.pth" --image_path ./test_image.jpg \
        --output_dir "$ATTENTION_DIR" --visualize_regions

echo
echo "==> done in $(( $(date +%s) - START )) s (profile $PROFILE)"
python - "$EVAL_DIR/metrics.json" "$PROFILE" benchmarks/results/quick_start_seeds.json <<'EOF'
import json, sys
from pathlib import Path
metrics = json.load(open(sys.argv[1]))
profile, expected_file = sys.argv[2], Path(sys.argv[3])
names = ('accuracy', 'macro_f1', 'qwk', 'mae', 'within_one')
def show(title, values):
    print(title)
    for name in names:
        entry = values.get(name)
        if isinstance(entry, dict) and entry.get('value') is not None:
            print(f"  {name:<12} {entry['value']:.3f}  (95% CI {entry['ci_low']:.3f}-{entry['ci_high']:.3f})")
show('Test subjects, per photo (never seen in training or model selection; this run, seed 42):', metrics['metrics'])
patients = metrics.get('subject_metrics')
if patients:
    show("Per patient (each subject graded from the mean of its photos' probabilities):", patients['metrics'])
expected = json.loads(expected_file.read_text()) if expected_file.is_file() else None
if expected and expected.get('profile') == profile:
    mean, sd, n = expected['mean'], expected['sd'], len(expected['seeds'])
    print(f'Expected range of this recipe (mean +- sd over {n} training seeds on this data; '
          f'{expected["command"]} at {expected["commit"]}):')
    for level in ('photo', 'patient'):
        print(f'  {level:<8}' + '  '.join(f"{name} {mean[f'{level}_{name}']:.3f} +- {sd[f'{level}_{name}']:.3f}"
                                           for name in ('macro_f1', 'qwk', 'mae')))
    print('  One run of one seed can land anywhere in about mean +- 2 sd: compare recipes over seeds, not runs.')
EOF
cat <<EOF
Outputs:
  checkpoints          $SAVE_DIR/ (best_model.pth, last.pth)
  training logs        $LOG_DIR/ (summary.csv, training_history.json, training_curves.png, args.yaml)
  evaluation           $EVAL_DIR/ (metrics.json, confusion_matrix.png, classification_report.txt, predictions.csv)
  predictions          ./predictions.csv (per photo), ./predictions_subjects.csv (per patient), ./test_image_prediction.png
  attention maps       $ATTENTION_DIR/
EOF
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
