"""Where HTNet looks: the attention maps of every hierarchy level, on the region mosaic and on the photo.

``AttentionVisualizer`` grades a photo with a trained checkpoint (read, landmarks and region mosaic exactly as in
``inference.FacialPalsyPredictor``), records every attention map of every transformer block with removable
forward hooks (``Model.AttentionRecorder``), and maps them back, level by level, onto the 2x2 mosaic the network
reads and from there onto the four regions of the photo. A gradient saliency map of the mosaic is drawn beside
the attention, because attention inside HTNet's small windows can only say so much (``docs/en/attention_maps.md``)::

    +-----------+------------+
    | left eye  | left mouth |      left = image left = the patient's right
    +-----------+------------+
    | right eye | right mouth|
    +-----------+------------+

The map of a block is the attention each token *receives*: the mean over heads and queries of its column of the
softmax, times the number of tokens ``N`` in its window, so 1 means "as much as a uniform split" and the values of
a window average to 1. Tokens only compete with the tokens of their own window. At a 56x56 input with three
levels the last level is one window of 2x2 tokens, one per facial region, and is the only map that compares the
four regions with each other; at 28x28 every window holds a single token and every map is 1 by construction.

Usage::

    python visualize_attention.py --model_path ./checkpoints/fnp/best_model.pth --image_path ./test_image.jpg \\
        --output_dir ./attention_visualizations --visualize_regions
    python visualize_attention.py --model_path ./checkpoints/fnp/best_model.pth --image_dir ./test_images/

Per photo ``<stem>`` the output folder receives ``<stem>_level<i>.png`` (one per level), ``<stem>_summary.png``,
``<stem>_regions.png`` (with ``--visualize_regions``) and ``<stem>_attention.npz`` (the raw maps); the figures
are drawn by ``attention_figures.py``. This is a research tool, not a clinical diagnosis.

With ``--tta mirror`` / ``mirror_shift`` the grade is the average over the views but the maps are those of the
original view; with several checkpoints (``--model_path a.pth b.pth`` or a folder) the grade is the ensemble's and
the maps are the first checkpoint's. The figures say so, and warn when the photo is unlike the training photos
(its out-of-distribution score, ``ood.py``, is above 1).

A checkpoint trained with ``--input_mode flow`` reads the optical flow of a rest / expression pair: ``--rest`` gives
the rest photo of ``--image_path`` (the expression photo), and a folder pairs its photos by ``--pairs_csv`` or by
name (``inference.PAIRING_RULE``). The maps then lie on the flow mosaic, whose regions are cut in the rest photo's
face square; on the photo they are carried over onto the expression photo (``inference.rest_to_expression``), and
the rest photo is drawn beside it with the regions as they were cut::

    python visualize_attention.py --model_path ./checkpoints/fnp_flow/best_model.pth --image_path ./smile.jpg \\
        --rest ./rest.jpg --visualize_regions

A clip (``--video``: a video or a folder of frames) is read and its rest and apex frames found as
``demo_inference.py --video`` finds them (``video_inference.load_clip``); the maps are those of the apex (a flow
checkpoint: the rest -> apex pair; a photo checkpoint: the apex frame), and ``<clip name>_motion.png`` adds the
motion over time with both frames marked.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

import utils
from attention_figures import (MOSAIC_QUADRANTS, StageLayout, level_figure, regions_figure, source_note,
                               summary_figure)
from facial_palsy_dataset import REGION_NAMES, LandmarkDetector, region_boxes, to_image
from ensemble import DEFAULT_TTA, MODEL_PATHS_HELP, TTA_MODES, finite_or_none
from inference import (PAIRS_CSV_HELP, FacialPalsyPredictor, ImageInput, check_pair_flags, display_grade, face_of,
                       missing_face_line, ood_line, rest_to_expression)
from Model import AttentionRecorder, HTNet
from video import save_motion_figure
from video_dataset import DEFAULT_MAX_FRAMES
from video_inference import clip_stem, load_clip

__all__ = ['AttentionVisualizer', 'StageLayout', 'attention_to_mosaic', 'stage_layouts', 'record_attention',
           'gradient_saliency', 'quadrant_means', 'level_figure', 'summary_figure',
           'regions_figure', 'get_args_parser', 'main']

# the 'face' input mode has no regions; its quadrants are named by position in the levelled face square
FACE_QUADRANT_NAMES = ('upper_left', 'upper_right', 'lower_left', 'lower_right')
OUTPUT_NAME = re.compile(r'_(?:summary|regions|motion|level\d+)\.png$|_attention\.npz$')
RUN_FILES = ('skipped.csv', 'attention_summary.csv', 'args.yaml')


# helpers

def stage_layouts(model: HTNet) -> list[StageLayout]:
    """The window geometry of every stage of an HTNet (stage 0 = the finest, as ``AttentionRecorder`` lists them)."""
    fmap0 = model.image_size // model.patch_size
    num_stages = len(model.layers)
    layouts = []
    for level, (transformer, _aggregate) in enumerate(model.layers):
        fmap = fmap0 // 2 ** level
        windows = 2 ** (num_stages - 1 - level)
        layouts.append(StageLayout(level=level, fmap=fmap, cell=model.image_size // fmap, windows=windows,
                                   tokens=fmap // windows, heads=transformer.layers[0][0].fn.heads,
                                   blocks=len(transformer.layers)))
    return layouts


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _square_root(value: int, what: str) -> int:
    root = math.isqrt(value)
    if root * root != value:
        raise ValueError(f'{what} is {value}, not a square grid')
    return root


def attention_to_mosaic(maps: Sequence[Sequence[Any]], input_size: int, patch_size: int,
                        per_head: bool = False) -> list[np.ndarray]:
    """Lay the attention maps of one image out on the ``input_size`` x ``input_size`` network input.

    ``maps``: one entry per stage (``AttentionRecorder`` order), each a list with one array per transformer block
    of shape ``(windows, heads, N, N)`` (softmax rows over keys); a leading batch axis of 1 is dropped. Stage ``i``
    must tile a ``(input_size / patch_size) / 2**i`` grid of tokens.

    The value of a token is the attention it receives, averaged over heads and queries, times ``N``: 1 is a
    uniform split, and the tokens of a window always average to 1, because each window's softmax is separate.
    Windows are laid out row-major as the model splits them and each token fills its cell (nearest neighbour).

    Returns one float32 array per stage: ``(blocks, S, S)``, or ``(blocks, heads, S, S)`` with ``per_head``.
    """
    fmap0, remainder = divmod(int(input_size), int(patch_size))
    if remainder or fmap0 < 1:
        raise ValueError(f'input_size {input_size} is not a multiple of patch_size {patch_size}')
    stages = []
    for level, blocks in enumerate(maps):
        if fmap0 % 2 ** level:
            raise ValueError(f'stage {level}: a {fmap0}x{fmap0} token grid does not halve {level} times')
        fmap = fmap0 // 2 ** level
        cell = input_size // fmap
        heats = []
        for index, attn in enumerate(blocks):
            attn = _as_numpy(attn)
            if attn.ndim == 5:
                if attn.shape[0] != 1:
                    raise ValueError(f'stage {level} block {index}: maps of {attn.shape[0]} images; pass one image')
                attn = attn[0]
            if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
                raise ValueError(f'stage {level} block {index}: expected (windows, heads, N, N), '
                                 f'got {tuple(attn.shape)}')
            num_windows, _heads, num_tokens, _ = attn.shape
            windows = _square_root(num_windows, f'stage {level}: the number of windows')
            tokens = _square_root(num_tokens, f'stage {level}: the number of tokens per window')
            if windows * tokens != fmap:
                raise ValueError(f'stage {level}: {windows}x{windows} windows of {tokens}x{tokens} tokens do not tile '
                                 f'its {fmap}x{fmap} token grid (input {input_size}, patch {patch_size})')
            received = attn.mean(axis=-2) * num_tokens  # (windows, heads, N); 1 = uniform
            if not per_head:
                received = received.mean(axis=1, keepdims=True)
            grid = rearrange(received, '(g1 g2) h (t1 t2) -> h (g1 t1) (g2 t2)', g1=windows, t1=tokens)
            grid = grid.repeat(cell, axis=-2).repeat(cell, axis=-1)
            heats.append(grid if per_head else grid[0])
        empty = np.zeros((0, input_size, input_size), dtype=np.float32)
        stages.append(np.stack(heats).astype(np.float32) if heats else empty)
    return stages


def quadrant_means(values: np.ndarray) -> np.ndarray:
    """Mean of an ``(S, S)`` map over each mosaic quadrant, in ``REGION_NAMES`` order."""
    half = values.shape[0] // 2
    return np.array([values[r * half:(r + 1) * half, c * half:(c + 1) * half].mean() for r, c in MOSAIC_QUADRANTS],
                    dtype=np.float64)


@torch.no_grad()
def record_attention(model: HTNet, inputs: torch.Tensor) -> tuple[torch.Tensor, list[list[np.ndarray]]]:
    """Logits and every attention map of one input ``(1, 3, S, S)``: per stage a list over blocks of
    ``(windows, heads, N, N)`` arrays. The hooks come off (and the fused attention path is back) on return,
    even when the forward pass fails."""
    with AttentionRecorder(model) as recorder:
        logits, maps = recorder(inputs)
    return logits, [[_as_numpy(block[0]) for block in stage] for stage in maps]


def gradient_saliency(model: HTNet, inputs: torch.Tensor, class_index: int) -> np.ndarray:
    """``|d logit[class_index] / d input|``, max over colour channels: ``(S, S)`` for one input ``(1, 3, S, S)``.

    Unlike attention it compares every input pixel with every other, across windows and regions; it shows what
    the score is sensitive to locally, not what the network "uses"."""
    pixels = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model(pixels)[0, class_index]
        (grad,) = torch.autograd.grad(logit, pixels)  # not .backward(): no .grad left on the weights
    return grad.abs().amax(dim=1)[0].float().cpu().numpy()


def eye_line_angle(landmarks: np.ndarray) -> float:
    """The tilt (degrees) that the ``face`` input mode levels out, as ``facial_palsy_dataset.aligned_face``
    computes it (a face square is the photo shifted and scaled, so the angle is the same in photo pixels)."""
    dx, dy = (np.asarray(landmarks, dtype=np.float64)[1] - np.asarray(landmarks, dtype=np.float64)[0])
    return math.degrees(math.atan2(dy, dx)) if (dx or dy) else 0.0


# classes

class AttentionVisualizer:
    """Attention maps of a trained checkpoint on photos, per hierarchy level, on the mosaic and on the photo.

    ``analyse(image_or_path)`` returns the numbers; ``visualize_hierarchical_attention(image_path, output_dir)``
    draws and saves them. Photos are read, detected and cropped by ``FacialPalsyPredictor`` with the checkpoint's
    ``preprocess``, so the maps belong to exactly the input that was graded. ``detector`` replaces MTCNN (tests);
    ``dpi`` is the resolution of the saved figures.
    """

    def __init__(self, model_path: str | os.PathLike | Sequence[str | os.PathLike], device: str = 'auto',
                 detector: LandmarkDetector | None = None, dpi: int = 110, tta: str | None = None):
        if dpi < 20:
            raise utils.UserError(f'dpi {dpi}: too low to read (use 60 or more)')
        self.dpi = int(dpi)
        self.predictor = FacialPalsyPredictor(model_path, device=device, batch_size=1, detector=detector, tta=tta)
        self.model: HTNet = self.predictor.model
        self.device = self.predictor.device
        self.preprocess = self.predictor.preprocess
        self.grades = self.predictor.grades
        self.input_mode = self.preprocess.get('input_mode', 'regions')
        self.reads_pairs = self.predictor.reads_pairs
        self.region_names = REGION_NAMES if self.input_mode != 'face' else FACE_QUADRANT_NAMES
        self.stages = stage_layouts(self.model)

    @property
    def num_levels(self) -> int:
        return len(self.stages)

    def analyse(self, image_or_path: ImageInput) -> dict[str, Any]:
        """Grade one photo and collect its maps.

        Returns a dict: ``path``, ``status`` / ``face_detected`` / ``landmark_source`` (as ``FacialPalsyPredictor``),
        ``landmarks`` (5, 2) and ``face_box`` (4,) or None in photo pixels, ``grade_index``, ``grade``,
        ``confidence``, ``probabilities`` (grade -> p), ``image`` (the photo, RGB), ``network_image`` (the mosaic
        the network read, (S, S, 3) uint8), ``stages`` (``StageLayout`` per level), ``attention`` (raw maps: per
        stage a list over blocks of (windows, heads, N, N)), ``maps`` (per stage (blocks, S, S) on the mosaic
        grid), ``head_maps`` (per stage (heads, S, S), mean over blocks), ``stage_means`` (per stage (S, S)),
        ``saliency`` (S, S), ``region_boxes`` (photo pixels), ``region_names``, ``region_attention`` and
        ``region_saliency`` (region -> last-level attention / share of the saliency), ``attention_informative``
        (False where the last level has one token per window), ``rotation`` (degrees, ``face`` mode), ``ood_score``
        / ``ood_flag`` (as the predictor's), ``tta``, ``models`` and ``grading_note`` (what the grade averages and
        whose maps are drawn, '' for one checkpoint without TTA). The grade and probabilities are the predictor's
        (every TTA view of every checkpoint); the maps and the saliency are the first checkpoint's on the original
        view. An unreadable photo raises ``ImageReadError``; a checkpoint that reads pairs refuses
        (``analyse_pair``).
        """
        self.predictor.require_photos()
        image = self.predictor.read(image_or_path)
        infos, view_inputs = self.predictor.prepare_views([image])
        face = face_of(infos[0])
        boxes = region_boxes(image, face.points.astype(np.float64), self.preprocess, box=face.box)
        return self._analysis(image_or_path, image, infos[0], view_inputs, boxes)

    def analyse_pair(self, rest: ImageInput, expression: ImageInput) -> dict[str, Any]:
        """``analyse`` of a rest / expression pair, for a checkpoint trained with ``input_mode flow``: the maps lie
        on the flow mosaic. ``path``, ``image``, ``landmarks`` and ``face_box`` are the expression photo's;
        ``rest_path``, ``rest_image``, ``rest_landmarks``, ``rest_face_box``, ``rest_face_detected`` and
        ``rest_landmark_source`` the rest photo's; ``region_boxes`` are the crops in the rest photo (the flow's
        frame) and ``rest_to_photo`` (2x3) carries rest-photo pixels onto the expression photo. An unreadable photo
        raises ``ImageReadError`` (naming the rest photo when it is that one)."""
        rest_image, image = self.predictor.read_pair(rest, expression)
        infos, inputs = self.predictor.prepare_pairs([rest_image], [image])
        face, rest_face = face_of(infos[0]), face_of(infos[0], 'rest_')
        boxes = region_boxes(rest_image, rest_face.points.astype(np.float64), self.preprocess, box=rest_face.box)
        analysis = self._analysis(expression, image, infos[0], [inputs], boxes)
        analysis.update({
            'rest_path': str(rest) if isinstance(rest, (str, os.PathLike)) else None, 'rest_image': rest_image,
            'rest_landmarks': rest_face.points.astype(np.float64),
            'rest_face_box': None if rest_face.box is None else rest_face.box.astype(np.float64),
            'rest_to_photo': rest_to_expression(rest_face.points, face.points)})
        return analysis

    def _analysis(self, image_or_path: ImageInput, image: np.ndarray, info: dict[str, Any],
                  view_inputs: Sequence[torch.Tensor], boxes: np.ndarray) -> dict[str, Any]:
        """The grade, the maps and the saliency of one prepared input (``view_inputs``: one batch of one per TTA
        view, the original first), with the crop ``boxes`` of the network's regions."""
        # the grade as inference reports it: every TTA view of every checkpoint averaged, decoded by the rule
        graded = self.predictor.photo_results(self.predictor.grade(view_inputs))[0]
        grade_index = graded['grade_index']
        # the maps: the first checkpoint on the original view
        inputs = view_inputs[0].to(self.device)
        _logits, attention = record_attention(self.model, inputs)
        saliency = gradient_saliency(self.model, inputs, grade_index)

        per_head = attention_to_mosaic(attention, self.model.image_size, self.model.patch_size, per_head=True)
        maps = [stage.mean(axis=1) for stage in per_head]
        stage_means = [stage.mean(axis=0) for stage in maps]
        landmarks = np.asarray(info['landmarks'], dtype=np.float64)
        face_box = None if info['face_box'] is None else np.asarray(info['face_box'], dtype=np.float64)
        saliency_means = quadrant_means(saliency)  # equal-sized quadrants: share of the means = share of the sums
        region_saliency = saliency_means / saliency_means.sum() if saliency_means.sum() > 0 else np.full(4, 0.25)
        return {
            **info, 'path': str(image_or_path) if isinstance(image_or_path, (str, os.PathLike)) else None,
            'landmarks': landmarks, 'face_box': face_box,
            **{key: graded[key] for key in ('grade_index', 'grade', 'confidence', 'probabilities', 'ood_score',
                                            'ood_flag')},
            'tta': self.predictor.tta, 'models': list(self.predictor.model_paths),
            'grading_note': self.grading_note(),
            'image': image, 'network_image': to_image(inputs[0], self.preprocess), 'input_mode': self.input_mode,
            'stages': self.stages, 'attention': attention, 'maps': maps,
            'head_maps': [stage.mean(axis=0) for stage in per_head], 'stage_means': stage_means,
            'saliency': saliency,
            'region_boxes': boxes,
            'region_names': self.region_names,
            'region_attention': dict(zip(self.region_names, quadrant_means(stage_means[-1]).tolist())),
            'region_saliency': dict(zip(self.region_names, region_saliency.tolist())),
            'attention_informative': not self.stages[-1].trivial,
            'rotation': eye_line_angle(landmarks) if self.input_mode == 'face' else 0.0,
        }

    def grading_note(self) -> str:
        """Whose attention the maps show and what the grade is, when the two differ (TTA, ensembles); '' when
        one checkpoint grades the original view."""
        averaged, maps = [], []
        if self.predictor.tta != 'none':
            averaged.append(f'{len(self.predictor.views)} TTA views ({self.predictor.tta})')
            maps.append('the original view')
        if len(self.predictor.model_paths) > 1:
            averaged.append(f'{len(self.predictor.model_paths)} checkpoints')
            maps.append(f'the first checkpoint ({Path(self.predictor.model_paths[0]).name})')
        if not averaged:
            return ''
        return f'grade: the average over {" x ".join(averaged)}; maps: {" of ".join(maps)}'

    def output_paths(self, stem: str, output_dir: str | os.PathLike, visualize_regions: bool = False
                     ) -> dict[str, Path]:
        """The files written for one photo, by kind: ``level<i>``, ``summary``, ``regions``, ``attention``."""
        output_dir = Path(output_dir)
        paths = {f'level{i}': output_dir / f'{stem}_level{i}.png' for i in range(self.num_levels)}
        paths['summary'] = output_dir / f'{stem}_summary.png'
        if visualize_regions:
            paths['regions'] = output_dir / f'{stem}_regions.png'
        paths['attention'] = output_dir / f'{stem}_attention.npz'
        return paths

    def visualize_hierarchical_attention(self, image_path: str | os.PathLike, output_dir: str | os.PathLike,
                                         visualize_regions: bool = False, stem: str | None = None) -> list[Path]:
        """Write a figure per level, the summary figure, the regions figure (``visualize_regions``) and the raw
        maps (``.npz``) of one photo into ``output_dir``; returns the paths written. ``stem`` (default: the
        photo's) names the files."""
        return self.visualize_and_analyse(image_path, output_dir, visualize_regions, stem)[0]

    def visualize_and_analyse(self, image_path: str | os.PathLike, output_dir: str | os.PathLike,
                              visualize_regions: bool = False, stem: str | None = None,
                              rest_path: str | os.PathLike | None = None) -> tuple[list[Path], dict[str, Any]]:
        """``visualize_hierarchical_attention`` that also returns the ``analyse`` dict behind the files; with
        ``rest_path``, of the pair whose expression photo is ``image_path`` (``analyse_pair``)."""
        image_path = Path(image_path)
        paths = self.output_paths(stem or image_path.stem, output_dir, visualize_regions)
        written = {path.resolve() for path in paths.values()}
        for photo in (image_path, rest_path):
            if photo is not None and Path(photo).resolve() in written:
                raise utils.UserError(f'{photo}: its outputs would replace the photo itself; choose another '
                                      f'--output_dir')
        analysis = self.analyse(image_path) if rest_path is None else self.analyse_pair(rest_path, image_path)
        return self.write_outputs(analysis, paths, image_path.name), analysis

    def write_outputs(self, analysis: Mapping[str, Any], paths: Mapping[str, Path], name: str) -> list[Path]:
        """Draw an analysis into the files of ``output_paths`` (a figure per level, the summary, the regions
        figure when it has a path, the raw maps); ``name`` titles the figures. Returns the paths written."""
        for level in range(self.num_levels):
            save_figure(level_figure(analysis, level, name), paths[f'level{level}'], self.dpi)
        save_figure(summary_figure(analysis, name), paths['summary'], self.dpi)
        if 'regions' in paths:
            save_figure(regions_figure(analysis, name), paths['regions'], self.dpi)
        save_npz(attention_arrays(analysis), paths['attention'])
        return list(paths.values())


