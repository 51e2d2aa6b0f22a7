# GPT-2 124M on OpenWebText with Sophia-H: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_sophiah.py
include("parts/gpt2_small.py")   # model, data, batch, schedule

out_dir = "out-gpt2-small-sophiah"
wandb_run_name = "gpt2-small-sophiah"

optimizer_name = "sophiah"
# learning rate, betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiah"] (the GPT-2 small values)
# The Hutchinson pass's double backward runs the math attention kernel (B·H·T² scores per layer) and keeps a
# create-graph cross-entropy: at the training micro-batch of 12 that is an estimated 35-45 GB. Micro-batches of
# 4 give the same estimate (labels and probe do not depend on the split) in about a third of the memory.
hess_batch_size = 4
