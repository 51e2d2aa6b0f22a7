# GPT-2 355M on OpenWebText with Sophia-H: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_medium_sophiah.py
include("parts/gpt2_medium.py")   # model, data, batch, schedule

out_dir = "out-gpt2-medium-sophiah"
wandb_run_name = "gpt2-medium-sophiah"

optimizer_name = "sophiah"
# betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiah"]; this size's own:
learning_rate = 7e-4
# the Hutchinson pass's double backward needs more memory per sequence than training (math attention, a
# create-graph cross-entropy; see train_gpt2_small_sophiah.py): smaller micro-batches, the same estimate
hess_batch_size = 2
