"""The premise of the miniature, measured: what a small CNN can read from the full image and from the 1/4 image.

A convolutional probe is trained on one split and scored on another, once on the full images and once on their
``images.downsample`` views, with one head per kind (colour, shape, pattern). The premise holds when every kind is
legible at full resolution, colour and shape are legible at 1/4, and the pattern is not (chance: 1/3).

    python -m visionthink.miniature probe [--train 1500] [--test 900] [--seed 0]
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from visionthink.images import downsample
from visionthink.miniature import task

#: What the premise requires (also the test's thresholds).
LEGIBLE = 0.98
CHANCE_MARGIN = 0.05


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy per kind, from the full image and from the 1/4 image."""

    full: dict[str, float]
    low: dict[str, float]
    train_items: int
    test_items: int
    seconds: float

    def chance(self, kind: str) -> float:
        return 1 / len(task.ANSWERS[kind])

    def failures(self) -> list[str]:
        """What breaks the premise, in words; empty when it holds."""
        out = []
        for kind in task.KINDS:
            if self.full[kind] < LEGIBLE:
                out.append(f"{kind} from the full image: {self.full[kind]:.1%} < {LEGIBLE:.0%}")
        for kind in task.COARSE_KINDS:
            if self.low[kind] < LEGIBLE:
                out.append(f"{kind} from the 1/4 image: {self.low[kind]:.1%} < {LEGIBLE:.0%}")
        for kind in task.FINE_KINDS:
            ceiling = self.chance(kind) + CHANCE_MARGIN
            if self.low[kind] > ceiling:
                out.append(f"{kind} from the 1/4 image: {self.low[kind]:.1%} > chance + 5 points ({ceiling:.1%})")
        return out

    def table(self) -> str:
        lines = [f"{'kind':<8} {'chance':>7} {'full image':>11} {'1/4 image':>10}"]
        for kind in task.KINDS:
            lines.append(f"{kind:<8} {self.chance(kind):>7.1%} {self.full[kind]:>11.1%} {self.low[kind]:>10.1%}")
        return "\n".join(lines)


def _arrays(items: list[task.Item], low: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pixels as uint8 (N, 3, H, W), scaled batch by batch when used, and the labels of each kind."""
    pictures = [downsample(item.image) if low else item.image for item in items]
    x = np.stack([np.asarray(p, dtype=np.uint8) for p in pictures]).transpose(0, 3, 1, 2)
    labels = {
        "colour": np.array([list(task.COLOURS).index(i.colour) for i in items]),
        "shape": np.array([task.SHAPES.index(i.shape) for i in items]),
        "pattern": np.array([task.PATTERNS.index(i.pattern) for i in items]),
    }
    return x, labels


def _network(low: bool):
    import torch
    from torch import nn

    # Every first layer works at the pixel (3x3, stride 1), so a 2-pixel period or anything the downsample left is
    # within its reach; full images are then pooled to the 1/4 image's size, so both probes see the same scales.
    first = (nn.Conv2d(3, 16, 3, stride=1, padding=1) if low else
             nn.Sequential(nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2)))

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                first, nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in task.ANSWERS.items()})

        def forward(self, x):
            h = self.features(x)
            pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
            return {k: head(pooled) for k, head in self.heads.items()}

    return Probe()


def _train_and_score(train: list[task.Item], test: list[task.Item], low: bool, seed: int, epochs: int) -> dict[str, float]:
    import torch

    x_train, y_train = _arrays(train, low)
    x_test, y_test = _arrays(test, low)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _network(low)
        optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = epochs * ((len(train) + 31) // 32)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
        xt = torch.from_numpy(x_train)
        yt = {k: torch.from_numpy(v) for k, v in y_train.items()}

        def scaled(pixels):
            return pixels.float() / 255.0 - 0.5
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), 32):
                batch = order[start:start + 32]
                logits = net(scaled(xt[batch]))
                loss = sum(torch.nn.functional.cross_entropy(logits[k], yt[k][batch]) for k in logits)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
        net.eval()
        correct = {k: 0 for k in task.KINDS}
        with torch.no_grad():
            for start in range(0, len(test), 128):
                logits = net(scaled(torch.from_numpy(x_test[start:start + 128])))
                for k in task.KINDS:
                    correct[k] += int((logits[k].argmax(1).numpy() == y_test[k][start:start + 128]).sum())
    return {k: correct[k] / len(test) for k in task.KINDS}


def measure(train_items: int = 1500, test_items: int = 900, seed: int = 0, epochs: int = 6) -> ProbeResult:
    """Train and score the probe on freshly drawn splits (the test split from another seed)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    train = task.sample(train_items, rng.getrandbits(32))
    test = task.sample(test_items, rng.getrandbits(32))
    full = _train_and_score(train, test, low=False, seed=seed, epochs=epochs)
    low = _train_and_score(train, test, low=True, seed=seed, epochs=epochs)
    return ProbeResult(full, low, train_items, test_items, time.perf_counter() - started)


# --- The model's own visual tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenProbeResult:
    """Held-out accuracy of a linear probe on a model's merged visual tokens, per kind and resolution."""

    full: dict[str, float]
    low: dict[str, float]
    feature_norm: float  # mean norm of a visual token (it grows when a vision tower is over-trained)


def _pooled_visual_tokens(model, processor, pictures) -> np.ndarray:
    """Per image: the mean, the mean absolute value and the maximum of its visual tokens (a texture's sign flips
    with its phase, so its evidence is in the magnitude)."""
    import torch

    pooled, norms = [], []
    for start in range(0, len(pictures), 64):
        batch = pictures[start:start + 64]
        encoded = processor.image_processor(images=batch, return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_image_features(encoded["pixel_values"], encoded["image_grid_thw"])
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):
            features = torch.cat(list(features))
        tokens = features.reshape(len(batch), -1, features.shape[-1])
        norms.append(tokens.norm(dim=-1).mean())
        pooled.append(torch.cat([tokens.mean(1), tokens.abs().mean(1), tokens.amax(1)], dim=1))
    return torch.cat(pooled).numpy(), float(torch.stack(norms).mean())


def _linear_probe(x: np.ndarray, y: np.ndarray, train: int, seed: int) -> float:
    import torch

    x = torch.from_numpy(x).float()
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    y = torch.from_numpy(y)
    classes = int(y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimiser = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(x[:train] @ weight + bias, y[:train]) + 1e-3 * (weight ** 2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return float(((x[train:] @ weight + bias).argmax(1) == y[train:]).float().mean())


def visual_tokens(folder, items: int = 1600, test_items: int = 400, seed: int = 0) -> TokenProbeResult:
    """Train a linear probe on the pooled visual tokens of the model in ``folder`` (one per kind and resolution)."""
    from visionthink import hf

    model = hf.load_model(str(folder), device="cpu")
    processor = hf.load_processor(str(folder))
    drawn = task.sample(items + test_items, seed + 1)
    results: dict[str, dict[str, float]] = {"full": {}, "low": {}}
    norms = []
    for resolution in ("full", "low"):
        pictures = [downsample(i.image) if resolution == "low" else i.image for i in drawn]
        x, norm = _pooled_visual_tokens(model, processor, pictures)
        norms.append(norm)
        for kind in task.KINDS:
            y = np.array([task.ANSWERS[kind].index(getattr(i, kind)) for i in drawn])
            results[resolution][kind] = _linear_probe(x, y, items, seed)
    return TokenProbeResult(results["full"], results["low"], float(np.mean(norms)))
