"""Objectives, one module each: pure functions of (θ, data statistics, ...) → (loss, grad)."""