# writing

save_figure = utils.save_figure


def attention_arrays(analysis: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The numbers behind the figures, as plain arrays (``np.load(..., allow_pickle=False)`` opens them).

    ``stage<i>_block<j>`` raw attention (windows, heads, N, N); ``stage<i>_maps`` (blocks, S, S) and
    ``stage<i>_heads`` (heads, S, S) on the mosaic; ``saliency`` (S, S); ``network_image``; ``probabilities``
    in ``grades`` order; ``ood_score`` (NaN without OOD statistics); ``landmarks``, ``face_box`` (NaN without a
    detected face) and ``region_boxes`` in photo pixels; ``region_names``, ``region_attention``,
    ``region_saliency``; ``stage_layout`` rows of (fmap, cell, windows, tokens, heads, blocks). A pair adds
    ``rest_landmarks``, ``rest_face_box`` and ``rest_to_photo`` (2x3), and its ``region_boxes`` are in the rest
    photo's pixels."""
    arrays: dict[str, np.ndarray] = {}
    for level, blocks in enumerate(analysis['attention']):
        for index, block in enumerate(blocks):
            arrays[f'stage{level}_block{index}'] = np.asarray(block, dtype=np.float32)
        arrays[f'stage{level}_maps'] = analysis['maps'][level]
        arrays[f'stage{level}_heads'] = analysis['head_maps'][level].astype(np.float32)
    names = list(analysis['region_names'])
    face_box = analysis['face_box']
    arrays.update({
        'saliency': analysis['saliency'].astype(np.float32),
        'network_image': analysis['network_image'],
        'probabilities': np.array(list(analysis['probabilities'].values()), dtype=np.float32),
        'grades': np.array(list(analysis['probabilities'])),
        'landmarks': analysis['landmarks'].astype(np.float32),
        'face_box': (np.full(4, np.nan) if face_box is None else face_box).astype(np.float32),
        'region_boxes': np.asarray(analysis['region_boxes'], dtype=np.float32),
        'region_names': np.array(names),
        'region_attention': np.array([analysis['region_attention'][n] for n in names], dtype=np.float32),
        'region_saliency': np.array([analysis['region_saliency'][n] for n in names], dtype=np.float32),
        'ood_score': np.array(np.nan if analysis.get('ood_score') is None else analysis['ood_score'],
                              dtype=np.float32),
        'stage_layout': np.array([[s.fmap, s.cell, s.windows, s.tokens, s.heads, s.blocks]
                                  for s in analysis['stages']], dtype=np.int64),
    })
    if 'rest_to_photo' in analysis:  # a pair: the boxes lie in the rest photo
        rest_box = analysis['rest_face_box']
        arrays.update({
            'rest_landmarks': np.asarray(analysis['rest_landmarks'], dtype=np.float32),
            'rest_face_box': (np.full(4, np.nan) if rest_box is None else np.asarray(rest_box)).astype(np.float32),
            'rest_to_photo': np.asarray(analysis['rest_to_photo'], dtype=np.float32)})
    return arrays


def save_npz(arrays: Mapping[str, np.ndarray], path: Path) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return utils.atomic_write_bytes(path, buffer.getvalue())


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Draw where a trained HTNet looks: the attention maps of every hierarchy level on the region '
                    'mosaic and on the photo, with a gradient saliency map for comparison. See '
                    'docs/en/attention_maps.md for what the maps can and cannot show.',
        formatter_class=utils.HelpFormatter)
    parser.add_argument('--model_path', required=True, nargs='+',
                        help=MODEL_PATHS_HELP + ': the grade is the ensemble\'s, the maps are the first checkpoint\'s')
    parser.add_argument('--tta', default=DEFAULT_TTA, choices=list(TTA_MODES),
                        help='test-time augmentation of the grade: none; mirror (the photo and its mirror image); '
                             'mirror_shift (also crops moved by 2 face-square pixels). The maps are always those '
                             'of the original view')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--image_path', default=None, help='one photo (with --rest: the expression photo of a pair)')
    source.add_argument('--video', default=None, metavar='CLIP',
                        help='one clip (a video or a folder of frames): its rest and apex frames are found '
                             '(video.find_apex) and the attention of the apex drawn: a flow checkpoint\'s on the '
                             'rest -> apex pair, a photo checkpoint\'s on the apex frame. The files are named after '
                             'the clip, and <clip name>_motion.png adds the motion over time with both frames marked')
    source.add_argument('--image_dir', default=None,
                        help='a folder: every file directly in it is drawn (for a flow checkpoint, every '
                             'expression photo with its rest photo, see --pairs_csv); files that cannot be read, and '
                             'expression photos without a rest photo, are skipped and listed in '
                             '<output_dir>/skipped.csv')
    parser.add_argument('--rest', default=None, metavar='REST',
                        help='with --image_path and a checkpoint trained with --input_mode flow: the rest photo of '
                             'the same sitting; --image_path is then the expression photo, the maps lie on the flow '
                             'mosaic and are carried onto the expression photo, the rest photo drawn beside it. A '
                             'checkpoint of single photos does not use it')
    parser.add_argument('--pairs_csv', default=None, metavar='CSV',
                        help=PAIRS_CSV_HELP.format(verb='drawn'))
    parser.add_argument('--output_dir', default='./attention_visualizations',
                        help='where <stem>_level<i>.png, <stem>_summary.png, <stem>_attention.npz (raw maps) and '
                             'args.yaml go; files of an earlier run with the same names are replaced')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace files of the same names in --output_dir that this script did not write')
    parser.add_argument('--visualize_regions', action='store_true',
                        help='also write <stem>_regions.png: the landmarks, the four crop boxes and the mosaic '
                             'layout drawn on the face')
    parser.add_argument('--dpi', type=int, default=110, help='resolution of the PNG figures')
    parser.add_argument('--fps', type=float, default=None,
                        help='--video: frames per second of a folder of frames (default 30) and, when given, of a '
                             'video')
    parser.add_argument('--max_frames', type=int, default=DEFAULT_MAX_FRAMES,
                        help='--video: frames of the clip read at most')
    parser.add_argument('--device', default='auto', help='auto (CUDA when available), cpu, cuda or cuda:N')
    utils.add_config_args(parser)
    return parser


