"""main_HTNet.py: the published leave-one-subject-out protocol, run on a tiny composite in the original layout."""
import contextlib
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, recall_score

import checkpoints
import main_HTNet as me
import training_setup
from Model import HTNet, build_model
from micro_expression_fixture import make_micro_expression_fixture
from utils import UserError, run_cli

TINY = ['--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1']
TRAINED_SUBJECTS = ['sub01', '006']


def run_main(argv):
    """Run ``main_HTNet.main`` and return what it printed (per-subject lines go through tqdm.write to stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert me.main(argv) == 0
    return out.getvalue()


def printed_metrics(output, section):
    """``{group: (UF1, UAR)}`` from the block printed under a section's heading."""
    lines = output.splitlines()
    start = lines.index(me.SECTION_LABELS[section] + ':') + 1
    metrics = {}
    for line in lines[start:]:
        match = re.match(r'\s+(\S+(?: II)?)\s+UF1 ([\d.]+|n/a)\s+UAR ([\d.]+|n/a)', line)
        if not match:
            break
        metrics[match[1]] = (float(match[2]), float(match[3]))
    return metrics


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """The tiny network's tensors are too small to split: on a busy 2-core machine, handing them between two threads
    makes each step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, one_thread):
    """2 epochs on 2 subjects with every default path (run from the fixture's root), plus the full model."""
    fixture = make_micro_expression_fixture(tmp_path_factory.mktemp('micro_expression'))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(fixture.root)
        output = run_main(['--train', 'True', '--epochs', '2', '--subjects', *TRAINED_SUBJECTS, '--device', 'cpu',
                           '--learning_rate', '3e-3', '--save_full_model', *TINY])
    weights_dir = fixture.root / 'ourmodel_threedatasets_weights'
    results = json.loads((weights_dir / 'results.json').read_text())
    return fixture, weights_dir, output, results


# metrics

def test_recognition_evaluation_matches_hand_computed_values_and_sklearn():
    gt = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    uf1, uar = me.recognition_evaluation(gt, pred)
    # class 0: TP 2 FP 0 FN 1; class 1: TP 1 FP 1 FN 1; class 2: TP 1 FP 1 FN 0
    assert uf1 == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)
    assert uar == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert uf1 == pytest.approx(f1_score(gt, pred, average='macro'))
    assert uar == pytest.approx(recall_score(gt, pred, average='macro'))


def test_recognition_evaluation_leaves_out_undefined_classes():
    # surprise in neither truth nor prediction: no F1, no recall
    uf1, uar = me.recognition_evaluation([0, 0, 1], [0, 1, 1])
    assert uf1 == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert uar == pytest.approx((1 / 2 + 1) / 2)
    # surprise predicted but never true: its F1 is 0, its recall undefined
    uf1, uar = me.recognition_evaluation([0, 0], [0, 2])
    assert uf1 == pytest.approx((2 / 3 + 0) / 2)
    assert uar == pytest.approx(1 / 2)
    assert me.recognition_evaluation([], []) == (None, None)


# flags

@pytest.mark.parametrize('text, expected', [('True', True), ('False', False), ('true', True), ('0', False),
                                            ('yes', True), ('off', False)])
def test_train_flag_takes_the_original_strings(text, expected):
    assert me.get_args_parser().parse_args(['--train', text]).train is expected


def test_train_flag_defaults_to_evaluation_and_rejects_other_words(capsys):
    parser = me.get_args_parser()
    assert parser.parse_args([]).train is False
    assert parser.parse_args(['--train']).train is True
    with pytest.raises(SystemExit):
        parser.parse_args(['--train', 'maybe'])
    assert "expected True or False, got 'maybe'" in capsys.readouterr().err


def test_paper_configuration_is_the_default():
    args = me.get_args_parser().parse_args([])
    assert (args.epochs, args.batch_size, args.learning_rate) == (800, 256, 5e-5)
    assert me.model_args_from_flags(args) == {**me.PAPER_MODEL, 'block_repeats': [2, 2, 10]}
    assert args.landmark_order == 'original'
    assert args.data_dir == './datasets' and args.weights_dir == './ourmodel_threedatasets_weights'


