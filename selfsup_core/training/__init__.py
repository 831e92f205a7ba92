"""Training: the one step, the Lightning modules and trainer, pretrain() and finetune(), runs."""
