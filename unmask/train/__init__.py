"""Training loops for M (standard and adversarial) and K, with exact resume and torchrun support."""