# landmarks and crops

class FakeMTCNN:
    def __init__(self, landmarks):
        self.landmarks = landmarks
        self.seen = []

    def detect(self, image, landmarks=True):
        self.seen.append(image.shape)
        return None, None, self.landmarks


def test_template_stands_in_when_no_face_is_found_clamped_and_truncated():
    mtcnn = FakeMTCNN(None)
    points, used_template = me.detect_landmarks(np.zeros((120, 90, 3), np.uint8), mtcnn)
    assert used_template
    assert mtcnn.seen == [(28, 28, 3)]  # the apex frame is shrunk to 28x28 first
    assert points.tolist() == [[9, 11], [21, 10], [15, 17], [10, 21], [20, 21]]
    assert points.dtype.kind == 'i'


def test_detected_landmarks_from_object_arrays_are_clamped():
    # facenet-pytorch under numpy 2 returns object arrays: (faces, 5, 2), largest face first
    faces = np.empty((1, 2, 5, 2), dtype=object)
    faces[0, 0] = [[3.9, 12.7], [25.2, 12.1], [14.5, 6.2], [11.0, 30.0], [20.99, 21.5]]
    faces[0, 1] = np.full((5, 2), 14.0)
    points, used_template = me.detect_landmarks(np.zeros((28, 28, 3), np.uint8), FakeMTCNN(faces[0]))
    assert not used_template
    assert points.tolist() == [[7, 12], [21, 12], [14, 7], [11, 21], [20, 21]]


def coordinate_image():
    """A 28x28x3 image whose pixels hold their own (row, column)."""
    rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing='ij')
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def test_original_landmark_order_indexes_rows_with_x_and_xy_with_y():
    flow = coordinate_image()
    points = np.array([[8, 20], [20, 8], [14, 14], [8, 8], [21, 7]])
    original = me.crop_regions(flow, points, 'original')
    corrected = me.crop_regions(flow, points, 'xy')
    assert tuple(original[0][0, 0, :2]) == (1, 13)  # rows 8-7.., columns 20-7..
    assert tuple(corrected[0][0, 0, :2]) == (13, 1)
    assert all(crop.shape == (14, 14, 3) for crop in original + corrected)

    mosaic = me.region_mosaic(original)
    assert mosaic.shape == (28, 28, 3)
    np.testing.assert_array_equal(mosaic[:14, :14], flow[1:15, 13:27])
    np.testing.assert_array_equal(mosaic[:14, 14:], flow[13:27, 1:15])
    np.testing.assert_array_equal(mosaic[14:, :14], flow[1:15, 1:15])
    np.testing.assert_array_equal(mosaic[14:, 14:], flow[14:28, 0:14])
    assert not any(np.array_equal(mosaic[r:r + 14, c:c + 14], original[2]) for r in (0, 14) for c in (0, 14))


def test_flow_image_smaller_than_28_is_refused():
    crops = me.crop_regions(np.zeros((20, 20, 3), np.uint8), np.full((5, 2), 14))
    with pytest.raises(AssertionError, match='smaller than 28x28'):
        me.region_mosaic(crops)


# the protocol end to end

def test_per_subject_weights_are_plain_state_dicts_of_the_described_model(trained):
    fixture, weights_dir, _output, _results = trained
    model_args = json.loads((weights_dir / 'model_args.json').read_text())
    assert model_args['dim'] == 16 and model_args['block_repeats'] == [1, 1, 1]
    for subject in fixture.subjects:
        path = weights_dir / f'{subject}.pth'
        assert path.exists() == (subject in TRAINED_SUBJECTS)
    for subject in TRAINED_SUBJECTS:
        state = torch.load(weights_dir / f'{subject}.pth', weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())  # what the original code loads
        HTNet(**model_args).load_state_dict(state, strict=True)


