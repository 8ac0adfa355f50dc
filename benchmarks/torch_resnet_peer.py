"""PyTorch's dense CIFAR ResNet as the peer engine of ``benchmarks/inference_speed.py``.

Run by that benchmark in the environment that has PyTorch (``--torch-python``), as a worker
that answers one JSON request per line on stdin with one JSON line on stdout, so that its
calls can be interleaved with the JAX models' calls of the same run. The model is the
original CIFAR ResNet ("option A" shortcuts) with the weights of the PyTorch-layout ``.npz``
the JAX dense model loads, in eval mode, traced, frozen with ``torch.jit.freeze`` and
rewritten by ``torch.jit.optimize_for_inference`` (which folds BatchNorm into the convs),
in NCHW or channels_last memory format, at 1 or 2 intra-op threads.

Requests:

* ``{"op": "build", "batch": B, "format": "nchw"|"channels_last"}``: trace and freeze one variant (once: a
  repeated request answers at once).
* ``{"op": "logits", "batch": B, "format": F, "input": PATH}``: the variant's logits on the NHWC
  float32 images in ``PATH`` (``.npy``), written next to it as ``PATH.logits.npy``.
* ``{"op": "time", "batch": B, "format": F, "threads": T, "calls": N}``: seconds of each of N calls
  (after the warm-up done by ``build``) on a fixed random input, and the process CPU seconds they took.
* ``{"op": "quit"}``.

Example (what the benchmark runs)::

    /path/to/torch-env/bin/python benchmarks/torch_resnet_peer.py --weights resnet20.npz --depth 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def build_resnet(depth: int, weights: dict):
    """The CIFAR ResNet of ``depth`` with ``weights`` (a PyTorch state dict as numpy arrays), in eval mode."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else -1

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.pad >= 0:  # option A: every second pixel, channels zero-padded on both sides
                x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + x)

    class ResNet(nn.Module):
        def __init__(self, blocks: int):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            layers, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                stage = []
                for b in range(blocks):
                    stage.append(Block(cin, cout, stride if b == 0 else 1))
                    cin = cout
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3 = layers
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    if (depth - 2) % 6:
        raise SystemExit(f"--depth: expected 6n + 2, got {depth}")
    model = ResNet((depth - 2) // 6)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if not k.endswith("num_batches_tracked")]:
        raise SystemExit(f"--weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="PyTorch-layout .npz of the dense ResNet")
    parser.add_argument("--depth", type=int, required=True)
    args = parser.parse_args(argv)
    import torch

    model = build_resnet(args.depth, dict(np.load(args.weights)))
    variants, inputs = {}, {}
    reply = lambda obj: print(json.dumps(obj), flush=True)  # noqa: E731
    reply({"ready": True, "torch_version": torch.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        key = (request["batch"], request["format"])
        fmt = torch.channels_last if request["format"] == "channels_last" else torch.contiguous_format
        if op == "build" and key in variants:  # built once per (batch, format), whoever asks again
            reply({"built": list(key)})
        elif op == "build":
            x = torch.randn(request["batch"], 3, 32, 32).contiguous(memory_format=fmt)
            with torch.no_grad():
                traced = torch.jit.trace(model.to(memory_format=fmt), x)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                for _ in range(3):
                    frozen(x)
            variants[key], inputs[key] = frozen, x
            reply({"built": list(key)})
        elif op == "logits":
            images = np.load(request["input"])
            x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).contiguous(memory_format=fmt)
            with torch.no_grad():
                np.save(request["input"] + ".logits.npy", variants[key](x).numpy())
            reply({"logits": request["input"] + ".logits.npy"})
        elif op == "time":
            torch.set_num_threads(request["threads"])
            fn, x = variants[key], inputs[key]
            seconds = []
            cpu = time.process_time()
            with torch.no_grad():
                fn(x)  # one call at this thread count before timing
                cpu = time.process_time()
                for _ in range(request["calls"]):
                    t = time.perf_counter()
                    fn(x)
                    seconds.append(time.perf_counter() - t)
            reply({"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "threads": torch.get_num_threads()})
        else:
            reply({"error": f"unknown op {op!r}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
