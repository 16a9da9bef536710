"""What evaluation, inference and the attention viewer share: the predictor that grades photos with a trained
checkpoint, the names and CSV columns of its results, the symmetry columns, and the prediction overlay.

``FacialPalsyPredictor`` takes its network, preprocessing, grade names, prediction rule and side names from
``checkpoints.load_trained`` and turns photos into network inputs through ``facial_palsy_dataset`` (MTCNN
landmarks, face square, 2x2 region mosaic), so a photo is read exactly as it was in training. Many photos are
detected and classified in batches. A photo without a detectable face is still graded on the template landmarks
of the original code (status ``no_face_fallback``); a file that cannot be read gets status ``unreadable`` and
never stops a batch.

The predictor holds a list of checkpoints (``ensemble.Ensemble``; one checkpoint is an ensemble of one) and the
test-time augmentation views of ``tta``: every view of every member is graded and their softmax probabilities
averaged, then decoded with the checkpoints' prediction rule. Every photo also gets the out-of-distribution score
of its original view (``ood.py``; the mean over the members that have statistics) and its flag.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

import utils
from annotations import HB_GRADES
from checkpoints import grade_labels
from ensemble import DEFAULT_TTA, OOD_WARNING, Ensemble  # noqa: F401  (DEFAULT_TTA re-exported)
from face_detection import as_rgb_image
from facial_palsy_dataset import (REGION_NAMES, ImageReadError, LandmarkDetector, face_square, load_image,
                                  model_input_size, network_image, network_image_from_face, region_boxes,
                                  template_landmarks, to_tensor)
from symmetry import MEASUREMENT_NAMES, draw_measurements, symmetry_measurements

__all__ = ['FacialPalsyPredictor', 'ImageInput', 'STATUSES', 'SYMMETRY_COLUMNS', 'DEFAULT_TTA', 'grade_labels',
           'probability_column', 'to_rgb_array', 'face_symmetry', 'symmetry_row', 'symmetry_line', 'ood_line',
           'display_grade', 'draw_probabilities', 'overlay_figure']

STATUSES = ('ok', 'no_face_fallback', 'unreadable')
SYMMETRY_KEYS = (*MEASUREMENT_NAMES, 'more_affected_image_side')
SYMMETRY_COLUMNS = tuple(f'sym_{name}' for name in SYMMETRY_KEYS)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


# helpers

def probability_column(name: str) -> str:
    """CSV column of one class probability: ``p_`` + the class name with spaces and brackets made safe
    (``p_III``, ``p_mild-moderate_II-III``), so the columns read well in pandas and spreadsheets."""
    return 'p_' + re.sub(r'[^0-9A-Za-z-]+', '_', name).strip('_')


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An in-memory photo as HxWx3 uint8 RGB. PIL images follow their EXIF orientation like files do; numpy
    arrays are taken as RGB (grayscale and RGBA are converted, floats in [0, 1] scaled to 0-255)."""
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert('RGB'), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f'expected an HxWx3 RGB array, got shape {tuple(array.shape)}')
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError('the image array holds NaN or infinite values')
        scale = 255.0 if array.max() <= 1.0 else 1.0
        return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ValueError(f'unsupported image array dtype {array.dtype}')


def empty_result(path: str | None = None) -> dict[str, Any]:
    """The result of a photo before it is read: every key present, so an ``unreadable`` row has the same shape."""
    return {'path': path, 'status': 'unreadable', 'error': None, 'grade_index': None, 'grade': None,
            'confidence': None, 'probabilities': None, 'face_box': None, 'landmarks': None,
            'face_detected': False, 'landmark_source': None, 'side': None, 'side_confidence': None,
            'side_probabilities': None, 'symmetry': None, 'ood_score': None, 'ood_flag': None}


def face_symmetry(landmarks: Any, landmark_source: str | None) -> dict[str, float | str]:
    """Symmetry measurements of the landmarks a photo was graded with. Template landmarks are not the
    patient's face, so they get NaN measurements and side ``unknown`` instead of a reassuring 'symmetric'."""
    if landmarks is None or landmark_source == 'template':
        return symmetry_measurements(None)
    return symmetry_measurements(landmarks)


