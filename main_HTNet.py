"""Micro-expression recognition with HTNet: the published leave-one-subject-out protocol on CASME II + SMIC + SAMM.

Wang, Z., Zhang, K., Luo, W., Sankaranarayana, R. "HTNet for micro-expression recognition", Neurocomputing 599
(2024). The composite of the three databases (442 apex frames, 68 subjects, labels negative 0 / positive 1 /
surprise 2) is evaluated leave-one-subject-out; the paper reports UF1 0.8603 and UAR 0.8475 on the composite.

    python main_HTNet.py --train True     # train one model per subject, as published
    python main_HTNet.py --train False    # evaluate the stored weights only (the default, as in the original)

Inputs, as the original code builds them: each apex frame is shrunk to 28x28, MTCNN places five landmarks (a
fixed template where no face is found), and 14x14 crops of the 28x28 optical-flow image (u, v and optical strain as
three channels) around four of them are tiled into one 28x28x3 mosaic of raw 0-255 values. The original indexes
the flow image's rows with a landmark's x coordinate; that quirk is the default so the published numbers can be
reproduced, and ``--landmark_order xy`` indexes rows with y.

The original picks each subject's epoch on that subject's test fold, which flatters the result; this script reports
that figure and the last-epoch one side by side, per database and pooled, in ``<weights_dir>/results.json``.
``--save_full_model`` then trains one model on every sample and writes ``<weights_dir>/best_model.pth``, the
checkpoint that transfer learning to facial palsy grading starts from (``train_facial_palsy.py --pretrained_path``).
See docs/en/legacy.md.

Under torchrun (``python -m torch.distributed.run --nproc_per_node N main_HTNet.py ...``) the subjects are spread
over the processes (subject i of the sorted list on rank i % N, each trained alone on its process's device); rank
0 gathers them and writes the results and prints the tables a single process does (docs/en/distributed.md).
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

import distributed
from checkpoints import describe_mismatches, load_checkpoint, save_checkpoint, state_dict_mismatches
from Model import HTNet, build_model, count_parameters, extract_state_dict, model_args_from
from utils import (UserError, add_config_args, atomic_write_text, check_writable, parse_args_with_config,
                   resolve_device, run_cli, save_args, save_figure, seed_everything, to_plain)

CLASS_NAMES = ('negative', 'positive', 'surprise')
CSV_NAME = 'combined_3_class2_for_optical_flow.csv'
CSV_COLUMNS = ('dataset', 'sub', 'filename_o', 'label', 'apex', 'imagename', 'sub_filename')
APEX_DIR = 'combined_datasets_whole'
FLOW_DIR = 'STSNet_whole_norm_u_v_os'
FOLDS_DIR = 'three_norm_u_v_os'

IMAGE_SIZE = 28
REGION_HALF = 7  # each region is a 14x14 crop centred on a landmark
# Where MTCNN finds no face in the 28x28 apex frame, the original uses these five points (x, y):
# left eye, right eye, nose, left mouth corner, right mouth corner.
LANDMARK_TEMPLATE = np.array([[9.528073, 11.062551], [21.396168, 10.919773], [15.380184, 17.380562],
                              [10.255435, 22.121233], [20.583706, 22.25584]], dtype=np.float32)
# Clamping keeps every 14x14 crop inside the 28x28 flow image.
LANDMARK_MIN, LANDMARK_MAX = REGION_HALF, IMAGE_SIZE - REGION_HALF
LANDMARK_ORDERS = ('original', 'xy')

PAPER_MODEL = dict(image_size=IMAGE_SIZE, patch_size=7, dim=256, heads=3, num_hierarchies=3,
                   block_repeats=(2, 2, 10), num_classes=len(CLASS_NAMES))
BEST_KEY = 'best_epoch_selected_on_test_fold'
LAST_KEY = 'last_epoch'
STORED_KEY = 'stored_weights'
SECTION_LABELS = {
    BEST_KEY: 'best epoch, selected on each subject\'s test fold (the published protocol; optimistic)',
    LAST_KEY: 'last epoch (no selection on the test fold)',
    STORED_KEY: 'stored weights (if trained by --train True: each subject\'s best epoch on its own test fold)',
}
DATASET_ORDER = ('CASME II', 'SMIC', 'SAMM')
PLOT_TITLES = {BEST_KEY: 'best epoch (selected on the test fold)', LAST_KEY: 'last epoch',
               STORED_KEY: 'stored weights'}


# helpers

def str2bool(value: str | bool) -> bool:
    """The original parsed ``--train`` with ``distutils.util.strtobool``; accept the same spellings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ('y', 'yes', 't', 'true', 'on', '1'):
        return True
    if text in ('n', 'no', 'f', 'false', 'off', '0'):
        return False
    raise argparse.ArgumentTypeError(f'expected True or False, got {value!r}')


def dataset_display_name(value: Any) -> str:
    """Name a database the way the paper does, whatever spelling the CSV's ``dataset`` column uses."""
    key = ''.join(ch for ch in str(value).lower() if ch.isalnum())
    for needle, name in (('casme', 'CASME II'), ('smic', 'SMIC'), ('samm', 'SAMM')):
        if needle in key:
            return name
    return str(value)


def flow_image_name(sub: str, filename_o: str) -> str:
    """File name of a sample's optical-flow image; the space before ``.png`` is part of the original names."""
    return f'{sub}_{filename_o} .png'


