"""Synthetic examination clips: one movement per clip (rest -> brow raise, eye closure or smile -> rest) of a
synthetic subject with a one-sided facial palsy of known House-Brackmann grade, with a known apex frame.

The faces are the photo generator's (``synthetic_faces``, both families): one ``Identity`` and one set of photo
conditions per clip, drawn frame by frame with the expression following a smooth curve, so the clinical signs and
the rule that the affected side moves only ``1 - severity`` as far are those of the photos. On top, what a filmed
examination adds:

* a random timing: a short rest, a rise, the apex, a fall and rest again (``ClipPlan``), the apex anywhere the clip
  leaves room for;
* head motion: a slow drift of shift, roll, scale, yaw and pitch over the clip, plus a little camera shake;
* blinks (each side closes only ``1 - severity`` as far, like any movement), kept clear of the first frames and
  of the apex: a blink at the apex would make the apex itself ambiguous;
* camera noise, drawn afresh for every frame, and the mp4 encoder's own losses.

``generate_clips`` writes ``grade_N/<subject>_<n>_<expression>.mp4`` (the photo generator's grade folders),
``clips.csv`` (``CLIP_TABLE``: clip_path, grade, side, subject, expression, apex_frame, rest_frame, fps, ...),
``synthetic_video.json`` and a README. ``prepare_dataset.py --dataset_type synthetic --video`` calls it;
``prepare_dataset.py --dataset_type video`` turns the clips into rest / apex pairs with ``video.find_apex``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

import synthetic_faces
from annotations import HB_DESCRIPTIONS, HB_GRADES, LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS
from synthetic_palsy import PAIR_EXPRESSIONS, Expression, Palsy, pair_expressions, sample_expression, sample_palsy
from utils import UserError, atomic_write, atomic_write_text

__all__ = ['GENERATOR_VERSION', 'CLIP_TABLE', 'MANIFEST_NAME', 'CLIP_EXPRESSIONS', 'DEFAULT_FPS', 'DEFAULT_CLIP_FRAMES',
           'MIN_CLIP_FRAMES', 'TIMING_SECONDS', 'HEAD_MOTION', 'ClipPlan', 'sample_clip_plan', 'frame_expression',
           'render_clip', 'write_video', 'clip_name', 'generate_clips', 'read_manifest', 'remove_generated_files']

GENERATOR_VERSION = 1
CLIP_TABLE = 'clips.csv'
MANIFEST_NAME = 'synthetic_video.json'
# every clip films one movement of the examination (a clip of rest would have no apex)
CLIP_EXPRESSIONS = PAIR_EXPRESSIONS
DEFAULT_FPS = 30.0
DEFAULT_CLIP_FRAMES = 32
MIN_CLIP_FRAMES = 12
# Timing of a clip, in seconds, each drawn uniformly: rest before the movement, its rise to the apex and its fall
# back to rest (a voluntary movement of the examination takes a few tenths of a second each way), a blink (closing
# and opening; 0.1-0.2 s) and how far blinks stay from the apex and from the clip's start. A clip too short for
# the longest draw gets its movement scaled down to fit.
TIMING_SECONDS = {'lead': (0.07, 0.25), 'rise': (0.25, 0.45), 'fall': (0.25, 0.45), 'blink': (0.1, 0.17),
                  'blink_clearance': 0.3, 'start_clearance': 0.15}
# Head motion over a clip: each value drifts smoothly up to this far from the first frame (shift in fractions of
# the frame size, rotation / yaw / pitch in degrees, scale as a relative change); shake is the per-frame jitter of
# the shift (fraction of the frame size, standard deviation).
HEAD_MOTION = {'shift': 0.02, 'rotation': 3.0, 'scale': 0.03, 'yaw': 2.0, 'pitch': 1.5, 'shake': 0.0015}
# clips carry at least this much sensor noise (grey levels): a video camera is never noise-free
MIN_NOISE = 1.0
# clip_path and the settings of the clip, then the true landmarks of the rest and the apex frame
COLUMNS = ['clip_path', 'grade', 'side', 'subject', 'expression', 'apex_frame', 'rest_frame', 'fps', 'num_frames',
           'onset_frame', 'end_frame', 'blink_frames', 'effort', 'severity', 'family', *NEUTRAL_LANDMARK_COLUMNS,
           *LANDMARK_COLUMNS]


@dataclass
class ClipPlan:
    """The timing and head motion of one clip: ``expression`` (brow_raise, eye_closure or smile) at ``effort``,
    still until ``onset``, peaking at ``apex``, back at rest from ``end`` (frame indices); ``blinks`` as (first
    frame, length); ``head`` (num_frames, 6): shift x, shift y (fractions of the frame), rotation (degrees), scale
    (factor), yaw and pitch (degrees) of each frame relative to the first."""
    expression: str
    effort: float
    num_frames: int
    fps: float
    onset: int
    apex: int
    end: int
    blinks: tuple[tuple[int, int], ...]
    head: np.ndarray

    def movement(self) -> np.ndarray:
        """How far the expression has gone in each frame, 0 (rest) .. 1 (the apex): a half-cosine up from the onset
        to the apex and down to the end."""
        frames = np.arange(self.num_frames, dtype=np.float64)
        rise = np.clip((frames - self.onset) / max(self.apex - self.onset, 1), 0, 1)
        fall = np.clip((frames - self.apex) / max(self.end - self.apex, 1), 0, 1)
        return np.where(frames <= self.apex, 0.5 - 0.5 * np.cos(np.pi * rise), 0.5 + 0.5 * np.cos(np.pi * fall))

    def blink(self) -> np.ndarray:
        """The eyelids' closure by blinking in each frame, 0 .. 1."""
        closure = np.zeros(self.num_frames)
        for first, length in self.blinks:
            steps = np.arange(1, length + 1)
            closure[first:first + length] = np.sin(np.pi * steps / (length + 1))[:self.num_frames - first]
        return closure

    def blink_frames(self) -> list[int]:
        return [first + step for first, length in self.blinks for step in range(length)]


