"""Grow a curated image/video dataset from a bucket that keeps filling up."""

__version__ = "0.1.0"
