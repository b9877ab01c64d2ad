"""Training: precision, datasets, losses, the loop, cheap CPU dropout, teacher logits, checkpoint records."""
