"""Training throughput (images/second) of the small CNN and CIFAR ResNet-18 on this machine.

Run: ``python benchmarks/train_throughput.py [--steps 20] [--batch-size 128]``. Prints one row per
model: forward+backward+SGD step throughput and eval-mode forward throughput, on random inputs of
the model's native shape. No assertion: timings on shared CPUs are noisy; compare rows of one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from eviltwins.models import build_model
from eviltwins.utils import resolve_device

CASES = [("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("resnet18", (3, 32, 32))]


def measure(
    name: str, shape: tuple[int, int, int], steps: int, batch: int, device: torch.device
) -> tuple[float, float]:
    model = build_model(name, shape, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train_ips = steps * batch / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(steps):
            model(x)
        fwd_ips = steps * batch / (time.perf_counter() - t)
    return train_ips, fwd_ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size}"
    )
    print(f"{'model':<10} {'input':<10} {'train img/s':>12} {'forward img/s':>14}")
    for name, shape in CASES:
        steps = args.steps if name == "cnn" else max(3, args.steps // 5)
        tr, fw = measure(name, shape, steps, args.batch_size, device)
        print(f"{name:<10} {'x'.join(map(str, shape)):<10} {tr:>12.0f} {fw:>14.0f}")


if __name__ == "__main__":
    main()
