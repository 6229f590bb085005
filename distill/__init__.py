"""Deepfake detection by patch-level distillation from LaDeDa to Tiny-LaDeDa (spec 002/003).

Not implemented yet: this package is where issue 4 lands (models with converters in distill/models.py,
registered with common.models; the staged workflow in distill/main.py on common.trainer).
"""
