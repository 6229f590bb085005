"""EdgeFace face recognition for very-low-resolution faces through a DSR front end (spec 004).

Not implemented yet: this package is where issue 5 lands (EdgeFace with its converter in facerec/models.py,
registered with common.models; contrastive fine-tuning and gallery-probe evaluation on common.trainer).
"""
