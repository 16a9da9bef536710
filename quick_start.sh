#!/usr/bin/env bash
# HTNet for facial palsy grading: the whole pipeline, end to end, on the built-in synthetic faces.
#
#   bash quick_start.sh                      # CPU: profile cpu_quickstart (< 10 min on 2 cores); GPU: standard
#   bash quick_start.sh --profile small      # any palsy profile of config_examples.yaml
#   HTNET_PROFILE=fnp_6class bash quick_start.sh
#   bash quick_start.sh --profile cross_validation --dry_run   # print the plan only; nothing is run
#   bash quick_start.sh --profile flow_pairs   # rest / expression photo pairs, graded on their optical flow (~5 min)
#   bash quick_start.sh --profile flow_video   # examination clips: the flow from each clip's rest to its apex (~6 min)
#
# Steps: set up .venv -> synthetic dataset (only if the data folder holds no images; flow_video: clips) -> prepare
# the subject-disjoint annotation CSV (flow_video: find each clip's rest and apex frames) -> train -> evaluate on the
# test subjects -> grade the test photos (pairs, clips) -> attention maps.
# A profile that cannot run here (micro_expression_paper, or transfer_learning without its weights) is refused in
# one line before any slow work. Re-running replaces only what an earlier quick start made: a run of yours in
# ./checkpoints/fnp is moved to ./checkpoints/fnp.previous-<time>, an annotation CSV of yours is used as it is,
# your photos are only read.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

DATA_ROOT=./datasets/facial_palsy/FNP
CSV=./datasets/facial_palsy/fnp_annotation.csv
CSV_MARK=./datasets/facial_palsy/.fnp_annotation.csv.quick_start  # SHA-256 of the CSV this script wrote
SAVE_DIR=./checkpoints/fnp
LOG_DIR=./logs/fnp
RUN_MARK=.quick_start_run  # in $SAVE_DIR: the run id of the run this script trained
EVAL_DIR=./evaluation_results
ATTENTION_DIR=./attention_visualizations
CONFIG=config_examples.yaml
# flow_video's synthetic examination clips: 60 subjects x 3 clips (one movement each, 32 frames of 256 pixels) keep
# its whole quick start within about 8 minutes on 2 CPU cores (measured: docs/en/get_started.md); the apex finder
# turns them into the pairs of $DATA_ROOT
CLIPS_ROOT=./datasets/facial_palsy/FNP_clips
CLIP_SUBJECTS=60
CLIPS_PER_SUBJECT=3
TEST_CLIP=./test_clip.mp4  # the test clip graded alone (a clip that is not an .mp4 keeps its own extension)
STEP=0
TOTAL=7
# set by plan_profile
MODEL_PATH=$SAVE_DIR/best_model.pth  # what evaluation, inference and attention maps read
INPUT=photos     # what the checkpoint grades: photos; pairs (input_mode flow); clips (flow on pairs made of clips)
CV=              # the profile's --cv (K or loso), empty for one train / val run

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
        # rest / expression pairs: the profile's own data set, drawn with --pairs (or made of clips, below)
        INPUT=pairs
        DATA_ROOT=$(profile_value "$PROFILE" data_root)
        CSV=$(profile_value "$PROFILE" train_csv)
        CSV_MARK="$(dirname "$CSV")/.$(basename "$CSV").quick_start"
        # a data_root that is the frames folder of its CSV (<csv stem>_frames beside it, where prepare_dataset.py
        # --dataset_type video writes each clip's rest and apex frames): the pairs are made from clips
        if [ "$DATA_ROOT" = "$(dirname "$CSV")/$(basename "$CSV" .csv)_frames" ]; then INPUT=clips; fi
    fi
    if [ "$INPUT" != photos ] || [ -n "$CV" ]; then
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
    if [ "$INPUT" = clips ]; then
        CMD=(python prepare_dataset.py --dataset_type synthetic --video --output_root "$CLIPS_ROOT"
             --num_subjects "$CLIP_SUBJECTS" --images_per_subject "$CLIPS_PER_SUBJECT")
        return 0
    fi
    CMD=(python prepare_dataset.py --dataset_type synthetic --output_root "$DATA_ROOT")
    if [ "$INPUT" = pairs ]; then CMD+=(--pairs); fi
}
prepare_cmd() {
    if [ "$INPUT" = clips ]; then  # the rest and apex frames of each clip go to $DATA_ROOT, training's data folder
        CMD=(python prepare_dataset.py --dataset_type video --data_root "$CLIPS_ROOT" --output_csv "$CSV"
             --frames_dir "$DATA_ROOT" --split_ratio 0.7 0.15 0.15 --overwrite)
        return 0
    fi
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
    if [ "$INPUT" = clips ]; then
        CMD=(python demo_inference.py --model_path "$MODEL_PATH" --video_dir ./test_clips/
             --output_dir ./clip_predictions)
        return 0
    fi
    # pairs: ./test_images/ pairs its photos by name (inference.PAIRING_RULE)
    CMD=(python demo_inference.py --model_path "$MODEL_PATH" --image_dir ./test_images/ --output_csv ./predictions.csv)
}
grade_photo_cmd() {
    case "$INPUT" in
        clips) CMD=(python demo_inference.py --model_path "$MODEL_PATH" --video "$TEST_CLIP") ;;
        pairs) CMD=(python demo_inference.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg
                    --rest ./test_image_rest.jpg) ;;
        *) CMD=(python demo_inference.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg) ;;
    esac
}
attention_cmd() {
    case "$INPUT" in
        clips) CMD=(python visualize_attention.py --model_path "$MODEL_PATH" --video "$TEST_CLIP") ;;
        pairs) CMD=(python visualize_attention.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg
                    --rest ./test_image_rest.jpg) ;;
        *) CMD=(python visualize_attention.py --model_path "$MODEL_PATH" --image_path ./test_image.jpg) ;;
    esac
    CMD+=(--output_dir "$ATTENTION_DIR" --visualize_regions)
}

