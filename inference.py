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

A checkpoint trained with ``input_mode flow`` reads a rest / expression pair of one person instead of a photo
(``predict_pair``, ``predict_pairs``): both photos are detected in one pass and turned into the flow mosaic by
``facial_palsy_dataset.make_flow_network_image``, the function the dataset builds its flow samples with, so a pair
is graded on exactly the input that training and evaluation made of it. In a folder, ``pair_folder`` finds each
expression photo's rest photo, by a pairs CSV (``image_path``, ``neutral_path``) or by the file-name rule
``PAIRING_RULE``; an expression photo without one gets the status ``no_rest_photo``.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

import optical_flow
import utils
from annotations import HB_GRADES, fix_backslash_paths, read_table, require_columns, row_number
from checkpoints import grade_labels
from ensemble import DEFAULT_TTA, OOD_WARNING, Ensemble  # noqa: F401  (DEFAULT_TTA re-exported)
from face_detection import as_rgb_image
from facial_palsy_dataset import (REGION_NAMES, FaceLandmarks, ImageReadError, LandmarkDetector, face_square,
                                  load_image, make_flow_network_image, model_input_size, network_image,
                                  network_image_from_face, region_boxes, template_landmarks, to_tensor)
from symmetry import MEASUREMENT_NAMES, draw_measurements, symmetry_measurements

__all__ = ['FacialPalsyPredictor', 'ImageInput', 'STATUSES', 'PAIR_STATUSES', 'SYMMETRY_COLUMNS', 'DEFAULT_TTA',
           'REST_SUFFIX', 'PAIRING_RULE', 'PAIRS_CSV_HELP', 'PhotoPair', 'FolderPairs', 'pair_folder', 'pair_by_name',
           'pair_by_csv', 'check_pair_flags',
           'read_pairs_csv', 'grade_labels', 'probability_column', 'to_rgb_array', 'face_symmetry', 'symmetry_row',
           'symmetry_line', 'ood_line', 'missing_face_line', 'face_of', 'rest_to_expression', 'box_corners',
           'display_grade', 'draw_probabilities', 'overlay_figure']

STATUSES = ('ok', 'no_face_fallback', 'unreadable')
# a pair can also lack its rest photo (a folder's expression photo that no rest photo goes with)
PAIR_STATUSES = (*STATUSES, 'no_rest_photo')
SYMMETRY_KEYS = (*MEASUREMENT_NAMES, 'more_affected_image_side')
SYMMETRY_COLUMNS = tuple(f'sym_{name}' for name in SYMMETRY_KEYS)
# the rest photo of <name>.<ext> in a folder: <name>_rest.<ext>, as synthetic_faces.rest_photo_path names them
REST_SUFFIX = '_rest'
PAIRING_RULE = (f'the rest photo of <name>.<ext> is <name>{REST_SUFFIX}.<ext> in the same folder (another image '
                f'extension is taken when it is the only <name>{REST_SUFFIX} file); files named '
                f'*{REST_SUFFIX}.<ext> are rest photos and are not graded themselves. The synthetic pairs of '
                f'prepare_dataset.py --pairs are named this way (grade_N/<subject>_<n>.jpg and '
                f'rest/grade_N/<subject>_<n>{REST_SUFFIX}.jpg): copy both into one folder')
# --pairs_csv of the scripts that read a folder of pairs (demo_inference.py grades, visualize_attention.py draws)
PAIRS_CSV_HELP = ('with --image_dir and a flow checkpoint: a CSV with image_path and neutral_path columns (paths '
                  'absolute or relative to the CSV\'s folder) giving each expression photo its rest photo; files '
                  f'listed as neutral_path are not {{verb}} themselves. Without it, {PAIRING_RULE}')
# what a pair's result holds beside a photo's: the rest photo and where its face was found
REST_KEYS = ('rest_path', 'rest_landmarks', 'rest_face_box', 'rest_face_detected', 'rest_landmark_source')

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


