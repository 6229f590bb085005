"""Deepfake detection by patch-level distillation from LaDeDa to Tiny-LaDeDa (spec 002/003).

models.py (LaDeDa, Tiny-LaDeDa + converter), data.py, synthetic.py, losses.py, metrics.py, train.py (teacher
fine-tuning, student), evaluate.py (diagnostics, evaluation); one module per seed script (README table).
"""
