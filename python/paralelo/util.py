"""``multiprocessing.util``, under paralelo's name: ``import paralelo.util`` (or
``from paralelo import util``) gives the standard library's module itself, which paralelo's
processes share."""

import sys

import multiprocessing.util

sys.modules[__name__] = multiprocessing.util
