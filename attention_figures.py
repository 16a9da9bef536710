"""The figures of ``visualize_attention.py``: HTNet's attention per hierarchy level on the region mosaic, a summary
on the photo, and the regions the network reads.

Every figure is drawn from the dict that ``visualize_attention.AttentionVisualizer.analyse`` (or ``analyse_pair``)
returns, on a bare ``matplotlib.figure.Figure`` (no pyplot state) for ``utils.save_figure`` to write:

* ``level_figure``: one level on the mosaic: the network input, the mean over blocks, each block and each head,
  with the token cells (dotted) and the attention windows (solid) drawn over them;
* ``summary_figure``: the photo with the last level's attention over its crops (the saliency where attention is
  uniform by construction), the mosaic's attention beside its gradient saliency, and the class probabilities;
* ``regions_figure``: the landmarks, face box, face square and crop boxes on the photo, and the mosaic they are
  laid out in (same colours); for a flow pair, the rest photo and the expression photo.

Attention is drawn on a diverging scale centred on 1, a uniform split inside the window (``ATTENTION_CMAP``).
``mosaic_to_photo`` and ``rest_map_to_photo`` carry a map over the network input back onto the photo (for a pair:
laid out on the rest photo, where the crops are cut, then carried onto the expression photo); ``StageLayout`` is the
window geometry of one level, as ``visualize_attention.stage_layouts`` reads it off a model.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facial_palsy_dataset import LANDMARK_NAMES, face_square_bounds
from inference import box_corners, display_grade, draw_probabilities, ood_line

__all__ = ['StageLayout', 'MOSAIC_QUADRANTS', 'mosaic_to_photo', 'rest_map_to_photo', 'display_copy', 'source_note',
           'level_figure', 'summary_figure', 'regions_figure']

# (row, column) of each REGION_NAMES crop in the 2x2 mosaic
MOSAIC_QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))
REGION_COLOURS = ('tab:cyan', 'tab:orange', 'tab:blue', 'tab:red')
# diverging around 1 (= a uniform split inside the window): red draws more attention than uniform, blue less
ATTENTION_CMAP = 'RdBu_r'
SALIENCY_CMAP = 'inferno'
MIN_ATTENTION_SPREAD = 0.25
# photos are drawn at most this many pixels long: a 24-megapixel overlay looks the same and costs seconds
DISPLAY_MAX_SIDE = 1024
DISCLAIMER = 'research tool, not a diagnosis'


# geometry

@dataclass(frozen=True)
class StageLayout:
    """How stage ``level`` of ``model.layers`` tiles the network input.

    ``fmap`` x ``fmap`` tokens of ``cell`` x ``cell`` input pixels, split into ``windows`` x ``windows``
    attention windows of ``tokens`` x ``tokens`` tokens each; ``heads`` heads and ``blocks`` transformer blocks.
    """
    level: int
    fmap: int
    cell: int
    windows: int
    tokens: int
    heads: int
    blocks: int

    @property
    def trivial(self) -> bool:
        """One token per window: softmax over one key is 1, so the map holds no information."""
        return self.tokens == 1

    def describe(self) -> str:
        return (f'{self.fmap}x{self.fmap} tokens of {self.cell}x{self.cell} px in {self.windows}x{self.windows} '
                f'window(s) of {self.tokens}x{self.tokens} tokens, {self.heads} head(s), {self.blocks} block(s)')


# the photo

def mosaic_to_photo(heat: np.ndarray, boxes: np.ndarray, photo_shape: tuple[int, ...], input_mode: str = 'regions',
                    angle: float = 0.0, smooth: bool = False) -> np.ndarray:
    """Carry a map over the network input back onto the photo: ``(H, W)`` float32, NaN where the network saw
    nothing.

    ``regions`` mode: each mosaic quadrant is resized into its crop box (``boxes`` (4, 4) from
    ``facial_palsy_dataset.region_boxes`` with the preprocess, ``REGION_NAMES`` order); overlapping boxes are
    averaged. ``face`` mode: the map is resized into the face square (``boxes`` (1, 4)) and turned back by
    ``angle``, undoing the levelling of the eyes. ``smooth`` interpolates linearly (saliency) instead of keeping
    the token cells (attention)."""
    height, width = photo_shape[:2]
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.float64)
    interpolation = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    size = heat.shape[0]
    if input_mode == 'face':
        pieces = [(heat, boxes[0], angle)]
    else:
        half = size // 2
        pieces = [(heat[r * half:(r + 1) * half, c * half:(c + 1) * half], box, 0.0)
                  for (r, c), box in zip(MOSAIC_QUADRANTS, boxes)]
    for piece, box, piece_angle in pieces:
        x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box, dtype=np.float64)))
        box_width, box_height = x1 - x0, y1 - y0
        if box_width < 1 or box_height < 1:
            continue
        resized = cv2.resize(np.ascontiguousarray(piece, dtype=np.float32), (box_width, box_height),
                             interpolation=interpolation)
        if piece_angle:
            matrix = cv2.getRotationMatrix2D((box_width / 2.0, box_height / 2.0), piece_angle, 1.0)
            resized = cv2.warpAffine(resized, matrix, (box_width, box_height),
                                     flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=float('nan'))
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        part = resized[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        valid = np.isfinite(part)
        total[sy0:sy1, sx0:sx1][valid] += part[valid]
        count[sy0:sy1, sx0:sx1] += valid
    photo_heat = np.full((height, width), np.nan, dtype=np.float32)
    seen = count > 0
    photo_heat[seen] = total[seen] / count[seen]
    return photo_heat


def rest_map_to_photo(rest_heat: np.ndarray, rest_to_photo: np.ndarray, photo_shape: tuple[int, ...],
                      smooth: bool = False) -> np.ndarray:
    """Carry a map over a pair's rest photo (``mosaic_to_photo`` in its pixels) onto the expression photo by the
    2x3 ``rest_to_photo`` (``inference.rest_to_expression``): ``(H, W)`` float32 of ``photo_shape``, NaN where the
    network saw nothing."""
    height, width = photo_shape[:2]
    interpolation = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return cv2.warpAffine(np.ascontiguousarray(rest_heat, dtype=np.float32), np.asarray(rest_to_photo, np.float64),
                          (width, height), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=float('nan'))


def display_copy(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> tuple[np.ndarray, float]:
    """The photo at most ``max_side`` pixels long for drawing, and the scale applied to its coordinates."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


