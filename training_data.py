"""The photos a training run reads: where each split's rows come from (the flags, a CSV's split column, grade
folders), validation subjects carved out of the training subjects, the cross-validation pool and its folds, the
loaders, and the checks and summaries printed before training. ``train_facial_palsy.py`` is its user.

Subjects never cross splits: validation and folds are whole subjects (``annotations.split_subjects``), a subject
found in two splits stops the run, and so do subjects taken from file names that look wrong
(``annotations.check_subjects``) unless ``--one_photo_per_subject`` says every photo shows a different person.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

import annotations
import data_augmentation as DA
import distributed
import facial_palsy_dataset as fpd
import metrics as M
import utils
from utils import UserError

# share of the training subjects held out for validation when the data gives no validation split
DEFAULT_VAL_FRACTION = 0.15
# what gives each photo its patient when the subjects look wrong (annotations.check_subjects)
SUBJECT_FIXES = ('a subject column in the CSV (prepare_dataset.py writes one; its --subject_regex reads subjects '
                 'from file names), one folder per patient (grade_N/PATIENT/photo.jpg), or --one_photo_per_subject '
                 'if every photo shows a different person')


# splits

@dataclass
class SplitSource:
    """Where one split's rows come from: a CSV (or the grade folders when ``csv`` is None) and its split value."""
    csv: str | None
    split: str | None  # None: every row of the file


def _read_split_counts(csv_path: str) -> Counter | None:
    """Counts of the ``split`` column of an annotation CSV (aliases such as ``validation`` read as ``val``, as the
    dataset reads them), or None when it has no such column."""
    table = annotations.read_table(csv_path)
    if 'split' not in table.columns:
        return None
    return Counter(split for split in map(annotations.normalise_split, table['split']) if split)


def _has_split_folder(data_root: str, split: str) -> bool:
    return bool(annotations.grade_folders(Path(data_root) / split))


def resolve_split_sources(args: argparse.Namespace) -> tuple[dict[str, SplitSource], bool]:
    """Decide where the train / val / test rows come from. Returns the sources and whether validation must be
    carved out of the training subjects (``--val_fraction``).

    One CSV for train and val: its split column decides. Separate CSVs: each gives its own split's rows (all
    rows when it has no split column). Grade folders: ``data_root/train|val/grade_N`` when present. Anything
    else needs ``--val_fraction``. Test rows are only read from ``--test_csv``.
    """
    if args.train_csv is None:
        if args.dataset_type == 'CK+':
            raise UserError('CK+ photos carry no palsy grades: give the grade mapping CSV as --train_csv '
                            '(prepare_dataset.py writes one)')
        if _has_split_folder(args.data_root, 'val'):
            if args.val_fraction is not None:
                print(f'note: --val_fraction ignored: {Path(args.data_root) / "val"} holds the validation images')
            return {'train': SplitSource(None, 'train'), 'val': SplitSource(None, 'val')}, False
        if args.val_fraction is None:
            args.val_fraction = DEFAULT_VAL_FRACTION
            print(f'note: {args.data_root} holds grade folders without a split: holding out '
                  f'{DEFAULT_VAL_FRACTION:.0%} of the subjects for validation (--val_fraction; no test set, so no '
                  f'test metrics: prepare_dataset.py writes a CSV with train / val / test subjects)')
        return {'train': SplitSource(None, None)}, True

    train_counts = _read_split_counts(args.train_csv)
    sources = {'train': SplitSource(args.train_csv, 'train' if train_counts is not None else None)}
    if train_counts is not None and train_counts.get('train', 0) == 0:
        raise UserError(f'{args.train_csv} has no split=train rows (splits: {_fmt_counts(train_counts)})')
    carve = False
    if args.val_csv is None or utils.same_path(args.val_csv, args.train_csv):
        if train_counts is None or train_counts.get('val', 0) == 0:
            if args.val_fraction is None:
                found = 'has no split column' if train_counts is None else \
                    f'has no split=val rows (splits: {_fmt_counts(train_counts)})'
                args.val_fraction = DEFAULT_VAL_FRACTION
                print(f'note: {args.train_csv} {found}: holding out {DEFAULT_VAL_FRACTION:.0%} of its training '
                      f'subjects for validation (--val_fraction)')
            carve = True
        else:
            sources['val'] = SplitSource(args.train_csv, 'val')
            if args.val_fraction is not None:
                print(f'note: --val_fraction ignored: {args.train_csv} has split=val rows')
    else:
        sources['val'] = _separate_source(args.val_csv, 'val')
        if args.val_fraction is not None:
            print('note: --val_fraction ignored: --val_csv gives the validation rows')

    if args.test_csv is not None:
        sources['test'] = _separate_source(args.test_csv, 'test')
    elif train_counts is not None and train_counts.get('test', 0):
        print(f'note: the {train_counts["test"]} split=test rows of {args.train_csv} are not used; pass '
              f'--test_csv to score them once at the end')
    return sources, carve


