#!/usr/bin/env bash
# HTNet for facial palsy grading: the whole pipeline, end to end, on the built-in synthetic faces.
#
#   bash quick_start.sh                      # CPU: profile cpu_quickstart (< 10 min on 2 cores); GPU: standard
#   bash quick_start.sh --profile small      # any palsy profile of config_examples.yaml
#   HTNET_PROFILE=fnp_6class bash quick_start.sh
#   bash quick_start.sh --profile cross_validation --dry_run   # print the plan only; nothing is run
#
# Steps: set up .venv -> synthetic dataset (only if the data folder holds no images) -> prepare the
# subject-disjoint annotation CSV -> train -> evaluate on the test subjects -> grade test photos -> attention maps.
# A profile that cannot run here (micro_expression_paper, or transfer_learning without its weights) is refused in
# one line before any slow work. Re-running replaces only what an earlier quick start made: a run of yours in
# ./checkpoints/fnp is moved to ./checkpoints/fnp.previous-<time>, an annotation CSV of yours is used as it is,
# your photos are only read.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

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
# set by plan_profile
MODEL_PATH=$SAVE_DIR/best_model.pth  # what evaluation, inference and attention maps read
PAIRS=0          # 1: the profile reads rest / expression pairs (input_mode flow)
CV=              # the profile's --cv (K or loso), empty for one train / val run
SINGLE_PHOTOS=1  # 0: the checkpoint cannot grade single photos (flow), so those steps are skipped

# the profiles of config_examples.yaml, read with awk so a refusal comes before .venv is set up

profile_names() {
    grep -E '^[A-Za-z0-9_]+:' "$CONFIG" | sed 's/:.*//' | grep -vx defaults || true
}