def empty_pair_result(path: str | None = None, rest_path: str | None = None) -> dict[str, Any]:
    """``empty_result`` of a pair: also the rest photo's path and landmarks (``REST_KEYS``)."""
    return {**empty_result(path), **dict.fromkeys(REST_KEYS), 'rest_path': rest_path, 'rest_face_detected': False}


def located_face(image: np.ndarray, face: FaceLandmarks | None) -> FaceLandmarks:
    """The landmarks a photo is read with: MTCNN's face, else HTNet's template scaled to the photo (source
    ``template``), as the dataset falls back when neither MTCNN nor the annotation gives landmarks."""
    if face is not None:
        return face
    height, width = image.shape[:2]
    return FaceLandmarks(points=template_landmarks(width, height), box=None, source='template')


def face_info(face: FaceLandmarks, prefix: str = '') -> dict[str, Any]:
    """A face's result entries (``landmarks``, ``face_box``, ``face_detected``, ``landmark_source``; with
    ``prefix='rest_'`` the rest photo's), in full precision: the overlay rebuilds the network input from them."""
    return {f'{prefix}landmarks': face.points.astype(np.float64).tolist(),
            f'{prefix}face_box': None if face.box is None else face.box.astype(np.float64).tolist(),
            f'{prefix}face_detected': face.source != 'template', f'{prefix}landmark_source': face.source}


def face_of(result: dict[str, Any], prefix: str = '') -> FaceLandmarks:
    """The ``FaceLandmarks`` a result was graded with (``prefix='rest_'``: its rest photo's), back from its lists."""
    box = result[f'{prefix}face_box']
    return FaceLandmarks(points=np.asarray(result[f'{prefix}landmarks'], dtype=np.float32),
                         box=None if box is None else np.asarray(box, dtype=np.float32),
                         source=result[f'{prefix}landmark_source'])


def rest_to_expression(rest_landmarks: Any, expression_landmarks: Any) -> np.ndarray:
    """The 2x3 similarity taking rest-photo pixels to expression-photo pixels: the inverse of the one
    ``optical_flow.align_to_rest`` moves the expression photo with (on the eyes and the nose), for drawing the
    regions of the flow, which lie in the rest photo's frame, on the expression photo. The image registration that
    refines that alignment moves the face by a pixel or two and is not included."""
    index = list(optical_flow.ALIGN_POINTS)
    expression_to_rest = optical_flow.similarity_transform(
        optical_flow.landmark_points(expression_landmarks)[index], optical_flow.landmark_points(rest_landmarks)[index])
    return cv2.invertAffineTransform(expression_to_rest)


