"""EdgeFace face recognition of very-low-resolution faces through a DSR front end (spec 004).

models.py (EdgeFace + converter), dsr.py, data.py, synthetic.py, losses.py, protocol.py, train.py (DSR,
fine-tuning), evaluate.py (gallery-probe evaluation, diagnostics); one module per seed script (README table).
"""
