"""Runnable examples built on both packages: ``python -m examples.demo`` (``make demo``) is the main job."""
