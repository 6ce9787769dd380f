#!/usr/bin/env python3
"""Validate a model: accuracy on a dataset split, parameters, multiply-adds and the mobile-setting verdict.

``python validate.py --checkpoint output/train/RUN/last.pth.tar --dataset digits``; the work is done by
:func:`unas_zoo.validation.validate`.
"""
import sys

from unas_zoo.validation import validate_main

if __name__ == '__main__':
    sys.exit(validate_main())
