"""KAIR-style layer stacks for the model tests (own code, KAIR's structure and keys)."""

from torch import nn


def kair_layers(cin, cout, mode):
    """The layers KAIR's basicblock.conv makes for ``mode`` (C, B, R, L), as a flat list."""
    layers = []
    for t in mode:
        if t == "C":
            layers.append(nn.Conv2d(cin, cout, 3, 1, 1, bias=True))
        elif t == "B":
            layers.append(nn.BatchNorm2d(cout, momentum=0.9, eps=1e-04, affine=True))
        elif t == "R":
            layers.append(nn.ReLU(inplace=True))
        elif t == "L":
            layers.append(nn.LeakyReLU(negative_slope=0.2, inplace=True))
        else:
            raise NotImplementedError(t)
    return layers