class SkipLog:
    """Everything left out of a run, printed once when it happens and written to the results JSON."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []
        self.added: list[tuple[str, str, bool]] = []  # (item, reason, once_per_item) of each entry, to replay
        self._seen: set[tuple[str, str]] = set()

    def add(self, item: str | Path, reason: str, once_per_item: bool = False, echo: bool = True) -> None:
        """``once_per_item``: an image missing from the CSV turns up in 67 training folds; say it once."""
        key = (str(item), '' if once_per_item else reason)
        if key in self._seen:
            return
        self._seen.add(key)
        self.entries.append({'item': str(item), 'reason': reason})
        self.added.append((str(item), reason, once_per_item))
        if echo:
            tqdm.write(f'skipped {item}: {reason}')


# recognition metrics

def recognition_evaluation(final_gt: Sequence[int], final_pred: Sequence[int],
                           num_classes: int = len(CLASS_NAMES)) -> tuple[float | None, float | None]:
    """UF1 and UAR as the original ``recognition_evaluation``: per emotion, one-vs-rest TP / FP / FN over the pooled
    predictions, f1 = 2TP / (2TP + FP + FN) and recall = TP / (TP + FN), each averaged over the classes for which
    it is defined.

    The original wraps each class in try/except; here a class's F1 is left out when the class appears in neither
    truth nor prediction, and its recall when it is absent from the truth. Where every class occurs in the truth
    (the published protocol) both give the same numbers. ``None`` when no class qualifies.
    """
    gt = np.asarray(final_gt, dtype=np.int64)
    pred = np.asarray(final_pred, dtype=np.int64)
    assert gt.shape == pred.shape, f'{gt.shape[0]} labels but {pred.shape[0]} predictions'
    f1_list, recall_list = [], []
    for label in range(num_classes):
        tp = int(np.sum((gt == label) & (pred == label)))
        fp = int(np.sum((gt != label) & (pred == label)))
        fn = int(np.sum((gt == label) & (pred != label)))
        if 2 * tp + fp + fn > 0:
            f1_list.append(2 * tp / (2 * tp + fp + fn))
        if tp + fn > 0:
            recall_list.append(tp / (tp + fn))
    uf1 = float(np.mean(f1_list)) if f1_list else None
    uar = float(np.mean(recall_list)) if recall_list else None
    return uf1, uar


# landmarks and region mosaics
#
# These are the original micro-expression preprocessing, kept apart from facial_palsy_dataset on purpose: the inputs
# here are 28x28 optical-flow images in BGR 0-255, the landmarks come from a 28x28 apex frame with the original's
# MTCNN settings and its row/column quirk, and the published numbers depend on each of these details.

def build_mtcnn(device: torch.device):
    """One MTCNN for the whole run, on the run's device (the original built one per image, on cuda:0)."""
    from facenet_pytorch import MTCNN  # weights ship inside the package; no download
    return MTCNN(margin=0, image_size=IMAGE_SIZE, select_largest=True, post_process=False, device=device)


def detect_landmarks(apex_bgr: np.ndarray, mtcnn) -> tuple[np.ndarray, bool]:
    """Five integer landmarks ``(x, y)`` of one apex frame, as the original computes them.

    The frame is shrunk to 28x28 (INTER_AREA) and handed to MTCNN as OpenCV read it (BGR, as the original did);
    where no face is found the fixed template stands in. Coordinates are clamped to [7, 21] and truncated to int.
    Returns ``(points (5, 2) int, used_template)``.
    """
    face = cv2.resize(apex_bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    _boxes, _probs, landmarks = mtcnn.detect(face, landmarks=True)
    used_template = landmarks is None or len(landmarks) == 0 or landmarks[0] is None
    if used_template:
        points = LANDMARK_TEMPLATE.copy()
    else:
        # numpy 2 + facenet-pytorch hand back object arrays; the largest face comes first (select_largest)
        points = np.asarray(landmarks[0], dtype=np.float32).reshape(5, 2)
    points = np.clip(points, LANDMARK_MIN, LANDMARK_MAX)
    return points.astype(int), used_template


def crop_regions(flow: np.ndarray, points: np.ndarray, landmark_order: str = 'original') -> list[np.ndarray]:
    """Five 14x14 crops of the flow image around the landmarks ``(x, y)``.

    ``original`` reproduces the published code, ``flow[x-7:x+7, y-7:y+7]``: rows are indexed with x. For a face
    near the template this transposes the layout, so crop 1 (MTCNN's right eye) lands on the image-left mouth
    corner and crop 3 (left mouth corner) on the image-right eye; the original's names l_eye, l_lips, nose, r_eye,
    r_lips describe exactly that. ``xy`` crops ``flow[y-7:y+7, x-7:x+7]``, centred on the landmarks themselves.
    """
    assert landmark_order in LANDMARK_ORDERS, f'landmark_order must be one of {LANDMARK_ORDERS}'
    crops = []
    for x, y in np.asarray(points, dtype=int):
        row, col = (x, y) if landmark_order == 'original' else (y, x)
        crops.append(flow[row - REGION_HALF:row + REGION_HALF, col - REGION_HALF:col + REGION_HALF])
    return crops


def region_mosaic(crops: Sequence[np.ndarray]) -> np.ndarray:
    """``vconcat(hconcat(crop0, crop1), hconcat(crop3, crop4))``: 28x28x3, the nose crop (2) unused.

    With ``original`` landmark order the top row is the image-left side of the face (eye, mouth corner) and the
    bottom row the image-right side; with ``xy`` the top row holds both eyes and the bottom row both mouth corners.
    """
    side = 2 * REGION_HALF
    for index in (0, 1, 3, 4):
        assert crops[index].shape[:2] == (side, side), \
            f'region {index} is {crops[index].shape[:2]}, not {side}x{side}: the flow image is smaller than 28x28'
    top = np.concatenate([crops[0], crops[1]], axis=1)
    bottom = np.concatenate([crops[3], crops[4]], axis=1)
    return np.concatenate([top, bottom], axis=0)


# data

@dataclass
class DataPaths:
    data_dir: Path
    apex_dir: Path
    flow_dir: Path
    folds_dir: Path
    csv: Path


@dataclass
class Sample:
    """One annotated clip: its mosaic (28x28x3 float32, 0-255, BGR) and what the CSV says about it."""
    mosaic: np.ndarray
    label: int | None
    dataset: str
    subject: str


@dataclass
class Fold:
    names: list[str]
    labels: list[int]

    def tensors(self, samples: dict[str, Sample], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (N, 3, 28, 28) float 0-255, y (N,))`` on ``device``; pixel values are not rescaled, as published."""
        if not self.names:
            return torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE, device=device), torch.empty(0, dtype=torch.long,
                                                                                        device=device)
        x = torch.from_numpy(np.stack([samples[name].mosaic for name in self.names])).permute(0, 3, 1, 2)
        y = torch.tensor(self.labels, dtype=torch.long)
        return x.contiguous().to(device), y.to(device)


def resolve_paths(data_dir: str, csv: str | None) -> DataPaths:
    """Check the original folder layout; ``--csv`` defaults to ``./<CSV_NAME>`` (where the original read it), then
    ``<data_dir>/<CSV_NAME>``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f'--data_dir {root}: folder not found (it should hold {APEX_DIR}/, {FLOW_DIR}/ and '
                        f'{FOLDS_DIR}/; see docs/en/legacy.md)')
    paths = {name: root / name for name in (APEX_DIR, FLOW_DIR, FOLDS_DIR)}
    missing = [str(path) for path in paths.values() if not path.is_dir()]
    if missing:
        raise UserError(f'--data_dir {root}: missing folder(s) {", ".join(missing)} '
                        f'(see docs/en/legacy.md for the layout)')
    if csv is not None:
        csv_path = Path(csv)
        if not csv_path.is_file():
            raise UserError(f'--csv {csv_path}: file not found')
    else:
        csv_path = Path(CSV_NAME)
        if not csv_path.is_file():
            fallback = root / CSV_NAME
            if not fallback.is_file():
                raise UserError(f'{CSV_NAME} not found in the working directory nor in {root}; '
                                f'place it there or pass --csv FILE')
            print(f'note: ./{CSV_NAME} not found; reading {fallback}')
            csv_path = fallback
    return DataPaths(root, paths[APEX_DIR], paths[FLOW_DIR], paths[FOLDS_DIR], csv_path)