def output_stems(files: Sequence[Path]) -> dict[Path, str]:
    """``<stem>`` per photo; photos sharing one (``a.jpg``, ``a.png``) keep their extension in it, so that no
    photo's figures replace another's."""
    counts = Counter(path.stem for path in files)
    return {path: path.stem if counts[path.stem] == 1 else f'{path.stem}_{path.suffix.lstrip(".")}'
            for path in files}


def list_photos(image_dir: Path, output_dir: Path) -> tuple[list[Path], list[Path]]:
    """Every file directly in ``image_dir`` (hidden files aside), sorted. When the output folder is the photo
    folder, the figures and tables of earlier runs are returned separately rather than drawn again."""
    same_folder = image_dir.resolve() == output_dir.resolve()
    files, earlier = [], []
    for path in sorted(image_dir.iterdir()):
        if path.name.startswith('.') or not path.is_file():
            continue
        if same_folder and (OUTPUT_NAME.search(path.name) or path.name in RUN_FILES):
            earlier.append(path)
        else:
            files.append(path)
    return files, earlier


def _one_line(path: Path, err: Exception) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return message if message.startswith(str(path)) else f'{path}: {message}'


def format_analysis(path: Path, analysis: Mapping[str, Any]) -> str:
    lines = [f'{path}: predicted {display_grade(analysis["grade"])} (class {analysis["grade_index"]}), confidence '
             f'{analysis["confidence"]:.3f}, {source_note(analysis)}']
    if 'rest_to_photo' in analysis:
        lines.append(f'  rest photo {analysis["rest_path"]}; maps on the flow mosaic from the rest photo to this one')
    if analysis['attention_informative']:
        lines.append('  last-level attention (1 = uniform): ' + ', '.join(
            f'{k.replace("_", " ")} {v:.2f}' for k, v in analysis['region_attention'].items()))
    else:
        lines.append('  attention is uniform by construction at this input size (one token per window)')
    lines.append('  saliency share: ' + ', '.join(
        f'{k.replace("_", " ")} {v:.0%}' for k, v in analysis['region_saliency'].items()))
    lines += [f'  {text}' for text in (analysis.get('grading_note'), ood_line(analysis)) if text]
    return '\n'.join(lines)


