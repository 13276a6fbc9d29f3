"""torchvision's r3d_18 trained a few steps with torch.optim.Adam or bitsandbytes' Adam8bit on the
CPU: the PyTorch side of `cargo xtask bench optimizer`.

Prints one JSON line: the optimizer's state bytes (every tensor it keeps, as PyTorch counts them),
its size saved with torch.save, the process's peak RSS and the seconds per step after the first.

    python bench/optimizer_state_reference.py adam|adam8bit --classes 9 --size 32 --frames 8 \
        --batch 2 --steps 4
"""

import argparse
import io
import json
import resource
import time

import torch
import torchvision


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("optimizer", choices=["adam", "adam8bit"])
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=args.classes)
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5)
    else:
        import bitsandbytes as bnb

        # bitsandbytes' defaults: tensors under 4096 values keep 32-bit state, as in vidtrain.
        optimizer = bnb.optim.Adam8bit(model.parameters(), lr=1e-4, eps=1e-5, min_8bit_size=4096)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    labels = torch.randint(0, args.classes, (args.batch,))
    step_times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(video), labels)
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - started)
    state_bytes = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    print(
        json.dumps(
            {
                "optimizer": args.optimizer,
                "parameters": sum(p.numel() for p in model.parameters()),
                "state_bytes": state_bytes,
                "saved_state_bytes": saved.getbuffer().nbytes,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "seconds_per_step": sum(step_times[1:]) / max(len(step_times) - 1, 1),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