def load_annotations(csv_path: Path) -> pd.DataFrame:
    """Read the composite CSV as text (``006`` stays ``006``) and add each row's flow image name."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f'{csv_path}: not a readable CSV ({first_line})') from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f'{csv_path}: missing column(s) {", ".join(missing)}; expected {", ".join(CSV_COLUMNS)}')
    if table.empty:
        raise UserError(f'{csv_path}: no rows')
    table['flow_name'] = [flow_image_name(s, f) for s, f in zip(table['sub'], table['filename_o'])]
    return table


def parse_label(value: str) -> int | None:
    try:
        label = int(str(value).strip())
    except ValueError:
        return None
    return label if 0 <= label < len(CLASS_NAMES) else None


def prepare_samples(table: pd.DataFrame, paths: DataPaths, mtcnn, landmark_order: str, skips: SkipLog,
                    csv_path: Path) -> tuple[dict[str, Sample], dict[str, Any]]:
    """Landmarks and region mosaic of every CSV row, keyed by flow image name.

    A row whose apex frame or flow image is missing or unreadable is skipped and logged. Where two rows name the
    same flow image the later one wins, as in the original's dictionary.
    """
    samples: dict[str, Sample] = {}
    template_images: list[str] = []
    duplicates = [name for name, count in Counter(table['flow_name']).items() if count > 1]
    for name in duplicates:
        tqdm.write(f'note: {csv_path}: {name} is named by several rows; the last one is used, as in the original')
    for row in tqdm(table.itertuples(index=False), total=len(table), desc='landmarks', unit='img', leave=False):
        apex_path = paths.apex_dir / row.imagename
        flow_path = paths.flow_dir / row.flow_name
        apex = cv2.imread(str(apex_path)) if apex_path.is_file() else None
        if apex is None:
            skips.add(apex_path, 'apex frame missing or unreadable' if apex_path.is_file() else 'apex frame not found')
            continue
        flow = cv2.imread(str(flow_path)) if flow_path.is_file() else None
        if flow is None:
            skips.add(flow_path, 'optical-flow image unreadable' if flow_path.is_file()
                      else 'optical-flow image not found')
            continue
        points, used_template = detect_landmarks(apex, mtcnn)
        try:
            mosaic = region_mosaic(crop_regions(flow, points, landmark_order))
        except AssertionError as err:
            skips.add(flow_path, f'{err} (it is {flow.shape[1]}x{flow.shape[0]})')
            continue
        if used_template:
            template_images.append(row.imagename)
        samples[row.flow_name] = Sample(mosaic.astype(np.float32), parse_label(row.label),
                                        dataset_display_name(row.dataset), str(row.sub))
    stats = {'images': len(samples), 'detected': len(samples) - len(template_images),
             'template': len(template_images), 'template_images': template_images}
    return samples, stats


def list_subjects(folds_dir: Path, wanted: Sequence[str] | None) -> list[str]:
    """The leave-one-subject-out folds, sorted (the original took ``os.listdir`` order, which differs per machine)."""
    available = sorted(p.name for p in folds_dir.iterdir() if p.is_dir())
    if not available:
        raise UserError(f'{folds_dir}: no subject folders')
    if not wanted:
        return available
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise UserError(f'--subjects {" ".join(unknown)}: not in {folds_dir} '
                        f'(available: {", ".join(available[:10])}{" ..." if len(available) > 10 else ""})')
    return list(dict.fromkeys(wanted))


def read_fold(folds_dir: Path, subject: str, split: str, samples: dict[str, Sample], csv_names: set[str],
              skips: SkipLog, csv_path: Path) -> Fold | None:
    """Image names and labels of ``<subject>/<split>/<label>/<image>``; the folder name is the label, as in the
    original, and only the names are used: pixels come from the flow image of the same name. An image whose CSV row
    was skipped (already logged) is left out; one missing from the CSV is logged once. ``None`` when the split
    folder is missing."""
    split_dir = folds_dir / subject / split
    if not split_dir.is_dir():
        skips.add(split_dir, f'folder not found; subject {subject} skipped')
        return None
    fold = Fold([], [])
    label_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
    for label_dir in label_dirs:
        label = parse_label(label_dir.name)
        if label is None:
            skips.add(label_dir, f'not a label folder (expected 0-{len(CLASS_NAMES) - 1})')
            continue
        for image in sorted(p.name for p in label_dir.iterdir() if p.is_file()):
            if image not in samples:
                if image not in csv_names:
                    skips.add(image, f'found in {label_dir} but not in {csv_path.name}', once_per_item=True)
                continue
            fold.names.append(image)
            fold.labels.append(label)
    return fold


# model, training and evaluation

def model_args_from_flags(args: argparse.Namespace) -> dict:
    return model_args_from(image_size=IMAGE_SIZE, patch_size=args.patch_size, num_classes=len(CLASS_NAMES),
                           dim=args.dim, heads=args.heads, num_hierarchies=args.num_hierarchies,
                           block_repeats=args.block_repeats)


def new_model(model_args: dict, device: torch.device) -> HTNet:
    try:
        return build_model(model_args).to(device)
    except (AssertionError, TypeError, ValueError) as err:
        raise UserError(f'cannot build HTNet({model_args}): {err}') from err


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor,
                    y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """One pass in the stored order: the original's DataLoader did not shuffle. Returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(yb)
        correct += (logits.argmax(1) == yb).sum().item()
    return total_loss / max(len(y), 1), correct / max(len(y), 1)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> tuple[float, float, list[int]]:
    """(mean loss, accuracy, predictions) over the whole fold. The original kept only the last batch's
    predictions, which is the whole fold whenever it holds at most ``batch_size`` (256) samples."""
    model.eval()
    total_loss, preds = 0.0, []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = model(xb)
        total_loss += loss_fn(logits, yb).item() * len(yb)
        preds.extend(logits.argmax(1).tolist())
    correct = sum(int(p == t) for p, t in zip(preds, y.tolist()))
    return total_loss / max(len(y), 1), correct / max(len(y), 1), preds