# figures

def source_note(analysis: Mapping[str, Any]) -> str:
    """Where the landmarks came from, for titles and the console: detected, or template landmarks where no face
    was found (naming the photo of a pair that had none)."""
    if 'rest_to_photo' in analysis:  # a pair
        missing = [name for name, found in (('expression', analysis['face_detected']),
                                            ('rest', analysis['rest_face_detected'])) if not found]
        return ('faces detected on both photos' if not missing
                else f'no face found on the {" and ".join(missing)} photo: template landmarks')
    return 'face detected' if analysis['face_detected'] else 'no face found: template landmarks'


def _region_labels(analysis: Mapping[str, Any]) -> list[str]:
    return [name.replace('_', ' ') for name in analysis['region_names']]


def _attention_norm(heats: Sequence[np.ndarray]):
    """A colour scale centred on 1 (uniform), symmetric, as wide as the largest departure from 1 but never
    narrower than +-``MIN_ATTENTION_SPREAD``, so that a 1 % departure is not painted as a strong preference."""
    from matplotlib.colors import Normalize

    spread = max((float(np.abs(h - 1.0).max()) for h in heats if h.size), default=0.0)
    spread = max(spread, MIN_ATTENTION_SPREAD)
    return Normalize(vmin=1.0 - spread, vmax=1.0 + spread)


def _draw_windows(ax, layout: StageLayout, size: int) -> None:
    """Token cells dotted, attention windows solid: attention only compares cells inside one window."""
    window = size / layout.windows
    for k in range(1, layout.fmap):
        position = k * layout.cell - 0.5
        if k % layout.tokens:
            ax.axvline(position, color='white', lw=0.4, ls=':', alpha=0.7)
            ax.axhline(position, color='white', lw=0.4, ls=':', alpha=0.7)
    for k in range(1, layout.windows):
        ax.axvline(k * window - 0.5, color='white', lw=1.2)
        ax.axhline(k * window - 0.5, color='white', lw=1.2)


