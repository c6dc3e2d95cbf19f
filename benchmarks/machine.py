"""What machine a benchmark ran on, as one line."""

from __future__ import annotations

import os
import platform

import torch


def describe(device: torch.device) -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} using {threads} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, device {device}"