print_plan() {  # --dry_run: the steps and their commands, nothing run
    echo "quick_start.sh --dry_run: profile $PROFILE ($CONFIG: $(profile_value "$PROFILE" description))"
    plan_notes
    echo "  [1/$TOTAL] set up .venv from requirements.txt (scripts/setup_venv.sh)"
    synth_cmd
    if [ "$INPUT" = clips ]; then
        echo "  [2/$TOTAL] clips $CLIPS_ROOT; drawn only when it holds no clips: ${CMD[*]}"
    else
        echo "  [2/$TOTAL] dataset $DATA_ROOT; drawn only when it holds no images: ${CMD[*]}"
    fi
    prepare_cmd
    if [ "$INPUT" = clips ]; then
        echo "  [3/$TOTAL] rest and apex frame of each clip into $DATA_ROOT, and their annotation CSV (kept as it is" \
            "when quick_start.sh did not write it): ${CMD[*]}"
    else
        echo "  [3/$TOTAL] annotation CSV (kept as it is when quick_start.sh did not write it): ${CMD[*]}"
    fi
    train_cmd
    echo "  [4/$TOTAL] train (--overwrite only over the quick start's own earlier run): ${CMD[*]}"
    eval_cmd
    echo "  [5/$TOTAL] evaluate: ${CMD[*]}"
    if [ -n "$CV" ]; then
        echo "          --model_path $MODEL_PATH: the --cv run's fold_<k>/best_model.pth, graded as one ensemble"
    fi
    grade_folder_cmd
    case "$INPUT" in
        clips) echo "  [6/$TOTAL] grade the test clips (the clips of the test subjects, copied to ./test_clips/," \
                   "one of them to $TEST_CLIP): ${CMD[*]}" ;;
        pairs) echo "  [6/$TOTAL] grade the test pairs (each expression photo of the test subjects copied to" \
                   "./test_images/ with its rest photo as <name>_rest.<ext> beside it; one pair to ./test_image.jpg" \
                   "and ./test_image_rest.jpg): ${CMD[*]}" ;;
        *) echo "  [6/$TOTAL] grade the test photos: ${CMD[*]}" ;;
    esac
    grade_photo_cmd
    echo "          and ${CMD[*]}"
    attention_cmd
    echo "  [7/$TOTAL] attention maps: ${CMD[*]}"
    echo "nothing was run (--dry_run)"
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
    if [ "$INPUT" = clips ]; then make_clips; return; fi
    if find "$DATA_ROOT" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) 2>/dev/null | grep -q .; then
        echo "    $DATA_ROOT already holds images: using them"
    else
        echo "    $DATA_ROOT holds no images: generating the built-in synthetic palsy faces there"
        synth_cmd
        "${CMD[@]}"
    fi
}