def _draw_heat(ax, analysis: Mapping[str, Any], heat: np.ndarray, norm, cmap: str = ATTENTION_CMAP,
               alpha: float = 0.7):
    grey = analysis['network_image'].mean(axis=-1)
    ax.imshow(grey, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
    image = ax.imshow(heat, cmap=cmap, norm=norm, alpha=alpha, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def _label_quadrants(ax, analysis: Mapping[str, Any], values: Sequence[str] | None = None) -> None:
    size = analysis['network_image'].shape[0]
    half = size / 2
    for (row, col), label, index in zip(MOSAIC_QUADRANTS, _region_labels(analysis), range(4)):
        text = label if values is None else f'{label}\n{values[index]}'
        ax.text(col * half + 1, row * half + 1, text, fontsize=6.5, va='top', ha='left', color='white',
                bbox=dict(facecolor='black', alpha=0.45, pad=1, lw=0))


def _stage_note(layout: StageLayout, input_mode: str) -> str:
    if layout.trivial:
        return ('One token per window: every attention weight is 1 by construction and this map shows nothing; '
                'look at the saliency map in the summary')
    if layout.windows == 1:
        what = 'four regions' if input_mode != 'face' else 'parts of the face'
        return f'One window over the whole input: the only level that compares the {what} with each other'
    return ('Tokens compete only inside their window (solid lines): compare cells within a window, '
            'never across windows')


def level_figure(analysis: Mapping[str, Any], level: int, name: str = 'photo'):
    """Stage ``level`` on the mosaic: the network input, the mean over blocks, each block, and each head (mean over
    blocks), on one colour scale centred on 1 (uniform)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    layout: StageLayout = analysis['stages'][level]
    blocks, heads = analysis['maps'][level], analysis['head_maps'][level]
    panels: list[tuple[str, np.ndarray | None]] = [('network input', None),
                                                   (f'level {level}: mean of {layout.blocks} block(s)',
                                                    analysis['stage_means'][level])]
    if layout.blocks > 1:
        panels += [(f'block {j + 1}', heat) for j, heat in enumerate(blocks)]
    if layout.heads > 1:
        panels += [(f'head {h + 1} (mean over blocks)', heat) for h, heat in enumerate(heads)]
    columns = min(len(panels), 6)
    rows = math.ceil(len(panels) / columns)
    width = max(7.5, 2.3 * columns + 0.9)
    figure = Figure(figsize=(width, 2.45 * rows + 1.0), layout='constrained')
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    norm = _attention_norm([heat for _, heat in panels if heat is not None])
    size = analysis['network_image'].shape[0]
    if 'rest_to_photo' in analysis:
        panels[0] = ('network input (flow: u, v, strain)', None)
    for ax, (title, heat) in zip(axes, panels):
        if heat is None:
            ax.imshow(analysis['network_image'], interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if analysis['input_mode'] != 'face':
                _label_quadrants(ax, analysis)
        else:
            _draw_heat(ax, analysis, heat, norm)
            _draw_windows(ax, layout, size)
        ax.set_title(title, fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    figure.colorbar(ScalarMappable(norm=norm, cmap=ATTENTION_CMAP), ax=list(axes), shrink=0.8,
                    label='attention received x N (1 = uniform)')
    fallback = '' if analysis['status'] == 'ok' else f' ({source_note(analysis)})'
    title = (f'{name}{fallback}: level {level} of {len(analysis["stages"])} - {layout.describe()}. '
             f'{_stage_note(layout, analysis["input_mode"])}')
    notes = [text for text in (analysis.get('grading_note'), ood_line(analysis)) if text]
    figure.suptitle(textwrap.fill(title, width=int(width * 12)) + ''.join(f'\n{n}' for n in notes), fontsize=9,
                    color='tab:red' if analysis.get('ood_flag') else 'black')
    return figure


def _photo_heat(analysis: Mapping[str, Any], heat: np.ndarray, photo: np.ndarray, scale: float,
                smooth: bool) -> np.ndarray:
    """A map over the network input on the displayed photo (``scale``: its size over the photo's); for a pair, laid
    out on the rest photo, where its regions were cut, then carried onto the expression photo."""
    boxes = np.asarray(analysis['region_boxes'], dtype=np.float64)
    if 'rest_to_photo' not in analysis:
        return mosaic_to_photo(heat, boxes * scale, photo.shape, analysis['input_mode'], analysis['rotation'],
                               smooth=smooth)
    rest, rest_scale = display_copy(analysis['rest_image'])
    rest_heat = mosaic_to_photo(heat, boxes * rest_scale, rest.shape, analysis['input_mode'], smooth=smooth)
    matrix = np.asarray(analysis['rest_to_photo'], dtype=np.float64)
    # rest display pixels -> rest pixels -> expression pixels -> expression display pixels
    shown = np.hstack([matrix[:, :2] * scale / rest_scale, matrix[:, 2:] * scale])
    return rest_map_to_photo(rest_heat, shown, photo.shape, smooth=smooth)


def _draw_boxes(ax, analysis: Mapping[str, Any], scale: float, labels: bool = True, on_rest: bool = False) -> None:
    """The crop boxes on the displayed photo; for a pair, carried onto the expression photo (turned
    quadrilaterals) unless ``on_rest`` draws them on the rest photo, where they were cut."""
    from matplotlib.patches import Polygon

    matrix = None if on_rest else analysis.get('rest_to_photo')
    corners = box_corners(analysis['region_boxes'], matrix) * scale
    names = _region_labels(analysis) if len(corners) == 4 else ['network input (face square)']
    for quad, label, colour in zip(corners, names, REGION_COLOURS):
        ax.add_patch(Polygon(quad, closed=True, fill=False, lw=1.4, ec=colour))
        if labels:
            ax.text(*quad[0], label, color='white', fontsize=6.5, va='bottom',
                    bbox=dict(facecolor=colour, alpha=0.75, pad=1, lw=0))


def _photo_name(analysis: Mapping[str, Any]) -> str:
    return 'expression photo' if 'rest_to_photo' in analysis else 'photo'


def _photo_panel(ax, analysis: Mapping[str, Any], heat_norm, saliency_norm) -> None:
    """The photo with the crop boxes and landmarks, and the last level's attention laid over the crops; where that
    is uniform by construction, the saliency instead (a white overlay would suggest an answer)."""
    photo, scale = display_copy(analysis['image'])
    ax.imshow(photo)
    if analysis['attention_informative']:
        overlay = _photo_heat(analysis, analysis['stage_means'][-1], photo, scale, smooth=False)
        ax.imshow(np.ma.masked_invalid(overlay), cmap=ATTENTION_CMAP, norm=heat_norm, alpha=0.55,
                  interpolation='nearest')
        ax.set_title(f'last-level attention on the {_photo_name(analysis)}', fontsize=8.5)
    else:
        overlay = _photo_heat(analysis, analysis['saliency'], photo, scale, smooth=True)
        ax.imshow(np.ma.masked_invalid(overlay), cmap=SALIENCY_CMAP, norm=saliency_norm, alpha=0.55)
        ax.set_title(f'saliency on the {_photo_name(analysis)} (attention is uniform at this input size)',
                     fontsize=8.5)
    _draw_boxes(ax, analysis, scale)
    points = analysis['landmarks'] * scale
    ax.scatter(points[:, 0], points[:, 1], s=10, c='yellow', edgecolors='black', linewidths=0.4)
    ax.set_axis_off()


def summary_figure(analysis: Mapping[str, Any], name: str = 'photo'):
    """The photo with the region boxes and the last level's attention (or the saliency, see ``_photo_panel``),
    the mosaic with the last level's attention, the saliency beside it for comparison, the class probabilities;
    the predicted grade and its confidence in the title."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    last, heat, saliency = analysis['stages'][-1], analysis['stage_means'][-1], analysis['saliency']
    saliency_norm = Normalize(vmin=0.0, vmax=float(saliency.max()) or 1.0)
    norm = _attention_norm([heat])
    pair = 'rest_to_photo' in analysis
    figure = Figure(figsize=(17.0 if pair else 13.5, 4.4), layout='constrained')
    ratios = [1.6, 1.0, 1.0, 1.05] if not pair else [1.6, 1.3, 1.0, 1.0, 1.05]
    grid = figure.add_gridspec(1, len(ratios), width_ratios=ratios)
    axes = [figure.add_subplot(grid[0, i]) for i in range(len(ratios))]
    if pair:  # the rest photo, where the flow's regions were cut
        _landmarks_panel(axes.pop(1), analysis, rest=True, names=False)
    ax_photo, ax_attention, ax_saliency, ax_bars = axes

    _photo_panel(ax_photo, analysis, norm, saliency_norm)
    _draw_heat(ax_attention, analysis, heat, norm)
    _draw_windows(ax_attention, last, heat.shape[0])
    _label_quadrants(ax_attention, analysis, [f'{v:.2f}' for v in analysis['region_attention'].values()])
    uniform_note = ('1 = uniform' if analysis['attention_informative']
                    else 'uniform by construction (1 token per window)')
    ax_attention.set_title(f'level {last.level} attention, mean of {last.blocks} block(s)\n{uniform_note}',
                           fontsize=8.5)
    _draw_heat(ax_saliency, analysis, saliency, saliency_norm, cmap=SALIENCY_CMAP, alpha=0.75)
    _label_quadrants(ax_saliency, analysis, [f'{v:.0%}' for v in analysis['region_saliency'].values()])
    part = 'region' if analysis['input_mode'] != 'face' else 'quadrant'
    ax_saliency.set_title(f'gradient saliency |d logit / d input|\nof {display_grade(analysis["grade"])}, '
                          f'share per {part}', fontsize=8.5)
    draw_probabilities(ax_bars, analysis, list(analysis['probabilities']), title='class probabilities')
    notes = [text for text in (analysis.get('grading_note'), ood_line(analysis)) if text]
    figure.suptitle(f'{name}: predicted {display_grade(analysis["grade"])} ({analysis["confidence"]:.0%}), '
                    f'{source_note(analysis)} - {DISCLAIMER}' + ''.join(f'\n{n}' for n in notes), fontsize=10,
                    color='tab:red' if analysis.get('ood_flag') else 'black')
    return figure


def _landmarks_panel(ax, analysis: Mapping[str, Any], rest: bool = False, names: bool = True) -> None:
    """A photo with its five landmarks, its face box and the crop boxes; the photo the crops are cut from (a
    single photo, or a pair's rest photo with ``rest``) also with its face square (dashed). A pair's expression
    photo gets the crops carried over from the rest photo."""
    from matplotlib.patches import Rectangle

    prefix = 'rest_' if rest else ''
    pair = 'rest_to_photo' in analysis
    photo, scale = display_copy(analysis[f'{prefix}image'])
    landmarks, face_box = analysis[f'{prefix}landmarks'], analysis[f'{prefix}face_box']
    ax.imshow(photo)
    if face_box is not None:
        x0, y0, x1, y1 = np.asarray(face_box, dtype=np.float64) * scale
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.6, ec='lime'))
    if rest or not pair:
        x0, y0, x1, y1 = face_square_bounds(landmarks, face_box).astype(np.float64) * scale
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.0, ec='white', ls='--'))
    _draw_boxes(ax, analysis, scale, on_rest=rest)
    points = np.asarray(landmarks) * scale
    ax.scatter(points[:, 0], points[:, 1], s=16, c='yellow', edgecolors='black', linewidths=0.5)
    if names:
        for (x, y), label in zip(points, LANDMARK_NAMES):
            ax.annotate(label.replace('_', ' '), (x, y), xytext=(3, -9), textcoords='offset points', fontsize=6.5,
                        color='yellow')
    ax.set_axis_off()
    source = analysis[f'{prefix}landmark_source']
    if not pair:
        title = f'landmarks ({source}), face box (green), face square (dashed), crops'
    elif rest:
        title = f'rest photo: landmarks ({source}), face square (dashed)\nand crops, the frame of the flow'
    else:
        title = f'expression photo: landmarks ({source}),\nthe crops carried over from the rest photo'
    ax.set_title(title, fontsize=8.5)


