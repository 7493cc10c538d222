"""Stages: one module per stage kind, plain functions on arrays and tensors."""