def box_corners(boxes: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """The corners ``(K, 4, 2)`` of boxes ``[x0, y0, x1, y1]`` (clockwise from the top left), moved by the 2x3
    affine ``matrix`` when given (a box in one photo is a turned quadrilateral in the other)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], axis=1)
    if matrix is not None:
        matrix = np.asarray(matrix, dtype=np.float64)
        corners = corners @ matrix[:, :2].T + matrix[:, 2]
    return corners


def missing_face_line(result: dict[str, Any]) -> str | None:
    """One line naming the photo(s) of a pair on which no face was found (graded on template landmarks, as
    training reads such a photo); None when both faces were found or the pair was not graded."""
    if result.get('probabilities') is None:
        return None
    photos = (('expression photo', result['path'], result.get('face_detected')),
              ('rest photo', result.get('rest_path'), result.get('rest_face_detected')))
    missing = [f'the {name} {path}' if path else f'the {name}' for name, path, detected in photos if not detected]
    if not missing:
        return None
    where = ' and '.join(missing)
    return f'no face found on {where}: graded on template landmarks, treat with caution'


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

    A checkpoint trained with ``input_mode flow`` (``reads_pairs``) grades rest / expression pairs instead:
    ``predict_pair(rest, expression)`` (two paths, PIL images or RGB arrays, e.g. a clip's rest and apex frames),
    ``predict_pairs`` for a list, ``predict_folder_pairs`` for ``pair_folder``'s pairs; their results add the rest
    photo's ``rest_path``, ``rest_landmarks``, ``rest_face_box``, ``rest_face_detected`` and
    ``rest_landmark_source``. Each kind of checkpoint refuses the other's input with a one-line ``UserError``.

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
        self.input_mode = self.ensemble.input_mode
        # input_mode flow: the network reads the optical flow of a rest / expression pair, not one photo
        self.reads_pairs = self.input_mode == 'flow'
        self.batch_size = max(1, int(batch_size))
        # the MTCNN settings training used; no landmark cache, since new photos are seen once
        self.detector = detector if detector is not None else LandmarkDetector(
            device=self.device, cache_dir=False, batch_size=self.batch_size, progress=False,
            **detector_settings(self.preprocess))

    def describe(self) -> str:
        """Which checkpoint(s) grade and with which TTA, in one line (figure notes, printouts)."""
        return self.ensemble.describe()

    def require_photos(self) -> None:
        """A one-line ``UserError`` when the checkpoint reads pairs, which a single photo cannot give."""
        if self.reads_pairs:
            raise utils.UserError(f'{self.model_path} reads the optical flow between a rest photo and an expression '
                                  f'photo (input_mode flow); a rest photo is needed: give it with --rest REST')

    def require_pairs(self) -> None:
        """A one-line ``UserError`` when the checkpoint reads single photos."""
        if not self.reads_pairs:
            raise utils.UserError(f'{self.model_path} reads single photos (input_mode {self.input_mode}), not rest / '
                                  f'expression pairs; grade the expression photo alone (predict)')

    def rest_photo(self, rest: str | os.PathLike | None) -> Path | None:
        """``--rest`` as this checkpoint reads it: for a flow checkpoint the rest photo of the pair (a one-line
        ``UserError`` when it is not a file, or when none is given); for a checkpoint of single photos None, with
        one line saying that it is not used."""
        if rest is None:
            self.require_photos()
            return None
        if not self.reads_pairs:
            print(f'note: --rest {rest} is not used: {self.model_path} reads single photos (input_mode '
                  f'{self.input_mode}); the expression photo is read alone')
            return None
        if not Path(rest).is_file():
            raise utils.UserError(f'--rest {rest}: file not found')
        return Path(rest)

    def folder_pairs(self, files: Sequence[Path], pairs_csv: str | os.PathLike | None) -> FolderPairs | None:
        """A folder's files as this checkpoint reads them: for a flow checkpoint ``pair_folder`` (its notes and
        how many rest photos were found printed); for a checkpoint of single photos None, with one line saying
        that ``--pairs_csv`` is not used when it is given."""
        if not self.reads_pairs:
            if pairs_csv is not None:
                print(f'note: --pairs_csv {pairs_csv} is not used: {self.model_path} reads single photos (input_mode '
                      f'{self.input_mode}); every photo is read alone')
            return None
        paired = pair_folder(files, pairs_csv)
        for note in paired.notes:
            print(note)
        if paired.rest_photos:
            print(f'{len(paired.rest_photos)} rest photo(s) in the folder are read with their expression photos')
        return paired

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
        self.require_photos()
        faces = self.detector.detect_images(list(images)) if images else []
        infos, squares = [], []
        for image, found in zip(images, faces):
            face = located_face(image, found)
            squares.append(face_square(as_rgb_image(image), face.points, face.box, int(self.preprocess['face_size']),
                                       margin=self.preprocess['face_margin'],
                                       landmark_scale=self.preprocess['landmark_face_scale']))
            infos.append({**face_info(face), 'status': 'ok' if found is not None else 'no_face_fallback'})
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
        gets an ``unreadable`` result with the reason in ``error``; the others are graded. A checkpoint that reads
        pairs refuses (``predict_pairs``)."""
        self.require_photos()
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

    # rest / expression pairs (input_mode flow)

    def read_pair(self, rest: ImageInput, expression: ImageInput) -> tuple[np.ndarray, np.ndarray]:
        """Both photos of a pair as RGB arrays, the rest photo first; an unreadable one raises ``ImageReadError``
        (for the rest photo: ``<expression photo>: rest photo <its message>``)."""
        try:
            rest_image = self.read(rest)
        except ImageReadError as err:
            expression_path = describe_input(expression)
            raise ImageReadError(f'{expression_path}: rest photo {err}' if expression_path
                                 else f'rest photo {err}') from None
        return rest_image, self.read(expression)

    def prepare_pairs(self, rests: Sequence[np.ndarray], expressions: Sequence[np.ndarray]
                      ) -> tuple[list[dict], torch.Tensor]:
        """Find the landmarks of both photos of every pair and build their flow inputs ``(N, 3, S, S)``.

        The photos are detected in one pass, the expression photos first, as the dataset detects them; each input
        is ``facial_palsy_dataset.make_flow_network_image`` of the pair, the dataset's own flow sample, so the
        network reads exactly what training and evaluation gave it. A photo without a face is read on the template
        landmarks scaled to it (status ``no_face_fallback``). Returns one dict per pair (the expression photo's
        ``landmarks``, ``face_box``, ``face_detected``, ``landmark_source``, the rest photo's under ``rest_*``, and
        ``status``) and the stacked inputs."""
        self.require_pairs()
        if len(rests) != len(expressions):
            raise ValueError(f'{len(rests)} rest photos for {len(expressions)} expression photos')
        count = len(rests)
        faces = self.detector.detect_images(list(expressions) + list(rests)) if count else []
        infos, inputs = [], []
        for rest_image, image, found, rest_found in zip(rests, expressions, faces[:count], faces[count:]):
            face, rest_face = located_face(image, found), located_face(rest_image, rest_found)
            inputs.append(to_tensor(make_flow_network_image(rest_image, image, rest_face, face, self.preprocess),
                                    self.preprocess))
            infos.append({**face_info(face), **face_info(rest_face, 'rest_'),
                          'status': 'ok' if found is not None and rest_found is not None else 'no_face_fallback'})
        size = model_input_size(self.preprocess)
        return infos, torch.stack(inputs) if inputs else torch.zeros(0, 3, size, size)

    def predict_pair(self, rest: ImageInput, expression: ImageInput) -> dict[str, Any]:
        """Grade one rest / expression pair of one person (each a file path, PIL image or RGB array; two frames
        of a clip are two arrays). The result is ``predict``'s for the expression photo (its ``path``, landmarks
        and symmetry) plus ``rest_path``, ``rest_landmarks``, ``rest_face_box``, ``rest_face_detected`` and
        ``rest_landmark_source``; the status is ``no_face_fallback`` when either photo had no face."""
        return self.predict_pairs([(rest, expression)])[0]

    def predict_pairs(self, pairs: Sequence[tuple[ImageInput, ImageInput]]) -> list[dict[str, Any]]:
        """Grade many ``(rest, expression)`` pairs: read each, detect the faces and run the network in batches. A
        pair with a photo that cannot be read gets an ``unreadable`` result with the reason in ``error``; the
        others are graded. A checkpoint that reads single photos refuses (``predict_batch``)."""
        self.require_pairs()
        results = [empty_pair_result(describe_input(expression), describe_input(rest)) for rest, expression in pairs]
        images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for index, (rest, expression) in enumerate(pairs):
            try:
                images[index] = self.read_pair(rest, expression)
            except ImageReadError as err:
                results[index]['error'] = str(err)
        order = list(images)
        infos, inputs = self.prepare_pairs([images[i][0] for i in order], [images[i][1] for i in order])
        for index, info, graded in zip(order, infos, self.photo_results(self.grade([inputs]))):
            results[index].update(info)
            results[index].update(graded)
            results[index]['symmetry'] = face_symmetry(info['landmarks'], info['landmark_source'])
        return results

    def predict_folder_pairs(self, pairs: Sequence[PhotoPair]) -> list[dict[str, Any]]:
        """``predict_pairs`` of a folder's ``PhotoPair`` list (``pair_folder``), one result per expression photo in
        order. One without a rest photo gets status ``no_rest_photo`` and the reason in ``error``, or
        ``unreadable`` when it is not a readable photo either."""
        results: list[dict[str, Any] | None] = [None] * len(pairs)
        paired = [index for index, pair in enumerate(pairs) if pair.rest is not None]
        for index, graded in zip(paired, self.predict_pairs([(pairs[i].rest, pairs[i].expression) for i in paired])):
            results[index] = graded
        for index, pair in enumerate(pairs):
            if pair.rest is None:
                result = results[index] = empty_pair_result(str(pair.expression))
                try:
                    self.read(pair.expression)
                    result.update(status='no_rest_photo', error=pair.problem)
                except ImageReadError as err:
                    result['error'] = str(err)
        return results

    # pictures

    def save_overlay(self, image_or_path: ImageInput, result: dict[str, Any], output_path: str | os.PathLike) -> Path:
        """Draw a prediction over its photo and save it as PNG: face box, landmarks, the four regions the network
        reads, the symmetry geometry and numbers, the regions mosaic it saw, the predicted grade (and side), the
        checkpoint(s) and TTA that graded it, the OOD warning when flagged, and a bar chart of the class
        probabilities."""
        if result.get('probabilities') is None:
            raise ValueError(f'{result.get("path") or "photo"}: nothing to draw for an unreadable photo')
        self.require_photos()
        image = self.read(image_or_path)
        face = face_of(result)
        network_view = network_image(image, face.points, self.preprocess, box=face.box)
        boxes = region_boxes(image, face.points, self.preprocess, box=face.box)
        figure = overlay_figure(image, result, self.grades, boxes, network_view, settings=self.describe())
        return utils.save_figure(figure, output_path, dpi=110)

    def save_pair_overlay(self, rest: ImageInput, expression: ImageInput, result: dict[str, Any],
                          output_path: str | os.PathLike) -> Path:
        """``save_overlay`` of a graded pair: the expression photo with the regions of the flow carried over from
        the rest photo (``rest_to_expression``), the rest photo with the regions as they were cut, the flow
        mosaic the network read, the grade and the probabilities."""
        if result.get('probabilities') is None:
            raise ValueError(f'{result.get("path") or "pair"}: nothing to draw for a pair that was not graded')
        self.require_pairs()
        rest_image, image = self.read_pair(rest, expression)
        face, rest_face = face_of(result), face_of(result, 'rest_')
        network_view = make_flow_network_image(rest_image, image, rest_face, face, self.preprocess)
        rest_boxes = region_boxes(rest_image, rest_face.points, self.preprocess, box=rest_face.box)
        corners = box_corners(rest_boxes, rest_to_expression(rest_face.points, face.points))
        figure = overlay_figure(image, result, self.grades, corners, network_view, settings=self.describe(),
                                rest=(rest_image, rest_boxes))
        return utils.save_figure(figure, output_path, dpi=110)


