"""``multiprocessing.reduction``, under paralelo's name: ``import paralelo.reduction`` (or
``from paralelo import reduction``) gives the standard library's module itself, which paralelo's
processes share."""

import sys

import multiprocessing.reduction

sys.modules[__name__] = multiprocessing.reduction