def symmetry_row(measurements: dict[str, Any] | None) -> dict[str, Any]:
    """The ``sym_*`` CSV columns of one photo's measurements (empty values for an unreadable photo)."""
    measurements = measurements or {}
    return {column: measurements.get(name) for name, column in zip(SYMMETRY_KEYS, SYMMETRY_COLUMNS)}


def symmetry_line(measurements: dict[str, Any] | None) -> str:
    """One compact line of the measurements for the terminal."""
    if not measurements or not np.isfinite(measurements.get('asymmetry_index', np.nan)):
        return 'symmetry: no measurements (template landmarks or degenerate points)'
    return (f'symmetry: asymmetry index {measurements["asymmetry_index"]:.2f}, droop score '
            f'{measurements["droop_score"]:+.2f} (image {measurements["more_affected_image_side"]} side), mouth '
            f'roll {measurements["mouth_roll_deg"]:+.1f} deg, corner height diff '
            f'{measurements["mouth_corner_height_diff"]:+.3f} IOD, eye roll {measurements["eye_line_roll_deg"]:+.1f} deg')


def ood_line(result: dict[str, Any]) -> str | None:
    """The OOD score of a graded photo as one line (None when it has no score): the warning when flagged."""
    score = result.get('ood_score')
    if score is None or not np.isfinite(score):
        return None
    if result.get('ood_flag'):
        return f'OOD score {score:.2f} > 1: {OOD_WARNING}'
    return f'OOD score {score:.2f} (flagged above 1)'


def describe_input(item: ImageInput) -> str | None:
    return str(item) if isinstance(item, (str, os.PathLike)) else None


# classes

