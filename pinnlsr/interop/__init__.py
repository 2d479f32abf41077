"""Bridges to other PINN libraries. Each submodule imports its library lazily, so
``import pinnlsr.interop`` never needs them: ``from pinnlsr.interop import deepxde`` does."""
