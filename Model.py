"""HTNet: hierarchical transformer over facial regions.

Wang, Z., Zhang, K., Luo, W., Sankaranarayana, R. "HTNet for micro-expression recognition".
Neurocomputing (2024); arXiv:2307.14637. The network grew from NesT (Zhang et al., "Nested Hierarchical Transformer",
AAAI 2022; lucidrains/vit-pytorch ``nest.py``): local self-attention inside non-overlapping blocks whose
outputs are merged by a 3x3 convolution + max pooling between hierarchy levels.

This module keeps the published module tree and parameter shapes, so a state_dict saved by the original code
loads with ``strict=True`` and gives the same logits (``tests/test_model.py`` checks the published test vectors).
Inside a transformer stage the tokens are held channels-last, ``(B, N, C)``, so that the original 1x1
convolutions run as plain matrix products on the same weights; ``benchmarks/bench_model.py`` measures the gain.

Layout of the 2x2 region mosaic that the palsy pipeline feeds in (see ``facial_palsy_dataset.region_mosaic``)::

    +-----------+------------+
    | left eye  | left mouth |
    +-----------+------------+
    | right eye | right mouth|
    +-----------+------------+
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange, Reduce
from torch import nn

__all__ = [
    'HTNet', 'Fusionmodel', 'AttentionRecorder', 'build_model', 'model_args_from', 'load_pretrained',
    'extract_state_dict', 'set_fused_attention', 'count_parameters',
]

# arguments of HTNet that decide the network's shape; checkpoints store them as ``model_args``
MODEL_ARG_NAMES = ('image_size', 'patch_size', 'num_classes', 'dim', 'heads', 'num_hierarchies',
                   'block_repeats', 'mlp_mult', 'channels', 'dim_head', 'dropout', 'num_side_classes')


# helpers

def cast_tuple(val, depth: int) -> tuple:
    return tuple(val) if isinstance(val, (tuple, list)) else ((val,) * depth)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv1x1_as_linear(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 ``nn.Conv2d`` to channels-last tokens ``(..., C_in)``: the same maths as the conv on NCHW."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)  # weight (C_out, C_in, 1, 1) -> (C_out, C_in)


# classes

class LayerNorm(nn.Module):
    """Layer norm over the channel dimension with the original ``(1, C, 1, 1)`` parameters ``g`` and ``b``.

    Biased variance and eps 1e-5 as in the original; computed by ``F.layer_norm`` on a channels-last view,
    which is the same maths in one fused kernel instead of five temporaries.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: channels-last ``(..., C)``."""
        return F.layer_norm(x, x.shape[-1:], self.g.view(-1), self.b.view(-1), self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)``."""
        assert x.ndim == 4, f'expected (B, C, H, W), got {tuple(x.shape)}'
        return self.forward_tokens(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: tokens ``(B, N, C)``."""
        return self.fn(self.norm.forward_tokens(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_mult: int = 4, dropout: float = 0.):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim * mlp_mult, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(dim * mlp_mult, dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: tokens ``(B, N, C)``."""
        conv_in, act, drop_in, conv_out, drop_out = self.net
        x = drop_in(act(_conv1x1_as_linear(conv_in, x)))
        return drop_out(_conv1x1_as_linear(conv_out, x))


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of one block.

    ``dim_head = dim // heads`` as in the original, so dim 256 with 3 heads has an inner dim of 255.
    ``fused`` selects ``F.scaled_dot_product_attention``; the plain path computes the softmax through
    ``self.attend`` so that forward hooks on it (``AttentionRecorder``) see every attention map.
    """

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.):
        super().__init__()
        dim_head = dim // heads
        inner_dim = dim_head * heads
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.fused = True

        self.attend = nn.Softmax(dim=-1)
        self.to_qkv = nn.Conv2d(dim, inner_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner_dim, dim, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: tokens ``(B, N, C)``."""
        qkv = _conv1x1_as_linear(self.to_qkv, x)
        q, k, v = rearrange(qkv, 'b n (qkv h d) -> qkv b h n d', qkv=3, h=self.heads)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = self.attend(torch.matmul(q, k.transpose(-1, -2)) * self.scale)  # (B, heads, N, N)
            out = torch.matmul(attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        conv, drop = self.to_out
        return drop(_conv1x1_as_linear(conv, out))


def Aggregate(dim: int, dim_out: int) -> nn.Sequential:
    """Merge neighbouring blocks between hierarchy levels: conv3x3 -> LayerNorm -> max pool (halves H and W)."""
    return nn.Sequential(
        nn.Conv2d(dim, dim_out, 3, padding=1),
        LayerNorm(dim_out),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


class Transformer(nn.Module):
    """``depth`` pre-norm attention + feed-forward blocks sharing one learned positional embedding.

    The original adds one scalar per position, broadcast over channels, and slices the embedding to the
    block's ``h * w`` tokens.
    """

    def __init__(self, dim: int, seq_len: int, depth: int, heads: int, mlp_mult: int, dropout: float = 0.):
        super().__init__()
        self.layers = nn.ModuleList([])
        self.pos_emb = nn.Parameter(torch.randn(seq_len))
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                PreNorm(dim, Attention(dim, heads=heads, dropout=dropout)),
                PreNorm(dim, FeedForward(dim, mlp_mult, dropout=dropout)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: tokens ``(B, N, C)`` of one block each, N = h * w."""
        num_tokens = x.shape[1]
        assert num_tokens <= self.pos_emb.numel(), \
            f'{num_tokens} tokens per block but a positional embedding of {self.pos_emb.numel()}'
        x = x + self.pos_emb[:num_tokens].view(1, num_tokens, 1)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class HTNet(nn.Module):
    """Hierarchical transformer: patch embedding, ``num_hierarchies`` levels of block-local transformers
    (level l splits the feature map into ``2**l x 2**l`` blocks), aggregation between levels, mean-pooled head.

    Paper configuration: ``image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3,
    block_repeats=(2, 2, 10), num_classes=3`` (139.6M parameters).
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        num_classes: int,
        dim: int,
        heads: int,
        num_hierarchies: int,
        block_repeats: int | Sequence[int],
        mlp_mult: int = 4,
        channels: int = 3,
        dim_head: int = 64,  # accepted and unused, as in the original (dim_head = dim // heads)
        dropout: float = 0.,
        num_side_classes: int = 0,
    ):
        super().__init__()
        assert (image_size % patch_size) == 0, 'Image dimensions must be divisible by the patch size.'
        fmap_size = image_size // patch_size
        blocks = 2 ** (num_hierarchies - 1)
        assert fmap_size % blocks == 0, \
            f'the {fmap_size}x{fmap_size} patch grid must split into {blocks}x{blocks} blocks ' \
            f'(image_size / patch_size divisible by 2**(num_hierarchies-1))'
        patch_dim = channels * patch_size ** 2

        seq_len = (fmap_size // blocks) ** 2  # sequence length is held constant across hierarchy
        hierarchies = list(reversed(range(num_hierarchies)))
        mults = [2 ** i for i in reversed(hierarchies)]

        layer_heads = [m * heads for m in mults]
        layer_dims = [m * dim for m in mults]
        last_dim = layer_dims[-1]
        layer_dims = [*layer_dims, layer_dims[-1]]
        dim_pairs = zip(layer_dims[:-1], layer_dims[1:])

        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.num_features = last_dim

        self.to_patch_embedding = nn.Sequential(
            Rearrange('b c (h p1) (w p2) -> b (p1 p2 c) h w', p1=patch_size, p2=patch_size),
            nn.Conv2d(patch_dim, layer_dims[0], 1),
        )

        block_repeats = cast_tuple(block_repeats, num_hierarchies)
        assert len(block_repeats) == num_hierarchies, \
            f'block_repeats {block_repeats} must give one depth per hierarchy ({num_hierarchies})'
        self.layers = nn.ModuleList([])
        for level, level_heads, (dim_in, dim_out), depth in zip(hierarchies, layer_heads, dim_pairs, block_repeats):
            is_last = level == 0
            self.layers.append(nn.ModuleList([
                Transformer(dim_in, seq_len, depth, level_heads, mlp_mult, dropout),
                Aggregate(dim_in, dim_out) if not is_last else nn.Identity(),
            ]))

        self.mlp_head = nn.Sequential(
            LayerNorm(last_dim),
            Reduce('b c h w -> b c', 'mean'),
            nn.Linear(last_dim, num_classes),
        )
        # Optional second head on the same pooled features: the affected side (left / right / none) for
        # multi-task palsy grading. Created last, so the original initialisation order is untouched.
        self.num_side_classes = num_side_classes
        self.side_head = nn.Linear(last_dim, num_side_classes) if num_side_classes else None

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """``img (B, C, S, S)`` -> last-level feature map ``(B, num_features, h, w)``."""
        assert img.ndim == 4 and img.shape[-2:] == (self.image_size, self.image_size), \
            f'expected input (B, C, {self.image_size}, {self.image_size}), got {tuple(img.shape)}'
        x = self.to_patch_embedding(img)
        num_hierarchies = len(self.layers)
        for level, (transformer, aggregate) in zip(reversed(range(num_hierarchies)), self.layers):
            block_size = 2 ** level
            h, w = x.shape[-2] // block_size, x.shape[-1] // block_size
            x = rearrange(x, 'b c (b1 h) (b2 w) -> (b b1 b2) (h w) c', b1=block_size, b2=block_size)
            x = transformer(x)
            x = rearrange(x, '(b b1 b2) (h w) c -> b c (b1 h) (b2 w)', b1=block_size, b2=block_size, h=h, w=w)
            x = aggregate(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        norm, pool, fc = self.mlp_head
        x = pool(norm(x))
        return x if pre_logits else fc(x)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(img))

    def forward_multitask(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grade logits and, when the model has a side head, side logits from one pass over the features."""
        pooled = self.forward_head(self.forward_features(img), pre_logits=True)
        grade_logits = self.mlp_head[2](pooled)
        return grade_logits, (self.side_head(pooled) if self.side_head is not None else None)


# This function is to fuse three models (kept from the original code, with its layer names).
class Fusionmodel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(15, 3)  # 15 -> 3 channels
        self.bn1 = nn.BatchNorm1d(3)
        self.d1 = nn.Dropout(p=0.5)
        self.fc_2 = nn.Linear(6, 2)  # 6 -> 2 channels
        self.relu = nn.ReLU()

    def forward(self, whole_feature, l_eye_lips, l_lips, nose_lips, r_eye_lips, r_lips):
        fuse_five_features = torch.cat((l_eye_lips, l_lips, nose_lips, r_eye_lips, r_lips), 0)
        fuse_out = self.d1(self.relu(self.fc1(fuse_five_features)))
        fuse_whole_five_parts = self.d1(self.relu(torch.cat((whole_feature, fuse_out), 0)))
        return self.fc_2(fuse_whole_five_parts)


def set_fused_attention(model: nn.Module, enabled: bool) -> None:
    """Switch every ``Attention`` between ``scaled_dot_product_attention`` and the plain softmax path."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = enabled


class AttentionRecorder:
    """Record every attention map of an HTNet with removable forward hooks (after vit-pytorch ``recorder.py``).

    The model stays unaware: while recording, attention runs on the plain softmax path and a hook on each
    ``Attention.attend`` keeps its output. ``eject()`` takes the hooks off and restores the fused path::

        recorder = AttentionRecorder(model)
        logits, maps = recorder(images)   # maps[level] -> list over blocks of (B, blocks, heads, N, N)
        recorder.eject()

    ``maps`` has one entry per stage ``i`` of ``model.layers`` (stage 0 = the first, finest one); each entry is a
    list with one tensor per transformer block of shape ``(B, num_blocks, heads, N, N)``. Stage ``i`` splits its
    feature map into ``g x g`` windows, ``g = 2**(num_hierarchies - 1 - i)``, listed row-major in ``num_blocks``;
    ``N = h * w`` tokens per window, row-major too.
    """

    def __init__(self, model: HTNet):
        self.model = model
        self._hooks: list = []
        self._records: list[tuple[int, torch.Tensor]] = []
        self._fused_before: dict[Attention, bool] = {}
        for level, (transformer, _) in enumerate(model.layers):
            for attn, _ff in transformer.layers:
                attention = attn.fn
                self._fused_before[attention] = attention.fused
                attention.fused = False
                self._hooks.append(attention.attend.register_forward_hook(self._make_hook(level)))

    def _make_hook(self, level: int):
        def hook(_module, _inputs, output):
            self._records.append((level, output.detach()))
        return hook

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        self._records = []
        logits = self.model(img)
        batch = img.shape[0]
        maps: list[list[torch.Tensor]] = [[] for _ in self.model.layers]
        for level, attn in self._records:
            maps[level].append(rearrange(attn, '(b nb) h i j -> b nb h i j', b=batch))
        self._records = []
        return logits, maps

    def eject(self) -> HTNet:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for attention, fused in self._fused_before.items():
            attention.fused = fused
        return self.model

    def __enter__(self) -> 'AttentionRecorder':
        return self

    def __exit__(self, *exc) -> None:
        self.eject()


def model_args_from(**kwargs: Any) -> dict:
    """A plain, YAML/JSON-friendly ``model_args`` dict (the keys HTNet takes) from any mapping of options."""
    args = {k: kwargs[k] for k in MODEL_ARG_NAMES if k in kwargs and kwargs[k] is not None}
    if 'block_repeats' in args:
        args['block_repeats'] = list(cast_tuple(args['block_repeats'], args.get('num_hierarchies', 1)))
    return args


def build_model(model_args: Mapping[str, Any]) -> HTNet:
    """Rebuild an HTNet from the plain dict stored in a checkpoint (``checkpoint['model_args']``)."""
    unknown = set(model_args) - set(MODEL_ARG_NAMES)
    if unknown:
        raise ValueError(f'unknown model_args {sorted(unknown)}; HTNet takes {list(MODEL_ARG_NAMES)}')
    args = dict(model_args)
    if 'block_repeats' in args:
        args['block_repeats'] = cast_tuple(args['block_repeats'], args.get('num_hierarchies', 1))
    return HTNet(**args)


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state_dict inside a plain state_dict or a checkpoint dict (``model`` / ``state_dict`` /
    ``model_state_dict``), with ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes removed."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f'expected a state_dict or a checkpoint dict, got {type(obj).__name__}')
    for key in ('model', 'state_dict', 'model_state_dict'):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ('module.', '_orig_mod.'):
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = value
    if not state:
        raise ValueError('no tensors found: not a state_dict or a checkpoint holding one')
    return state


def _resize_pos_emb(pos_emb: torch.Tensor, length: int) -> torch.Tensor:
    """Bilinearly resize a positional embedding laid out on a square grid (length 1 -> 4 repeats the value)."""
    old_side, new_side = math.isqrt(pos_emb.numel()), math.isqrt(length)
    if old_side ** 2 != pos_emb.numel() or new_side ** 2 != length:
        raise ValueError(f'positional embeddings of length {pos_emb.numel()} -> {length} are not square grids')
    grid = pos_emb.detach().float().view(1, 1, old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode='bilinear', align_corners=False)
    return grid.flatten().to(pos_emb.dtype)


def load_pretrained(model: nn.Module, checkpoint: Mapping[str, Any] | nn.Module, pos_emb: str = 'interpolate',
                    verbose: bool = True) -> dict[str, list]:
    """Load every tensor whose name and shape match; skip the rest and report which.

    ``checkpoint``: a plain state_dict, or a checkpoint dict holding one (``checkpoints.load_pretrained`` reads
    it from a file first). The classifier head differs between 3 emotions and 6 grades and is skipped; the
    positional embeddings differ between 28x28 input (length 1) and 56x56 (length 4) and are interpolated
    (``pos_emb='interpolate'``) or skipped (``'skip'``).

    Returns ``{'loaded': [...], 'interpolated': [...], 'skipped': [(name, reason), ...], 'missing': [...]}``,
    where ``missing`` lists the model's tensors that received nothing and keep their initialisation.
    """
    assert pos_emb in ('interpolate', 'skip'), f"pos_emb must be 'interpolate' or 'skip', not {pos_emb!r}"
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, '__fspath__'):
        raise TypeError('load_pretrained takes a state_dict or checkpoint dict; read a file with '
                        'checkpoints.load_pretrained(model, path)')
    state = extract_state_dict(checkpoint)
    target = model.state_dict()

    report: dict[str, list] = {'loaded': [], 'interpolated': [], 'skipped': [], 'missing': []}
    to_load = {}
    for name, tensor in state.items():
        if name not in target:
            report['skipped'].append((name, 'not in this model'))
        elif tensor.shape == target[name].shape:
            to_load[name] = tensor
            report['loaded'].append(name)
        elif name.endswith('pos_emb') and pos_emb == 'interpolate':
            try:
                to_load[name] = _resize_pos_emb(tensor, target[name].numel())
                report['interpolated'].append(name)
            except ValueError as err:
                report['skipped'].append((name, str(err)))
        else:
            report['skipped'].append(
                (name, f'shape {tuple(tensor.shape)} in the file, {tuple(target[name].shape)} in the model'))
    model.load_state_dict(to_load, strict=False)
    report['missing'] = [name for name in target if name not in to_load]

    if verbose:
        print(f'load_pretrained: {len(report["loaded"])} tensors loaded, '
              f'{len(report["interpolated"])} interpolated, {len(report["skipped"])} skipped, '
              f'{len(report["missing"])} left at initialisation')
        for name in report['interpolated']:
            print(f'  interpolated {name}: {tuple(state[name].shape)} -> {tuple(target[name].shape)}')
        for name, reason in report['skipped']:
            print(f'  skipped {name}: {reason}')
    return report
