"""Draw the optical flow of one rest / expression pair, as HTNet's ``flow`` input mode reads it.

Writes ``flow.png`` (the network's motion image: u, v, strain in the rest photo's face square), ``flow_panel.png``
(rest, expression, flow colours, strain) and ``motion.json`` (the movement per eye / mouth-corner region and its
left/right asymmetry)::

    python show_flow.py --rest rest.jpg --expression smile.jpg --output_dir flow_out
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import cv2

from face_detection import FaceLandmarks, LandmarkDetector, load_image
from facial_palsy_dataset import aligned_faces, region_motion
from optical_flow import FLOW_SETTINGS, flow_between, flow_picture
from utils import HelpFormatter, UserError, atomic_write_text, check_writable, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Optical flow (u, v, strain) between a rest photo and an expression photo of one person, as '
                    'HTNet reads it, with the movement per eye / mouth-corner region and its left/right asymmetry.',
        formatter_class=HelpFormatter)
    parser.add_argument('--rest', type=Path, required=True, help='the photo at rest')
    parser.add_argument('--expression', type=Path, required=True,
                        help='the photo of the movement (brow raise, eye closure or smile), same sitting')
    parser.add_argument('--output_dir', type=Path, default=Path('flow_output'),
                        help='folder for flow.png (the network\'s motion image), flow_panel.png (rest, expression, '
                             'flow colours, strain) and motion.json')
    parser.add_argument('--image_size', type=int, default=224, help='side of the face square the flow is computed in')
    parser.add_argument('--region_size', type=int, default=28, help='side of each region crop for the motion summary')
    parser.add_argument('--no_align', action='store_true',
                        help='do not align the expression photo on the eyes and nose (photos already registered)')
    parser.add_argument('--device', default='auto', help='device for MTCNN landmark detection: auto, cpu or cuda')
    parser.add_argument('--cache_dir', default=None,
                        help='landmark cache folder (default: the one training uses, ./.cache/landmarks)')
    parser.add_argument('--overwrite', action='store_true', help='replace outputs already in --output_dir')
    return parser


def detect_pair(rest_path: Path, expression_path: Path, device: str, cache_dir: str | None
                ) -> tuple[FaceLandmarks, FaceLandmarks]:
    """MTCNN landmarks of both photos (cached); a photo without a detected face is a user error naming it."""
    detector = LandmarkDetector(device=device, cache_dir=cache_dir, progress=False)
    found = detector.detect_paths([str(rest_path), str(expression_path)])
    for path, result in zip((rest_path, expression_path), found):
        if result is None or result.source != 'detected':
            reason = detector.errors.get(str(path), 'no face found')
            raise UserError(f'{path}: {reason}')
    return found[0], found[1]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    outputs = [args.output_dir / name for name in ('flow.png', 'flow_panel.png', 'motion.json')]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f'{existing[0]} already exists; choose another --output_dir or pass --overwrite')
    check_writable(args.output_dir, '--output_dir')
    rest, expression = load_image(args.rest), load_image(args.expression)
    rest_points, expression_points = detect_pair(args.rest, args.expression, args.device, args.cache_dir)
    rest_face, expression_face, face_points = aligned_faces(
        rest, expression, rest_points, None if args.no_align else expression_points, args.image_size)
    flow_img = flow_between(rest_face, expression_face)
    motion = region_motion(flow_img, face_points, args.region_size)
    cv2.imwrite(str(outputs[0]), cv2.cvtColor(flow_img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(outputs[1]), cv2.cvtColor(flow_picture(rest_face, expression_face, flow_img), cv2.COLOR_RGB2BGR))
    report = {'rest': str(args.rest), 'expression': str(args.expression), 'aligned': not args.no_align,
              'motion_pixels': {k: v for k, v in motion.items() if k != 'movement_asymmetry'},
              'movement_asymmetry': motion['movement_asymmetry'], 'flow_settings': FLOW_SETTINGS}
    atomic_write_text(outputs[2], json.dumps(report, indent=1) + '\n')
    asym = motion['movement_asymmetry']
    print(f'movement asymmetry (left - right) / (left + right), image sides: eye {asym["eye"]:+.2f}, '
          f'mouth {asym["mouth"]:+.2f}; outputs in {args.output_dir}')
    return report


if __name__ == '__main__':
    run_cli(main)
