"""Triton kernels and their host launchers, one file per op; installed as gencore.kernels. No autograd here."""