# rest / expression pairs in a folder

@dataclass(frozen=True)
class PhotoPair:
    """An expression photo of a folder and its rest photo; without one, ``rest`` is None and ``problem`` says why
    in one line that starts with the expression photo's path."""
    expression: Path
    rest: Path | None = None
    problem: str | None = None


@dataclass
class FolderPairs:
    """How a folder's files pair up: ``pairs`` (one per expression photo, in folder order), ``rest_photos`` (the
    folder's files taken as rest photos, not graded themselves) and ``notes`` (one line each, for the user)."""
    pairs: list[PhotoPair]
    rest_photos: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_rest_name(path: str | os.PathLike) -> bool:
    """Whether a file is named as a rest photo by ``PAIRING_RULE`` (``<name>_rest.<ext>``)."""
    stem = Path(path).stem
    return stem.endswith(REST_SUFFIX) and len(stem) > len(REST_SUFFIX)


def pair_by_name(files: Sequence[Path]) -> FolderPairs:
    """Pair a folder's files by ``PAIRING_RULE``: ``<name>_rest.<ext>`` is the rest photo of ``<name>.<ext>``
    (the same extension first; another one when it is the only ``<name>_rest`` file)."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        by_stem[path.stem].append(path)
    rest_photos = [path for path in files if is_rest_name(path)]
    pairs, claimed = [], set()
    for path in files:
        if is_rest_name(path):
            continue
        candidates = by_stem.get(path.stem + REST_SUFFIX, [])
        same = [c for c in candidates if c.suffix.lower() == path.suffix.lower()]
        rest = same[0] if same else candidates[0] if len(candidates) == 1 else None
        if rest is not None:
            pairs.append(PhotoPair(path, rest))
            claimed.add(rest)
        elif candidates:
            pairs.append(PhotoPair(path, problem=f'{path}: several possible rest photos '
                                                 f'({", ".join(c.name for c in candidates)}); keep one'))
        else:
            pairs.append(PhotoPair(path, problem=f'{path}: no rest photo ({path.stem}{REST_SUFFIX}{path.suffix} '
                                                 f'beside it)'))
    notes = []
    unclaimed = [path for path in rest_photos if path not in claimed]
    if unclaimed:
        notes.append(f'note: {len(unclaimed)} rest photo(s) without their expression photo are not graded: '
                     f'{", ".join(p.name for p in unclaimed[:5])}{", ..." if len(unclaimed) > 5 else ""}')
    return FolderPairs(pairs, rest_photos, notes)


def read_pairs_csv(csv_path: str | os.PathLike) -> dict[str, tuple[str | None, str]]:
    """A pairs CSV (columns ``image_path``, ``neutral_path``, as in an annotation CSV) as ``{expression photo:
    (rest photo, the row naming it)}``, or ``(None, why it has none)`` for a row with an empty ``neutral_path`` or
    a photo listed with two different rest photos. Keys are the expression photos' real paths (links and ``..``
    resolved). Paths are absolute or relative to the CSV's folder (as ``annotations`` reads an annotation CSV's
    relative to the data root; backslash paths written on Windows are read with ``/`` where only that file
    exists). A missing or unreadable CSV, or one without the two columns, is a one-line ``UserError``."""
    csv_path = Path(csv_path)
    table = read_table(csv_path, 'pairs CSV')
    require_columns(table, ['image_path', 'neutral_path'], csv_path, 'pairs CSV')
    root = csv_path.parent
    images = fix_backslash_paths([str(v).strip() for v in table['image_path']], root)[0]
    rests = fix_backslash_paths([str(v).strip() for v in table['neutral_path']], root)[0]
    found: dict[str, tuple[str | None, str]] = {}
    conflicting: set[str] = set()
    for index, image, rest in zip(table.index, images, rests):
        if not image:
            continue
        where = f'{csv_path} row {row_number(index)}'
        key = os.path.realpath(Path(image) if Path(image).is_absolute() else root / image)
        if not rest:
            found.setdefault(key, (None, f'{where}: neutral_path is empty'))
            continue
        if key in conflicting:
            continue
        rest_path = str(Path(rest) if Path(rest).is_absolute() else root / rest)
        earlier = found.get(key)
        if earlier is not None and earlier[0] is not None:
            if not utils.same_path(earlier[0], rest_path):
                found[key] = (None, f'{earlier[1]} and row {row_number(index)} give different rest photos')
                conflicting.add(key)
            continue
        found[key] = (rest_path, where)
    return found


def pair_by_csv(files: Sequence[Path], csv_path: str | os.PathLike) -> FolderPairs:
    """Pair a folder's files by a pairs CSV (``read_pairs_csv``): a file listed as a ``neutral_path`` is a rest
    photo; every other file is an expression photo, paired with its row's rest photo (which may lie outside the
    folder)."""
    table = read_pairs_csv(csv_path)
    rest_keys = {os.path.realpath(rest) for rest, _ in table.values() if rest is not None}
    pairs, rest_photos, seen = [], [], set()
    for path in files:
        key = os.path.realpath(path)
        if key in rest_keys:
            rest_photos.append(path)
            continue
        seen.add(key)
        rest, note = table.get(key, (None, None))
        if rest is not None:
            pairs.append(PhotoPair(path, Path(rest)))
        elif note is None:
            pairs.append(PhotoPair(path, problem=f'{path}: not listed in {csv_path} (no row with this image_path)'))
        else:
            pairs.append(PhotoPair(path, problem=f'{path}: no rest photo ({note})'))
    notes = []
    elsewhere = [key for key in table if key not in seen and key not in rest_keys]
    if elsewhere:
        notes.append(f'note: {len(elsewhere)} row(s) of {csv_path} name expression photos that are not directly '
                     f'in the folder; they are not graded')
    return FolderPairs(pairs, rest_photos, notes)


def pair_folder(files: Sequence[Path], pairs_csv: str | os.PathLike | None = None) -> FolderPairs:
    """The rest / expression pairs among a folder's files: by ``pairs_csv`` when given, else by file name
    (``PAIRING_RULE``)."""
    files = list(files)
    return pair_by_name(files) if pairs_csv is None else pair_by_csv(files, pairs_csv)


def check_pair_flags(image_path: str | None, image_dir: str | None, rest: str | None,
                     pairs_csv: str | None) -> None:
    """The pair flags of the inference scripts in one line each when misplaced: ``--rest`` goes with one photo
    (``--image_path``), ``--pairs_csv`` with a folder (``--image_dir``)."""
    if rest is not None and not image_path:
        raise utils.UserError('--rest goes with --image_path; a folder (--image_dir) finds its rest photos by '
                              '--pairs_csv or by name')
    if pairs_csv is not None and not image_dir:
        raise utils.UserError('--pairs_csv goes with --image_dir; give one pair with --image_path and --rest')


def detector_settings(preprocess: dict) -> dict[str, Any]:
    """MTCNN settings stored in ``preprocess`` (the ones training used), as keyword arguments of
    ``LandmarkDetector``."""
    settings = preprocess.get('detector') or {}
    return dict(settings) if isinstance(settings, dict) else {}


def display_grade(grade: str) -> str:
    """A short grade label as shown to people: roman numerals get their scale (``III`` -> ``HB III``)."""
    return f'HB {grade}' if grade in HB_GRADES else grade


def overlay_figure(image: np.ndarray, result: dict[str, Any], grades: Sequence[str],
                   boxes: np.ndarray, network_view: np.ndarray, settings: str | None = None,
                   rest: tuple[np.ndarray, np.ndarray] | None = None):
    """The overlay as a matplotlib Figure (no pyplot state, so it is safe in loops and tests). ``boxes``: the
    four region crops in photo pixels (one face box in the ``face`` input mode), as ``[x0, y0, x1, y1]`` rows or
    as corner quadrilaterals ``(K, 4, 2)``; ``network_view``: the un-normalised network input; ``settings``: which
    checkpoint(s) and TTA graded it; ``rest``: for a pair, the rest photo and the crops in its pixels (the photo is
    then the expression photo and ``network_view`` the flow mosaic). A photo flagged as unlike the training photos
    gets the warning in red under the figure."""
    from matplotlib.figure import Figure

    if rest is None:
        figure = Figure(figsize=(11, 4.6), layout='constrained')
        grid = figure.add_gridspec(2, 3, width_ratios=[2.2, 1.0, 1.4], height_ratios=[1, 1])
    else:
        figure = Figure(figsize=(14.5, 4.6), layout='constrained')
        grid = figure.add_gridspec(2, 4, width_ratios=[2.2, 2.2, 1.0, 1.4], height_ratios=[1, 1])
        rest_ax = figure.add_subplot(grid[:, 1])
        draw_photo(rest_ax, rest[0], result, rest[1], prefix='rest_')
    column = 1 if rest is None else 2
    photo_ax = figure.add_subplot(grid[:, 0])
    draw_photo(photo_ax, image, result, boxes)
    draw_symmetry(photo_ax, result)
    draw_network_view(figure.add_subplot(grid[0, column]), figure.add_subplot(grid[1, column]), network_view, result,
                      regions=len(boxes) == len(REGION_NAMES), flow=rest is not None)
    draw_probabilities(figure.add_subplot(grid[:, column + 1]), result, grades)
    notes = [text for text in (settings, ood_line(result)) if text]
    if notes:
        figure.suptitle('\n'.join(notes), fontsize=9, color='tab:red' if result.get('ood_flag') else 'black')
    return figure


def draw_photo(ax, image: np.ndarray, result: dict[str, Any], boxes: np.ndarray, prefix: str = '') -> None:
    """The photo with the face box, the five landmarks and the labelled crops the network reads (``boxes`` as
    ``[x0, y0, x1, y1]`` rows or corner quadrilaterals). ``prefix='rest_'`` draws a pair's rest photo."""
    from matplotlib.patches import Polygon, Rectangle

    ax.imshow(image)
    ax.set_axis_off()
    if result[f'{prefix}face_box'] is not None:
        x1, y1, x2, y2 = result[f'{prefix}face_box']
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec='lime'))
    colours = ('tab:cyan', 'tab:orange', 'tab:blue', 'tab:red')
    names = [n.replace('_', ' ') for n in REGION_NAMES] if len(boxes) == len(REGION_NAMES) else ['network input']
    corners = boxes if np.ndim(boxes) == 3 else box_corners(boxes)
    for name, quad, colour in zip(names, corners, colours):
        ax.add_patch(Polygon(quad, closed=True, fill=False, lw=1.5, ec=colour))
        ax.text(*quad[0], name, color='white', fontsize=7, va='bottom',
                bbox=dict(facecolor=colour, alpha=0.7, pad=1, lw=0))
    points = np.asarray(result[f'{prefix}landmarks'])
    ax.scatter(points[:, 0], points[:, 1], s=12, c='yellow', edgecolors='black', linewidths=0.5)
    source = 'face detected' if result[f'{prefix}face_detected'] else 'no face found: template landmarks'
    path = result.get(f'{prefix}path')
    name = Path(path).name if path else 'photo'
    if 'rest_path' in result:  # one photo of a pair: say which
        name = ('rest photo' if prefix else 'expression photo') + (f' {Path(path).name}' if path else '')
    ax.set_title(f'{name} ({source})', fontsize=9)