def test_printed_uf1_uar_match_the_json_for_both_selections(trained):
    fixture, _weights_dir, output, results = trained
    metrics = results['metrics']
    assert set(metrics) == {me.BEST_KEY, me.LAST_KEY}
    for section in (me.BEST_KEY, me.LAST_KEY):
        printed = printed_metrics(output, section)
        assert set(printed) == {'composite', 'CASME II', 'SAMM'}  # sub01 is CASME II, 006 SAMM
        for group, (uf1, uar) in printed.items():
            assert uf1 == pytest.approx(metrics[section][group]['UF1'], abs=5e-5)
            assert uar == pytest.approx(metrics[section][group]['UAR'], abs=5e-5)
        assert metrics[section]['composite']['samples'] == 6
        assert metrics[section]['SAMM']['subjects'] == 1
        assert 'test fold' in metrics[section]['description'] or section == me.LAST_KEY

    subjects = results['subjects']
    assert list(subjects) == TRAINED_SUBJECTS  # in the order asked for
    assert subjects['006']['dataset'] == 'SAMM' and subjects['sub01']['dataset'] == 'CASME II'
    assert subjects['sub01']['images'] == sorted(fixture.flow_names('sub01'))
    for key, pred in ((me.BEST_KEY, 'pred_best'), (me.LAST_KEY, 'pred_last')):
        truth = [t for s in subjects.values() for t in s['truth']]
        preds = [p for s in subjects.values() for p in s[pred]]
        assert me.recognition_evaluation(truth, preds) == pytest.approx(
            (metrics[key]['composite']['UF1'], metrics[key]['composite']['UAR']))
    assert all(s['best_epoch'] in (1, 2) and len(s['pred_best']) == 3 for s in subjects.values())
    assert all(s['best_test_accuracy'] >= s['last_test_accuracy'] for s in subjects.values())


def test_landmark_sources_and_history_are_written_down(trained):
    fixture, weights_dir, output, results = trained
    landmarks = results['landmarks']
    assert landmarks['images'] == len(fixture.rows) == landmarks['detected'] + landmarks['template']
    assert f'{landmarks["template"]} from the template' in output
    assert results['skipped'] == []

    with open(weights_dir / 'summary.csv') as handle:
        rows = list(csv.DictReader(handle))
    assert [(r['subject'], r['epoch']) for r in rows] == [('sub01', '1'), ('sub01', '2'), ('006', '1'), ('006', '2')]
    for subject in TRAINED_SUBJECTS:
        accuracies = [float(r['test_accuracy']) for r in rows if r['subject'] == subject]
        assert results['subjects'][subject]['last_test_accuracy'] == pytest.approx(accuracies[-1], abs=1e-6)
        assert results['subjects'][subject]['best_test_accuracy'] == pytest.approx(max(accuracies), abs=1e-6)
        losses = [float(r['train_loss']) for r in rows if r['subject'] == subject]
        assert losses[1] < losses[0]  # it learns: each flow image carries its label in one channel
    assert results['metrics'][me.LAST_KEY]['composite']['accuracy'] >= 2 / 3
    assert (weights_dir / 'results.png').stat().st_size > 0
    assert (weights_dir / 'results_args.yaml').exists()


def test_evaluation_only_reproduces_the_best_epoch_predictions(trained, monkeypatch):
    fixture, weights_dir, _output, results = trained
    monkeypatch.chdir(fixture.root)
    output = run_main(['--train', 'False', '--subjects', *TRAINED_SUBJECTS, '--no_plots', '--device', 'cpu'])
    assert 'using the model shape in' in output  # the flags say paper size; model_args.json says tiny
    evaluated = json.loads((weights_dir / 'results_eval.json').read_text())
    assert list(evaluated['metrics']) == [me.STORED_KEY]
    for subject in TRAINED_SUBJECTS:
        assert evaluated['subjects'][subject]['pred_best'] == results['subjects'][subject]['pred_best']
    stored, best = evaluated['metrics'][me.STORED_KEY], results['metrics'][me.BEST_KEY]
    assert stored['composite']['UF1'] == pytest.approx(best['composite']['UF1'])
    assert printed_metrics(output, me.STORED_KEY)['composite'][1] == pytest.approx(best['composite']['UAR'],
                                                                                   abs=5e-5)


