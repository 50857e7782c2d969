"""``multiprocessing.dummy``, under paralelo's name: ``import paralelo.dummy`` (or
``from paralelo import dummy``) gives the standard library's module itself: multiprocessing's API on threads."""

import sys

import multiprocessing.dummy

sys.modules[__name__] = multiprocessing.dummy
