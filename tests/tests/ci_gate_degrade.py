"""Writes a degraded copy of the demo checkpoint for tests/tests/ci_gate.rs: the head's rows of classes
0 and 1 (astronaut, chelsea) swapped, so those crops are predicted as the other class and top-1 falls
from 83.3% by about a third, while the file still loads as a 6-class TResNet-M in the MIIL layout.

Usage: ci_gate_degrade.py DEMO_CHECKPOINT OUT
"""
import sys

import torch


def main():
    ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
    sd = ckpt["model"]
    for k in ("head.fc.weight", "head.fc.bias"):
        sd[k] = sd[k][[1, 0, 2, 3, 4, 5]].clone()
    torch.save(ckpt, sys.argv[2])


if __name__ == "__main__":
    main()