def summary_row(path: Path, analysis: Mapping[str, Any], stem: str) -> dict[str, Any]:
    row = {'path': str(path)}
    if 'rest_to_photo' in analysis:
        row['rest_path'] = analysis['rest_path']
    row.update({'stem': stem, 'status': analysis['status'], 'grade_index': analysis['grade_index'],
                'grade': analysis['grade'], 'confidence': round(analysis['confidence'], 6)})
    score = finite_or_none(analysis.get('ood_score'))
    row.update({'ood_score': None if score is None else round(score, 6), 'ood_flag': analysis.get('ood_flag'),
                'tta': analysis.get('tta')})
    row.update({f'attention_{k}': round(v, 6) for k, v in analysis['region_attention'].items()})
    row.update({f'saliency_{k}': round(v, 6) for k, v in analysis['region_saliency'].items()})
    return row


def check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise utils.UserError(f'--output_dir {output_dir}: is a file, not a folder')
    utils.check_writable(output_dir, '--output_dir')


def output_made_here(path: Path) -> bool:
    """An earlier output of this script: a figure it drew, or a raw-map archive with its arrays."""
    if path.suffix == '.png':
        return utils.png_made_here(path)
    if path.suffix == '.npz':
        try:
            with np.load(path) as archive:
                return {'network_image', 'region_attention'} <= set(archive.files)
        except (OSError, ValueError):
            return False
    return False


