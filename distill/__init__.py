"""Deepfake detection by patch-level distillation from LaDeDa to Tiny-LaDeDa (spec 002/003).

So far: the two models with their PyTorch converters (distill/models.py, registered as `ladeda9` and
`tiny_ladeda`). The staged workflow (diagnose / fine-tune / evaluate the teacher, single and two-stage
student, evaluation) is still to come (issue 4).
"""