@dataclass
class SubjectResult:
    subject: str
    images: list[str]
    truth: list[int]
    datasets: list[str]
    pred_best: list[int]
    pred_last: list[int] | None = None
    best_epoch: int | None = None
    best_accuracy: float | None = None
    last_accuracy: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return to_plain({
            'dataset': self.datasets[0] if len(set(self.datasets)) == 1 else sorted(set(self.datasets)),
            'test_samples': len(self.truth), 'best_epoch': self.best_epoch,
            'best_test_accuracy': self.best_accuracy, 'last_test_accuracy': self.last_accuracy,
            'images': self.images, 'truth': self.truth, 'pred_best': self.pred_best, 'pred_last': self.pred_last,
        })


def train_subject(subject: str, model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace,
                  progress: tqdm) -> tuple[SubjectResult, dict[str, torch.Tensor]]:
    """Train on ``u_train``, test on ``u_test`` after every epoch, keep the weights of the best test accuracy so
    far (ties go to the later epoch, ``best <= acc`` as in the original). Returns the result and best weights."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    result = SubjectResult(subject, [], [], [], [])
    best_state: dict[str, torch.Tensor] = {}
    best_accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        train_loss, train_acc = train_one_epoch(model, optimizer, loss_fn, *train, args.batch_size)
        test_loss, test_acc, preds = evaluate(model, loss_fn, *test, args.batch_size)
        if best_accuracy <= test_acc:
            best_accuracy = test_acc
            result.best_epoch, result.pred_best = epoch, preds
            # kept on the device and written once per subject: the paper model is 560 MB per save
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result.history.append({'subject': subject, 'epoch': epoch, 'train_loss': train_loss,
                               'train_accuracy': train_acc, 'test_loss': test_loss, 'test_accuracy': test_acc})
        progress.set_postfix(subject=subject, train_acc=f'{train_acc:.3f}', test_acc=f'{test_acc:.3f}')
        progress.update(1)
    result.best_accuracy, result.last_accuracy, result.pred_last = best_accuracy, test_acc, preds
    return result, best_state


def load_subject_weights(model: nn.Module, path: Path) -> str | None:
    """Load a plain state_dict written by this script or the original; the reason it failed, or ``None``."""
    if not path.is_file():
        return 'weights not found'
    try:
        state = extract_state_dict(load_checkpoint(path))
    except (UserError, ValueError, TypeError) as err:
        return str(err).removeprefix(f'{path}: ')
    mismatches = state_dict_mismatches(state, model)
    if any(mismatches.values()):
        return f'weights do not fit this HTNet ({describe_mismatches(mismatches, limit=1)}; ' \
               f'set --dim/--heads/--num_hierarchies/--block_repeats/--patch_size to the values it was trained with)'
    model.load_state_dict(state)
    return None


# results

def summarise(results: Sequence[SubjectResult], sections: Sequence[str]) -> dict[str, dict[str, Any]]:
    """UF1 / UAR over the pooled predictions: composite and per database (from the CSV's ``dataset`` column)."""
    pred_attr = {BEST_KEY: 'pred_best', STORED_KEY: 'pred_best', LAST_KEY: 'pred_last'}
    truth = [t for r in results for t in r.truth]
    datasets = [d for r in results for d in r.datasets]
    names = [d for d in DATASET_ORDER if d in datasets] + sorted(set(datasets) - set(DATASET_ORDER))
    summary: dict[str, dict[str, Any]] = {}
    for section in sections:
        preds = [p for r in results for p in getattr(r, pred_attr[section])]
        block: dict[str, Any] = {'description': SECTION_LABELS[section]}
        groups = [('composite', list(range(len(truth))))]
        groups += [(name, [i for i, d in enumerate(datasets) if d == name]) for name in names]
        for name, index in groups:
            uf1, uar = recognition_evaluation([truth[i] for i in index], [preds[i] for i in index])
            accuracy = float(np.mean([truth[i] == preds[i] for i in index])) if index else None
            subjects = {r.subject for r in results for d in r.datasets if name == 'composite' or d == name}
            block[name] = {'UF1': uf1, 'UAR': uar, 'accuracy': accuracy, 'samples': len(index),
                           'subjects': len(subjects)}
        summary[section] = block
    return summary


def format_number(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.4f}'


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, block in summary.items():
        lines.append(f'{SECTION_LABELS[section]}:')
        for name, metrics in block.items():
            if name == 'description':
                continue
            lines.append(f'  {name:<10} UF1 {format_number(metrics["UF1"])}  UAR {format_number(metrics["UAR"])}  '
                         f'({metrics["samples"]} samples, {metrics["subjects"]} subject(s))')
    return '\n'.join(lines)


def note_if_replacing(path: Path) -> None:
    """Results are rewritten by every run; say so rather than replace a file silently."""
    if path.exists():
        print(f'note: replacing {path} from an earlier run')


def write_history(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per subject and epoch: the curve behind the best-epoch selection."""
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False, float_format='%.6f'))


def plot_results(results: Sequence[SubjectResult], history: Sequence[dict[str, Any]], sections: Sequence[str],
                 path: Path) -> None:
    """Pooled test accuracy per epoch next to the best-epoch figure (how much the selection adds), and the
    composite confusion matrices."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = (1 if history else 0) + len(sections)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    if history:
        frame = pd.DataFrame(history)
        frame['tests'] = frame['subject'].map({r.subject: len(r.truth) for r in results})
        frame['correct'] = frame['test_accuracy'] * frame['tests']
        by_epoch = frame.groupby('epoch')
        pooled = by_epoch['correct'].sum() / by_epoch['tests'].sum()
        train = by_epoch['train_accuracy'].mean()
        truth = [t for r in results for t in r.truth]
        best = float(np.mean([t == p for r in results for t, p in zip(r.truth, r.pred_best)]))
        ax = axes.pop(0)
        ax.plot(pooled.index, pooled.values, label='test, every subject at this epoch')
        ax.plot(train.index, train.values, label='train (mean over subjects)', alpha=0.6)
        ax.axhline(best, color='tab:red', linestyle='--', label='test, each subject at its best epoch')
        ax.set(xlabel='epoch', ylabel='accuracy', ylim=(0, 1.02), title=f'{len(results)} subjects, {len(truth)} tests')
        ax.legend(fontsize=8, loc='lower right')
    for section, ax in zip(sections, axes):
        attr = 'pred_last' if section == LAST_KEY else 'pred_best'
        matrix = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
        for r in results:
            for t, p in zip(r.truth, getattr(r, attr)):
                matrix[t, p] += 1
        ax.imshow(matrix, cmap='Blues')
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha='center', va='center',
                    color='white' if count > matrix.max() / 2 else 'black')
        ax.set(xticks=range(len(CLASS_NAMES)), yticks=range(len(CLASS_NAMES)), xticklabels=CLASS_NAMES,
               yticklabels=CLASS_NAMES, xlabel='predicted', ylabel='true', title=PLOT_TITLES[section])
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


# whole-composite model for transfer learning

def train_full_model(samples: dict[str, Sample], model_args: dict, args: argparse.Namespace,
                     device: torch.device, path: Path, skips: SkipLog) -> dict[str, Any]:
    """Train one model on every annotated sample (CSV order, unshuffled, as the folds) for ``--epochs`` and save a
    checkpoint dict that ``torch.load(..., weights_only=True)`` opens and ``Model.load_pretrained`` reads."""
    names = []
    for name, sample in samples.items():
        if sample.label is None:
            skips.add(name, 'CSV label is not 0, 1 or 2; left out of the full model')
        else:
            names.append(name)
    if not names:
        raise UserError('--save_full_model: no sample with a usable label')
    fold = Fold(names, [samples[n].label for n in names])
    x, y = fold.tensors(samples, device)
    seed_everything(args.seed)
    model = new_model(model_args, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in tqdm(range(1, args.epochs + 1), desc='full model', unit='epoch'):
        train_loss, train_acc = train_one_epoch(model, optimizer, loss_fn, x, y, args.batch_size)
    elapsed = time.perf_counter() - start
    checkpoint = {
        'model': {k: v.detach().cpu() for k, v in model.state_dict().items()},
        'model_args': model_args,
        'class_names': list(CLASS_NAMES),
        'epoch': args.epochs,
        'train_loss': train_loss,
        'train_accuracy': train_acc,
        'samples': len(names),
        'preprocess': {'input': 'optical-flow region mosaic', 'image_size': IMAGE_SIZE, 'pixel_range': '0-255',
                       'channels': 'BGR (u, v, optical strain as OpenCV reads them)',
                       'landmark_order': args.landmark_order},
        'args': to_plain(vars(args)),
    }
    save_checkpoint(checkpoint, path)
    print(f'full model: {len(names)} samples, {args.epochs} epochs, train accuracy {train_acc:.4f}, '
          f'{elapsed:.0f} s -> {path}')
    return {'path': str(path), 'samples': len(names), 'epochs': args.epochs, 'train_accuracy': train_acc,
            'train_loss': train_loss, 'seconds': elapsed}


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='HTNet micro-expression recognition, leave-one-subject-out on CASME II + SMIC + SAMM, as '
                    'published. See docs/en/legacy.md.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(parser)
    parser.add_argument('--train', type=str2bool, nargs='?', const=True, default=False, metavar='True|False',
                        help='True: train one model per subject and keep its best epoch in --weights_dir; '
                             'False: only evaluate the weights already there (as the original)')
    data = parser.add_argument_group('data')
    data.add_argument('--data_dir', default='./datasets',
                      help=f'folder holding {APEX_DIR}/ (apex frames), {FLOW_DIR}/ (optical flow) and '
                           f'{FOLDS_DIR}/ (the leave-one-subject-out folds)')
    data.add_argument('--csv', default=None,
                      help=f'the composite annotation file; default ./{CSV_NAME} (where the original read it), '
                           f'else <data_dir>/{CSV_NAME}')
    data.add_argument('--subjects', nargs='+', default=None, metavar='SUBJECT',
                      help='run only these folds (folder names under three_norm_u_v_os, e.g. sub01 s01 006); '
                           'default all. Training data is always every other subject, as in the full protocol')
    data.add_argument('--landmark_order', default='original', choices=LANDMARK_ORDERS,
                      help="original: crop flow[x-7:x+7, y-7:y+7] as the published code (rows indexed by x), "
                           "needed to reproduce the paper; xy: flow[y-7:y+7, x-7:x+7], centred on the landmarks")
    optim = parser.add_argument_group('training')
    optim.add_argument('--epochs', type=int, default=800, help='epochs per subject')
    optim.add_argument('--batch_size', type=int, default=256, help='samples per batch (training and testing)')
    optim.add_argument('--learning_rate', type=float, default=5e-5, help='Adam learning rate')
    optim.add_argument('--seed', type=int, default=1,
                       help='seeds random, numpy and torch before each subject\'s model is built, so a fold gives '
                            'the same result whether run alone (--subjects) or with the others')
    optim.add_argument('--device', default='auto', help='auto (CUDA when available), cpu or cuda[:N]')
    model = parser.add_argument_group('model (paper defaults)')
    model.add_argument('--dim', type=int, default=PAPER_MODEL['dim'], help='channels of the first hierarchy')
    model.add_argument('--heads', type=int, default=PAPER_MODEL['heads'], help='attention heads of the first hierarchy')
    model.add_argument('--num_hierarchies', type=int, default=PAPER_MODEL['num_hierarchies'],
                       help='hierarchy levels')
    model.add_argument('--block_repeats', type=int, nargs='+', default=list(PAPER_MODEL['block_repeats']),
                       help='transformer blocks per hierarchy, bottom level first')
    model.add_argument('--patch_size', type=int, default=PAPER_MODEL['patch_size'], help='patch side in pixels')
    out = parser.add_argument_group('outputs')
    out.add_argument('--weights_dir', default='./ourmodel_threedatasets_weights',
                     help='per-subject weights <subject>.pth (plain state_dicts, as the original), model_args.json, '
                          'results, and best_model.pth')
    out.add_argument('--results_json', default=None,
                     help='results file; default <weights_dir>/results.json (training) or results_eval.json')
    out.add_argument('--save_full_model', action='store_true',
                     help='after the folds, train one model on every sample for --epochs and save '
                          '<weights_dir>/best_model.pth for transfer learning')
    out.add_argument('--overwrite', action='store_true',
                     help='allow replacing weight files already in --weights_dir')
    out.add_argument('--no_plots', action='store_true', help='do not draw results.png')
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ('epochs', 'batch_size', 'dim', 'heads', 'num_hierarchies', 'patch_size'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name} must be at least 1, not {getattr(args, name)}')
    if args.learning_rate <= 0:
        raise UserError(f'--learning_rate must be positive, not {args.learning_rate}')
    if len(args.block_repeats) not in (1, args.num_hierarchies):
        raise UserError(f'--block_repeats needs one value or {args.num_hierarchies} (one per hierarchy), '
                        f'got {args.block_repeats}')


def resolve_model_args(args: argparse.Namespace, weights_dir: Path) -> dict:
    """Training uses the flags; evaluation prefers ``model_args.json`` written beside the weights by training."""
    flags = model_args_from_flags(args)
    stored_path = weights_dir / 'model_args.json'
    if args.train or not stored_path.is_file():
        return flags
    try:
        stored = json.loads(stored_path.read_text())
        build_model(stored)
    except (json.JSONDecodeError, TypeError, ValueError, AssertionError) as err:
        raise UserError(f'{stored_path}: not a usable model description ({err})') from err
    if stored != flags:
        print(f'note: using the model shape in {stored_path}: {stored}')
    return stored


def check_outputs_free(args: argparse.Namespace, weights_dir: Path, subjects: Sequence[str], model_args: dict) -> None:
    """Weights cost hours; never replace them unless asked to."""
    if args.overwrite:
        return
    taken = [weights_dir / f'{s}.pth' for s in subjects if args.train and (weights_dir / f'{s}.pth').exists()]
    if args.save_full_model and (weights_dir / 'best_model.pth').exists():
        taken.append(weights_dir / 'best_model.pth')
    if taken:
        shown = ', '.join(p.name for p in taken[:3]) + (f' and {len(taken) - 3} more' if len(taken) > 3 else '')
        raise UserError(f'{weights_dir} already holds {shown}; pass --overwrite to replace them or choose '
                        f'another --weights_dir')
    stored_path = weights_dir / 'model_args.json'
    if args.train and stored_path.is_file():
        try:
            stored = json.loads(stored_path.read_text())
        except json.JSONDecodeError:
            stored = None
        if stored != model_args:
            raise UserError(f'{stored_path} describes another model ({stored}) than this run ({model_args}); '
                            f'its other weights would no longer match it: pass --overwrite or choose another '
                            f'--weights_dir')


@dataclass
class Run:
    """Everything a run has settled before the folds start."""
    args: argparse.Namespace
    device: torch.device
    paths: DataPaths
    subjects: list[str]
    weights_dir: Path
    model_args: dict
    parameters: int
    results_path: Path
    samples: dict[str, Sample]
    csv_names: set[str]
    landmark_stats: dict[str, Any]
    skips: SkipLog


def set_up(args: argparse.Namespace, device: torch.device) -> Run:
    """Check every input and output before the long work; then landmarks and mosaics of every annotated clip.
    Under torchrun rank 0 alone checks and writes the outputs' folder, while the others wait."""
    paths = resolve_paths(args.data_dir, args.csv)
    table = load_annotations(paths.csv)
    subjects = list_subjects(paths.folds_dir, args.subjects)
    weights_dir = Path(args.weights_dir)
    if not args.train and not weights_dir.is_dir():
        raise UserError(f'--weights_dir {weights_dir}: folder not found; --train False evaluates weights stored '
                        f'there (run with --train True first)')
    model_args = resolve_model_args(args, weights_dir)
    parameters = count_parameters(new_model(model_args, torch.device('cpu')))  # a wrong shape fails here
    results_path = Path(args.results_json) if args.results_json else \
        weights_dir / ('results.json' if args.train else 'results_eval.json')

    def prepare_outputs() -> None:
        check_outputs_free(args, weights_dir, subjects, model_args)
        check_writable(weights_dir, '--weights_dir')  # before the slow work (landmarks, training)
        if args.train:
            atomic_write_text(weights_dir / 'model_args.json', json.dumps(model_args, indent=2) + '\n')
        save_args(args, results_path.with_name(results_path.stem + '_args.yaml'))
    distributed.run_on_main(prepare_outputs)
    schedule = f'lr={args.learning_rate:g}, epochs={args.epochs}, batch={args.batch_size}, ' \
        if args.train or args.save_full_model else ''
    print(f'{"train" if args.train else "evaluate"}: {len(subjects)} subject(s), {schedule}device={device}, '
          f'landmark order {args.landmark_order}, model {model_args} ({parameters / 1e6:.1f}M parameters)')

    skips = SkipLog()
    samples, landmark_stats = prepare_samples(table, paths, build_mtcnn(device), args.landmark_order, skips,
                                              paths.csv)
    print(f'landmarks: {landmark_stats["detected"]} of {landmark_stats["images"]} apex frames by MTCNN, '
          f'{landmark_stats["template"]} from the template (no face found)')
    if not samples:
        raise UserError(f'{paths.csv}: none of its rows has a readable apex frame and flow image under '
                        f'{paths.data_dir}')
    return Run(args, device, paths, subjects, weights_dir, model_args, parameters, results_path, samples,
               set(table['flow_name']), landmark_stats, skips)


def load_folds(run: Run, subject: str) -> tuple[Fold, Fold] | None:
    """``(u_train, u_test)`` of one subject (``u_train`` empty when only evaluating); ``None`` if unusable."""
    def read(split: str) -> Fold | None:
        return read_fold(run.paths.folds_dir, subject, split, run.samples, run.csv_names, run.skips, run.paths.csv)

    test_fold = read('u_test')
    train_fold = read('u_train') if run.args.train else Fold([], [])
    if test_fold is None or train_fold is None:
        return None
    for split, fold in (('u_test', test_fold), ('u_train', train_fold)):
        if not fold.names and (split == 'u_test' or run.args.train):
            run.skips.add(run.paths.folds_dir / subject / split, f'no usable images; subject {subject} skipped')
            return None
    return train_fold, test_fold


def run_subject(run: Run, subject: str, train_fold: Fold, test_fold: Fold,
                progress: tqdm) -> SubjectResult | None:
    """Train (``--train True``) or load and evaluate one subject's model; ``None`` if its weights do not load."""
    args = run.args
    seed_everything(args.seed)
    model = new_model(run.model_args, run.device)
    test = test_fold.tensors(run.samples, run.device)
    weight_path = run.weights_dir / f'{subject}.pth'
    if args.train:
        result, best_state = train_subject(subject, model, train_fold.tensors(run.samples, run.device), test, args,
                                           progress)
        save_checkpoint({k: v.cpu() for k, v in best_state.items()}, weight_path)
    else:
        progress.update(1)
        problem = load_subject_weights(model, weight_path)
        if problem:
            run.skips.add(weight_path, f'{problem}; subject {subject} skipped')
            return None
        _loss, accuracy, preds = evaluate(model, nn.CrossEntropyLoss(), *test, args.batch_size)
        result = SubjectResult(subject, [], [], [], preds, best_accuracy=accuracy)
    result.images, result.truth = test_fold.names, test_fold.labels
    result.datasets = [run.samples[name].dataset for name in test_fold.names]
    return result


def run_folds(run: Run) -> tuple[list[SubjectResult], float | None, dict[str, str]]:
    """Every subject in turn, one progress bar over subjects x epochs. Returns the results, samples/s and the
    subjects that failed with their errors (a Python error in one subject is printed with its traceback and the
    others go on). Under torchrun each process runs its share of the subjects (``distributed.my_share``) and leaves
    each one's outcome in ``<weights_dir>/.subject_results/``; rank 0 reads them (``gather_subjects``) and the
    others return nothing."""
    mine = distributed.my_share(run.subjects)
    parallel = distributed.world_size() > 1
    exchange = run.weights_dir / '.subject_results'
    token = distributed.broadcast_object(secrets.token_hex(4))  # tells this run's files from an earlier run's
    before_folds = len(run.skips.added)
    outcomes: dict[str, dict[str, Any]] = {}
    epochs_per_subject = run.args.epochs if run.args.train else 1
    progress = tqdm(total=len(mine) * epochs_per_subject, unit='epoch')
    for index, subject in enumerate(mine, 1):
        progress.set_description(f'subject {index}/{len(mine)}')
        skips_before = len(run.skips.added)
        folds = load_folds(run, subject)
        tick = time.perf_counter()
        result, error = None, None
        try:
            result = run_subject(run, subject, *folds, progress) if folds else None
        except Exception as err:  # noqa: BLE001 - one subject's failure must not cost the others
            error = distributed.report_failure(f'subject {subject}', err, 'subjects')
        outcome = {'subject': subject, 'token': token, 'result': None if result is None else vars(result),
                   'error': error,
                   'trained_samples': len(folds[0].names) * run.args.epochs if result and run.args.train else 0,
                   'train_seconds': time.perf_counter() - tick if result and run.args.train else 0.0,
                   'skips': run.skips.added[skips_before:]}
        if result is None:
            progress.n = index * epochs_per_subject
            progress.refresh()
        outcomes[subject] = outcome
        if parallel:
            distributed.publish(exchange / f'{subject}.json', outcome)
        else:
            report_subject(outcome, outcomes)
    progress.close()
    if parallel:
        if not distributed.is_main():
            return [], None, {}
        outcomes = gather_subjects(run, outcomes, exchange, token, before_folds)
    failed = {o['subject']: o['error'] for o in outcomes.values() if o.get('error')}
    results = [SubjectResult(**o['result']) for o in outcomes.values() if o['result'] is not None]
    if not results:
        raise UserError(f'no subject could be {"trained" if run.args.train else "evaluated"}; see the messages above')
    seconds = sum(o['train_seconds'] for o in outcomes.values())
    return results, (sum(o['trained_samples'] for o in outcomes.values()) / seconds if seconds > 0 else None), failed


def report_subject(outcome: dict[str, Any], so_far: dict[str, dict[str, Any]]) -> None:
    """The line printed when a subject is done, with UF1 / UAR over every subject so far (in subject order)."""
    result = outcome['result']
    if result is None:
        return
    done = [o['result'] for o in so_far.values() if o['result'] is not None]
    uf1, uar = recognition_evaluation([t for r in done for t in r['truth']], [p for r in done for p in r['pred_best']])
    epoch_note = f', best epoch {result["best_epoch"]}, last-epoch accuracy {result["last_accuracy"]:.4f}' \
        if result['pred_last'] is not None else ''
    tqdm.write(f'subject {outcome["subject"]} ({result["datasets"][0]}): {len(result["truth"])} tests, accuracy '
               f'{result["best_accuracy"]:.4f}{epoch_note} | so far UF1 {format_number(uf1)} UAR {format_number(uar)}')


def gather_subjects(run: Run, own: dict[str, dict[str, Any]], exchange: Path, token: str,
                    before_folds: int) -> dict[str, dict[str, Any]]:
    """Rank 0 under torchrun: every subject's outcome in subject order (its own and, once they are there, those the
    other processes published), the per-subject lines and the skipped items as one process prints and lists them."""
    others = [subject for subject in run.subjects if subject not in own]
    published = distributed.wait_for_published([exchange / f'{subject}.json' for subject in others],
                                               accept=lambda payload: payload.get('token') == token,
                                               what='subjects')
    found = {**own, **{payload['subject']: payload for payload in published.values()}}
    skips = SkipLog()
    for item, reason, once in run.skips.added[:before_folds]:  # the landmark pass, the same on every process
        skips.add(item, reason, once, echo=False)
    outcomes: dict[str, dict[str, Any]] = {}
    for subject in run.subjects:
        outcomes[subject] = found[subject]
        for item, reason, once in found[subject]['skips']:
            skips.add(item, reason, once, echo=subject not in own)
        report_subject(found[subject], outcomes)
    run.skips = skips
    shutil.rmtree(exchange, ignore_errors=True)
    return outcomes


def write_outputs(run: Run, results: Sequence[SubjectResult], sections: Sequence[str],
                  report: dict[str, Any]) -> None:
    history = [row for r in results for row in r.history]
    if run.args.train:
        note_if_replacing(run.weights_dir / 'summary.csv')
        write_history(history, run.weights_dir / 'summary.csv')
    if not run.args.no_plots:
        plot_path = run.results_path.with_suffix('.png')
        note_if_replacing(plot_path)
        plot_results(results, history, sections, plot_path)
        report['plot'] = str(plot_path)
    note_if_replacing(run.results_path)
    atomic_write_text(run.results_path, json.dumps(to_plain(report), indent=2) + '\n')
    skipped = run.skips.entries
    print(f'results: {run.results_path}' + (f' ({len(skipped)} item(s) skipped, listed there)' if skipped else ''))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the protocol; under torchrun the subjects are spread over the processes and rank 0
    prints and writes."""
    with distributed.only_main_prints():
        args = parse_args_with_config(get_args_parser(), argv)
        check_args(args)
        device = distributed.device_for_process(resolve_device(args.device))
        with distributed.process_group(device):
            return run_protocol(args, device)


def run_protocol(args: argparse.Namespace, device: torch.device) -> int:
    """Every subject's fold, then (rank 0) the pooled UF1 / UAR, the full model and the results files."""
    start = time.perf_counter()
    run = set_up(args, device)
    results, speed, failed = run_folds(run)
    if not distributed.is_main():
        return 0

    sections = [BEST_KEY, LAST_KEY] if args.train else [STORED_KEY]
    summary = summarise(results, sections)
    print(f'\nFinal evaluation: {sum(len(r.truth) for r in results)} test samples from {len(results)} subject(s)')
    print(format_summary(summary))
    if speed:
        print(f'training: {speed:.1f} samples/s on {run.device} (testing after each epoch included)')
    report: dict[str, Any] = {
        'mode': 'train' if args.train else 'evaluate',
        'metrics': summary,
        'subjects': {r.subject: r.as_json() for r in results},
        'skipped': run.skips.entries,
        'failed_subjects': failed,
        'landmarks': run.landmark_stats,
        'model_args': run.model_args,
        'parameters': run.parameters,
        'class_names': list(CLASS_NAMES),
        'train_samples_per_second': speed,
        'args': to_plain(vars(args)),
    }
    if args.save_full_model:
        report['full_model'] = train_full_model(run.samples, run.model_args, args, run.device,
                                                run.weights_dir / 'best_model.pth', run.skips)
    report['elapsed_seconds'] = time.perf_counter() - start
    write_outputs(run, results, sections, report)
    if failed:
        print(f'error: {len(failed)} subject(s) failed and are left out of the metrics: {", ".join(failed)} '
              f'(their errors are under "failed_subjects" in {run.results_path})', file=distributed.error_stream())
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