def _separate_source(csv_path: str, split: str) -> SplitSource:
    counts = _read_split_counts(csv_path)
    if counts is None:
        return SplitSource(csv_path, None)
    if counts.get(split, 0) == 0:
        raise UserError(f'{csv_path} has no split={split} rows (splits: {_fmt_counts(counts)})')
    return SplitSource(csv_path, split)


def _fmt_counts(counts: Counter | dict) -> str:
    return ', '.join(f'{k} {v}' for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or 'none'


def make_dataset(args: argparse.Namespace, source: SplitSource, detector: fpd.LandmarkDetector,
                 preprocess: dict[str, Any]) -> Dataset:
    """One split as a ``FacialPalsyDataset`` (or the CK+ variant); all splits share one landmark detector and the
    run's preprocess."""
    common = dict(preprocess=preprocess, split=source.split or 'all', num_classes=args.num_classes,
                  verbose=True, preload=args.preload, detector=detector)
    if args.dataset_type == 'CK+':
        return fpd.CKPlusFacialPalsyDataset(args.data_root, grade_mapping_csv=source.csv, **common)
    return fpd.FacialPalsyDataset(args.data_root, csv_file=source.csv, dataset_type=args.dataset_type, **common)


def split_labels(dataset: Dataset) -> list[int]:
    if isinstance(dataset, Subset):
        return [int(dataset.dataset.labels[i]) for i in dataset.indices]
    return [int(v) for v in dataset.labels]


def split_subjects(dataset: Dataset) -> list[str]:
    if isinstance(dataset, Subset):
        return [str(dataset.dataset.subjects[i]) for i in dataset.indices]
    return [str(s) for s in dataset.subjects]


def settle_subjects(datasets: Sequence[Dataset], args: argparse.Namespace) -> None:
    """Check the subjects of every photo the run reads before any split is made from them
    (``annotations.check_subjects``; a one-line ``UserError`` naming the data and the fix). With
    ``--one_photo_per_subject`` the check is skipped and each photo whose subject came from its file name becomes
    its own subject (its file name without extension, as ``prepare_dataset.py --one_photo_per_subject`` writes)."""
    bases = list({id(base): base for base in (DA.base_dataset(d) for d in datasets)}.values())
    if getattr(args, 'one_photo_per_subject', False):
        for base in bases:
            sources = getattr(base, 'subject_sources', None) or []
            for index, source in enumerate(sources):
                if source == 'name':
                    base.subjects[index] = Path(base.paths[index]).stem
                    base.records[index].subject = base.subjects[index]
        return
    subjects: dict[str, tuple[str, str]] = {}  # path -> (subject, source): a photo read by two splits counts once
    for base in bases:
        sources = getattr(base, 'subject_sources', None) or ['column'] * len(base.subjects)
        for path, subject, source in zip(base.paths, base.subjects, sources):
            subjects.setdefault(str(path), (str(subject), source))
    where = args.train_csv if args.train_csv is not None else args.data_root
    annotations.check_subjects([s for s, _ in subjects.values()], list(subjects),
                               [source for _, source in subjects.values()], where=where, fixes=SUBJECT_FIXES)


def carve_validation(labels: Sequence[int], subjects: Sequence[str], fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Split sample indices into train / val by whole subjects (``annotations.split_subjects`` with ratios
    ``(1 - fraction, fraction)``), so that no patient has photos on both sides and every grade with two or more
    subjects reaches validation."""
    part = annotations.split_subjects(subjects, labels, (1 - fraction, fraction), seed)
    if len(set(part.values())) < 2:
        raise UserError(f'--val_fraction {fraction}: {len(part)} subjects cannot be split into training and '
                        f'validation subjects')
    train_idx = [i for i, s in enumerate(subjects) if part[s] == 0]
    val_idx = [i for i, s in enumerate(subjects) if part[s] == 1]
    return train_idx, val_idx


def build_datasets(args: argparse.Namespace, detector: fpd.LandmarkDetector, preprocess: dict[str, Any]
                   ) -> dict[str, Dataset]:
    """The train (augmented), val and optional test datasets, after the split rules of ``resolve_split_sources``."""
    sources, carve = resolve_split_sources(args)
    transform = DA.get_augmentation_pipeline(args.augmentation)
    datasets: dict[str, Dataset] = {}
    plain_train = make_dataset(args, sources['train'], detector, preprocess)
    others = {name: make_dataset(args, sources[name], detector, preprocess)
              for name in ('val', 'test') if name in sources}
    settle_subjects([plain_train, *others.values()], args)
    if carve:
        train_idx, val_idx = carve_validation(split_labels(plain_train), split_subjects(plain_train),
                                              args.val_fraction, args.seed)
        print(f'validation: {len(val_idx)} images of whole subjects held out of the training rows '
              f'(--val_fraction {args.val_fraction})')
        datasets['train'] = Subset(DA.with_transform(plain_train, transform), train_idx)
        datasets['val'] = Subset(plain_train, val_idx)
    else:
        datasets['train'] = DA.with_transform(plain_train, transform)
        datasets['val'] = others['val']
    if 'test' in others:
        datasets['test'] = others['test']
    for name, dataset in datasets.items():
        if len(dataset) == 0:
            raise UserError(f'the {name} split has no usable images (see the skipped images above)')
    return datasets


def check_subject_overlap(datasets: dict[str, Dataset]) -> None:
    """Stop when a subject appears in two splits: the scores would measure recognising people, not grading."""
    subjects = {name: set(split_subjects(ds)) for name, ds in datasets.items()}
    names = list(subjects)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(subjects[first] & subjects[second])
            if shared:
                shown = ', '.join(shared[:5]) + (f' and {len(shared) - 5} more' if len(shared) > 5 else '')
                raise UserError(f'{len(shared)} subjects appear in both {first} and {second}: {shown}; '
                                f'split by subject so results stay honest')


def describe_splits(datasets: dict[str, Dataset], class_names: Sequence[str]) -> dict[str, dict]:
    """Print and return images, subjects and grade counts per split (a missing grade is worth noticing early)."""
    summary = {}
    for name, dataset in datasets.items():
        labels = split_labels(dataset)
        counts = Counter(labels)
        summary[name] = {'images': len(labels), 'subjects': len(set(split_subjects(dataset))),
                         'grade_counts': [counts.get(k, 0) for k in range(len(class_names))]}
        grades = ', '.join(f'{class_names[k]}: {counts.get(k, 0)}' for k in range(len(class_names)))
        print(f'{name:>5}: {len(labels)} images of {summary[name]["subjects"]} subjects ({grades})')
        landmark_counts = getattr(DA.base_dataset(dataset), 'landmark_counts', None)
        if landmark_counts and landmark_counts.get('template'):
            print(f'       note: {landmark_counts["template"]} images use template landmarks (no face detected)')
    return summary


def write_skipped(datasets: dict[str, Dataset], log_dir: Path) -> int:
    """List every image a dataset skipped (unreadable, no face...) in ``<log_dir>/skipped_images.csv``."""
    rows = []
    seen: set[int] = set()
    for name, dataset in datasets.items():
        skipped = getattr(DA.base_dataset(dataset), 'skipped', None) or []
        if id(skipped) in seen:  # train and a carved-out validation share one dataset's list
            continue
        seen.add(id(skipped))
        rows.extend((name, str(path), str(reason)) for path, reason in skipped)
    target = log_dir / 'skipped_images.csv'
    if rows:
        utils.atomic_write_csv(target, ('split', 'path', 'reason'),
                               (dict(zip(('split', 'path', 'reason'), row)) for row in rows))
        print(f'{len(rows)} images skipped; listed in {target}')
    return len(rows)


def loader_dataset(dataset: Dataset, args: argparse.Namespace, train: bool) -> Dataset:
    """The split as the loader reads it: with sides (and, for training, side-swapping mirrors) when the run
    needs them, else unchanged."""
    flip = 0.5 if train and args.flip_swap_side else 0.0
    if args.multitask or flip:
        return DA.SideLabelled(dataset, flip_probability=flip)
    return dataset


def build_loaders(datasets: dict[str, Dataset], args: argparse.Namespace, device: torch.device,
                  seed: int, shard: tuple[int, int] | None = None) -> dict[str, DataLoader]:
    """The loaders of the splits. The training loader's workers start afresh each epoch (not persistent): they
    take their seeds from its generator, which ``engine.seed_epoch`` seeds from (seed, epoch), so a resumed run
    replays every epoch exactly. ``shard`` = (rank, processes) of a torchrun training: the training loader then
    reads this process's share of each epoch's shuffle (``distributed.EpochShuffleSampler``), --batch_size photos
    per step, so a step of all processes reads the global batch of --batch_size x processes photos."""
    generator = torch.Generator().manual_seed(seed)
    train = loader_dataset(datasets['train'], args, train=True)
    common = dict(generator=generator, persistent_workers=False, batch_size=args.batch_size,
                  num_workers=args.num_workers, pin_memory=device.type == 'cuda')
    if shard is not None and shard[1] > 1:
        rank, processes = shard
        sampler = distributed.EpochShuffleSampler(train, generator, num_replicas=processes, rank=rank)
        reseed = distributed.WorkerReseed(rank) if rank and args.num_workers else None
        loaders = {'train': DataLoader(train, sampler=sampler, worker_init_fn=reseed, **common)}
    else:
        loaders = {'train': DataLoader(train, shuffle=True, **common)}
    for name in ('val', 'test'):
        if name in datasets:
            loaders[name] = evaluation_loader(datasets[name], args, device, persistent=args.num_workers > 0)
    return loaders


def evaluation_loader(dataset: Dataset, args: argparse.Namespace, device: torch.device,
                      persistent: bool = False) -> DataLoader:
    """A loader that reads a split once in order, as validation and test are read (never mirrored)."""
    return DataLoader(loader_dataset(dataset, args, train=False), shuffle=False, batch_size=args.batch_size,
                      num_workers=args.num_workers, pin_memory=device.type == 'cuda', persistent_workers=persistent)


def unaugmented(dataset: Dataset) -> Dataset:
    """The same photos without the training augmentation (``data_augmentation.with_transform`` with none): the
    training split as the network sees photos at test time."""
    if isinstance(dataset, Subset):
        return Subset(DA.with_transform(dataset.dataset, None), dataset.indices)
    return DA.with_transform(dataset, None)


def validation_subjects(dataset: Dataset, select_metric: str) -> list[str] | None:
    """The subject of each validation photo in loader order, for the patient-level metrics
    (``metrics.subject_groups``: None when the photos name no subject with two or more photos). A ``subject_*``
    --select_metric without such subjects is refused: its value would be the photo-level one under another name."""
    subjects = split_subjects(dataset)
    groups = M.subject_groups(subjects)
    if groups is None and M.is_subject_metric(select_metric):
        photo_metric = select_metric[len(M.SUBJECT_PREFIX):]
        raise UserError(f'--select_metric {select_metric} grades each validation subject from the mean of its '
                        f'photos, but the {len(subjects)} validation photos name no subject with two or more '
                        f'photos ({len(set(subjects))} subjects); choose --select_metric {photo_metric}, or give '
                        f'each photo its patient: {SUBJECT_FIXES}')
    return groups


def split_landmarks(dataset: Dataset) -> list[Any]:
    """The landmarks the dataset used for each photo of the split (``FaceLandmarks``, original-photo pixels)."""
    if isinstance(dataset, Subset):
        return [dataset.dataset.landmarks[i] for i in dataset.indices]
    return list(dataset.landmarks)


# cross-validation

def _csv_paths(csv_path: str, data_root: str, split: str | None) -> set[str]:
    """Photo paths of one split of an annotation CSV, as the dataset resolves them (no photo is opened)."""
    records, _ = annotations.read_annotation_csv(csv_path, data_root, split, verbose=False)
    return {record.path for record in records}


def _under_folder(path: str, root: Path, folder: str) -> bool:
    try:
        return Path(path).relative_to(root).parts[:1] == (folder,)
    except ValueError:
        return False


def build_cv_pool(args: argparse.Namespace, detector: fpd.LandmarkDetector, preprocess: dict[str, Any]
                  ) -> tuple[Dataset, list[int]]:
    """One dataset over every photo of the training data (landmarks detected once, for all folds) and the indices
    of the pool: the train and val rows of the CSV (every row when it has no split column), or every grade
    folder except ``test/``. Rows of --test_csv never enter the pool."""
    source = SplitSource(args.train_csv, None)
    dataset = make_dataset(args, source, detector, preprocess)
    settle_subjects([dataset], args)
    paths = [str(p) for p in dataset.paths]
    keep = [True] * len(paths)
    if args.train_csv is not None:
        counts = _read_split_counts(args.train_csv)
        if counts is not None:
            allowed = set().union(*(_csv_paths(args.train_csv, args.data_root, split)
                                    for split in ('train', 'val') if counts.get(split, 0)))
            if not allowed:
                raise UserError(f'{args.train_csv} has no split=train or split=val rows (splits: '
                                f'{_fmt_counts(counts)})')
            keep = [path in allowed for path in paths]
            if counts.get('test', 0):
                print(f'note: the {counts["test"]} split=test rows of {args.train_csv} stay out of every fold')
    else:
        root = Path(args.data_root)
        keep = [not _under_folder(path, root, 'test') for path in paths]
    if args.test_csv is not None:
        counts = _read_split_counts(args.test_csv)
        test_paths = _csv_paths(args.test_csv, args.data_root, 'test' if counts is not None else None)
        keep = [k and path not in test_paths for k, path in zip(keep, paths)]
        print(f'note: --test_csv is not scored with --cv; its {len(test_paths)} rows stay out of every fold '
              f'(score them with a final model trained without --cv)')
    pool = [i for i, k in enumerate(keep) if k]
    if not pool:
        raise UserError('no usable training photos left for cross-validation (see the skipped images above)')
    return dataset, pool


def assign_folds(labels: Sequence[int], subjects: Sequence[str], cv: int | str, seed: int) -> dict[str, int]:
    """Subject -> fold (1-based). K-fold: ``annotations.split_subjects`` with K equal parts (stratified by each
    subject's grade; fold sizes differ by at most one subject). ``loso``: one fold per subject, in sorted order."""
    names = sorted(set(map(str, subjects)))
    if cv == 'loso':
        return {subject: k + 1 for k, subject in enumerate(names)}
    if cv > len(names):
        raise UserError(f'--cv {cv}: the pool has only {len(names)} subjects; choose at most {len(names)} folds '
                        f'(or --cv loso)')
    parts = annotations.split_subjects(subjects, labels, [1.0] * cv, seed)
    return {subject: parts[subject] + 1 for subject in sorted(parts)}


