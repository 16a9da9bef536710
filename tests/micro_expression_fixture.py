"""A tiny micro-expression composite in the exact layout of the original HTNet data, for tests and dry runs.

    <root>/combined_3_class2_for_optical_flow.csv       dataset, sub, filename_o, label, apex, imagename, sub_filename
    <root>/datasets/combined_datasets_whole/<imagename>                    apex frames (any size; shrunk to 28x28)
    <root>/datasets/STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png       28x28 optical flow (u, v, strain)
    <root>/datasets/three_norm_u_v_os/<subject>/{u_train,u_test}/<label>/<sub>_<filename_o> .png

One subject per database by default (CASME II ``sub01``, SMIC ``s01``, SAMM ``006``) plus ``sub02``, each with one clip
per label. The apex frames are noise, so MTCNN finds no face and the landmark template is used; each flow image
carries its label as a brighter channel, so a model can learn something in a few epochs.

    python tests/micro_expression_fixture.py /tmp/me_demo
    python main_HTNet.py --train True --data_dir /tmp/me_demo/datasets \\
        --csv /tmp/me_demo/combined_3_class2_for_optical_flow.csv --weights_dir /tmp/me_demo/weights \\
        --epochs 2 --dim 16 --heads 1 --block_repeats 1 1 1
"""
from __future__ import annotations

import argparse
import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

CSV_NAME = 'combined_3_class2_for_optical_flow.csv'
CSV_COLUMNS = ('dataset', 'sub', 'filename_o', 'label', 'apex', 'imagename', 'sub_filename')
# subject -> value of the CSV's dataset column
DEFAULT_SUBJECTS = {'sub01': 'casme2', 's01': 'smic', '006': 'samm', 'sub02': 'casme2'}
NUM_LABELS = 3


@dataclass
class MicroExpressionFixture:
    root: Path
    data_dir: Path
    csv: Path
    rows: list[dict[str, str]]

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(row['sub'] for row in self.rows))

    def flow_names(self, subject: str) -> list[str]:
        return [flow_name(row) for row in self.rows if row['sub'] == subject]


def flow_name(row: dict[str, str]) -> str:
    return f'{row["sub"]}_{row["filename_o"]} .png'


def clip_name(subject: str, dataset: str, index: int) -> str:
    """Clip names in each database's own style (CASME II ``EP02_01f``, SMIC ``s1_po_01``, SAMM ``006_1_2``)."""
    if dataset == 'samm':
        return f'{subject}_{index + 1}_2'
    if dataset == 'smic':
        return f's{int(subject[1:])}_{("ne", "po", "sur")[index % 3]}_0{index + 1}'
    return f'EP0{index + 2}_0{index + 1}f'


def make_rows(subjects: dict[str, str], samples_per_subject: int) -> list[dict[str, str]]:
    rows = []
    for subject, dataset in subjects.items():
        for index in range(samples_per_subject):
            filename_o = clip_name(subject, dataset, index)
            rows.append({'dataset': dataset, 'sub': subject, 'filename_o': filename_o,
                         'label': str(index % NUM_LABELS), 'apex': str(40 + index),
                         'imagename': f'{subject}_{filename_o}_apex.jpg', 'sub_filename': f'{subject}_{filename_o}'})
    return rows


def flow_image(label: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 90, size=(28, 28, 3), dtype=np.uint8)
    image[..., label] += 150  # the label's channel is brighter
    return image


def make_micro_expression_fixture(root: str | Path, subjects: dict[str, str] | None = None,
                                  samples_per_subject: int = NUM_LABELS, seed: int = 0,
                                  csv_in_data_dir: bool = False) -> MicroExpressionFixture:
    """Write the fixture under ``root`` and describe it. ``csv_in_data_dir`` puts the CSV in ``datasets/`` instead
    of beside it (the fallback location of ``main_HTNet.py --csv``)."""
    root = Path(root)
    subjects = dict(DEFAULT_SUBJECTS if subjects is None else subjects)
    rng = np.random.default_rng(seed)
    data_dir = root / 'datasets'
    apex_dir, flow_dir, folds_dir = (data_dir / name for name in
                                     ('combined_datasets_whole', 'STSNet_whole_norm_u_v_os', 'three_norm_u_v_os'))
    for folder in (apex_dir, flow_dir, folds_dir):
        folder.mkdir(parents=True, exist_ok=True)

    rows = make_rows(subjects, samples_per_subject)
    for row in rows:
        apex = rng.integers(0, 255, size=(48, 40, 3), dtype=np.uint8)  # noise: no face for MTCNN to find
        assert cv2.imwrite(str(apex_dir / row['imagename']), apex)
        assert cv2.imwrite(str(flow_dir / flow_name(row)), flow_image(int(row['label']), rng))

    for held_out in subjects:
        for row in rows:
            split = 'u_test' if row['sub'] == held_out else 'u_train'
            target = folds_dir / held_out / split / row['label']
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(flow_dir / flow_name(row), target / flow_name(row))

    csv_path = (data_dir if csv_in_data_dir else root) / CSV_NAME
    with open(csv_path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return MicroExpressionFixture(root, data_dir, csv_path, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='folder to write the fixture into')
    parser.add_argument('--samples_per_subject', type=int, default=NUM_LABELS)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    fixture = make_micro_expression_fixture(args.root, samples_per_subject=args.samples_per_subject, seed=args.seed)
    print(f'{len(fixture.rows)} clips from {len(fixture.subjects)} subjects under {fixture.data_dir}; '
          f'CSV {fixture.csv}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