profile_value() {  # profile_value NAME KEY: KEY of profile NAME (else of defaults:), as written; empty if absent
    awk -v profile="$1" -v key="$2" '
        /^[^ \t#][^:]*:/ { section = $0; sub(/:.*/, "", section); next }
        section == profile || section == "defaults" {
            line = $0
            sub(/[ \t]+#.*$/, "", line)
            if (match(line, "^[ \t]+" key ":")) {
                value = substr(line, RLENGTH + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", value)
                found[section] = value
            }
        }
        END { if (profile in found) print found[profile]; else if ("defaults" in found) print found["defaults"] }
    ' "$CONFIG"
}

refuse() {  # one line on stderr, exit status 2, before any slow work
    echo "quick_start.sh: $*" >&2
    exit 2
}

has_cuda() {  # with .venv: what PyTorch sees; before it exists: whether an NVIDIA driver answers
    if [ -x .venv/bin/python ]; then
        .venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
    else
        command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
    fi
}

plan_profile() {  # how the quick start runs $PROFILE; refuses a profile it cannot run, in one line
    if ! profile_names | grep -x -- "$PROFILE" >/dev/null; then
        refuse "--profile $PROFILE: not in $CONFIG (profiles: $(profile_names | paste -sd ' ' -))"
    fi
    local key
    for key in data_dir weights_dir landmark_order; do  # keys only main_HTNet.py takes
        if [ -n "$(profile_value "$PROFILE" "$key")" ]; then
            refuse "--profile $PROFILE is main_HTNet.py's micro-expression protocol (CASME II + SMIC + SAMM, each" \
                "licensed by its authors; leave one subject out, $(profile_value "$PROFILE" epochs) epochs per" \
                "subject: days on a GPU), not a palsy profile, so the quick start does not run it; run it with" \
                "python main_HTNet.py --config $CONFIG --profile $PROFILE --train True, or try the protocol on a" \
                "tiny generated fixture as docs/en/legacy.md shows"
        fi
    done
    local pretrained
    pretrained=$(profile_value "$PROFILE" pretrained_path)
    if [ -n "$pretrained" ] && [ ! -f "$pretrained" ]; then
        refuse "--profile $PROFILE starts from $pretrained, which is not there: main_HTNet.py --train True" \
            "--save_full_model writes it from CASME II, SMIC and SAMM (docs/en/train.md, transfer learning)"
    fi
    CV=$(profile_value "$PROFILE" cv)
    if [ "$(profile_value "$PROFILE" input_mode)" = flow ]; then
        # rest / expression pairs: the profile's own data set, drawn with --pairs
        PAIRS=1
        SINGLE_PHOTOS=0
        DATA_ROOT=$(profile_value "$PROFILE" data_root)
        CSV=$(profile_value "$PROFILE" train_csv)
        CSV_MARK="$(dirname "$CSV")/.$(basename "$CSV").quick_start"
    fi
    if [ "$PAIRS" = 1 ] || [ -n "$CV" ]; then
        # a layout of its own (fold_<k>/ folders, or a flow network): its own folders, never the quick start's run
        SAVE_DIR=$(profile_value "$PROFILE" save_dir)
        LOG_DIR=$(profile_value "$PROFILE" log_dir)
    fi
    # a --cv run keeps fold_<k>/best_model.pth only: its folder is graded as one ensemble of the folds
    if [ -n "$CV" ]; then MODEL_PATH=$SAVE_DIR; else MODEL_PATH=$SAVE_DIR/best_model.pth; fi
}

plan_notes() {  # what a profile's own settings become in the quick start
    local train_csv dim
    train_csv=$(profile_value "$PROFILE" train_csv)
    if [ -n "$train_csv" ] && [ "$train_csv" != "$CSV" ]; then
        echo "    note: the profile's data ($train_csv) is replaced by the quick start's synthetic faces ($CSV)"
    fi
    dim=$(profile_value "$PROFILE" dim)
    if [ -n "$dim" ] && [ "$dim" -gt 64 ] && ! has_cuda; then
        echo "    warning: no CUDA device: this profile trains a dim-$dim HTNet for $(profile_value "$PROFILE" epochs)" \
            "epochs on the CPU, hours to days; the CPU quick start is --profile cpu_quickstart"
    fi
    return 0
}

# the commands of the steps, built from the settings above (the dry run prints the same arrays)

synth_cmd() {
    CMD=(python prepare_dataset.py --dataset_type synthetic --output_root "$DATA_ROOT")
    if [ "$PAIRS" = 1 ]; then CMD+=(--pairs); fi
}
prepare_cmd() {
    CMD=(python prepare_dataset.py --dataset_type FNP --data_root "$DATA_ROOT" --output_csv "$CSV"
         --split_ratio 0.7 0.15 0.15 --overwrite)
}
train_cmd() {
    CMD=(python train_facial_palsy.py --config "$CONFIG" --profile "$PROFILE"
         --data_root "$DATA_ROOT" --train_csv "$CSV" --val_csv "$CSV" --test_csv "$CSV" --dataset_type FNP
         --save_dir "$SAVE_DIR" --log_dir "$LOG_DIR")
}
eval_cmd() {
    CMD=(python evaluate_facial_palsy.py --model_path "$MODEL_PATH" --data_root "$DATA_ROOT" --test_csv "$CSV"
         --dataset_type FNP --output_dir "$EVAL_DIR")
}
grade_folder_cmd() {
    CMD=(python demo_inference.py --model_path "$MODEL_PATH" --image_dir ./test_images/ --output_csv ./predictions.csv)
}
grade_photo_cmd() { CMD=(python demo_inference.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg); }
attention_cmd() {
    CMD=(python visualize_attention.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg
         --output_dir "$ATTENTION_DIR" --visualize_regions)
}

print_plan() {  # --dry_run: the steps and their commands, nothing run
    echo "quick_start.sh --dry_run: profile $PROFILE ($CONFIG: $(profile_value "$PROFILE" description))"
    plan_notes
    echo "  [1/$TOTAL] set up .venv from requirements.txt (scripts/setup_venv.sh)"
    synth_cmd
    echo "  [2/$TOTAL] dataset $DATA_ROOT; drawn only when it holds no images: ${CMD[*]}"
    prepare_cmd
    echo "  [3/$TOTAL] annotation CSV (kept as it is when quick_start.sh did not write it): ${CMD[*]}"
    train_cmd
    echo "  [4/$TOTAL] train (--overwrite only over the quick start's own earlier run): ${CMD[*]}"
    eval_cmd
    echo "  [5/$TOTAL] evaluate: ${CMD[*]}"
    if [ -n "$CV" ]; then
        echo "          --model_path $MODEL_PATH: the --cv run's fold_<k>/best_model.pth, graded as one ensemble"
    fi
    if [ "$SINGLE_PHOTOS" = 1 ]; then
        grade_folder_cmd
        echo "  [6/$TOTAL] grade the test photos: ${CMD[*]}"
        grade_photo_cmd
        echo "          and ${CMD[*]}"
        attention_cmd
        echo "  [7/$TOTAL] attention maps: ${CMD[*]}"
    else
        echo "  [6/$TOTAL] skipped: $(skip_reason)"
        echo "  [7/$TOTAL] skipped: $(skip_reason)"
    fi
    echo "nothing was run (--dry_run)"
}

skip_reason() {
    echo "the quick start's test photos are single photos and a flow checkpoint grades rest / expression pairs" \
        "(evaluate_facial_palsy.py above; for pairs of your own, demo_inference.py and visualize_attention.py take" \
        "--rest or --pairs_csv: docs/en/video.md)"
}

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

mark_run() {  # a --cv run has no last.pth at the top: left unmarked, a re-run moves it aside instead
    [ -f "$SAVE_DIR/last.pth" ] || return 0
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

make_data() {
    if find "$DATA_ROOT" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) 2>/dev/null | grep -q .; then
        echo "    $DATA_ROOT already holds images: using them"
    else
        echo "    $DATA_ROOT holds no images: generating the built-in synthetic palsy faces there"
        synth_cmd
        "${CMD[@]}"
    fi
}

prepare_csv() {
    if [ -f "$CSV" ] && ! own_csv; then
        echo "    $CSV was not written by quick_start.sh: using it as it is (move it away to get a fresh one)"
        return 0
    fi
    # no CSV yet, or the one an earlier quick start wrote: replacing it loses nothing
    prepare_cmd
    "${CMD[@]}" || return 1
    digest "$CSV" > "$CSV_MARK"
}

train() {
    local overwrite
    overwrite=$(overwrite_flag)
    train_cmd
    "${CMD[@]}" $overwrite || return 1
    mark_run
}

evaluate() { eval_cmd; "${CMD[@]}"; }

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
    if [ "$SINGLE_PHOTOS" = 0 ]; then echo "    skipped: $(skip_reason)"; return 0; fi
    copy_test_images
    grade_folder_cmd
    "${CMD[@]}"
    grade_photo_cmd
    "${CMD[@]}"
}

attention_maps() {
    if [ "$SINGLE_PHOTOS" = 0 ]; then echo "    skipped: $(skip_reason)"; return 0; fi
    attention_cmd
    "${CMD[@]}"
}

report() {  # the test scores of this run beside the range of its recipe over seeds, and where the outputs are
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
local checkpoints="best_model.pth, last.pth" logs="summary.csv, training_history.json, training_curves.png, args.yaml"
if [ -n "$CV" ]; then
    checkpoints="fold_<k>/best_model.pth, fold_<k>/last.pth"
    logs="cv_summary.json, cv_predictions.csv, cv_folds.png, fold_<k>/"
fi
cat <<EOF
Outputs:
  checkpoints          $SAVE_DIR/ ($checkpoints)
  training logs        $LOG_DIR/ ($logs)
  evaluation           $EVAL_DIR/ (metrics.json, confusion_matrix.png, classification_report.txt, predictions.csv)
EOF
if [ "$SINGLE_PHOTOS" = 1 ]; then
cat <<EOF
  predictions          ./predictions.csv (per photo), ./predictions_subjects.csv (per patient), ./test_image_prediction.png
  attention maps       $ATTENTION_DIR/
EOF
fi
}

main() {  # the steps; sourcing the script (as its tests do) only defines the functions above
cd "$(dirname "$0")"
PROFILE="${HTNET_PROFILE:-}"
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a name}"; shift 2 ;;
        --profile=*) PROFILE="${1#--profile=}"; shift ;;
        --dry_run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "quick_start.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -n "$PROFILE" ]; then
    plan_profile  # a profile that cannot run is refused here, before any slow work
fi
if [ "$DRY_RUN" = 1 ]; then
    if [ -z "$PROFILE" ]; then
        if has_cuda; then PROFILE=standard; else PROFILE=cpu_quickstart; fi
        plan_profile
    fi
    print_plan
    exit 0
fi
START=$(date +%s)

step "set up .venv from requirements.txt" setup

if [ -z "$PROFILE" ]; then
    if python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        PROFILE=standard
    else
        PROFILE=cpu_quickstart
    fi
    plan_profile
fi
echo "    profile: $PROFILE (config_examples.yaml; choose another with --profile NAME or HTNET_PROFILE)"
plan_notes

step "dataset" make_data

step "prepare the annotation CSV (subject-disjoint split)" prepare_csv

step "train HTNet" train

step "evaluate on the test subjects" evaluate

step "grade the test photos" grade_photos

step "attention maps" attention_maps

echo
echo "==> done in $(( $(date +%s) - START )) s (profile $PROFILE)"
report
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