class FacialPalsyPredictor:
    """Grade photos with a trained checkpoint, or an ensemble of them, optionally with test-time augmentation.

    ``model_path``: one checkpoint, several, or a folder (``ensemble.checkpoint_files``: a ``--cv`` run's
    ``fold_*/best_model.pth``, or the ``*.pth`` inside); a single checkpoint is an ensemble of one. ``tta``: one of
    ``ensemble.TTA_MODES`` (default ``ensemble.DEFAULT_TTA``). The softmax probabilities of every view of every
    member are averaged and decoded with the checkpoints' prediction rule.

    ``predict(image_or_path)`` takes a file path, a PIL image or an RGB numpy array and returns a dict:
    ``grade_index``, ``grade`` (HB roman numeral, or the simplified name for 3 classes), ``confidence``,
    ``probabilities`` (grade name -> p; ``confidence`` is the predicted grade's, which under ordinal decoding need
    not be the largest), ``face_box`` (x1, y1, x2, y2 or None), ``landmarks`` (five (x, y) points
    in image pixels), ``face_detected``, ``landmark_source``, ``side`` / ``side_confidence`` /
    ``side_probabilities`` (the patient's affected side; None without a side head), ``symmetry`` (the
    ``symmetry.symmetry_measurements`` of the landmarks; NaN for template landmarks), ``ood_score`` (distance to
    the training photos' features, 1.0 = the threshold; the mean over members; NaN without OOD statistics) and
    ``ood_flag`` (score above 1), ``status`` (``ok`` / ``no_face_fallback`` / ``unreadable``), ``error`` (message
    or None) and ``path``. ``predict_batch(items)`` does the same for a list, running face detection and the
    network on batches.

    ``model`` / ``trained`` / ``model_path`` are the first member's (the attention viewer draws its maps);
    ``model_paths`` lists every member and ``skipped_models`` the checkpoints that could not be opened.
    """

    def __init__(self, model_path: str | os.PathLike | Sequence[str | os.PathLike], device: str = 'auto',
                 batch_size: int = 32, detector: LandmarkDetector | None = None, tta: str | None = None):
        self.device = utils.resolve_device(device)
        self.ensemble = Ensemble.load(model_path, self.device, tta)
        self.members = self.ensemble.members
        self.trained = trained = self.members[0].trained
        self.model_path = trained.path
        self.model_paths = self.ensemble.paths
        self.skipped_models = list(self.ensemble.skipped)
        self.model = trained.model
        self.num_classes = trained.num_classes
        self.class_names = trained.class_names
        self.grades = trained.grades
        self.prediction = trained.prediction
        self.sides = trained.sides
        self.preprocess = trained.preprocess
        self.tta = self.ensemble.tta
        self.views = self.ensemble.views
        self.batch_size = max(1, int(batch_size))
        # the MTCNN settings training used; no landmark cache, since new photos are seen once
        self.detector = detector if detector is not None else LandmarkDetector(
            device=self.device, cache_dir=False, batch_size=self.batch_size, progress=False,
            **detector_settings(self.preprocess))

    def describe(self) -> str:
        """Which checkpoint(s) grade and with which TTA, in one line (figure notes, printouts)."""
        return self.ensemble.describe()

    # reading and preparing photos

    def read(self, item: ImageInput) -> np.ndarray:
        """A path, PIL image or array as HxWx3 uint8 RGB; unreadable input raises ``ImageReadError``."""
        if isinstance(item, (str, os.PathLike)):
            return load_image(item)
        try:
            return to_rgb_array(item)
        except (ValueError, TypeError, OSError) as err:
            raise ImageReadError(f'<{type(item).__name__}>: {err}') from err

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[list[dict], torch.Tensor]:
        """Find landmarks on a batch of photos and build their network inputs (the original view).

        Returns one dict per photo (``landmarks``, ``face_box``, ``face_detected``, ``landmark_source``,
        ``status``) and the stacked inputs ``(N, 3, S, S)``. A photo without a face is graded on the template
        landmarks scaled to it, as the training data was.
        """
        infos, views = self.prepare_views(images)
        return infos, views[0]

    def prepare_views(self, images: Sequence[np.ndarray]) -> tuple[list[dict], list[torch.Tensor]]:
        """``prepare`` for every TTA view: the per-photo dicts and one ``(N, 3, S, S)`` batch per view of
        ``views`` (the original view first; each view transforms the face square, as a dataset transform
        does)."""
        faces = self.detector.detect_images(list(images)) if images else []
        infos, squares = [], []
        for image, face in zip(images, faces):
            if face is None:
                height, width = image.shape[:2]
                points = np.asarray(template_landmarks(width, height), dtype=np.float32)
                box, source, status = None, 'template', 'no_face_fallback'
            else:
                points = np.asarray(face.points, dtype=np.float32)
                box = None if face.box is None else np.asarray(face.box, dtype=np.float32)
                source, status = face.source, 'ok'
            squares.append(face_square(as_rgb_image(image), points, box, int(self.preprocess['face_size']),
                                       margin=self.preprocess['face_margin'],
                                       landmark_scale=self.preprocess['landmark_face_scale']))
            # full precision: save_overlay rebuilds the network input from these points
            infos.append({'landmarks': points.astype(np.float64).tolist(),
                          'face_box': None if box is None else box.astype(np.float64).tolist(),
                          'face_detected': face is not None, 'landmark_source': source, 'status': status})
        size = model_input_size(self.preprocess)
        batches = []
        for view in self.views:
            inputs = [to_tensor(network_image_from_face(*(square if view.identity else view(*square)),
                                                        self.preprocess), self.preprocess) for square in squares]
            batches.append(torch.stack(inputs) if inputs else torch.zeros(0, 3, size, size))
        return infos, batches

    def grade(self, view_inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray | None]:
        """Run every member on every view's inputs, ``batch_size`` at a time, and combine them
        (``ensemble.Ensemble.combine``): ``probabilities``, ``predictions``, ``side_probabilities``, ``ood_score``,
        ``ood_flag``; the OOD score is read on the original view."""
        count = len(view_inputs[0])
        if count == 0:
            return {'probabilities': np.zeros((0, self.num_classes)), 'predictions': np.zeros(0, dtype=np.int64),
                    'side_probabilities': np.zeros((0, len(self.sides))) if self.sides else None,
                    'ood_score': np.zeros(0), 'ood_flag': np.zeros(0, dtype=bool)}
        outputs = []
        for position, inputs in enumerate(view_inputs):
            chunks = [self.ensemble.forward(chunk, self.device, with_ood=position == 0)
                      for chunk in inputs.split(self.batch_size)]
            outputs.append({key: None if chunks[0][key] is None else np.concatenate([c[key] for c in chunks], axis=1)
                            for key in ('grade', 'side', 'ood')})
        return self.ensemble.combine(outputs)

    # prediction

    def predict(self, image_or_path: ImageInput) -> dict[str, Any]:
        """Grade one photo (path, PIL image or RGB array); see the class docstring for the result."""
        return self.predict_batch([image_or_path])[0]

    def predict_batch(self, items: Sequence[ImageInput]) -> list[dict[str, Any]]:
        """Grade many photos: read each, detect faces and run the network in batches. A photo that cannot be read
        gets an ``unreadable`` result with the reason in ``error``; the others are graded."""
        results = [empty_result(describe_input(item)) for item in items]
        images: dict[int, np.ndarray] = {}
        for index, item in enumerate(items):
            try:
                images[index] = self.read(item)
            except ImageReadError as err:
                results[index]['error'] = str(err)
        order = list(images)
        infos, view_inputs = self.prepare_views([images[i] for i in order])
        for index, info, graded in zip(order, infos, self.photo_results(self.grade(view_inputs))):
            results[index].update(info)
            results[index].update(graded)
            results[index]['symmetry'] = face_symmetry(info['landmarks'], info['landmark_source'])
        return results

    def photo_results(self, graded: dict[str, np.ndarray | None]) -> list[dict[str, Any]]:
        """The per-photo result entries (grade, probabilities, side, OOD) of ``grade``'s arrays."""
        rows = []
        for position, probs in enumerate(graded['probabilities']):
            grade_index = int(graded['predictions'][position])
            score = float(graded['ood_score'][position])
            row = {'grade_index': grade_index, 'grade': self.grades[grade_index],
                   'confidence': float(probs[grade_index]),
                   'probabilities': {name: float(p) for name, p in zip(self.grades, probs)},
                   'ood_score': score, 'ood_flag': bool(graded['ood_flag'][position])}
            if graded['side_probabilities'] is not None:
                side_probs = graded['side_probabilities'][position]
                side_index = int(side_probs.argmax())
                row.update({'side': self.sides[side_index], 'side_confidence': float(side_probs[side_index]),
                            'side_probabilities': {name: float(p) for name, p in zip(self.sides, side_probs)}})
            rows.append(row)
        return rows

    # pictures

    def save_overlay(self, image_or_path: ImageInput, result: dict[str, Any], output_path: str | os.PathLike) -> Path:
        """Draw a prediction over its photo and save it as PNG: face box, landmarks, the four regions the network
        reads, the symmetry geometry and numbers, the regions mosaic it saw, the predicted grade (and side), the
        checkpoint(s) and TTA that graded it, the OOD warning when flagged, and a bar chart of the class
        probabilities."""
        if result.get('probabilities') is None:
            raise ValueError(f'{result.get("path") or "photo"}: nothing to draw for an unreadable photo')
        image = self.read(image_or_path)
        points = np.asarray(result['landmarks'], dtype=np.float32)
        box = None if result['face_box'] is None else np.asarray(result['face_box'], dtype=np.float32)
        network_view = network_image(image, points, self.preprocess, box=box)
        boxes = region_boxes(image, points, self.preprocess, box=box)
        figure = overlay_figure(image, result, self.grades, boxes, network_view, settings=self.describe())
        return utils.save_figure(figure, output_path, dpi=110)


