"""Procedurally drawn faces with a one-sided facial palsy of known House-Brackmann grade: the built-in demo data.

No downloads and no real people: every face is drawn with numpy/OpenCV from random parameters, so the whole
pipeline (prepare -> train -> evaluate -> infer -> attention) can be tried in minutes and tested offline.

Two independently designed face families share only the clinical semantics (``synthetic_palsy``: grades,
severities, the patient-side convention and the expression protocol), so that a model can be trained on one and
tested on the other, out of family:

* ``'a'`` (``synthetic_family_a``): flat, illustrated faces drawn with anti-aliased OpenCV shapes;
* ``'b'`` (``synthetic_family_b``): shaded 3-D heads (an ellipsoid with a relief, lit from a random direction)
  turned by yaw, pitch and roll, with features drawn on the head's surface.

Both vary widely, per subject (skin from very light to very dark, glasses, beards and stubble, fringes over the
forehead, age lines) and per photo (roll / yaw / pitch, light direction and strength, blur, noise, JPEG quality
drawn per photo, and now and then a hand, an object or a strong shadow over part of the face: ``synthetic_photo``),
while the signs of a grade stay readable inside the network's crops.

This module is the public API: ``generate_dataset(..., family=)`` writes a dataset (photos, annotation.csv,
manifest, README, preview), ``render_face`` / ``render_pair`` draw single photos of either family, and
``check_detection`` runs MTCNN on a generated set. Each family has per-subject parameters (``Identity``: fixed for
one synthetic person) and per-photo parameters (``PhotoConditions``: pose, lighting, camera and an ``Expression``),
so one person can be drawn in many photos. ``Identity``, ``PhotoConditions``, ``FaceGeometry``,
``face_geometry`` and ``REFERENCE_SIZE`` here are family a's, as they always were.

A subject's photos follow the clinical examination series ``EXPRESSION_PROTOCOL`` (rest, brow raise, eye closure,
smile), because House-Brackmann grades are read mostly from voluntary movement; ``expressions='rest'`` draws
resting faces only. Rest / expression pairs of one sitting (``render_pair``; ``generate_dataset(pairs=True)``
writes them with a ``neutral_path`` column) share pose and lighting and differ in ``expression`` only: the input
of optical-flow models, which read how far each side moves between the two photos.

How a grade shows in both families (severity ``s`` grows with the grade, ``s = 0`` for grade 0; see
``SEVERITY_RANGE``), on the affected side only: brow droop; a wider palpebral fissure (lower lid droop, upper lid
retraction: the incomplete eye closure of a paralysed orbicularis oculi); mouth corner droop; a flatter nasolabial
fold; and reduced movement in every expression (the affected side follows a smile, an eye closure or a brow raise
only by ``1 - s``). The signs are sized to be visible inside the 28x28 crops of a 224x224 face square that the
network reads around the eye and mouth-corner landmarks. Grade 0 faces are symmetric up to a small natural
asymmetry.

Side convention: ``side`` is the *patient's* side. In a frontal photo the patient's left is the image right, so a
``side='left'`` palsy changes the features at the image-right landmarks (``eye_r``/``mouth_r`` columns).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

import synthetic_family_a
import synthetic_family_b
from annotations import HB_DESCRIPTIONS, HB_GRADES, LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS
from synthetic_family_a import REFERENCE_SIZE, FaceGeometry, Identity, PhotoConditions, face_geometry
from synthetic_palsy import (EXPRESSION_MODES, EXPRESSION_PROTOCOL, PAIR_EXPRESSIONS, SEVERITY_RANGE, Expression,
                             Palsy, affected_image_side, pair_expressions, photo_expressions, sample_expression,
                             sample_palsy)
from synthetic_photo import DEFAULT_JPEG_QUALITY, encode_jpeg
from utils import UserError, atomic_write_text

__all__ = [
    'GENERATOR_VERSION', 'FACE_FAMILIES', 'LANDMARK_COLUMNS', 'REFERENCE_SIZE', 'SEVERITY_RANGE', 'Identity', 'Palsy',
    'Expression', 'PhotoConditions', 'FaceGeometry', 'EXPRESSION_PROTOCOL', 'EXPRESSION_MODES', 'affected_image_side',
    'family_module', 'family_of', 'sample_identity', 'sample_palsy', 'sample_expression', 'photo_expressions',
    'sample_photo', 'face_geometry', 'render_face', 'generate_dataset', 'preview_sheet', 'check_detection',
    'PhotoPair', 'render_pair', 'PAIR_EXPRESSIONS', 'pair_expressions', 'NEUTRAL_LANDMARK_COLUMNS', 'REST_FOLDER',
    'rest_photo_path', 'subject_name', 'format_detection', 'is_synthetic_dataset', 'read_manifest',
    'record_detection', 'remove_generated_files', 'move_head',
]

# 2: face families, and wide variation (skin tones, light, blur, JPEG quality, yaw / pitch, glasses, beards,
# fringes, occluders, age lines) in family a too
GENERATOR_VERSION = 2
MANIFEST_NAME = 'synthetic_faces.json'
# The face families, each drawn by its own module; 'a' is the default and the one older datasets hold.
FACE_FAMILIES = ('a', 'b')
_FAMILY_MODULES: dict[str, ModuleType] = {'a': synthetic_family_a, 'b': synthetic_family_b}
# The rest photo of a pair lives in <root>/rest/grade_N/: grade folder scanners only read grade_N folders directly
# under the root, so rest photos are never taken for extra training photos.
REST_FOLDER = 'rest'


# families

def family_module(family: str) -> ModuleType:
    """The module that draws face family ``family`` ('a' or 'b')."""
    if family not in _FAMILY_MODULES:
        raise UserError(f'--family {family}: choose one of {", ".join(FACE_FAMILIES)}')
    return _FAMILY_MODULES[family]


def family_of(identity: Any) -> str:
    """The family whose ``sample_identity`` drew ``identity``."""
    for name, module in _FAMILY_MODULES.items():
        if isinstance(identity, module.Identity):
            return name
    raise TypeError(f'not a synthetic face identity: {type(identity).__name__}')


def sample_identity(rng: np.random.Generator, family: str = 'a') -> Any:
    """Draw one synthetic person of face family ``family``."""
    return family_module(family).sample_identity(rng)


def sample_photo(rng: np.random.Generator, expression: Expression | None = None, family: str = 'a') -> Any:
    """Draw the conditions of one photo of face family ``family`` (pose, lighting, camera), at rest unless an
    ``expression`` is given."""
    return family_module(family).sample_photo(rng, expression)


def move_head(photo: Any, *, shift: tuple[float, float] = (0.0, 0.0), rotation: float = 0.0, scale: float = 1.0,
              yaw: float = 0.0, pitch: float = 0.0) -> Any:
    """``photo`` (of either family) with the head moved, as between the frames of a clip: ``shift`` (x, y) in
    fractions of the photo size, ``rotation`` in degrees counter-clockwise, ``scale`` a factor, ``yaw`` / ``pitch``
    in degrees added to the pose; only the pose changes."""
    for module in _FAMILY_MODULES.values():
        if isinstance(photo, module.PhotoConditions):
            return module.move_head(photo, shift=shift, rotation=rotation, scale=scale, yaw=yaw, pitch=pitch)
    raise TypeError(f'not the conditions of a synthetic photo: {type(photo).__name__}')


def render_face(identity: Any, palsy: Palsy, photo: Any, image_size: int = 256,
                noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Draw one photo of the subject ``identity`` (of either family; ``photo`` of the same family). Returns
    ``(image HxWx3 uint8 RGB, landmarks (5, 2) float32 in image pixels, geometry)``: the landmarks are the drawn
    eye centres, nose tip and mouth corners after the pose, the ground truth for checking a detector."""
    module = family_module(family_of(identity))
    return module.render_face(identity, palsy, photo, image_size, noise_rng=noise_rng)