make_clips() {  # a clip is a video or a folder of frame images, as prepare_dataset.py --dataset_type video reads them
    if find "$CLIPS_ROOT" -type f \( -iname '*.mp4' -o -iname '*.avi' -o -iname '*.mov' -o -iname '*.mkv' \
            -o -iname '*.m4v' -o -iname '*.webm' -o -iname '*.mpg' -o -iname '*.mpeg' -o -iname '*.wmv' \
            -o -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) 2>/dev/null | grep -q .; then
        echo "    $CLIPS_ROOT already holds clips: using them"
    else
        echo "    $CLIPS_ROOT holds no clips: drawing the built-in synthetic examination clips there"
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

# The test photos, copied out for the inference examples (./test_images/ and ./test_image.jpg); for pairs each rest
# photo goes beside its expression photo as <name>_rest.<ext>, the name by which a folder pairs them
# (inference.PAIRING_RULE); the rest photo of ./test_image.jpg is ./test_image_rest.jpg.
copy_test_images() {
    python - "$CSV" "$DATA_ROOT" "$INPUT" <<'EOF'
import shutil, sys
from pathlib import Path
import pandas as pd
csv, root, pairs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == 'pairs'
rows = pd.read_csv(csv)
rows = rows[rows['split'] == 'test']
out = Path('test_images')
out.mkdir(exist_ok=True)
manifest = out / '.quick_start_files'  # the photos an earlier quick start copied: only those are replaced
for name in (manifest.read_text().split('\n') if manifest.is_file() else []):
    if name and (out / name).is_file():
        (out / name).unlink()
def resolve(p):
    return Path(p) if Path(p).is_absolute() else root / p
paths = [resolve(p) for p in rows['image_path']]
copies = {path: path.name for path in paths}
if pairs:  # the rest photo of <name>.<ext> is <name>_rest.<ext> (keeping the rest photo's own extension)
    rests = [resolve(p) for p in rows['neutral_path']]
    copies.update({rest: f'{path.stem}_rest{rest.suffix}' for path, rest in zip(paths, rests)})
for path, name in copies.items():
    shutil.copy2(path, out / name)
manifest.write_text('\n'.join(copies.values()) + '\n')
shutil.copy2(paths[0], 'test_image.jpg')
if pairs:
    shutil.copy2(rests[0], 'test_image_rest.jpg')
    print(f'    {len(paths)} test pairs (an expression photo and its rest photo) copied to ./test_images/, one of '
          f'them to ./test_image.jpg and ./test_image_rest.jpg')
else:
    print(f'    {len(paths)} test photos copied to ./test_images/, one of them to ./test_image.jpg')
EOF
}

# The clips of the test subjects (the split of the pairs CSV), copied out for the inference examples: ./test_clips/
# and $TEST_CLIP. Prints the path of the clip graded alone.
copy_test_clips() {
    python - "$CSV" "$CLIPS_ROOT" "$TEST_CLIP" <<'EOF'
import shutil, sys
from pathlib import Path
import pandas as pd
csv, root, single = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rows = pd.read_csv(csv)
clips = [Path(p) if Path(p).is_absolute() else root / p
         for p in dict.fromkeys(rows.loc[rows['split'] == 'test', 'clip_path'])]
out = Path('test_clips')
out.mkdir(exist_ok=True)
manifest = out / '.quick_start_files'  # the clips an earlier quick start copied: only those are replaced
for name in (manifest.read_text().split('\n') if manifest.is_file() else []):
    if name and (out / name).is_dir():
        shutil.rmtree(out / name)
    elif name and (out / name).is_file():
        (out / name).unlink()
for clip in clips:  # a video, or a folder of frames
    if clip.is_dir():
        shutil.copytree(clip, out / clip.name)
    else:
        shutil.copy2(clip, out / clip.name)
manifest.write_text('\n'.join(clip.name for clip in clips) + '\n')
first = clips[0]
if first.is_dir():
    single = single.with_suffix('')
    shutil.rmtree(single, ignore_errors=True)
    shutil.copytree(first, single)
else:
    single = single.with_suffix(first.suffix)
    shutil.copy2(first, single)
print(f'    {len(clips)} clips of the test subjects copied to ./test_clips/, {first.name} to ./{single}',
      file=sys.stderr)
print(f'./{single}')
EOF
}

grade_tests() {
    if [ "$INPUT" = clips ]; then
        TEST_CLIP=$(copy_test_clips) || return 1
    else
        copy_test_images || return 1
    fi
    grade_folder_cmd
    "${CMD[@]}" || return 1
    grade_photo_cmd
    "${CMD[@]}"
}

attention_maps() {
    attention_cmd
    "${CMD[@]}"
}

report() {  # the test scores of this run beside the range of its recipe over seeds, and where the outputs are
local unit=photo  # what one row of the test set is: a photo (with its rest photo, for pairs), or a clip
if [ "$INPUT" = clips ]; then unit=clip; fi
python - "$EVAL_DIR/metrics.json" "$PROFILE" benchmarks/results/quick_start_seeds.json "$unit" <<'EOF'
import json, sys
from pathlib import Path
metrics = json.load(open(sys.argv[1]))
profile, expected_file, unit = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
names = ('accuracy', 'macro_f1', 'qwk', 'mae', 'within_one')
def show(title, values):
    print(title)
    for name in names:
        entry = values.get(name)
        if isinstance(entry, dict) and entry.get('value') is not None:
            print(f"  {name:<12} {entry['value']:.3f}  (95% CI {entry['ci_low']:.3f}-{entry['ci_high']:.3f})")
show(f'Test subjects, per {unit} (never seen in training or model selection; this run, seed 42):', metrics['metrics'])
patients = metrics.get('subject_metrics')
if patients:
    show(f"Per patient (each subject graded from the mean of its {unit}s' probabilities):", patients['metrics'])
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
if [ "$INPUT" = clips ]; then
local clip=${TEST_CLIP##*/}
clip=${clip%.*}
cat <<EOF
  clip grades          ./clip_predictions/ (clips.csv per clip, clips_subjects.csv per patient, and for each clip
                       <clip>_frames.csv, <clip>_grade.json, <clip>_prediction.png); $TEST_CLIP: ./${clip}_frames.csv,
                       ./${clip}_grade.json, ./${clip}_prediction.png
  attention maps       $ATTENTION_DIR/ (${clip}_*: the rest -> apex pair of $TEST_CLIP, ${clip}_motion.png)
EOF
else
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

if [ "$INPUT" = clips ]; then
    step "find each clip's rest and apex frames, prepare the annotation CSV (subject-disjoint split)" prepare_csv
else
    step "prepare the annotation CSV (subject-disjoint split)" prepare_csv
fi

step "train HTNet" train

step "evaluate on the test subjects" evaluate

step "grade the test $INPUT" grade_tests

step "attention maps" attention_maps

echo
echo "==> done in $(( $(date +%s) - START )) s (profile $PROFILE)"
report
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