def test_training_again_refuses_to_replace_weights(trained, monkeypatch):
    fixture, weights_dir, _output, _results = trained
    monkeypatch.chdir(fixture.root)
    before = (weights_dir / '006.pth').stat().st_mtime_ns
    with pytest.raises(UserError, match=r'006\.pth.*--overwrite'):
        me.main(['--train', 'True', '--epochs', '1', '--subjects', '006', *TINY])
    with pytest.raises(UserError, match='describes another model'):
        me.main(['--train', 'True', '--epochs', '1', '--subjects', 's01', '--dim', '32', '--heads', '1'])
    assert (weights_dir / '006.pth').stat().st_mtime_ns == before


def test_full_model_checkpoint_is_the_transfer_learning_start(trained):
    _fixture, weights_dir, output, results = trained
    path = weights_dir / 'best_model.pth'
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint['class_names'] == ['negative', 'positive', 'surprise']
    assert checkpoint['model_args']['num_classes'] == 3 and checkpoint['samples'] == 12
    assert checkpoint['args']['save_full_model'] is True
    assert results['full_model']['samples'] == 12 and 'full model: 12 samples' in output

    model, _ = checkpoints.load_model(path)
    assert model(torch.rand(2, 3, 28, 28) * 255).shape == (2, 3)

    # the palsy network: same backbone, 6 grades, 56x56 mosaics
    palsy_args = {**checkpoint['model_args'], 'num_classes': 6, 'image_size': 56}
    palsy = build_model(palsy_args)
    report = checkpoints.load_pretrained(palsy, path, verbose=False)
    skipped = {name for name, _reason in report['skipped']}
    assert skipped == {'mlp_head.2.weight', 'mlp_head.2.bias'}
    assert report['interpolated'] and all(name.endswith('pos_emb') for name in report['interpolated'])
    torch.testing.assert_close(palsy.state_dict()['to_patch_embedding.1.weight'],
                               checkpoint['model']['to_patch_embedding.1.weight'])


def test_train_facial_palsy_pretrained_path_loads_the_backbone_and_reports_the_head(trained):
    tfp = pytest.importorskip('train_facial_palsy')
    _fixture, weights_dir, _output, _results = trained
    path = str(weights_dir / 'best_model.pth')
    args = tfp.get_args_parser().parse_args(['--pretrained_path', path, '--dim', '16', '--heads', '1',
                                             '--block_repeats', '1', '1', '1'])
    assert args.pretrained_path == path and args.pos_emb == 'interpolate'
    palsy = build_model({**json.loads((weights_dir / 'model_args.json').read_text()), 'num_classes': 6,
                         'image_size': 56})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = training_setup.load_pretrained_weights(palsy, args.pretrained_path, args.pos_emb)
    printed = out.getvalue()
    assert 'skipped mlp_head.2.weight' in printed and 'skipped mlp_head.2.bias' in printed
    assert len(report['loaded']) + len(report['interpolated']) == len(palsy.state_dict()) - 2


# bad input

def test_missing_u_train_and_image_missing_from_csv_are_skipped_and_listed(tmp_path):
    fixture = make_micro_expression_fixture(tmp_path)
    shutil.rmtree(fixture.data_dir / 'three_norm_u_v_os' / 'sub02' / 'u_train')
    dropped = fixture.rows[3]  # s01's first clip
    assert dropped['sub'] == 's01'
    with open(fixture.csv, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dropped))
        writer.writeheader()
        writer.writerows(row for row in fixture.rows if row is not dropped)
    (fixture.data_dir / 'combined_datasets_whole' / fixture.rows[0]['imagename']).unlink()

    output = run_main(['--train', 'True', '--epochs', '1', '--subjects', 'sub02', 's01', '--no_plots',
                       '--data_dir', str(fixture.data_dir), '--csv', str(fixture.csv),
                       '--weights_dir', str(tmp_path / 'weights'), *TINY])
    results = json.loads((tmp_path / 'weights' / 'results.json').read_text())
    skipped = {entry['item']: entry['reason'] for entry in results['skipped']}
    u_train = str(fixture.data_dir / 'three_norm_u_v_os' / 'sub02' / 'u_train')
    assert 'folder not found; subject sub02 skipped' in skipped[u_train]
    assert skipped['s01_s1_ne_01 .png'].endswith('but not in combined_3_class2_for_optical_flow.csv')
    apex = str(fixture.data_dir / 'combined_datasets_whole' / fixture.rows[0]['imagename'])
    assert skipped[apex] == 'apex frame not found'
    assert len(results['skipped']) == 3  # sub01's image, left out of s01's u_train, is not listed twice
    assert f'skipped {u_train}' in output
    assert list(results['subjects']) == ['s01'] and results['subjects']['s01']['test_samples'] == 2


