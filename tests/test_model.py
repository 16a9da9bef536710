"""Model.py: shapes, gradients, the published module tree and test vectors, fast path == plain path, transfer."""
import sys
from pathlib import Path

import pytest
import torch

from Model import (AttentionRecorder, Fusionmodel, HTNet, build_model, count_parameters, extract_state_dict,
                   load_pretrained, model_args_from, set_fused_attention)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import reference_htnet  # noqa: E402

PAPER = dict(image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3, block_repeats=(2, 2, 10),
             num_classes=3)
SMALL_56 = dict(image_size=56, patch_size=7, dim=64, heads=2, num_hierarchies=3, block_repeats=(1, 1, 2),
                num_classes=6)
TINY = {
    28: dict(image_size=28, patch_size=7, dim=16, heads=2, num_hierarchies=3, block_repeats=(1, 1, 1)),
    56: dict(image_size=56, patch_size=7, dim=16, heads=2, num_hierarchies=3, block_repeats=(1, 1, 1)),
}

# logits of the original code (torch 2.14.1, CPU): seed 0, build, eval, seed 1, x = rand(2, 3, S, S)
TEST_VECTORS = [
    (PAPER, [[0.937948, 0.284657, -0.177593], [0.921561, 0.244018, -0.188930]]),
    (SMALL_56, [[-0.142476, 0.407096, -0.196157, 0.700970, -0.854100, 0.231391],
                [-0.192325, 0.474657, -0.223997, 0.704903, -0.994191, 0.189424]]),
]


def _input(cfg, batch=2, seed=1):
    torch.manual_seed(seed)
    return torch.rand(batch, 3, cfg['image_size'], cfg['image_size'])


@pytest.mark.parametrize('size', [28, 56])
@pytest.mark.parametrize('num_classes', [3, 6])
def test_shapes_finite_and_gradients_everywhere(size, num_classes):
    torch.manual_seed(0)
    model = HTNet(**TINY[size], num_classes=num_classes)
    x = _input(TINY[size], batch=3)
    logits = model(x)
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()
    features = model.forward_features(x)
    assert features.shape[:2] == (3, model.num_features)
    assert model.forward_head(features, pre_logits=True).shape == (3, model.num_features)

    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    zero = [n for n, p in model.named_parameters() if p.grad.abs().max() < 1e-6]
    # The last level's positional embedding adds one constant to every channel of a token, which each following
    # LayerNorm removes (no convolution follows it), so its gradient is zero up to rounding, in the original too.
    expected_zero = ['layers.2.0.pos_emb']
    assert zero == expected_zero, f'parameters without a gradient: {zero}'


def test_wrong_input_size_is_reported():
    model = HTNet(**TINY[56], num_classes=6)
    with pytest.raises(AssertionError, match='expected input'):
        model(torch.rand(1, 3, 28, 28))


def test_paper_config_module_tree_and_shapes():
    model = HTNet(**PAPER)
    state = model.state_dict()
    assert len(state) == 171
    assert count_parameters(model) == 139_582_982
    assert state['to_patch_embedding.1.weight'].shape == (256, 147, 1, 1)
    assert state['layers.0.0.layers.0.0.fn.to_qkv.weight'].shape == (765, 256, 1, 1)  # dim_head 85 -> inner 255
    assert state['layers.0.0.layers.0.0.fn.to_out.0.weight'].shape == (256, 255, 1, 1)
    assert state['layers.0.0.layers.0.0.norm.g'].shape == (1, 256, 1, 1)
    assert state['layers.0.1.0.weight'].shape == (512, 256, 3, 3)
    assert state['layers.1.1.1.g'].shape == (1, 1024, 1, 1)
    assert state['mlp_head.2.weight'].shape == (3, 1024)
    for i, depth in enumerate(PAPER['block_repeats']):
        assert state[f'layers.{i}.0.pos_emb'].shape == (1,)
        for n in range(depth):
            prefix = f'layers.{i}.0.layers.{n}'
            expected = [f'{prefix}.0.norm.g', f'{prefix}.0.norm.b', f'{prefix}.0.fn.to_qkv.weight',
                        f'{prefix}.0.fn.to_out.0.weight', f'{prefix}.0.fn.to_out.0.bias',
                        f'{prefix}.1.norm.g', f'{prefix}.1.norm.b', f'{prefix}.1.fn.net.0.weight',
                        f'{prefix}.1.fn.net.0.bias', f'{prefix}.1.fn.net.3.weight', f'{prefix}.1.fn.net.3.bias']
            assert all(k in state for k in expected)
    assert 'layers.2.1.0.weight' not in state  # no aggregation after the last level
    assert list(state)[-4:] == ['mlp_head.0.g', 'mlp_head.0.b', 'mlp_head.2.weight', 'mlp_head.2.bias']


@pytest.mark.parametrize('cfg,expected', TEST_VECTORS, ids=['paper-28', 'small-56'])
def test_published_test_vectors(cfg, expected):
    torch.manual_seed(0)
    model = HTNet(**cfg).eval()
    x = _input(cfg)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize('train', [False, True])
def test_same_logits_and_gradients_as_reference_implementation(train):
    cfg = SMALL_56
    reference = reference_htnet.HTNet(**cfg)
    model = HTNet(**cfg)
    model.load_state_dict(reference.state_dict(), strict=True)
    model.train(train)
    reference.train(train)
    x = _input(cfg, batch=3)
    out, ref_out = model(x), reference(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('train', [False, True])
def test_fused_attention_matches_plain_softmax_path(train):
    torch.manual_seed(0)
    model = HTNet(**SMALL_56).train(train)
    x = _input(SMALL_56, batch=3)
    results = {}
    for fused in (True, False):
        set_fused_attention(model, fused)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        results[fused] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (fast, fast_grads), (plain, plain_grads) = results[True], results[False]
    assert (fast - plain).abs().max() < 1e-5
    for name in fast_grads:
        assert (fast_grads[name] - plain_grads[name]).abs().max() < 1e-5, name


def test_attention_recorder_records_every_map_and_ejects():
    torch.manual_seed(0)
    model = HTNet(**SMALL_56).eval()
    x = _input(SMALL_56, batch=2)
    with torch.no_grad():
        expected = model(x)
        recorder = AttentionRecorder(model)
        logits, maps = recorder(x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # 56 / 7 = 8x8 patches: stage 0 has 4x4 windows of 2x2 tokens, stage 1 2x2 windows of 2x2, stage 2 one window
    assert [len(level) for level in maps] == list(SMALL_56['block_repeats'])
    assert maps[0][0].shape == (2, 16, 2, 4, 4)
    assert maps[1][0].shape == (2, 4, 4, 4, 4)
    assert maps[2][0].shape == (2, 1, 8, 4, 4)
    for level in maps:
        for attn in level:
            torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    recorder.eject()
    attentions = [m for m in model.modules() if type(m).__name__ == 'Attention']
    assert all(a.fused for a in attentions)
    assert all(not a.attend._forward_hooks for a in attentions)


def test_build_model_from_plain_dict_round_trip():
    args = model_args_from(**TINY[56], num_classes=6, unrelated='ignored')
    assert args['block_repeats'] == [1, 1, 1] and 'unrelated' not in args
    model = build_model(args)
    assert isinstance(model, HTNet) and model.num_classes == 6
    with pytest.raises(ValueError, match='unknown model_args'):
        build_model({**args, 'colour': 'red'})


def test_load_pretrained_micro_expression_into_palsy_model(tmp_path, capsys):
    torch.manual_seed(0)
    micro = HTNet(**TINY[28], num_classes=3)
    path = tmp_path / 'subject.pth'
    torch.save(micro.state_dict(), path)
    palsy = HTNet(**TINY[56], num_classes=6)
    report = load_pretrained(palsy, torch.load(path, weights_only=True))
    out = capsys.readouterr().out

    skipped = dict(report['skipped'])
    assert set(skipped) == {'mlp_head.2.weight', 'mlp_head.2.bias'}
    assert '(3, 64)' in skipped['mlp_head.2.weight'] and '(6, 64)' in skipped['mlp_head.2.weight']
    assert sorted(report['interpolated']) == [f'layers.{i}.0.pos_emb' for i in range(3)]
    assert set(report['missing']) == {'mlp_head.2.weight', 'mlp_head.2.bias'}
    assert 'skipped mlp_head.2.weight' in out and 'interpolated layers.0.0.pos_emb' in out
    # length 1 -> 4: the single value is repeated; the backbone is copied exactly
    state = palsy.state_dict()
    torch.testing.assert_close(state['layers.0.0.pos_emb'], micro.layers[0][0].pos_emb.detach().expand(4))
    torch.testing.assert_close(state['to_patch_embedding.1.weight'], micro.to_patch_embedding[1].weight)

    fresh = HTNet(**TINY[56], num_classes=6)
    report = load_pretrained(fresh, {'model': micro.state_dict(), 'epoch': 3}, pos_emb='skip', verbose=False)
    assert not report['interpolated']
    assert {'layers.0.0.pos_emb', 'mlp_head.2.bias'} <= set(dict(report['skipped']))


def test_extract_state_dict_strips_wrapper_prefixes():
    model = HTNet(**TINY[28], num_classes=3)
    wrapped = {f'module._orig_mod.{k}': v for k, v in model.state_dict().items()}
    assert set(extract_state_dict({'state_dict': wrapped})) == set(model.state_dict())
    with pytest.raises(ValueError):
        extract_state_dict({'epoch': 1})


def test_fusionmodel_keeps_original_layer_names():
    names = set(Fusionmodel().state_dict())
    assert {'fc1.weight', 'fc1.bias', 'bn1.weight', 'fc_2.weight', 'fc_2.bias'} <= names


def test_side_head_is_optional_and_shares_features():
    torch.manual_seed(0)
    plain = HTNet(**TINY[56], num_classes=6)
    torch.manual_seed(0)
    multitask = HTNet(**TINY[56], num_classes=6, num_side_classes=3)
    assert set(multitask.state_dict()) - set(plain.state_dict()) == {'side_head.weight', 'side_head.bias'}
    x = _input(TINY[56], batch=2)
    grade, side = multitask.forward_multitask(x)
    assert grade.shape == (2, 6) and side.shape == (2, 3)
    torch.testing.assert_close(grade, plain(x))  # same initialisation for the shared network
    assert plain.forward_multitask(x)[1] is None


def test_load_pretrained_takes_no_path(tmp_path):
    with pytest.raises(TypeError, match='checkpoints.load_pretrained'):
        load_pretrained(HTNet(**TINY[56], num_classes=6), tmp_path / 'weights.pth')
