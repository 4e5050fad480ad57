"""The distillation methods, one function each, grouped by what they compare: logits (logits.py),
feature maps layer by layer (hints.py), relations between the images of a batch (relations.py),
and embeddings against a memory bank (contrastive.py). pipeline/losses.py is their registry."""