def _drift(rng: np.random.Generator, num_frames: int, fps: float, amplitude: float) -> np.ndarray:
    """A smooth random curve starting at 0 and staying within +-``amplitude``: a slow sway plus a trend."""
    times = np.arange(num_frames) / fps
    frequency, phase = rng.uniform(0.3, 1.2), rng.uniform(0, 2 * math.pi)
    sway = np.sin(2 * math.pi * frequency * times + phase) - math.sin(phase)
    trend = times / max(times[-1], 1e-6)
    curve = rng.uniform(-1, 1) * sway / 2 + rng.uniform(-1, 1) * trend / 2
    return amplitude * rng.uniform(0.3, 1.0) * curve


def sample_clip_plan(expression: str, rng: np.random.Generator, num_frames: int = DEFAULT_CLIP_FRAMES,
                     fps: float = DEFAULT_FPS) -> ClipPlan:
    """Draw the timing, blinks and head motion of one clip of ``expression`` (see ``TIMING_SECONDS`` and
    ``HEAD_MOTION``)."""
    if expression not in CLIP_EXPRESSIONS:
        raise ValueError(f'a clip films one of {CLIP_EXPRESSIONS}, not {expression!r}')
    if num_frames < MIN_CLIP_FRAMES:
        raise UserError(f'a synthetic clip needs at least {MIN_CLIP_FRAMES} frames, not {num_frames}')
    timing = TIMING_SECONDS
    effort = sample_expression(expression, rng)
    effort = max(effort.smile, effort.eye_closure, effort.brow_raise)
    lead, rise, fall, blink = (max(1, round(rng.uniform(*timing[key]) * fps))
                               for key in ('lead', 'rise', 'fall', 'blink'))
    room = num_frames - 1 - lead
    if rise + fall > room:  # a short clip: a quicker movement
        rise, fall = max(2, rise * room // (rise + fall)), max(2, fall * room // (rise + fall))
    onset = lead + int(rng.integers(0, max(room - rise - fall, 0) + 1))
    apex, end = onset + rise, min(onset + rise + fall, num_frames - 1)
    # blinks: none, one or two, clear of the start and of the apex
    clearance = int(math.ceil(timing['blink_clearance'] * fps))
    start = int(math.ceil(timing['start_clearance'] * fps))
    allowed = [f for f in range(start, num_frames - blink)
               if f + blink - 1 < apex - clearance or f > apex + clearance]
    blinks: list[tuple[int, int]] = []
    for _ in range(int(rng.choice(3, p=[0.3, 0.5, 0.2]))):
        free = [f for f in allowed if all(f + blink + 2 < b or f > b + n + 2 for b, n in blinks)]
        if free:
            blinks.append((int(rng.choice(free)), blink))
    amount = HEAD_MOTION
    head = np.column_stack([
        _drift(rng, num_frames, fps, amount['shift']) + rng.normal(0, amount['shake'], num_frames),
        _drift(rng, num_frames, fps, amount['shift']) + rng.normal(0, amount['shake'], num_frames),
        _drift(rng, num_frames, fps, amount['rotation']),
        1.0 + _drift(rng, num_frames, fps, amount['scale']),
        _drift(rng, num_frames, fps, amount['yaw']),
        _drift(rng, num_frames, fps, amount['pitch'])])
    head[0] = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    return ClipPlan(expression=expression, effort=float(effort), num_frames=int(num_frames), fps=float(fps),
                    onset=int(onset), apex=int(apex), end=int(end), blinks=tuple(sorted(blinks)), head=head)


def frame_expression(rest: Expression, plan: ClipPlan, movement: float, blink: float) -> Expression:
    """The expression of one frame: the resting expression ``rest`` (its faint smile) moved ``movement`` (0-1) of
    the way to the plan's expression at its effort, the lids closed a further ``blink`` of the way."""
    smile, eyes, brows = rest.smile, rest.eye_closure, rest.brow_raise
    target = plan.effort * movement
    if plan.expression == 'smile':
        smile = smile + (plan.effort - smile) * movement
    elif plan.expression == 'eye_closure':
        eyes = max(eyes, target)
    else:
        brows = max(brows, target)
    eyes = eyes + (1.0 - eyes) * blink
    return Expression(smile=float(smile), eye_closure=float(eyes), brow_raise=float(brows))


def render_clip(identity: Any, palsy: Palsy, photo: Any, plan: ClipPlan, image_size: int = 256,
                noise_rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw every frame of a clip: ``photo`` (its expression the resting one, its pose the first frame's) moved by
    the plan's head motion, its expression following the plan. Returns ``(frames, each HxWx3 uint8 RGB;
    landmarks (num_frames, 5, 2) float32, the true points of each frame)``. Occluders are left out: a hand over
    the mouth would hide the very movement a clip films."""
    noise_rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
    photo = replace(photo, occluder=None, noise=max(float(photo.noise), MIN_NOISE))
    rest = photo.expression
    movement, blink = plan.movement(), plan.blink()
    frames, landmarks = [], []
    for index in range(plan.num_frames):
        dx, dy, rotation, scale, yaw, pitch = plan.head[index]
        posed = synthetic_faces.move_head(replace(photo, expression=frame_expression(rest, plan, movement[index],
                                                                                    blink[index])),
                                          shift=(dx, dy), rotation=rotation, scale=scale, yaw=yaw, pitch=pitch)
        image, points, _ = synthetic_faces.render_face(identity, palsy, posed, image_size, noise_rng=noise_rng)
        frames.append(image)
        landmarks.append(points)
    return frames, np.asarray(landmarks, dtype=np.float32)


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB ``frames`` as an MPEG-4 video (OpenCV's ``mp4v`` codec) at ``fps``, atomically: written under a
    temporary name in the same folder (with the same suffix, from which OpenCV picks the container), then moved
    into place."""
    path = Path(path)
    height, width = frames[0].shape[:2]

    def write(tmp: str) -> None:
        encoded = f'{tmp}{path.suffix}'
        writer = cv2.VideoWriter(encoded, cv2.VideoWriter_fourcc(*'mp4v'), float(fps), (width, height))
        try:
            if not writer.isOpened():
                raise UserError(f'{path}: OpenCV cannot write mp4 videos here (no mp4v encoder in this build)')
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            os.replace(encoded, tmp)
        finally:
            writer.release()
            Path(encoded).unlink(missing_ok=True)

    return atomic_write(path, write)


# datasets

def clip_name(subject: str, number: int, expression: str) -> str:
    """``S001_01_smile.mp4``: the subject before the first ``_``, as the file-name rule for subjects wants."""
    return f'{subject}_{number:02d}_{expression}.mp4'


def _clip_rng(seed: int, family: str, *key: int) -> np.random.Generator:
    """A generator that depends only on (seed, family, subject, clip), so a subject's first clips stay the same
    when more clips are asked for; clips draw other people than the photo generator's for the same seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0xC11B, synthetic_faces.FACE_FAMILIES.index(family),
                                                         *key]))


def generate_clips(output_root: str | os.PathLike, num_subjects: int = 24, clips_per_subject: int = 3,
                   image_size: int = 256, seed: int = 0, family: str = 'a', fps: float = DEFAULT_FPS,
                   num_frames: int = DEFAULT_CLIP_FRAMES, progress: bool = True) -> pd.DataFrame:
    """Write ``<output_root>/grade_N/<subject>_<n>_<expression>.mp4``, ``clips.csv``, ``synthetic_video.json`` and
    ``README.md``; returns the clip table.

    Subjects are spread evenly over the six grades; each films ``clips_per_subject`` movements of the examination
    (brow raise, eye closure, smile in turn from a random start) of ``num_frames`` frames at ``fps``. ``clips.csv``
    holds per clip ``clip_path`` (relative to ``output_root``), ``grade``, ``side``, ``subject``, ``expression``,
    the true ``apex_frame`` and ``rest_frame`` (0: clips start at rest), ``fps``, ``num_frames``, the
    movement's ``onset_frame`` and ``end_frame``, the ``blink_frames`` (``;``-separated), ``effort``, ``severity``,
    ``family`` and the true landmarks of the rest frame (``neutral_eye_l_x ...``) and of the apex frame
    (``eye_l_x ...``). The same arguments give the same clips (the encoder permitting).
    """
    if num_subjects < 1 or clips_per_subject < 1:
        raise UserError(f'need at least one subject and one clip per subject (got {num_subjects} subjects x '
                        f'{clips_per_subject} clips)')
    if image_size < 64:
        raise UserError(f'--image_size {image_size}: synthetic faces need at least 64 pixels')
    if not (math.isfinite(fps) and 1 <= fps <= 240):
        raise UserError(f'--fps {fps}: choose a frame rate between 1 and 240')
    module = synthetic_faces.family_module(family)
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    grades = synthetic_faces.balanced_grades(num_subjects, _clip_rng(seed, family, 0xFACE))
    rows = []
    bar = tqdm(total=num_subjects * clips_per_subject, desc='drawing synthetic clips', unit='clip',
               disable=not progress)
    for index in range(num_subjects):
        subject_rng = _clip_rng(seed, family, index)
        identity = module.sample_identity(subject_rng)
        palsy = sample_palsy(int(grades[index]), subject_rng)
        subject = synthetic_faces.subject_name(index, family)
        for number, kind in enumerate(pair_expressions(clips_per_subject, subject_rng), start=1):
            clip_rng = _clip_rng(seed, family, index, number)
            photo = module.sample_photo(clip_rng)
            plan = sample_clip_plan(kind, clip_rng, num_frames, fps)
            frames, landmarks = render_clip(identity, palsy, photo, plan, image_size, noise_rng=clip_rng)
            relative = f'grade_{palsy.grade}/{clip_name(subject, number, kind)}'
            write_video(root / relative, frames, fps)
            row = {'clip_path': relative, 'grade': palsy.grade, 'side': palsy.side, 'subject': subject,
                   'expression': kind, 'apex_frame': plan.apex, 'rest_frame': 0, 'fps': fps,
                   'num_frames': num_frames, 'onset_frame': plan.onset, 'end_frame': plan.end,
                   'blink_frames': ';'.join(str(f) for f in plan.blink_frames()), 'effort': round(plan.effort, 4),
                   'severity': round(palsy.severity, 4), 'family': family}
            row.update(zip(NEUTRAL_LANDMARK_COLUMNS, np.round(landmarks[0].reshape(-1).astype(float), 2)))
            row.update(zip(LANDMARK_COLUMNS, np.round(landmarks[plan.apex].reshape(-1).astype(float), 2)))
            rows.append(row)
            bar.update()
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(root / CLIP_TABLE, table.to_csv(index=False))
    settings = {'generator': 'synthetic_video.py', 'version': GENERATOR_VERSION, 'family': family, 'seed': seed,
                'num_subjects': num_subjects, 'clips_per_subject': clips_per_subject, 'image_size': image_size,
                'fps': float(fps), 'clip_frames': num_frames}
    manifest = {**settings, 'files': table['clip_path'].tolist()}
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + '\n')
    atomic_write_text(root / 'README.md', readme_text(settings, table))
    return table


def readme_text(settings: dict[str, Any], table: pd.DataFrame) -> str:
    family = settings['family']
    family_flag = '' if family == 'a' else f' --family {family}'
    counts = table.groupby('grade').agg(clips=('clip_path', 'size'), subjects=('subject', 'nunique'))
    counts = counts.reindex(range(len(HB_GRADES)), fill_value=0)
    lines = [
        '# Synthetic facial palsy examination clips',
        '',
        f'Drawn by `synthetic_video.py` (version {settings["version"]}, face family {family}) with seed '
        f'{settings["seed"]}: {settings["num_subjects"]} synthetic subjects x {settings["clips_per_subject"]} clips '
        f'of {settings["clip_frames"]} frames at {settings["fps"]:g} frames/s, {settings["image_size"]}x'
        f'{settings["image_size"]} pixels. No real person is shown.',
        '',
        'Regenerate with:',
        '',
        f'    python prepare_dataset.py --dataset_type synthetic --video{family_flag} --output_root <this folder> '
        f'--num_subjects {settings["num_subjects"]} --images_per_subject {settings["clips_per_subject"]} '
        f'--image_size {settings["image_size"]} --fps {settings["fps"]:g} --clip_frames {settings["clip_frames"]} '
        f'--seed {settings["seed"]} --overwrite',
        '',
        '## Files',
        '',
        '- `grade_N/<subject>_<n>_<expression>.mp4`: one movement of the examination (brow raise, eye closure or '
        'smile) from rest to its apex and back, House-Brackmann grade N+1 (labels 0-5 = HB I-VI). The head drifts '
        '(shift, roll, scale, yaw, pitch), the camera shakes a little, the subject may blink (never at the apex or '
        'in the first frames) and the affected side moves only 1 - severity as far.',
        f'- `{CLIP_TABLE}`: `clip_path`, `grade`, `side` (the patient\'s affected side), `subject`, `expression`, the '
        'true `apex_frame` and `rest_frame` (frame indices from 0), `fps`, `num_frames`, the movement\'s '
        '`onset_frame` and `end_frame`, `blink_frames`, `effort`, `severity`, `family`, and the true landmarks of '
        'the rest frame (`neutral_eye_l_x ...`) and the apex frame (`eye_l_x ...`).',
        '',
        'Turn the clips into rest / apex pairs for `--input_mode flow` with',
        '',
        '    python prepare_dataset.py --dataset_type video --data_root <this folder> --output_csv <pairs.csv>',
        '',
        '| grade | HB | subjects | clips |',
        '|---|---|---|---|',
    ]
    for grade in range(len(HB_GRADES)):
        lines.append(f'| {grade} | {HB_GRADES[grade]} ({HB_DESCRIPTIONS[grade]}) | '
                     f'{int(counts.at[grade, "subjects"])} | {int(counts.at[grade, "clips"])} |')
    return '\n'.join(lines) + '\n'


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a previous ``generate_clips`` wrote into ``root``, or None if it is not such a folder."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get('generator') == 'synthetic_video.py' else None


def remove_generated_files(root: str | os.PathLike) -> int:
    """Delete the clips a previous run listed in its manifest (and only those) before drawing again; returns how
    many were removed. Files a user added stay."""
    root = Path(root)
    removed = 0
    for relative in (read_manifest(root) or {}).get('files', []):
        path = root / relative
        if path.is_file() and path.resolve().is_relative_to(root.resolve()):
            path.unlink()
            removed += 1
    for folder in root.glob('grade_*'):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed
