"""Datasets and generated data."""