def guard_outputs(paths: Sequence[Path], args: argparse.Namespace) -> list[Path]:
    """The figures and maps about to be written: new, or this script's own (else --overwrite is needed)."""
    replaced = utils.guard_outputs(paths, output_made_here, args.overwrite, 'file in --output_dir')
    if replaced:
        print(f'note: replacing {len(replaced)} file(s) of an earlier run in {Path(args.output_dir)}')
    return replaced


def visualize_one(visualizer: AttentionVisualizer, args: argparse.Namespace) -> dict[str, Any]:
    """``--image_path`` (and ``--rest`` for a flow checkpoint): the figures and maps of one photo or pair; an
    unreadable photo is a one-line error."""
    image_path, output_dir = Path(args.image_path), Path(args.output_dir)
    if not image_path.is_file():
        raise utils.UserError(f'--image_path {image_path}: file not found')
    rest_path = visualizer.predictor.rest_photo(args.rest)
    guard_outputs(list(visualizer.output_paths(image_path.stem, output_dir, args.visualize_regions).values()), args)
    paths, analysis = visualizer.visualize_and_analyse(image_path, output_dir, args.visualize_regions, None,
                                                       rest_path=rest_path)
    utils.save_args(args, output_dir / 'args.yaml')
    print(format_analysis(image_path, analysis))
    print(f'{len(paths)} files written to {output_dir}')
    return {'outputs': {str(image_path): paths}, 'skipped': [], 'analyses': {str(image_path): analysis}}


