"""EdgeFace face recognition for very-low-resolution faces through a DSR front end (spec 004).

So far: EdgeFace with its PyTorch converter (facerec/models.py, registered as `edgeface_xs_gamma_06` and
`edgeface_s_gamma_05`). The DSR front end, contrastive fine-tuning and gallery-probe evaluation are still
to come (issue 5).
"""