class PhotoPair(NamedTuple):
    """A rest photo and an expression photo of one sitting, each ``HxWx3`` uint8 RGB with its true landmarks
    ``(5, 2)`` float32 in image pixels."""
    rest: np.ndarray
    rest_landmarks: np.ndarray
    expression: np.ndarray
    expression_landmarks: np.ndarray


def render_pair(identity: Any, palsy: Palsy, photo: Any, expression: Expression,
                image_size: int = 256, noise_rng: np.random.Generator | None = None) -> PhotoPair:
    """Draw a rest photo and an expression photo of one sitting: the rest photo with ``photo`` as given (its
    ``expression`` is the resting one, e.g. ``sample_photo``'s faint smile), then the same pose, lighting, gaze and
    camera with ``expression`` instead. Only the face moves between the two, the affected side ``1 - severity`` as
    far, while the sensor noise of each photo is drawn on its own (from ``noise_rng``, rest first), as two
    exposures would have it."""
    noise_rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
    rest, rest_points, _ = render_face(identity, palsy, photo, image_size, noise_rng=noise_rng)
    moved, moved_points, _ = render_face(identity, palsy, replace(photo, expression=expression), image_size,
                                         noise_rng=noise_rng)
    return PhotoPair(rest, rest_points, moved, moved_points)


# datasets

def subject_name(index: int, family: str = 'a') -> str:
    """``S001``, ``S002``, ... for family a and ``synb0001``, ... for family b, so that a mix of the two families
    never merges subjects; no ``_`` inside, so the file-name rule 'subject = text before the first _' holds."""
    return f'S{index + 1:03d}' if family == 'a' else f'syn{family}{index + 1:04d}'


def balanced_grades(num_subjects: int, rng: np.random.Generator) -> np.ndarray:
    """Grades 0-5 as evenly as the count allows, in random order, so every grade is present for stratified
    splits."""
    return rng.permutation(np.arange(num_subjects) % len(HB_GRADES))


def _subject_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator that depends only on (seed, subject, photo): adding subjects never changes earlier ones."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _family_key(family: str) -> tuple[int, ...]:
    """Extra seed-sequence entries of a family's subjects: none for family a (its sets stay as they were), a
    family tag otherwise, so the families of one seed draw unrelated people."""
    return () if family == 'a' else (0xFA0000 + FACE_FAMILIES.index(family),)



def generate_dataset(output_root: str | Path, num_subjects: int = 120, images_per_subject: int = 5,
                     image_size: int = 256, seed: int = 0, progress: bool = True,
                     expressions: str = 'protocol', pairs: bool = False, family: str = 'a') -> pd.DataFrame:
    """Write ``<output_root>/grade_N/<subject>_<n>.jpg``, ``annotation.csv``, ``preview.jpg``,
    ``synthetic_faces.json`` and ``README.md``; returns the annotation table.

    ``pairs=True`` draws rest / expression pairs instead: every ``grade_N/<subject>_<n>.jpg`` is a movement of the
    protocol (brow raise, eye closure, smile) and its rest photo of the same sitting goes to
    ``rest/grade_N/<subject>_<n>_rest.jpg`` (outside the grade folders, so grade-folder scans never take it for a
    photo of its own); annotation.csv gains ``neutral_path`` and the rest photo's true landmarks
    ``neutral_eye_l_x ... neutral_mouth_r_y``. Subjects (identity, grade, side, severity) are the same as without
    pairs for the same seed.

    ``family`` picks the face family ('a' or 'b', see ``FACE_FAMILIES``); subject names differ between families
    (``S001`` / ``synb0001``), so sets of both can be mixed.

    The same arguments give byte-identical files. ``output_root`` is created if needed; the caller decides
    whether writing there is allowed (``prepare_dataset.py`` refuses folders it did not create).
    """
    if num_subjects < 1 or images_per_subject < 1:
        raise UserError(f'need at least one subject and one image per subject '
                        f'(got {num_subjects} subjects x {images_per_subject} images)')
    if image_size < 64:
        raise UserError(f'--image_size {image_size}: synthetic faces need at least 64 pixels')
    if expressions not in EXPRESSION_MODES:
        raise UserError(f'--expressions {expressions}: choose one of {", ".join(EXPRESSION_MODES)}')
    module = family_module(family)
    if pairs and expressions != 'protocol':
        raise UserError(f'rest / expression pairs need --expressions protocol (with {expressions} the expression '
                        f'photo would not move)')
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    grades = balanced_grades(num_subjects, np.random.default_rng(np.random.SeedSequence([seed, 0xFACE])))
    rows = []
    bar = tqdm(total=num_subjects * images_per_subject, desc='drawing synthetic faces' + (' (pairs)' if pairs else ''),
               unit='pair' if pairs else 'img', disable=not progress)
    for index in range(num_subjects):
        subject_rng = _subject_rng(seed, *_family_key(family), index)
        identity = module.sample_identity(subject_rng)
        palsy = sample_palsy(int(grades[index]), subject_rng)
        kinds = (pair_expressions(images_per_subject, subject_rng) if pairs
                 else photo_expressions(images_per_subject, expressions, subject_rng))
        folder = root / f'grade_{palsy.grade}'
        folder.mkdir(exist_ok=True)
        for n, kind in enumerate(kinds):
            photo_rng = _subject_rng(seed, *_family_key(family), index, n + 1)
            photo = module.sample_photo(photo_rng, sample_expression(kind, photo_rng))
            subject = subject_name(index, family)
            name = f'{subject}_{n + 1:02d}.jpg'
            row = {'image_path': f'grade_{palsy.grade}/{name}', 'grade': palsy.grade, 'side': palsy.side,
                   'subject': subject, 'expression': kind, 'severity': round(palsy.severity, 4)}
            if pairs:
                image, landmarks = _write_pair(root, row['image_path'], identity, palsy, photo, image_size,
                                               photo_rng, row)
            else:
                image, landmarks, _ = render_face(identity, palsy, photo, image_size, noise_rng=photo_rng)
            (folder / name).write_bytes(encode_jpeg(image, _jpeg_quality(photo)))
            row.update({col: round(float(v), 2) for col, v in zip(LANDMARK_COLUMNS, landmarks.reshape(-1))})
            rows.append(row)
            bar.update()
    bar.close()
    columns = ['image_path', 'grade', 'side', 'subject', *LANDMARK_COLUMNS, 'expression', 'severity']
    if pairs:
        columns += ['neutral_path', *NEUTRAL_LANDMARK_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(root / 'annotation.csv', table.to_csv(index=False, float_format='%.2f'))
    (root / 'preview.jpg').write_bytes(encode_jpeg(preview_sheet(seed, min(image_size, 160), family), 90))
    settings = {'generator': 'synthetic_faces.py', 'version': GENERATOR_VERSION, 'family': family, 'seed': seed,
                'num_subjects': num_subjects, 'images_per_subject': images_per_subject, 'image_size': image_size,
                'expressions': expressions}
    if pairs:  # only then, so that manifests written without pairs stay as they always were
        settings['pairs'] = True
    write_manifest(root, settings, table)
    return table


def rest_photo_path(image_path: str) -> str:
    """Where the rest photo of the pair whose expression photo is ``grade_N/<name>.jpg`` is written (relative to
    the dataset root): ``rest/grade_N/<name>_rest.jpg``."""
    path = Path(image_path)
    return (Path(REST_FOLDER) / path.parent / f'{path.stem}_rest{path.suffix}').as_posix()


def _jpeg_quality(photo: Any) -> int:
    """The JPEG quality a photo is saved with: drawn per photo where its family does so."""
    return int(getattr(photo, 'jpeg_quality', DEFAULT_JPEG_QUALITY))


def _write_pair(root: Path, image_path: str, identity: Any, palsy: Palsy, photo: Any,
                image_size: int, photo_rng: np.random.Generator, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Draw a pair for ``photo`` (whose expression is the movement), write its rest photo and fill the row's
    ``neutral_*`` fields; returns the expression photo and its landmarks."""
    rest = replace(photo, expression=sample_expression('rest', photo_rng))
    pair = render_pair(identity, palsy, rest, photo.expression, image_size, noise_rng=photo_rng)
    neutral_path = rest_photo_path(image_path)
    target = root / neutral_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_jpeg(pair.rest, _jpeg_quality(photo)))
    row['neutral_path'] = neutral_path
    row.update({col: round(float(v), 2) for col, v in zip(NEUTRAL_LANDMARK_COLUMNS, pair.rest_landmarks.reshape(-1))})
    return pair.expression, pair.expression_landmarks


def preview_sheet(seed: int = 0, image_size: int = 160, family: str = 'a') -> np.ndarray:
    """A contact sheet: one row per grade (HB I at the top), one column per protocol expression (rest, brow raise,
    eye closure, smile) of one subject per row, all with a left-sided palsy (image right) at the middle of the
    grade's severity interval, frontal and evenly lit, so grades and expressions can be compared at a glance."""
    module = family_module(family)
    rows = []
    for grade in range(len(HB_GRADES)):
        rng = _subject_rng(seed, *_family_key(family), 0xBEEF, grade)
        identity = module.sample_identity(rng)
        low, high = SEVERITY_RANGE[grade]
        palsy = Palsy(grade, 'left' if grade else 'none', (low + high) / 2)
        tiles = []
        for kind in EXPRESSION_PROTOCOL:
            expression = Expression(smile=0.05) if kind == 'rest' else Expression(**{kind: 0.9})
            image, _, _ = module.render_face(identity, palsy, module.frontal_photo(expression), image_size)
            image = image.copy()
            label = f'HB {HB_GRADES[grade]}: {kind.replace("_", " ")}'
            (width, height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            cv2.rectangle(image, (0, 0), (width + 6, height + 8), (0, 0, 0), -1)
            cv2.putText(image, label, (3, height + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(image)
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


# manifest and README

def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The settings a previous ``generate_dataset`` wrote into ``root``, or None if it is not such a folder."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get('generator') == 'synthetic_faces.py' else None


def is_synthetic_dataset(root: str | Path) -> bool:
    return read_manifest(root) is not None


def write_manifest(root: Path, settings: dict[str, Any], table: pd.DataFrame,
                   detection: dict[str, Any] | None = None) -> None:
    """Write ``synthetic_faces.json`` (settings, file list, detection check) and the human-readable README."""
    files = table['image_path'].tolist()
    if 'neutral_path' in table.columns:  # rest photos of pairs: removed and checked with the rest
        files += [p for p in table['neutral_path'].tolist() if isinstance(p, str) and p]
    manifest = {**settings, 'files': files}
    if detection is not None:
        manifest['detection'] = detection
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + '\n')
    atomic_write_text(root / 'README.md', readme_text(settings, table, detection))


def record_detection(root: str | Path, detection: dict[str, Any]) -> None:
    """Add a detection check's result to the manifest and README of a generated dataset."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        return
    table = pd.read_csv(root / 'annotation.csv')
    settings = {k: v for k, v in manifest.items() if k not in ('files', 'detection')}
    write_manifest(root, settings, table, detection)


def readme_text(settings: dict[str, Any], table: pd.DataFrame, detection: dict[str, Any] | None = None) -> str:
    counts = table.groupby('grade').agg(images=('image_path', 'size'), subjects=('subject', 'nunique'))
    counts = counts.reindex(range(len(HB_GRADES)), fill_value=0)
    family = settings.get('family', 'a')
    module = family_module(family)
    family_flag = '' if family == 'a' else f' --family {family}'
    if settings.get('pairs'):
        regenerate = (f'    python prepare_dataset.py --dataset_type synthetic{family_flag} --pairs '
                      f'--output_root <this folder> '
                      f'--num_subjects {settings["num_subjects"]} --images_per_subject '
                      f'{settings["images_per_subject"]} --image_size {settings["image_size"]} '
                      f'--seed {settings["seed"]} --overwrite')
        series = ('Each photo of a subject is a movement of the examination series (brow raise, eye closure, smile '
                  'in turn from a random start, random effort 0.6-1) with its own rest photo. ')
    else:
        regenerate = (f'    python prepare_dataset.py --dataset_type synthetic{family_flag} '
                      f'--output_root <this folder> '
                      f'--num_subjects {settings["num_subjects"]} --images_per_subject '
                      f'{settings["images_per_subject"]} --image_size {settings["image_size"]} '
                      f'--seed {settings["seed"]} --overwrite')
        series = ('The photos of a subject cycle through the examination series rest, brow raise, eye closure and '
                  'smile (random effort 0.6-1), from a random start. '
                  if settings.get('expressions', 'protocol') == 'protocol'
                  else 'All photos are at rest (a faint smile at most). ')
    lines = [
        '# Synthetic facial palsy faces',
        '',
        f'Drawn by `synthetic_faces.py` (version {settings["version"]}, face family {family}) with seed '
        f'{settings["seed"]}: '
        f'{settings["num_subjects"]} synthetic subjects x {settings["images_per_subject"]} photos, '
        f'{settings["image_size"]}x{settings["image_size"]} pixels. No real person is shown; the same seed '
        'gives the same files.',
        '',
        'Regenerate with:',
        '',
        regenerate,
        '',
        '## Files',
        '',
        '- `grade_N/<subject>_<n>.jpg`: photos of House-Brackmann grade N+1 (labels 0-5 = HB I-VI).',
        '- `annotation.csv`: `image_path` (relative to this folder), `grade`, `side` (the patient\'s affected '
        'side: left / right / none), `subject`, the true landmarks `eye_l_x ... mouth_r_y` (image pixels, `_l` = '
        'image left), the photo\'s `expression` and the drawn `severity` (0-1).',
    ]
    if settings.get('pairs'):
        lines += [
            '- `rest/grade_N/<subject>_<n>_rest.jpg`: the rest photo taken in the same sitting as '
            '`grade_N/<subject>_<n>.jpg` (same pose, lighting and camera; only the face moves), kept outside the '
            'grade folders so that it is never read as a photo of its own. annotation.csv gives it as '
            '`neutral_path`, with its true landmarks `neutral_eye_l_x ... neutral_mouth_r_y`; every expression '
            'photo is then a brow raise, eye closure or smile.',
        ]
    lines += [
        '- `preview.jpg`: one row per grade (HB I at the top), one column per expression, all with a left-sided '
        'palsy (it shows on the image right).',
        '',
        '## What each grade does',
        '',
        f'Face family {family}: {module.DESCRIPTION} '
        + series
        + 'A subject of grade > 0 has a random affected side and a severity s drawn inside the grade\'s interval; '
        'on that side:',
        '',
        *(f'- {sign};' for sign in module.SIGNS),
        '- a smile, eye closure or brow raise moves that side only 1 - s as far (the eye stays open).',
        '',
        f'({module.SIGN_UNITS}, each sign times s.) Patient side vs image side: in a frontal photo '
        'the patient\'s left is the image right, so `side=left` changes the image-right eye and mouth corner.',
        '',
        '| grade | HB | severity s | subjects | images |',
        '|---|---|---|---|---|',
    ]
    for grade in range(len(HB_GRADES)):
        low, high = SEVERITY_RANGE[grade]
        subjects, images = int(counts.at[grade, 'subjects']), int(counts.at[grade, 'images'])
        lines.append(f'| {grade} | {HB_GRADES[grade]} ({HB_DESCRIPTIONS[grade]}) | {low:.2f}-{high:.2f} | '
                     f'{subjects} | {images} |')
    if detection is not None:
        lines += ['', '## Face detection check', '',
                  f'MTCNN (facenet-pytorch) found a face in {detection["detected"]} of {detection["checked"]} '
                  f'checked photos ({100 * detection["rate"]:.1f}%); {detection["near"]} of the '
                  f'{detection["detected"]} detections put all five landmarks within {detection["tolerance"]:g} x '
                  f'the inter-eye distance of the true ones (mean largest-point error {detection["mean_error"]:.3f} '
                  f'x inter-eye distance).']
    return '\n'.join(lines) + '\n'


# detection check

def check_detection(root: str | Path, table: pd.DataFrame | None = None, max_images: int | None = None,
                    device: str = 'cpu', cache_dir: str | Path | None = None, tolerance: float = 0.25,
                    progress: bool = True) -> dict[str, Any]:
    """Run MTCNN on the generated photos and compare with the true landmarks.

    Returns ``{checked, detected, rate, near, tolerance, mean_error, missed}``: ``near`` counts detections whose
    five points all lie within ``tolerance`` x the true inter-eye distance; ``mean_error`` is the mean point
    error in the same unit; ``missed`` lists the photos without a detection. ``max_images`` checks an evenly
    spread subset (None = all).
    """
    root = Path(root)
    if table is None:
        table = pd.read_csv(root / 'annotation.csv')
    if max_images is not None and 0 < max_images < len(table):
        table = table.iloc[np.linspace(0, len(table) - 1, max_images).round().astype(int)]
    paths = [root / p for p in table['image_path']]
    truth = table[LANDMARK_COLUMNS].to_numpy(np.float32).reshape(-1, 5, 2)
    # the toolkit's detector: the landmarks land in the cache that training reads
    from face_detection import LandmarkDetector

    results = LandmarkDetector(device=device, cache_dir=cache_dir, progress=progress).detect_paths(
        [str(p) for p in paths])
    points = [np.asarray(r.points, dtype=np.float32) if r is not None and r.source == 'detected' else None
              for r in results]
    errors = []
    for found, true in zip(points, truth):
        if found is not None:
            eye_distance = float(np.linalg.norm(true[1] - true[0]))
            errors.append(float(np.linalg.norm(found - true, axis=1).max()) / eye_distance)
    errors_arr = np.asarray(errors)
    checked = len(paths)
    return {
        'checked': checked,
        'detected': len(errors),
        'rate': len(errors) / checked if checked else 0.0,
        'near': int((errors_arr <= tolerance).sum()),
        'tolerance': tolerance,
        'mean_error': float(errors_arr.mean()) if len(errors) else float('nan'),
        'missed': [str(p.relative_to(root)) for p, f in zip(paths, points) if f is None],
    }


def format_detection(result: dict[str, Any]) -> str:
    return (f'MTCNN found a face in {result["detected"]}/{result["checked"]} photos ({100 * result["rate"]:.1f}%); '
            f'{result["near"]}/{result["detected"]} detections have all five landmarks within '
            f'{result["tolerance"]:g} x inter-eye distance of the truth (mean max-point error '
            f'{result["mean_error"]:.3f})')


def remove_generated_files(root: str | Path) -> int:
    """Delete the photos a previous run listed in its manifest (and only those) before regenerating; returns how
    many were removed. Files a user added to the folder stay."""
    root = Path(root)
    manifest = read_manifest(root)
    removed = 0
    for rel in (manifest or {}).get('files', []):
        path = root / rel
        if path.is_file() and path.resolve().is_relative_to(root.resolve()):
            path.unlink()
            removed += 1
    for folder in [*root.glob('grade_*'), *(root / REST_FOLDER).glob('grade_*'), root / REST_FOLDER]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed
