"""Training-step and inference throughput of HTNet (samples/s), per implementation, printed as a table.

Compares the reference NCHW formulation (``benchmarks/reference_htnet.py``, the published code) with
``Model.HTNet`` on its plain softmax attention path and on the fused ``scaled_dot_product_attention`` path. All three
compute the same function from the same weights (``tests/test_model.py``).

    python benchmarks/bench_model.py                          # paper config, 28x28, batch 64, CPU
    python benchmarks/bench_model.py --preset palsy-small --batch_size 32
    python benchmarks/bench_model.py --device cuda --amp bf16 --compile
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'benchmarks')]

import reference_htnet  # noqa: E402
from Model import HTNet, count_parameters, set_fused_attention  # noqa: E402
from utils import amp_context, resolve_device  # noqa: E402

PRESETS = {
    # the micro-expression paper configuration
    'paper': dict(image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3, block_repeats=(2, 2, 10),
                  num_classes=3),
    # the paper-size network on the 56x56 palsy region mosaic
    'palsy-paper': dict(image_size=56, patch_size=7, dim=256, heads=3, num_hierarchies=3, block_repeats=(2, 2, 10),
                        num_classes=6),
    # the CPU quick-start size
    'palsy-small': dict(image_size=56, patch_size=7, dim=64, heads=2, num_hierarchies=3, block_repeats=(1, 1, 2),
                        num_classes=6),
}
IMPLEMENTATIONS = ('reference', 'plain', 'fused')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', default='paper', choices=sorted(PRESETS), help='model configuration')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
    parser.add_argument('--steps', type=int, default=5, help='timed steps per measurement')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
    parser.add_argument('--repeats', type=int, default=3,
                        help='measurements per implementation, interleaved; the best is reported')
    parser.add_argument('--impl', nargs='+', default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument('--amp', default=None, choices=['bf16', 'fp16'], help='autocast on CUDA')
    parser.add_argument('--compile', action='store_true', help='torch.compile each model (CUDA)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    return parser


def build(impl: str, cfg: dict, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == 'reference':
        model = reference_htnet.HTNet(**cfg)
    else:
        model = HTNet(**cfg)
        set_fused_attention(model, impl == 'fused')
    return model.to(device)


def measure(model, cfg, batch_size, device, steps, warmup, train, ctx, scaler) -> float:
    """Samples per second over ``steps`` steps after ``warmup`` untimed ones."""
    size = cfg['image_size']
    x = torch.rand(batch_size, 3, size, size, device=device)
    y = torch.randint(0, cfg['num_classes'], (batch_size,), device=device)
    criterion = torch.nn.CrossEntropyLoss()
    model.train(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5) if train else None

    def step():
        if train:
            optimizer.zero_grad(set_to_none=True)
            with ctx:
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            with torch.no_grad(), ctx:
                model(x)

    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = PRESETS[args.preset]
    ctx, scaler = amp_context(device, args.amp)
    print(f'preset {args.preset}: {cfg}')
    print(f'device {device}, batch {args.batch_size}, torch {torch.__version__}, threads {torch.get_num_threads()}, '
          f'amp {args.amp or "off"}, compile {args.compile}')

    rows = []
    for train in (True, False):
        best = {impl: 0.0 for impl in args.impl}
        models = {}
        for impl in args.impl:
            model = build(impl, cfg, device)
            models[impl] = torch.compile(model) if args.compile else model
        for _ in range(args.repeats):  # interleaved, so background load affects every implementation alike
            for impl in args.impl:
                best[impl] = max(best[impl], measure(models[impl], cfg, args.batch_size, device, args.steps,
                                                     args.warmup, train, ctx, scaler))
        base = best.get('reference')
        for impl in args.impl:
            rows.append(dict(mode='train' if train else 'infer', impl=impl, samples_per_s=best[impl],
                             speedup=best[impl] / base if base else float('nan')))
        del models

    params = count_parameters(build('fused', cfg, torch.device('cpu')))
    print(f'parameters: {params / 1e6:.1f}M\n')
    print(f'{"mode":<6} {"implementation":<15} {"samples/s":>10} {"vs reference":>13}')
    for row in rows:
        print(f'{row["mode"]:<6} {row["impl"]:<15} {row["samples_per_s"]:>10.1f} {row["speedup"]:>12.2f}x')
    return rows


if __name__ == '__main__':
    main()