def visualize_clip(visualizer: AttentionVisualizer, args: argparse.Namespace) -> dict[str, Any]:
    """``--video``: the figures and maps of the clip's apex (``video_inference.load_clip`` finds it), and its
    motion over time; a clip that cannot be read, or shows no face, is a one-line error."""
    clip_path, output_dir = Path(args.video), Path(args.output_dir)
    stem = clip_stem(clip_path)
    paths = visualizer.output_paths(stem, output_dir, args.visualize_regions)
    motion_path = output_dir / f'{stem}_motion.png'
    guard_outputs([*paths.values(), motion_path], args)
    clip, apex = load_clip(clip_path, visualizer.predictor.detector, args.fps, args.max_frames)
    rest, top = clip.frames[apex.rest_frame], clip.frames[apex.apex_frame]
    analysis = visualizer.analyse_pair(rest, top) if visualizer.reads_pairs else visualizer.analyse(top)
    analysis.update(path=f'{clip_path} frame {apex.apex_frame}',
                    **({'rest_path': f'{clip_path} frame {apex.rest_frame}'} if visualizer.reads_pairs else {}))
    written = visualizer.write_outputs(analysis, paths, f'{clip_path.name} (apex frame {apex.apex_frame})')
    written.append(save_motion_figure(apex, motion_path))
    utils.save_args(args, output_dir / 'args.yaml')
    print(format_analysis(Path(analysis['path']), analysis))
    print(f'{len(written)} files written to {output_dir}')
    return {'outputs': {str(clip_path): written}, 'skipped': [], 'analyses': {str(clip_path): analysis},
            'apex': apex}