def regions_figure(analysis: Mapping[str, Any], name: str = 'photo'):
    """What the network reads of the photo: the five landmarks, the face box and face square, the four crop
    boxes, and the mosaic they are laid out in (same colours). For a pair, the rest photo (where the crops of the
    flow are cut), the expression photo with the crops carried over, and the flow mosaic."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    pair = 'rest_to_photo' in analysis
    figure = Figure(figsize=(15, 4.8) if pair else (10, 4.8), layout='constrained')
    axes = list(figure.subplots(1, 3 if pair else 2, width_ratios=[1.6, 1.6, 1.0] if pair else [1.6, 1.0]))
    ax_mosaic = axes.pop()
    if pair:
        _landmarks_panel(axes[0], analysis, rest=True)
        _landmarks_panel(axes[1], analysis)
    else:
        _landmarks_panel(axes[0], analysis)

    mosaic = analysis['network_image']
    ax_mosaic.imshow(mosaic, interpolation='nearest')
    size = mosaic.shape[0]
    if analysis['input_mode'] != 'face':
        half = size / 2
        for (row, col), colour in zip(MOSAIC_QUADRANTS, REGION_COLOURS):
            ax_mosaic.add_patch(Rectangle((col * half - 0.5, row * half - 0.5), half, half, fill=False, lw=2.5,
                                          ec=colour))
        _label_quadrants(ax_mosaic, analysis)
        what = 'the 2x2 mosaic of the flow (u, v, strain)' if pair else 'the 2x2 mosaic the network reads'
        ax_mosaic.set_title(f'{what}\n(left = image left = the patient\'s right)', fontsize=8.5)
    else:
        ax_mosaic.set_title(f'the face square the network reads,\nturned {analysis["rotation"]:.1f} deg to level '
                            'the eyes', fontsize=8.5)
    ax_mosaic.set_xticks([])
    ax_mosaic.set_yticks([])
    figure.suptitle(f'{name}: {source_note(analysis)}', fontsize=10)
    return figure