def draw_symmetry(ax, result: dict[str, Any]) -> None:
    """The symmetry measurements over the photo (``symmetry.draw_measurements``). Template landmarks are not the
    patient's and have none; the photo's title already says so."""
    if result.get('landmark_source') == 'template':
        return
    measurements = result.get('symmetry') or face_symmetry(result['landmarks'], result.get('landmark_source'))
    draw_measurements(ax, result['landmarks'], measurements, fontsize=6.5)


def draw_network_view(ax_view, ax_notes, network_view: np.ndarray, result: dict[str, Any], regions: bool,
                      flow: bool = False) -> None:
    """What the network saw, with how to read it: the mosaic keeps image sides, so its left column is the
    patient's right side. ``flow``: the mosaic of the optical flow of a pair (u, v, strain as red, green, blue)."""
    ax_view.imshow(network_view)
    ax_view.set_title('network input (flow: u, v, strain)' if flow else 'network input', fontsize=9)
    ax_view.set_axis_off()
    ax_notes.set_axis_off()
    layout = ('mosaic: left eye | left mouth\n        right eye | right mouth\n'
              "(left = image left = the patient's right)" if regions else 'whole face, eyes levelled')
    if flow:
        layout = 'flow from the rest photo to\nthe expression photo, in the\nrest photo\'s regions\n' + layout
    side = ''
    if result.get('side') is not None:
        side = f'side: patient {result["side"]} ({result["side_confidence"]:.0%})\n'
    landmarks = f'landmarks: {result["landmark_source"]}\n'
    if result.get('rest_landmark_source') is not None:
        landmarks += f'rest photo: {result["rest_landmark_source"]}\n'
    ax_notes.text(0.0, 1.0, f'status: {result["status"]}\n{landmarks}{side}\n'
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