def folder_pairs(visualizer: AttentionVisualizer, files: list[Path], args: argparse.Namespace
                 ) -> tuple[list[Path], dict[Path, Path], list[tuple[str, str]]]:
    """The files to draw, the rest photo of each (a flow checkpoint's expression photos; empty for a checkpoint of
    single photos, which draws every file) and the expression photos without one (``(path, reason)``, printed)."""
    paired = visualizer.predictor.folder_pairs(files, args.pairs_csv)
    if paired is None:
        return files, {}, []
    unpaired = [(str(pair.expression), pair.problem) for pair in paired.pairs if pair.rest is None]
    for _, reason in unpaired:
        print(f'skipped {reason}')
    rests = {pair.expression: pair.rest for pair in paired.pairs if pair.rest is not None}
    return list(rests), rests, unpaired


def visualize_folder(visualizer: AttentionVisualizer, args: argparse.Namespace) -> dict[str, Any]:
    """``--image_dir``: every photo (for a flow checkpoint, every expression photo with its rest photo), a
    progress bar; unreadable files and photos without a rest photo are skipped with one line each and listed in
    ``skipped.csv``; ``attention_summary.csv`` holds one row of region numbers per photo drawn."""
    image_dir, output_dir = Path(args.image_dir), Path(args.output_dir)
    if not image_dir.is_dir():
        raise utils.UserError(f'--image_dir {image_dir}: not a folder')
    files, earlier = list_photos(image_dir, output_dir)
    if earlier:
        print(f'note: {len(earlier)} file(s) in {image_dir} are outputs of an earlier run and are not drawn')
    if not files:
        raise utils.UserError(f'--image_dir {image_dir}: no files to draw')
    files, rests, skipped = folder_pairs(visualizer, files, args)
    candidates = len(files) + len(skipped)  # for pairs, the expression photos without a rest photo count too
    if not files and not skipped:
        raise utils.UserError(f'--image_dir {image_dir}: only rest photos, no expression photo to draw')
    stems = output_stems(files)
    guard_outputs([path for f in files
                   for path in visualizer.output_paths(stems[f], output_dir, args.visualize_regions).values()], args)

    outputs: dict[str, list[Path]] = {}
    rows: list[dict[str, Any]] = []
    with tqdm(files, desc='attention', unit='pair' if visualizer.reads_pairs else 'photo') as bar:
        for path in bar:
            try:
                paths, analysis = visualizer.visualize_and_analyse(path, output_dir, args.visualize_regions,
                                                                   stems[path], rest_path=rests.get(path))
            except (utils.UserError, OSError, ValueError) as err:  # ImageReadError is a UserError
                reason = _one_line(path, err)
                skipped.append((str(path), reason))
                tqdm.write(f'skipped {reason}')
                continue
            if visualizer.reads_pairs and missing_face_line(analysis):
                tqdm.write(f'{path}: {missing_face_line(analysis)}')
            outputs[str(path)] = paths
            rows.append(summary_row(path, analysis, stems[path]))

    output_dir.mkdir(parents=True, exist_ok=True)
    utils.write_skipped(output_dir / 'skipped.csv', skipped)
    names = visualizer.region_names
    columns = ['path', *(['rest_path'] if visualizer.reads_pairs else []), 'stem', 'status', 'grade_index', 'grade',
               'confidence', 'ood_score', 'ood_flag', 'tta', *[f'attention_{n}' for n in names],
               *[f'saliency_{n}' for n in names]]
    utils.atomic_write_csv(output_dir / 'attention_summary.csv', columns, rows)
    utils.save_args(args, output_dir / 'args.yaml')
    fallbacks = sum(row['status'] == 'no_face_fallback' for row in rows)
    flagged = sum(bool(row['ood_flag']) for row in rows)
    what = 'expression photos' if visualizer.reads_pairs else 'photos'
    print(f'{len(outputs)} of {candidates} {what} drawn into {output_dir} ({fallbacks} on template landmarks, '
          f'{flagged} flagged as unlike the training photos, {len(skipped)} skipped, listed in '
          f'{output_dir / "skipped.csv"})')
    return {'outputs': outputs, 'skipped': skipped}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = utils.parse_args_with_config(get_args_parser(), argv)
    check_output_dir(Path(args.output_dir))
    check_pair_flags(args.image_path, args.image_dir, args.rest, args.pairs_csv)
    visualizer = AttentionVisualizer(args.model_path, device=args.device, dpi=args.dpi, tta=args.tta)
    if args.video:
        return visualize_clip(visualizer, args)
    if args.image_path:
        return visualize_one(visualizer, args)
    return visualize_folder(visualizer, args)


def exit_status(argv: Sequence[str] | None = None) -> int:
    """The shell's exit status: 1 when not one photo could be drawn (``main`` returns the results)."""
    return 0 if main(argv)['outputs'] else 1


if __name__ == '__main__':
    utils.run_cli(exit_status)