def detector_settings(preprocess: dict) -> dict[str, Any]:
    """MTCNN settings stored in ``preprocess`` (the ones training used), as keyword arguments of
    ``LandmarkDetector``."""
    settings = preprocess.get('detector') or {}
    return dict(settings) if isinstance(settings, dict) else {}


def display_grade(grade: str) -> str:
    """A short grade label as shown to people: roman numerals get their scale (``III`` -> ``HB III``)."""
    return f'HB {grade}' if grade in HB_GRADES else grade


def overlay_figure(image: np.ndarray, result: dict[str, Any], grades: Sequence[str],
                   boxes: np.ndarray, network_view: np.ndarray, settings: str | None = None):
    """The overlay as a matplotlib Figure (no pyplot state, so it is safe in loops and tests). ``boxes``: the
    four region crops in photo pixels (one face box in the ``face`` input mode); ``network_view``: the
    un-normalised network input; ``settings``: which checkpoint(s) and TTA graded it. A photo flagged as unlike
    the training photos gets the warning in red under the figure."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.6), layout='constrained')
    grid = figure.add_gridspec(2, 3, width_ratios=[2.2, 1.0, 1.4], height_ratios=[1, 1])
    photo_ax = figure.add_subplot(grid[:, 0])
    draw_photo(photo_ax, image, result, boxes)
    draw_symmetry(photo_ax, result)
    draw_network_view(figure.add_subplot(grid[0, 1]), figure.add_subplot(grid[1, 1]), network_view, result,
                      regions=len(boxes) == len(REGION_NAMES))
    draw_probabilities(figure.add_subplot(grid[:, 2]), result, grades)
    notes = [text for text in (settings, ood_line(result)) if text]
    if notes:
        figure.suptitle('\n'.join(notes), fontsize=9, color='tab:red' if result.get('ood_flag') else 'black')
    return figure


def draw_photo(ax, image: np.ndarray, result: dict[str, Any], boxes: np.ndarray) -> None:
    """The photo with the face box, the five landmarks and the labelled crops the network reads."""
    from matplotlib.patches import Rectangle

    ax.imshow(image)
    ax.set_axis_off()
    if result['face_box'] is not None:
        x1, y1, x2, y2 = result['face_box']
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec='lime'))
    colours = ('tab:cyan', 'tab:orange', 'tab:blue', 'tab:red')
    names = [n.replace('_', ' ') for n in REGION_NAMES] if len(boxes) == len(REGION_NAMES) else ['network input']
    for name, (x1, y1, x2, y2), colour in zip(names, boxes, colours):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=colour))
        ax.text(x1, y1, name, color='white', fontsize=7, va='bottom',
                bbox=dict(facecolor=colour, alpha=0.7, pad=1, lw=0))
    points = np.asarray(result['landmarks'])
    ax.scatter(points[:, 0], points[:, 1], s=12, c='yellow', edgecolors='black', linewidths=0.5)
    source = 'face detected' if result['face_detected'] else 'no face found: template landmarks'
    ax.set_title(f'{Path(result["path"]).name if result.get("path") else "photo"} ({source})', fontsize=9)


def draw_symmetry(ax, result: dict[str, Any]) -> None:
    """The symmetry measurements over the photo (``symmetry.draw_measurements``). Template landmarks are not the
    patient's and have none; the photo's title already says so."""
    if result.get('landmark_source') == 'template':
        return
    measurements = result.get('symmetry') or face_symmetry(result['landmarks'], result.get('landmark_source'))
    draw_measurements(ax, result['landmarks'], measurements, fontsize=6.5)


def draw_network_view(ax_view, ax_notes, network_view: np.ndarray, result: dict[str, Any], regions: bool) -> None:
    """What the network saw, with how to read it: the mosaic keeps image sides, so its left column is the
    patient's right side."""
    ax_view.imshow(network_view)
    ax_view.set_title('network input', fontsize=9)
    ax_view.set_axis_off()
    ax_notes.set_axis_off()
    layout = ('mosaic: left eye | left mouth\n        right eye | right mouth\n'
              "(left = image left = the patient's right)" if regions else 'whole face, eyes levelled')
    side = ''
    if result.get('side') is not None:
        side = f'side: patient {result["side"]} ({result["side_confidence"]:.0%})\n'
    ax_notes.text(0.0, 1.0, f'status: {result["status"]}\nlandmarks: {result["landmark_source"]}\n{side}\n'
                  f'{layout}\n\nresearch tool, not a diagnosis', va='top', ha='left', fontsize=7.5, family='monospace',
                  transform=ax_notes.transAxes)


def draw_probabilities(ax, result: dict[str, Any], grades: Sequence[str], title: str | None = None) -> None:
    """One bar per grade, the predicted one highlighted (the overlay and the attention summary)."""
    probabilities = [result['probabilities'][g] for g in grades]
    positions = np.arange(len(grades))
    colours = ['tab:red' if i == result['grade_index'] else 'tab:gray' for i in positions]
    ax.barh(positions, probabilities, color=colours)
    ax.set_yticks(positions, [display_grade(g) for g in grades], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel('probability')
    for position, p in zip(positions, probabilities):
        ax.text(min(p + 0.02, 0.85), position, f'{p:.2f}', va='center', fontsize=8)
    ax.set_title(title or f'predicted {display_grade(result["grade"])} ({result["confidence"]:.0%})', fontsize=10)