def test_a_subject_that_fails_is_named_and_the_others_finish(tmp_path, monkeypatch, capsys):
    """An error inside one subject's training (here a stand-in for running out of memory) costs that subject only:
    its traceback and one line naming it on standard error, the others trained and scored, the failure written to
    results.json and exit status 1."""
    fixture = make_micro_expression_fixture(tmp_path)
    train_subject = me.train_subject

    def failing(subject, *args, **kwargs):
        if subject == 'sub01':
            raise RuntimeError('out of memory')
        return train_subject(subject, *args, **kwargs)

    monkeypatch.setattr(me, 'train_subject', failing)
    status = me.main(['--train', 'True', '--epochs', '1', '--subjects', 'sub01', 's01', '--no_plots',
                      '--data_dir', str(fixture.data_dir), '--csv', str(fixture.csv),
                      '--weights_dir', str(tmp_path / 'weights'), *TINY])
    captured = capsys.readouterr()
    assert status == 1
    assert 'error: subject sub01 failed: RuntimeError: out of memory; the other subjects go on' in captured.err
    assert 'Traceback' in captured.err and '1 subject(s) failed' in captured.err
    results = json.loads((tmp_path / 'weights' / 'results.json').read_text())
    assert results['failed_subjects'] == {'sub01': 'RuntimeError: out of memory'}
    assert list(results['subjects']) == ['s01']
    assert (tmp_path / 'weights' / 's01.pth').is_file() and not (tmp_path / 'weights' / 'sub01.pth').exists()


def test_missing_folders_and_malformed_csv_are_one_line_errors(tmp_path, capsys):
    fixture = make_micro_expression_fixture(tmp_path)
    base = ['--data_dir', str(fixture.data_dir), '--csv', str(fixture.csv), *TINY]

    with pytest.raises(UserError, match='three_norm_u_v_os'):
        shutil.move(fixture.data_dir / 'three_norm_u_v_os', tmp_path / 'folds')
        me.main(base)
    shutil.move(tmp_path / 'folds', fixture.data_dir / 'three_norm_u_v_os')

    with pytest.raises(UserError, match='--subjects sub99: not in'):
        me.main([*base, '--subjects', 'sub99'])
    with pytest.raises(UserError, match='--weights_dir .*folder not found'):
        me.main([*base, '--weights_dir', str(tmp_path / 'absent')])

    bad_csv = tmp_path / 'bad.csv'
    bad_csv.write_text('dataset,sub,filename_o\nsamm,006,006_1_2\n')
    with pytest.raises(UserError, match=r'bad\.csv: missing column\(s\) label, apex, imagename, sub_filename'):
        me.main([*base, '--csv', str(bad_csv)])

    with pytest.raises(SystemExit) as exit_info:
        run_cli(me.main, ['--data_dir', str(tmp_path / 'nowhere')])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: --data_dir') and 'Traceback' not in err


def test_csv_defaults_to_the_working_directory_then_the_data_folder(tmp_path, monkeypatch, capsys):
    fixture = make_micro_expression_fixture(tmp_path, csv_in_data_dir=True)
    monkeypatch.chdir(tmp_path)
    paths = me.resolve_paths('datasets', None)
    assert paths.csv.resolve() == fixture.csv.resolve()
    assert f'note: ./{me.CSV_NAME} not found; reading datasets/{me.CSV_NAME}' in capsys.readouterr().out
    shutil.copyfile(fixture.csv, tmp_path / me.CSV_NAME)
    assert me.resolve_paths('datasets', None).csv.resolve() == (tmp_path / me.CSV_NAME).resolve()
    fixture.csv.unlink()
    (tmp_path / me.CSV_NAME).unlink()
    with pytest.raises(UserError, match='pass --csv FILE'):
        me.resolve_paths('datasets', None)
