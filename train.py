#!/usr/bin/env python3
"""Train a unas_zoo (or any timm) model: ``python train.py --config hparams/train_demo.yaml``.

The work is done by :func:`unas_zoo.training.train`; this file only hands over the command line.
"""
import sys

from unas_zoo.training import train_main

if __name__ == '__main__':
    sys.exit(train_main())
